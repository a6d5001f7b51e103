"""Running one invocation of a plugin: from its record and verbs to its answer.

`main` is every CNI plugin executable's: it hands the invocation to underlayd
when the agent answers (cni/handoff.py), else `run` reads the request
(cni/contract.py), calls the verb, prints the result in the form the caller's
cniVersion asks for (cni/results.py) or the error JSON, and with `logFile`
writes the operation log (cni/oplog.py). A main plugin's IPAM runs through
here too: in-process for our own (its registry record), else by exec.

This is the only module that imports results, oplog and handoff; they import
the contract and the errors below it, never this. Start-up cost matters
(every pod attach pays it): results and oplog are imported only on the verbs
and configs that use them.
"""

import json
import os
import sys

from cni import contract, files, handoff, registry
from cni.contract import CURRENT_VERSION, MAX_WARNINGS, REQUIRED_ENV, SUPPORTED_VERSIONS, Request
from cni.errors import ERR_DECODE, ERR_INTERNAL, ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_IO, ERR_TRY_AGAIN, CniError


def error_json(error, version):
    return {"cniVersion": version, "code": error.code, "msg": error.msg, "details": error.details}


USAGE = """\
{about}

A CNI plugin: a container runtime runs it with the network config (JSON) on
stdin and the CNI_* variables below; it prints the result, or an error
{{"code", "msg"}}, as JSON on stdout.

CNI_COMMAND      the verb: {verbs}
CNI_CONTAINERID  the container's ID (ADD, CHECK, DEL)
CNI_NETNS        path of the container's network namespace (ADD, CHECK; DEL when it still exists)
CNI_IFNAME       the interface name in the container (ADD, CHECK, DEL)
CNI_PATH         directories of the other CNI plugins, ':'-separated (ADD, CHECK, DEL, GC)
CNI_ARGS         optional KEY=VALUE;...: IP=, MAC=, K8S_POD_*; IgnoreUnknown=1 for other keys

CNI protocol versions supported: {versions}
Example: CNI_COMMAND=VERSION {program}

Documentation: README.md and docs/ in the underlay source tree; every config
key is described in conf/schema/*.json there.
"""


def about_line(plugin):
    """'CNI macvlan plugin (underlay 0.1.0, build ...)': the record's about line and this build."""
    from cni import version_info
    v = version_info()
    return f"{plugin.about} (underlay {v['version']}, build {v['build']})"


def usage(plugin, verbs, program):
    names = [v for v in REQUIRED_ENV if v in verbs or v == "VERSION"]
    return USAGE.format(about=about_line(plugin), verbs=", ".join(names), versions=", ".join(SUPPORTED_VERSIONS),
                        program=program)


