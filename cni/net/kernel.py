"""Can this kernel create a link kind? Asked once per boot, answered for STATUS.

The probe creates a veth pair and a child of the kind in a private, throw-away
network namespace (unshare, then back), so nothing on the node is touched. The
answer is cached under the state dir with the boot ID: modules rarely appear
without a reboot, and STATUS may be called often.
"""

import errno
import json
import os

from cni import files
from cni.net import netlink, netns

CACHE = "kernel-support.json"


def probe(kind):
    """None if `kind` links can be created here, else the reason."""
    home = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.unshare_net()
    except OSError as e:
        os.close(home)
        return f"cannot make a private namespace to probe: {os.strerror(e.errno)}"
    try:
        with netlink.Netlink() as nl:
            if kind == "dummy":
                nl.create_link("probe0", "dummy")
                return None
            nl.create_link("probe0", "veth", data={"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", "probe1")]}})
            parent = nl.link("probe0").index
            data = {"vlan": {"IFLA_VLAN_ID": 2}}.get(kind)
            nl.create_link("probe2", kind, parent_index=parent, data=data)
            return None
    except netlink.NetlinkError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOENT):
            return f"this kernel cannot create {kind} links"
        return f"probing {kind} links: {os.strerror(e.errno)}"
    finally:
        netns.setns(home)  # the private namespace dies with its last reference
        os.close(home)


def unsupported(kind, state_dir):
    """None if the running kernel supports `kind`, else why not (cached per boot)."""
    path = os.path.join(state_dir, CACHE)
    boot = files.boot_id()
    cache = {}
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)) as f:
            cache = json.load(f)
        if cache.get("boot_id") != boot:
            cache = {}
    except (OSError, ValueError):
        pass
    if kind in cache.get("kinds", {}):
        return cache["kinds"][kind]
    reason = probe(kind)
    cache = {"boot_id": boot, "kinds": dict(cache.get("kinds", {}), **{kind: reason})}
    try:
        os.makedirs(state_dir, 0o700, exist_ok=True)
        files.replace(path, json.dumps(cache).encode())
    except OSError:
        pass  # no cache: the next STATUS probes again
    return reason
