"""Every executable underlay ships, in one table: one record per executable.

Read by the bundle's entry (build/entry.py), the PyInstaller spec, build.sh
and the install script (through `python3 -m cni.registry`), dispatch (the
plugins' main and in-process IPAM delegation), `underlay validate` and the
tests. Every entry is built: the bundle has all of them.

Roles:
  main   a CNI plugin a network config names (runtimes exec it from /opt/cni/bin): it creates the
         pod's link, or, chained after the one that does (cluster-access), adds to it
  ipam   a CNI IPAM plugin; our main plugins also run it in-process
  agent  the node agent, a long-running process
  tool   the operator's command

Every module runs as an executable through its main(). The module of a CNI
plugin (main or ipam) also defines
  VERBS               {verb: function of a contract.Request}; ADD returns a result
  load_config(request) the plugin's config, checked as ADD checks it, changing nothing
and an IPAM's module may define (optional; dispatch.hold_ipam_conflict calls it)
  hold_conflict(request, address, mac)  conflictDetection: the address the attachment was just
                      given, answered for by `mac`, becomes a conflict record the IPAM holds (no
                      longer the attachment's lease); raises CniError if it cannot
(tests/unit/test_registry.py holds every record to that).

Plain tuples, no collections or typing: the bundle's entry imports this on every exec.
"""


class Executable(tuple):
    """One executable: its name, the module that runs it, its role, the schema of its
    config (conf/schema/<schema>.json; None when it reads no network config) and its
    about line (the version is added where it is printed)."""

    __slots__ = ()

    def __new__(cls, name, module, role, schema, about):
        return tuple.__new__(cls, (name, module, role, schema, about))

    name = property(lambda self: self[0])
    module = property(lambda self: self[1])
    role = property(lambda self: self[2])
    schema = property(lambda self: self[3])
    about = property(lambda self: self[4])

    @property
    def is_cni_plugin(self):
        return self.role in CNI_ROLES

    def __repr__(self):
        return f"Executable{tuple.__repr__(self)}"


CNI_ROLES = ("main", "ipam")

EXECUTABLES = {e.name: e for e in (
    Executable("macvlan", "cni.plugins.macvlan", "main", "macvlan", "CNI macvlan plugin"),
    Executable("ipvlan", "cni.plugins.ipvlan", "main", "ipvlan", "CNI ipvlan plugin"),
    Executable("cluster-access", "cni.plugins.cluster_access", "main", "cluster-access", "CNI cluster-access plugin"),
    Executable("host-local", "ipam.host_local", "ipam", "host-local", "CNI host-local IPAM plugin"),
    Executable("cluster-ipam", "ipam.cluster", "ipam", "cluster-ipam", "CNI cluster-ipam IPAM plugin"),
    Executable("dhcp", "ipam.dhcp.plugin", "ipam", "dhcp", "CNI dhcp IPAM plugin"),
    Executable("underlayd", "cni.agent", "agent", None, "underlay's node agent"),
    Executable("underlay", "cni.operator", "tool", None, "underlay's operator command"),
)}

# How our plugins may also be named next to the reference plugins (`make install PLUGIN_PREFIX=underlay-`).
INSTALL_PREFIX = "underlay-"


def module_of(name):
    return EXECUTABLES[name].module


def names(*roles):
    """Executable names with one of `roles` (all of them without), in table order."""
    return [e.name for e in EXECUTABLES.values() if not roles or e.role in roles]


def cni_plugins():
    """The names runtimes exec as CNI plugins."""
    return names(*CNI_ROLES)


def plugin_for(called):
    """The CNI plugin a called name stands for: exact, or any prefix before it
    (`underlay-macvlan`, `u_ipvlan`); None for any other name."""
    for name in sorted(cni_plugins(), key=len, reverse=True):
        if called == name or called.endswith(name):
            return name
    return None


def in_process_ipam(ipam_type):
    """The record of an IPAM type that is our own code (run in-process, no second exec), or None."""
    if ipam_type is None:
        return None
    name = ipam_type[len(INSTALL_PREFIX):] if ipam_type.startswith(INSTALL_PREFIX) else ipam_type
    entry = EXECUTABLES.get(name)
    return entry if entry is not None and entry.role == "ipam" else None


if __name__ == "__main__":
    # `python3 -m cni.registry [ROLE...]`: the names, one per line, for shell scripts.
    import sys
    print("\n".join(names(*sys.argv[1:])))
