"""host-local's stores as the operator and underlayd read them: read-only, under the plugins' lock.

The one place they touch host-local's file store: DiskStore's lock
and close, its lease files' full scan (ipam/stores/lease_files.py), its index's entries
and parsing helpers (ipam/stores/lease_index.py).

Read-only means no lease, index or stamp is written or removed: the store's
own repair of a stale or torn index (a rebuild, which also drops empty lease
files and a killed writer's temp files, and after a reboot releases leases) is
never run; the reader falls back to the lease files alone, which are the truth.
What opening the store may create, as every plugin's open does: the `lock` file
and an empty `.underlay-index/` in a directory only the reference plugin had
written. Removing that directory again would race with a plugin that opened
the store meanwhile (DiskStore opens it before it waits for the lock).
"""

import ipaddress
import os
from dataclasses import dataclass, field

from cni import config_files, files
from cni.errors import CniError
from ipam.stores import lease_files, lease_index
from ipam import verbs
from ipam.stores import disk
from ipam.verbs import DEFAULT_LOCK_TIMEOUT


class StoreProblem(Exception):
    """A store that could not be read (missing, locked, unreadable); the message names it."""


@dataclass
class Lease:
    network: str
    address: str
    container: str | None      # None: an empty lease file
    ifname: str | None         # None: an old lease that recorded the container ID only
    netns: str | None          # recorded by underlay's ADD; None for the reference's leases
    since: float | None        # the lease file's mtime: when ADD wrote it


@dataclass
class ConflictHold:
    network: str
    address: str
    mac: str                   # who answered for the address (conflictDetection)
    since: float
    until: float               # when it is given back (by the next ADD or GC once past)


@dataclass
class Snapshot:
    """One network's leases and conflict records, read in one go under its lock."""
    network: str
    path: str
    leases: list = field(default_factory=list)
    rebooted: bool = False     # the index was stamped under another boot: the next call heals
    conflicts: list = field(default_factory=list)


class _ReadOnlyIndex(lease_index.AttachmentIndex):
    def rebuild_index(self):
        # entries() repairs a torn index by rebuilding it: a write we never make
        raise _IndexUnreadable()


class _ReadOnlyStore(disk.DiskStore):
    Index = _ReadOnlyIndex


class _IndexUnreadable(Exception):
    pass


def networks(data_dir):
    """The names of the network directories in data_dir, sorted."""
    try:
        with os.scandir(data_dir) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        raise StoreProblem(f"data dir {data_dir} does not exist (no host-local network has run there)") from None
    except NotADirectoryError:
        raise StoreProblem(f"data dir {data_dir} is not a directory") from None
    except PermissionError:
        raise StoreProblem(f"data dir {data_dir}: permission denied (the plugins run as root)") from None