def run(plugin, verbs, env=None, stdin=None, stdout=None, stderr=None, argv=(), program="PLUGIN"):
    """Run one invocation of `plugin` (a registry.Executable); return the process exit code.

    verbs maps "ADD", "DEL", "CHECK", "STATUS", "GC" to functions taking a
    Request; ADD returns a newest-form result. With `logFile` in the config,
    one line per invocation is appended there (cni/oplog.py). `argv` (the
    command line, never used by runtimes) only asks for --help / -h.
    """
    env = os.environ if env is None else env
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if "--help" in argv or "-h" in argv:
        stdout.write(usage(plugin, verbs, program))
        return 0
    command = env.get("CNI_COMMAND", "")
    if not command:
        stderr.write(f"{about_line(plugin)}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
        return 0
    if command == "VERSION":
        from cni import version_info
        stdout.write(json.dumps({"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS),
                                 "underlay": version_info()}) + "\n")
        return 0
    version = CURRENT_VERSION
    request = result = error = None
    try:
        if stdin is None:
            stdin = sys.stdin.buffer.read()
        request = contract.read_request(env, stdin)
        version = request.version
        verb = verbs.get(command)
        if verb is None:
            raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND: {command} is not supported by this plugin")
        result = verb(request)
        if command == "ADD":
            stdout.write(result_text(result, version))
        return 0
    except CniError as e:
        error = e
        if request is None:
            version = contract.known_version(stdin)
    except Exception as e:  # never a bare traceback: the runtime only reads stdout
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        details = f"{type(e).__name__}: {e} (at {os.path.basename(where.filename)}:{where.lineno})"
        error = CniError(ERR_INTERNAL, f"internal error: {e}", details)
    finally:
        if error is not None:
            stdout.write(json.dumps(error_json(error, version)) + "\n")
        warnings = request.warnings if request is not None else []
        for warning in warnings[:MAX_WARNINGS]:
            stderr.write(f"{plugin.name}: warning: {warning}\n")
        if len(warnings) > MAX_WARNINGS:
            stderr.write(f"{plugin.name}: warning: and {len(warnings) - MAX_WARNINGS} more\n")
        if request is not None and request.config.get("logFile") or request is None and has_log_file(stdin):
            from cni import oplog
            config = request.config if request is not None else oplog.peek_config(stdin)
            if config is not None and config.get("logFile"):
                oplog.log_operation(config, plugin.name, env, request, result, error, stdout, stderr)
    return 1


def result_text(result, version):
    """ADD's answer: the newest-form result printed in the form of the caller's cniVersion."""
    from cni.results import convert_result   # only ADD prints a result
    return json.dumps(convert_result(result, version)) + "\n"


def has_log_file(stdin):
    """Cheap test before importing the log: could this undecoded stdin name a logFile?"""
    return isinstance(stdin, bytes) and b"logFile" in stdin


def program_name():
    """How the user called us, for --help: `macvlan`, or `python3 -m cni.plugins.macvlan` from source."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "PLUGIN"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if name.endswith(".py") and spec is not None:
        return f"python3 -m {spec.name}"
    return name


def main(plugin, verbs):
    """A CNI plugin executable's main: hands the invocation to underlayd when it answers (cni/handoff.py)."""
    code = hand_off(plugin)
    if code is not None:
        sys.exit(code)
    sys.exit(run(plugin, verbs, argv=sys.argv[1:], program=program_name()))


def hand_off(plugin):
    """underlayd's exit code for this invocation, or None: run it in this process."""
    code = handoff.hand_off(plugin.name)
    if code is None and handoff.refusal is not None:
        return refused(plugin)
    return code


def refused(plugin):
    """The answer when underlayd was there and did not start the invocation (handoff.refusal):
    code 11, try again, as the plugin would give it (error JSON in the config's version,
    logFile line). The bundle's entry calls this itself, keeping this module off its thin path."""

    def refuse(request):
        raise CniError(ERR_TRY_AGAIN, handoff.refusal)

    return run(plugin, dict.fromkeys(REQUIRED_ENV, refuse))


# --------------------------------------------------------------------------
# Results from outside: prevResult and an exec'd IPAM's.

def prev_result(request):
    """The request's prevResult in the newest form, or None."""
    prev = request.config.get("prevResult")
    if prev is None:
        return None
    from cni.results import upconvert_result   # only CHECK and chained plugins read one
    return upconvert_result(prev, request.version, "prevResult")


# --------------------------------------------------------------------------
# IPAM delegation: our own IPAM in-process (its registry record), any other by exec.

def plugin_module(plugin):
    """The module of a CNI plugin's record, imported now: its VERBS and load_config (cni/registry.py)."""
    __import__(plugin.module)
    return sys.modules[plugin.module]


def load_ipam_config(request):
    """An in-process IPAM's config, loaded and checked now: a main plugin calls this before it
    changes anything, so a bad ipam section costs no link to undo. delegate_ipam hands it on."""
    ipam = registry.in_process_ipam(contract.ipam_type(request.config))
    if ipam is not None:
        request.ipam_config = plugin_module(ipam).load_config(request)


def delegate_ipam(request, command, defer_sync=False):
    """Run the IPAM plugin's `command`; return its result (newest form) for ADD. `defer_sync`: an
    in-process IPAM's ADD returns before its lease's fsync is done, which goes on beside the
    caller's kernel work; the caller calls wait_ipam_synced() before it answers."""
    kind = contract.ipam_type(request.config)
    ipam = registry.in_process_ipam(kind)   # our own IPAM: in-process, no second exec
    if ipam is not None:
        verbs = plugin_module(ipam).VERBS
        sub = Request(command, dict(request.env, CNI_COMMAND=command), request.config, request.stdin)
        sub.version = request.version
        sub.warnings = request.warnings
        sub.ipam_config = request.ipam_config if command == request.command else None
        sub.defer_sync = defer_sync
        return verbs[command](sub)
    return exec_plugin(kind, request, command)


def wait_ipam_synced():
    """Wait for the fsyncs an in-process IPAM's ADD left running (cni/files.py sync_in_background):
    its leases are durable before the ADD answers. An I/O error if one failed (the caller rolls back)."""
    try:
        files.wait_synced()
    except OSError as e:
        raise CniError(ERR_IO, f"IPAM: the lease could not be made durable: {os.strerror(e.errno)}") from None


def hold_ipam_conflict(request, address: str, mac: str) -> bool:
    """conflictDetection found `address` (just given to this attachment by its IPAM) answered for by
    `mac`. Our in-process IPAM keeps it as a conflict record (its module's hold_conflict), no longer
    this attachment's lease, so its next ADD gets the next address: True. Any other IPAM (or one of
    ours without hold_conflict): False, and the caller releases the lease itself and fails."""
    ipam = registry.in_process_ipam(contract.ipam_type(request.config))
    hold = getattr(plugin_module(ipam), "hold_conflict", None) if ipam is not None else None
    if hold is None:
        return False
    hold(request, address, mac)
    return True


def rehearse_ipam(request):
    """A spare's warm-up (cni/plugins/child_link.py rehearse): what our in-process IPAM's ADD computes
    for `request`, a constant sample, without its store (its module's `rehearse`): the result; None
    for an IPAM without a rehearsal."""
    ipam = registry.in_process_ipam(contract.ipam_type(request.config))
    rehearse = getattr(plugin_module(ipam), "rehearse", None) if ipam is not None else None
    return rehearse(request) if rehearse is not None else None


def find_in_path(name, path):
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ERR_INVALID_CONFIG, f"ipam.type: plugin {name!r} not found in CNI_PATH {':'.join(path)!r}")


def exec_plugin(name, request, command):
    import subprocess
    binary = find_in_path(name, request.path)
    env = dict(request.env, CNI_COMMAND=command)
    stdin = json.dumps(request.config).encode()
    try:
        proc = subprocess.run([binary], input=stdin, env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(ERR_IO, f"running IPAM plugin {name!r} ({command}): {e}") from None
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            raise CniError(int(err["code"]), f"{name}: {err.get('msg', '')}", err.get("details", ""))
        except (ValueError, KeyError, TypeError):
            raise CniError(ERR_INTERNAL, f"IPAM plugin {name!r} failed ({command}, exit {proc.returncode})",
                           (out or proc.stderr).decode(errors="replace")[-2000:]) from None
    if command != "ADD":
        return None
    from cni.results import upconvert_result
    try:
        try:
            return upconvert_result(json.loads(out), request.version, f"{name} result")
        except ValueError as e:
            raise CniError(ERR_DECODE, f"IPAM plugin {name!r} printed no valid result: {e}") from None
    except CniError:
        # it has taken addresses we will never use (nor the caller's undo, which needs a result)
        try:
            exec_plugin(name, request, "DEL")
        except CniError:
            pass  # the refusal is the error that matters
        raise
