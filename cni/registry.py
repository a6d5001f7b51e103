"""Every executable underlay ships, in one table.

Read by the bundle's entry (build/entry.py), the PyInstaller spec, build.sh,
the install script (through `python3 -m cni.registry`), contract's in-process
IPAM delegation and the tests. A name whose module is not written yet is
simply left out of the build.

Roles:
  main   a CNI plugin that creates the pod's link (runtimes exec it from /opt/cni/bin)
  ipam   a CNI IPAM plugin; our main plugins also run it in-process
  agent  the node agent, a long-running process
  tool   the operator's command

Plain dicts and tuples: the bundle's entry imports this on every exec.
"""

EXECUTABLES = {
    # name: (module, role)
    "macvlan": ("cni.plugins.macvlan", "main"),
    "ipvlan": ("cni.plugins.ipvlan", "main"),
    "host-local": ("ipam.host_local", "ipam"),
    "cluster-ipam": ("ipam.cluster", "ipam"),
    "underlayd": ("cni.agent", "agent"),
    "underlay": ("cni.operator", "tool"),
}

CNI_ROLES = ("main", "ipam")

# How our plugins may also be named next to the reference plugins (`make install PLUGIN_PREFIX=underlay-`).
INSTALL_PREFIX = "underlay-"


def module_of(name):
    return EXECUTABLES[name][0]


def names(*roles):
    """Executable names with one of `roles` (all of them without), in table order."""
    return [n for n, (_, role) in EXECUTABLES.items() if not roles or role in roles]


def cni_plugins():
    """The names runtimes exec as CNI plugins."""
    return names(*CNI_ROLES)


def written(root):
    """The names whose module exists in the checkout at `root` (a file or a package)."""
    import os
    found = []
    for name, (module, _) in EXECUTABLES.items():
        path = os.path.join(root, *module.split("."))
        if os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py")):
            found.append(name)
    return found


def plugin_for(called):
    """The CNI plugin a called name stands for: exact, or any prefix before it
    (`underlay-macvlan`, `u_ipvlan`); None for any other name."""
    for name in sorted(cni_plugins(), key=len, reverse=True):
        if called == name or called.endswith(name):
            return name
    return None


def in_process_ipam(ipam_type):
    """The module of an IPAM type that is our own code (run in-process, no second exec), or None."""
    if ipam_type is None:
        return None
    name = ipam_type[len(INSTALL_PREFIX):] if ipam_type.startswith(INSTALL_PREFIX) else ipam_type
    entry = EXECUTABLES.get(name)
    return entry[0] if entry and entry[1] == "ipam" else None


if __name__ == "__main__":
    # `python3 -m cni.registry [ROLE...]`: the names written in this checkout, one per line, for shell scripts.
    import os
    import sys
    checkout = written(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print("\n".join(n for n in names(*sys.argv[1:]) if n in checkout))
