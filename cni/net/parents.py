"""Node-side links underlay creates on demand, and who uses them.

As Docker's macvlan/ipvlan drivers do:
- `master: "eth0.50"` (or `master: "eth0"` with `vlan: 50`) creates the 802.1q
  parent when it is missing;
- `internal: true` gives the network a dummy parent of its own, connected to
  nothing, so its pods share an isolated segment;
- `hostShim` (cni/net/shim.py) puts a child of the master in the node's namespace.

Such a link is removed only when underlay created it and no attachment of any
network uses it any more. The users are recorded under the state dir:

  <stateDir>/links/<netns-id>/<name>.json  {"kind": ..., "network": ..., "users": ["<network>/<containerID>/<ifname>", ...]}
  <stateDir>/links.lock                    flock'ed while a record changes

A set of users (not a counter) keeps repeated ADDs and DELs idempotent and lets
GC drop users that no longer exist. Records are per "host" network namespace
(its device and inode), since a link name means something only within one.
"""

import errno
import json
import os
import re
import zlib

from cni import files, locks
from cni.net import netlink
from cni.contract import check_ifname
from cni.errors import ERR_INVALID_CONFIG, ERR_IO, ERR_LINK, CniError, config_error

DEFAULT_STATE_DIR = "/var/lib/cni/underlay"
LOCK_TIMEOUT = 10.0   # seconds, as the lease store's default lockTimeout
VLAN_NAME = re.compile(r"^(?P<base>.+)\.(?P<vid>[0-9]+)$")


def valid_link_name(name):
    """The interface-name rule of CNI_IFNAME (the kernel's dev_valid_name): it also keeps a
    record path under the state dir from pointing anywhere else."""
    try:
        check_ifname(name)
    except (CniError, TypeError):
        return False
    return isinstance(name, str)


def user_key(network, container_id, ifname):
    return f"{network}/{container_id}/{ifname}"


def parent_name(master, vlan):
    """The parent's name and, when it is a VLAN to create if missing, (base, vlan id)."""
    if vlan is not None:
        if not master:
            raise config_error("vlan", "needs a master to put the VLAN on")
        if not 1 <= vlan <= 4094:
            raise config_error("vlan", f"{vlan} is outside 1..4094")
        name = f"{master}.{vlan}"
        if len(name) > 15:
            raise config_error("vlan", f"parent name {name!r} would be longer than 15 characters")
        return name, (master, vlan)
    return master, None


def vlan_of(name):
    """(base, vid) if `name` reads as an 802.1q parent like eth0.50, else None."""
    match = VLAN_NAME.match(name or "")
    if not match:
        return None
    vid = int(match.group("vid"))
    if not 1 <= vid <= 4094:
        raise config_error("master", f"{name!r}: VLAN ID {vid} is outside 1..4094")
    return match.group("base"), vid


def internal_name(network):
    """The dummy parent of an internal network: short, and derived from its name."""
    return f"uli{zlib.crc32(network.encode()):08x}{network[:4]}".rstrip(".-_")[:15]


def default_route_master(nl):
    index = nl.default_route_link()
    if index is None:
        raise CniError(ERR_INVALID_CONFIG, "master: not set and no default route interface found")
    return nl.link(index=index)


