"""Entry point of the frozen bundle: one executable, a plugin per name.

Runtimes exec /opt/cni/bin/<type>; every name of cni/registry.py (the CNI
plugins, the agent `underlayd`, the operator's `underlay`) is a symlink to this
one executable, so the name it was called by picks the program. A prefixed
name (`underlay-macvlan`, or any PLUGIN_PREFIX given to `make install`) picks
the same CNI plugin, so ours can sit next to the reference plugins. Called by
its own name, `underlay`, a first argument that names another program runs it
(`underlay host-local`, `underlay underlayd`, for debugging a bundle by hand);
anything else is the operator's command. The compiled thin client (cni/handoff.c) runs the
bundle that way whenever it does not hand the invocation to underlayd.

Plugin modules are imported only once the name is known: each exec pays for
its own plugin alone. VERSION is answered without importing the plugin at all.

UNDERLAY_LIST_MODULES=<file> (or `-` for stderr) writes sorted(sys.modules)
at exit: tests/build uses it to hold the import deny-list.
"""

import os
import sys

from cni import registry

BUNDLE_NAME = "underlay"


def program_for(argv):
    """The registry name argv stands for (argv[1] dropped when it named it), or None."""
    called = os.path.basename(argv[0])
    if called in registry.EXECUTABLES and not registry.EXECUTABLES[called].is_cni_plugin:
        if called == BUNDLE_NAME and len(argv) > 1 and argv[1] != BUNDLE_NAME and program_for(argv[1:2]):
            argv[0] = argv.pop(1)   # as if called by that name (the plugin's messages use it)
            return program_for(argv[:1])
        return called
    return registry.plugin_for(called)


def restore_environment(environ):
    """Undo what PyInstaller's bootloader added to the environment, for the plugin's children.

    The bootloader restarts itself with LD_LIBRARY_PATH pointing into the
    bundle (saving any original in LD_LIBRARY_PATH_ORIG) and _PYI_* markers.
    The dynamic loader read them at start-up already; an IPAM plugin we exec
    must see the runtime's environment, not load our bundled libraries.
    """
    original = environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        environ["LD_LIBRARY_PATH"] = original
    else:
        environ.pop("LD_LIBRARY_PATH", None)
    for name in [n for n in environ if n.startswith("_PYI_")]:
        del environ[name]


def build_info():
    """cni/_build.py, written by the spec into the bundle; None when run from source."""
    try:
        from cni import _build
    except ImportError:
        return None
    return _build


def usage(called, asked):
    """Which names we answer to; exit 0 when --help asked for it, 2 for a name we do not know."""
    text = (f"{called}: call me as one of {', '.join(registry.EXECUTABLES)} (a symlink, CNI plugins "
            f"optionally prefixed), or as `{BUNDLE_NAME} PLUGIN`; `PLUGIN --help` describes each, "
            f"`{BUNDLE_NAME} --help` the operator's command\n")
    (sys.stdout if asked else sys.stderr).write(text)
    return 0 if asked else 2


def run(argv):
    called = os.path.basename(argv[0])
    plugin = program_for(argv)
    if plugin is None:
        return usage(called, asked=any(a in ("--help", "-h") for a in argv[1:2]))
    record = registry.EXECUTABLES[plugin]
    if os.environ.get("CNI_COMMAND") == "VERSION":
        # VERSION is the same for every plugin and static: runtimes (podman)
        # call it before each ADD/DEL, so the bundle prints the contract's
        # answer computed at build time, without importing the contract
        # (json, re) or the plugin (netlink).
        build = build_info()
        if build is not None:
            sys.stdout.write(build.VERSION_OUTPUT)
            return 0
        from cni import dispatch
        return dispatch.run(record, {}, argv=argv[1:], program=called)
    if getattr(sys, "frozen", False):
        restore_environment(os.environ)
    if record.is_cni_plugin:
        # the thin path: when underlayd answers, it runs this invocation warm
        from cni import handoff
        code = handoff.hand_off(plugin)
        if code is None and handoff.refusal is not None:
            from cni import dispatch   # only now: the thin path imports registry and handoff alone
            code = dispatch.refused(record)
        if code is not None:
            return code
    __import__(record.module)
    return sys.modules[record.module].main() or 0   # the plugins exit themselves; the operator's command returns


def list_modules(target):
    names = "\n".join(sorted(sys.modules)) + "\n"
    if target == "-":
        sys.stderr.write(names)
    else:
        with open(target, "w") as f:
            f.write(names)


if __name__ == "__main__":
    listing = os.environ.get("UNDERLAY_LIST_MODULES")
    try:
        code = run(sys.argv)
    finally:
        if listing:
            list_modules(listing)
    sys.exit(code)
