"""The dhcp IPAM's lease records: one JSON file per lease (a Lease's to_json) in the dhcp dir
(underlayd's --dhcp-dir, default ipam/dhcp/plugin.py DEFAULT_DIR).

Everything goes through a directory fd, never a path: underlayd opens the dir once at start and
its workers inherit that fd, so a worker that has entered a caller's mount namespace (where the
agent's path may not exist) still reads and writes the agent's records.

A record is written whole (temporary file, fsync, rename, fsync of the dir) before ADD answers:
a lease a pod uses survives a crash of anything. One lock, on the dir itself, orders the writers
(ADD, DEL, GC in workers; the renewer in the agent): it is held for a file operation only, never
across a DHCP exchange, so a renewal's rewrite never resurrects a record DEL has just removed.
"""

import contextlib
import fcntl
import hashlib
import json
import os

from cni import files, locks
from ipam.dhcp.client import Options
from ipam.dhcp.lease import Lease

SUFFIX = ".json"
LOCK_TIMEOUT = 10.0


def attachment_digest(network, container_id, ifname):
    """32 bytes naming one attachment: its records' names and its DHCP identity derive from them."""
    return hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).digest()


def record_name(network, container_id, ifname, family):
    """The file of one attachment's lease of one family: fixed, so DEL finds it without a scan."""
    return f"v{family}-{attachment_digest(network, container_id, ifname)[:16].hex()}{SUFFIX}"


def open_dir(path):
    """The dhcp dir's fd (created root's, 0700, when missing)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@contextlib.contextmanager
def locked(dir_fd, timeout=LOCK_TIMEOUT):
    """The records' lock, waiting at most `timeout` seconds (code 11 after); timeout None: not at
    all (BlockingIOError when held: the agent's loop never waits). Its own open of the dir: a flock
    is per open file, and the workers share the agent's."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            locks.lock(fd, timeout, "the dhcp lease records' lock")
        yield
    finally:
        os.close(fd)


def names(dir_fd):
    """The record files in the dir (a killed writer's temporary file is none)."""
    return sorted(n for n in os.listdir(dir_fd) if n.endswith(SUFFIX) and not n.startswith("."))


def read(dir_fd, name):
    """(Lease, Options) of record `name`; None when there is none. ValueError: not a record we can read."""
    try:
        fd = os.open(name, os.O_RDONLY | files.NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    try:
        record = json.loads(data)
        return Lease.from_json(record), options_from_json(record.get("options") or {})
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ValueError(f"lease record {name}: {e}") from None


def write(dir_fd, name, lease, options):
    """Write the record whole and durably (the caller holds the lock): the lease, and the options its
    renewals send (the config's, which the agent does not read)."""
    record = dict(lease.to_json(), options=options_to_json(options))
    files.replace(name, json.dumps(record, sort_keys=True).encode(), dir_fd=dir_fd, sync=True)
    os.fsync(dir_fd)


def options_to_json(options):
    return {"request": list(options.request), "send": [[code, value.hex()] for code, value in options.send],
            "broadcast": options.broadcast, "prefixlen6": options.prefixlen6}


def options_from_json(d):
    return Options(request=tuple(int(c) for c in d.get("request", ())),
                   send=tuple((int(c), bytes.fromhex(v)) for c, v in d.get("send", ())),
                   broadcast=bool(d.get("broadcast", True)), prefixlen6=int(d.get("prefixlen6", 64)))


def remove(dir_fd, name):
    """Forget a record (the caller holds the lock); one already gone is fine."""
    files.remove(name, dir_fd)
    os.fsync(dir_fd)