def read(data_dir, network, lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """A Snapshot of one network's store, read under its lock without changing it."""
    if not os.path.isabs(data_dir):
        data_dir = os.path.abspath(data_dir)
    path = os.path.join(data_dir, network)
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise StoreProblem(f"network {network}: no store at {path}") from None
    except OSError as e:
        raise StoreProblem(f"network {network}: {path}: {e.strerror}") from None
    if not os.path.isdir(path) or os.path.islink(path):
        raise StoreProblem(f"network {network}: {path} is not a directory")
    index_dir = os.path.join(path, disk.INDEX_DIR)
    had_index = os.path.isdir(index_dir) and not os.path.islink(index_dir)   # else the one DiskStore makes is empty
    try:
        store = _ReadOnlyStore(data_dir, network, lock_timeout=lock_timeout)
    except CniError as e:
        raise StoreProblem(f"network {network}: {e.msg}") from None
    try:
        try:
            store.lock()
        except CniError as e:
            raise StoreProblem(f"network {network}: {e.msg}") from None
        return _snapshot(store, network, path, had_index)
    except (CniError, OSError) as e:
        raise StoreProblem(f"network {network}: {getattr(e, 'msg', None) or e}") from None
    finally:
        store.close()   # drops the lock


def _snapshot(store, network, path, had_index):
    entries = {}
    if had_index:
        try:
            entries = store.index.entries()
        except _IndexUnreadable:
            entries = {}   # torn: no netns paths, the leases stand on their own
    snap = Snapshot(network, path, rebooted=had_index and _rebooted(path))
    leases, conflicts = store.files.records()
    snap.conflicts = [ConflictHold(network, ip, c.mac, c.since, c.until)
                      for ip, c in sorted(conflicts.items(), key=lambda item: _sort_key(item[0]))]
    for ip, owner in sorted(leases.items(), key=lambda item: _sort_key(item[0])):
        container, ifname = owner if owner else (None, None)
        netns = None
        entry = entries.get((container, ifname)) if owner else None
        if entry and ip in entry[1]:
            netns = entry[0] or None
        try:
            since = os.lstat(os.path.join(path, ip)).st_mtime
        except OSError:
            since = None
        snap.leases.append(Lease(network, ip, container, ifname, netns, since))
    return snap


def _rebooted(path):
    """As AttachmentIndex.ensure_index decides it: stamped under a boot that is not this one."""
    try:
        fd = os.open(os.path.join(path, disk.INDEX_DIR, disk.STAMP), os.O_RDONLY | lease_files.NOFOLLOW)
    except OSError:
        return False
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    boot = lease_index.parse_stamp(data)[2]
    now = files.boot_id()
    return bool(boot not in (None, "-") and now and boot != now)


def _sort_key(ip):
    address = ipaddress.ip_address(ip)
    return address.version, int(address)


def pools(paths, data_dir=None, lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """(rows, problems): per host-local network of the configs at `paths` and range set, how its
    addresses are spent (ipam/allocator.tally), the leases read from the network's store (data_dir,
    else the config's ipam.dataDir, else host-local's default). `underlay pools` and underlayd's
    metrics both come from here. Read-only; each store is read under its lock, waiting at most
    lock_timeout."""
    from ipam import allocator
    rows = []
    found, problems = config_files.ipam_users(paths, config_files.is_host_local)
    for path, network, plugin, _ in found:
        try:
            conf = check_host_local(plugin.config)
        except CniError as e:
            problems.append(network.problem("error", *config_files.split_field(e.msg)).line())
            continue
        root = os.path.abspath(data_dir or conf.data_dir)
        try:
            snap = read(root, network.name, lock_timeout)
            leased, conflicts = [x.address for x in snap.leases], [x.address for x in snap.conflicts]
        except StoreProblem as e:
            if not_there(os.path.join(root, network.name)):
                leased = conflicts = []   # no ADD yet on this node: nothing in use
            else:
                problems.append(str(e))
                continue
        for s in conf.range_sets:
            t = allocator.tally(s, leased, conflicts)
            rows.append({"network": network.name, "file": path, "data_dir": root, "set": s.index,
                         "ranges": s.describe(), "size": t["addresses"], "excluded": t["excluded"],
                         "aux": t["aux"], "reserved": t["reserved"], "in_use": t["in use"],
                         "free": t["free"], "conflict": t["conflict"]})
    return rows, problems


def release_conflict(data_dir, network, address, lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """The operator's give-back of one conflict record (`underlay release-conflict`): the one write
    of the operator's host-local commands, through the plugins' own store under their lock. True if
    `address` held one in `network`."""
    try:
        with disk.DiskStore(data_dir, network, lock_timeout=lock_timeout) as store:
            return store.release_conflict(address)
    except CniError as e:
        raise StoreProblem(f"network {network}: {e.msg}") from None


def check_host_local(config, warnings=None):
    """host-local's ADD checks of its config (its loader), without reading files or taking an
    address. Returns the loaded config; its warnings, as cluster-ipam's, go to `warnings`."""
    from ipam import host_local
    return verbs.load_as_add(host_local.HostLocalConfig, config, warnings)


def not_there(path):
    """Certainly no such file (not merely one we may not look at: that is no answer)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def netns_gone(path):
    return lease_index.netns_gone(path)


def runtime_owned(lease):
    """False for a lease no CNI runtime could have written: host-local never releases those."""
    return lease_index.indexable((lease.container, lease.ifname))


@dataclass
class Verdict:
    lease: Lease
    release: bool
    reason: str


def gc_plan(snap, valid):
    """What host-local's GC would do to each lease of `snap`, given the valid
    (containerID, ifname) pairs: the healing its first call after a reboot does
    (AttachmentIndex.ensure_index), then cmd_gc's rule. Releases nothing."""
    valid = verbs.ValidAttachments(valid)
    verdicts = []
    for lease in snap.leases:
        if lease.container is None:
            verdicts.append(Verdict(lease, True, "empty lease file: belongs to nobody"))
            continue
        if not runtime_owned(lease):
            verdicts.append(Verdict(lease, False, "owner is no CNI container ID/ifname: host-local never "
                                                  "releases it (remove it by hand)"))
            continue
        gone = lease.netns is not None and netns_gone(lease.netns)
        if snap.rebooted and gone:
            verdicts.append(Verdict(lease, True, f"after a reboot: its netns {lease.netns} is gone"))
            continue
        if valid.keeps(lease.container, lease.ifname):
            note = f", but its netns {lease.netns} is gone" if gone else ""
            verdicts.append(Verdict(lease, False, f"in the valid list{note}"))
            continue
        if gone:
            note = f"; its netns {lease.netns} is gone"
        elif lease.netns is not None:
            note = f"; its netns {lease.netns} still exists: is the list complete?"
        else:
            note = ""
        verdicts.append(Verdict(lease, True, f"not in the valid list{note}"))
    return verdicts
