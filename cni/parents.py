"""Parent (master) interfaces: find them, and 802.1q parents created on demand.

As Docker's macvlan/ipvlan drivers do, `master: "eth0.50"` (or `master: "eth0"`
with `vlan: 50`) creates the VLAN sub-interface when it is missing, and removes
it only when underlay created it and no attachment of any network uses it any
more. The users of each parent we created are recorded under the state dir:

  <stateDir>/parents/<netns-id>/<parent>.json   {"users": ["<network>/<containerID>/<ifname>", ...]}
  <stateDir>/parents.lock                       flock'ed while a record changes

A set of users (not a counter) keeps repeated ADDs and DELs idempotent and lets
GC drop users that no longer exist. Records are per "host" network namespace
(its inode), since a parent name means something only within one.
"""

import errno
import fcntl
import json
import os
import re

from cni import netlink
from cni.contract import ERR_INVALID_CONFIG, ERR_LINK, CniError

DEFAULT_STATE_DIR = "/var/lib/cni/underlay"
VLAN_NAME = re.compile(r"^(?P<base>.+)\.(?P<vid>[0-9]+)$")


def config_error(field, problem):
    return CniError(ERR_INVALID_CONFIG, f"{field}: {problem}")


def parent_name(conf_master, vlan):
    """The parent's name and, when it is a VLAN, (base, vlan id)."""
    if vlan is not None:
        if not conf_master:
            raise config_error("vlan", "needs a master to put the VLAN on")
        if not 1 <= vlan <= 4094:
            raise config_error("vlan", f"{vlan} is outside 1..4094")
        name = f"{conf_master}.{vlan}"
        if len(name) > 15:
            raise config_error("vlan", f"parent name {name!r} would be longer than 15 characters")
        return name, (conf_master, vlan)
    return conf_master, None


def vlan_of(name):
    """(base, vid) if `name` reads as an 802.1q parent like eth0.50, else None."""
    match = VLAN_NAME.match(name or "")
    if not match:
        return None
    vid = int(match.group("vid"))
    if not 1 <= vid <= 4094:
        raise config_error("master", f"{name!r}: VLAN ID {vid} is outside 1..4094")
    return match.group("base"), vid


def default_route_master(nl):
    index = nl.default_route_link()
    if index is None:
        raise CniError(ERR_INVALID_CONFIG, "master: not set and no default route interface found")
    return nl.link(index=index)


class ParentRecords:
    """The users of parents underlay created, under a lock."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.lock_fd = None

    def __enter__(self):
        os.makedirs(self.state_dir, 0o700, exist_ok=True)
        self.lock_fd = os.open(os.path.join(self.state_dir, "parents.lock"),
                               os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        own = os.stat("/proc/self/ns/net")
        self.dir = os.path.join(self.state_dir, "parents", f"{own.st_dev}-{own.st_ino}")
        os.makedirs(self.dir, 0o700, exist_ok=True)
        return self

    def __exit__(self, *exc):
        os.close(self.lock_fd)

    def _path(self, parent):
        return os.path.join(self.dir, parent + ".json")

    def users(self, parent):
        """The recorded users, or None if underlay did not create `parent`."""
        try:
            with open(self._path(parent)) as f:
                return set(json.load(f)["users"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return set()  # a torn record: still ours, users unknown

    def save(self, parent, users):
        tmp = self._path(parent) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"users": sorted(users)}, f)
        os.rename(tmp, self._path(parent))

    def forget(self, parent):
        try:
            os.unlink(self._path(parent))
        except FileNotFoundError:
            pass

    def parents(self):
        return [name[:-5] for name in os.listdir(self.dir) if name.endswith(".json")]


def user_key(network, container_id, ifname):
    return f"{network}/{container_id}/{ifname}"


def acquire(nl, master, vlan, state_dir, user):
    """The parent Link for an ADD, creating an 802.1q parent if it is missing.

    Returns (link, created_parent_name_or_None).
    """
    name, spec = parent_name(master, vlan)
    link = nl.find_link(name)
    if spec is None and link is None:
        spec = vlan_of(name)
        if spec is None:
            raise config_error("master", f"{name!r} does not exist")
    if spec is None:
        return link, None
    base_name, vid = spec
    with ParentRecords(state_dir) as records:
        users = records.users(name)
        if link is not None and users is None:
            return link, None  # someone else's VLAN interface: use it, never remove it
        if link is None:
            base = nl.find_link(base_name)
            if base is None:
                raise config_error("master", f"{name!r}: base interface {base_name!r} does not exist")
            try:
                nl.create_link(name, "vlan", parent_index=base.index, data={"IFLA_VLAN_ID": vid})
                link = nl.link(name)
                nl.set_link(link.index, up=True)
            except netlink.NetlinkError as e:
                if e.errno == errno.EOPNOTSUPP:
                    raise CniError(ERR_LINK, f"master {name!r}: this kernel cannot create 802.1q "
                                             "VLAN interfaces (8021q module missing)") from None
                raise CniError(ERR_LINK, f"master {name!r}: creating VLAN {vid} on {base_name}: "
                                         f"{os.strerror(e.errno)}") from None
            users = set()
        users.add(user)
        records.save(name, users)
    return link, name


def release(nl, master, vlan, state_dir, user):
    """Drop `user` from a parent we created; remove the parent with its last user."""
    try:
        name, spec = parent_name(master, vlan)
    except CniError:
        return
    if not name:
        return
    with ParentRecords(state_dir) as records:
        users = records.users(name)
        if users is None:
            return
        users.discard(user)
        if users:
            records.save(name, users)
        else:
            remove_parent(nl, records, name)


def remove_parent(nl, records, name):
    link = nl.find_link(name)
    if link is not None and link.kind == "vlan":
        try:
            nl.delete_link(link.index, name)
        except netlink.LinkNotFound:
            pass
        except netlink.NetlinkError as e:
            if e.errno != errno.EBUSY:
                raise
            return  # still has children the kernel knows of: keep it and its record
    records.forget(name)


def garbage_collect(nl, network, valid_users, state_dir):
    """GC: forget users of `network` not in valid_users; remove parents left unused."""
    if not os.path.isdir(state_dir):
        return
    prefix = f"{network}/"
    with ParentRecords(state_dir) as records:
        for name in records.parents():
            users = records.users(name) or set()
            kept = {u for u in users if not u.startswith(prefix) or u in valid_users}
            if kept:
                if kept != users:
                    records.save(name, kept)
            else:
                remove_parent(nl, records, name)