class Records:
    """The links underlay created in this netns and their users; a lock held throughout,
    waited for at most `timeout` seconds (then code 11 naming the holder's PID)."""

    def __init__(self, state_dir, timeout=LOCK_TIMEOUT):
        self.state_dir = state_dir
        self.timeout = timeout
        self.lock_fd = None

    def __enter__(self):
        os.makedirs(self.state_dir, 0o700, exist_ok=True)
        path = os.path.join(self.state_dir, "links.lock")
        self.lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            locks.lock(self.lock_fd, self.timeout, path)
        except BaseException:
            os.close(self.lock_fd)
            raise
        own = os.stat("/proc/self/ns/net")
        self.dir = os.path.join(self.state_dir, "links", f"{own.st_dev}-{own.st_ino}")
        for path in (os.path.dirname(self.dir), self.dir):   # makedirs gives parents 0777 & ~umask
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        return self

    def __exit__(self, *exc):
        os.close(self.lock_fd)

    def _path(self, name):
        if not valid_link_name(name):
            raise config_error("master", f"{name!r} is not an interface name")
        return os.path.join(self.dir, name + ".json")

    def get(self, name):
        """The record of a link we created, or None. A symlink is never followed."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CniError(ERR_IO, f"stateDir: record {self._path(name)}: {e.strerror}") from None
        try:
            with os.fdopen(fd) as f:
                record = json.load(f)
            record["users"] = set(record.get("users") or [])
            return record
        except (ValueError, TypeError, AttributeError, OSError):
            return {"kind": None, "network": None, "users": set()}  # torn: still ours

    def save(self, name, record):
        files.replace(self._path(name), json.dumps(dict(record, users=sorted(record["users"]))).encode())

    def forget(self, name):
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def names(self):
        return [n[:-5] for n in os.listdir(self.dir) if n.endswith(".json")]


def create_error(name, kind, e):
    if e.errno == errno.EOPNOTSUPP:
        module = {"vlan": "8021q", "dummy": "dummy"}.get(kind, kind)
        return CniError(ERR_LINK, f"{name}: this kernel cannot create {kind} links ({module} module missing)")
    return CniError(ERR_LINK, f"creating {kind} link {name}: {os.strerror(e.errno)}")


def acquire(nl, name, user, network, state_dir, kind, create):
    """The link `name` for an ADD, made by create() if it is missing.

    Links that exist and that underlay did not create are used as they are and
    never recorded or removed. Returns (Link, managed)."""
    with Records(state_dir) as records:
        record = records.get(name)
        link = nl.find_link(name)
        if link is not None and record is None:
            return link, False
        if link is None:
            try:
                create()
                link = nl.link(name)
                nl.set_link(link.index, up=True)
            except netlink.NetlinkError as e:
                raise create_error(name, kind, e) from None
            record = {"kind": kind, "network": network, "users": set()}
        elif record.get("network") not in (None, network) and kind == "dummy":
            raise CniError(ERR_INVALID_CONFIG, f"internal parent {name} belongs to network "
                                               f"{record['network']!r}; rename one of the networks")
        record["users"].add(user)
        records.save(name, record)
    return link, True


def release(nl, name, user, state_dir, withdraw=None):
    """Drop `user` of a link we created; remove the link with its last user.
    withdraw(nl, name, record, dropped_users), when given, undoes what those users
    added to a link that stays (a shim's addresses and routes)."""
    if not valid_link_name(name) or not os.path.isdir(state_dir):
        return  # no link of ours can have a name the kernel refuses
    with Records(state_dir) as records:
        record = records.get(name)
        if record is None:
            return
        record["users"].discard(user)
        if record["users"]:
            if withdraw:
                withdraw(nl, name, record, {user})
            records.save(name, record)
        else:
            remove(nl, records, name)


def remove(nl, records, name):
    link = nl.find_link(name)
    if link is not None:
        try:
            nl.delete_link(link.index, name)
        except netlink.LinkNotFound:
            pass
    records.forget(name)


def garbage_collect(nl, network, valid_users, state_dir, withdraw=None):
    """GC: forget users of `network` not in valid_users; remove links left unused."""
    if not os.path.isdir(state_dir):
        return
    prefix = f"{network}/"
    with Records(state_dir) as records:
        for name in records.names():
            record = records.get(name)
            kept = {u for u in record["users"] if not u.startswith(prefix) or u in valid_users}
            if kept:
                if kept != record["users"]:
                    dropped, record["users"] = record["users"] - kept, kept
                    if withdraw:
                        withdraw(nl, name, record, dropped)
                    records.save(name, record)
            else:
                remove(nl, records, name)


# -- the parents of pod interfaces ---------------------------------------------

def acquire_parent(nl, conf, request):
    """(master Link, managed) for an ADD: existing, or an 802.1q or internal parent made now."""
    user = user_key(request.network, request.container_id, request.ifname)
    if conf.internal:
        name = internal_name(request.network)
        return acquire(nl, name, user, request.network, conf.state_dir, "dummy",
                       lambda: nl.create_link(name, "dummy"))
    name, spec = parent_name(conf.master, conf.vlan)
    if spec is None:
        found = nl.find_link(name)
        try:
            spec = vlan_of(name)  # an existing eth0.50 may still be one we made: its users count
        except CniError:
            if found is None:
                raise
        if spec is None:
            if found is None:
                raise config_error("master", f"{name!r} does not exist")
            return found, False
    base_name, vid = spec

    def create():
        base = nl.find_link(base_name)
        if base is None:
            raise config_error("master", f"{name!r}: base interface {base_name!r} does not exist")
        nl.create_link(name, "vlan", parent_index=base.index, data={"IFLA_VLAN_ID": vid})

    return acquire(nl, name, user, request.network, conf.state_dir, "vlan", create)
