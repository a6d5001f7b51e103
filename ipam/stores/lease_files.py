"""host-local's lease files and their lock: the reference plugin's on-disk format.

Under `<dataDir>/<network>/`, exactly as containernetworking/plugins writes it:
  <ip>                  one file per lease, content "containerID\\r\\nifname"
                        (old versions wrote the container ID alone)
  last_reserved_ip.<N>  the last address handed out from range set N
  lock                  flock'ed for the whole of every operation

and underlay's own, which the reference never matches to a container (no container ID starts
with "!") nor hands out (the address's file exists):
  <ip>                  a conflict record instead of a lease (ipam/stores/holds.py):
                        "!conflict\\r\\n<mac>\\r\\n<since>\\r\\n<until>"
  .underlay-released    with reuseCooldown: "!released" then a line "<ip> <epoch>" per address
                        released and still cooling

Lease files are the truth; the attachment index (ipam/stores/lease_index.py) only ever
names them.

Everything under the data directory is reached through a directory fd with
O_NOFOLLOW, so a symlink planted there is refused (directories) or skipped
(leases) rather than followed. The data directory itself must not be a symlink
either: whoever can write its parent (a dataDir under /tmp, say) could otherwise
point the root-run store anywhere. Its parents are resolved as usual.
"""

import errno
import ipaddress
import os
import stat

from cni import files, locks
from cni.errors import ERR_INVALID_CONFIG, ERR_IO, CniError
from cni.files import NOFOLLOW
from ipam.stores.holds import Conflict, seconds_text

LAST_RESERVED = "last_reserved_ip."
LOCK = "lock"
CONFLICT = b"!conflict\r\n"
RELEASED = ".underlay-released"
RELEASED_HEAD = "!released"


def io_error(what, err):
    if err.errno == errno.ELOOP:
        return CniError(ERR_IO, f"{what} is a symlink; refusing to follow it")
    return CniError(ERR_IO, f"{what}: {os.strerror(err.errno)}")


def open_dir(path, dir_fd=None, follow=False):
    """Open a directory, creating it (0700) if missing; a symlink is refused unless `follow`."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        try:
            os.mkdir(path, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        return os.open(path, flags, dir_fd=dir_fd)
    except NotADirectoryError:
        # O_NOFOLLOW|O_DIRECTORY on a symlink fails with ENOTDIR: say what it is
        if not follow and stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
        raise


def lease_content(container_id, ifname):
    return f"{container_id}\r\n{ifname}"


def parse_owner(data):
    """Lease file content -> (containerID, ifname or None); None for an empty file."""
    text = data.decode(errors="replace").strip()
    if not text:
        return None
    container_id, _, ifname = text.partition("\r\n")
    return container_id.strip(), (ifname.strip() or None)


def conflict_content(conflict):
    return CONFLICT + "\r\n".join([conflict.mac, seconds_text(conflict.since), seconds_text(conflict.until)]).encode()


def parse_conflict(data):
    """A conflict record's Conflict; None if `data` is no conflict record (a torn one reads as
    held for ever from now: never handed out, the operator can give it back)."""
    if not data or not data.startswith(CONFLICT):
        return None
    fields = data[len(CONFLICT):].decode(errors="replace").split("\r\n")
    try:
        return Conflict(fields[0], float(fields[1]), float(fields[2]))
    except (IndexError, ValueError):
        return Conflict(fields[0] or "?", 0.0, float("inf"))


def looks_like_ip(name):
    """A cheap filter for listings: may be a lease file name (callers parse what they use)."""
    return (name[:1].isalnum() and not name.startswith(LAST_RESERVED)
            and ("." in name or ":" in name) and name != LOCK)


def is_ip(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class LeaseFiles:
    """The directory of one network: lease files, last_reserved_ip.N and the lock."""

    def __init__(self, data_dir, network, lock_timeout=10.0):
        if not os.path.isabs(data_dir):
            raise CniError(ERR_INVALID_CONFIG, f"ipam.dataDir: {data_dir!r} must be an absolute path")
        self.path = os.path.join(data_dir, network)
        self.lock_timeout = lock_timeout
        data_dir = data_dir.rstrip("/") or "/"   # "link/" would resolve the symlink despite O_NOFOLLOW
        try:
            try:
                data_fd = open_dir(data_dir)
            except FileNotFoundError:   # its parents are missing (the common case pays no makedirs)
                os.makedirs(os.path.dirname(data_dir) or "/", 0o755, exist_ok=True)
                data_fd = open_dir(data_dir)
        except OSError as e:
            raise io_error(f"ipam.dataDir {data_dir}", e) from None
        try:
            self.dir_fd = open_dir(network, dir_fd=data_fd)
        except OSError as e:
            raise io_error(f"ipam.dataDir {self.path}", e) from None
        finally:
            os.close(data_fd)
        self.lock_fd = None
        self.lease_tmp = None  # (owner, name, fd): one lease body, linked to each address tried

    def close(self):
        if self.lease_tmp is not None:
            os.close(self.lease_tmp[2])
            self.lease_tmp = None
        for fd in (self.dir_fd, self.lock_fd):
            if fd is not None:
                os.close(fd)
        self.dir_fd = self.lock_fd = None

    # -- locking ------------------------------------------------------------

    def lock(self, wait=True):
        """Take the store's lock, waiting at most lockTimeout. wait=False: only if the lock file exists
        and nobody holds it (False otherwise; nothing created)."""
        if self.lock_fd is None:
            try:
                self.lock_fd = os.open(LOCK, os.O_RDWR | (os.O_CREAT if wait else 0) | NOFOLLOW, 0o600,
                                       dir_fd=self.dir_fd)
            except FileNotFoundError as e:
                if not wait:
                    return False
                raise io_error(f"lock file {self.path}/{LOCK}", e) from None
            except OSError as e:
                raise io_error(f"lock file {self.path}/{LOCK}", e) from None
        if not wait:
            return locks.try_lock(self.lock_fd)
        locks.lock(self.lock_fd, self.lock_timeout, f"{self.path}/{LOCK}")
        return True

    def lock_holder(self):
        return locks.holder_pid(self.lock_fd)

    # -- small file helpers -------------------------------------------------

    def _read(self, name, dir_fd=None):
        try:
            fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=self.dir_fd if dir_fd is None else dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise io_error(f"{self.path}/{name}", e) from None
        try:
            return os.read(fd, 65536)
        finally:
            os.close(fd)

    def drop_debris(self):
        """Remove temporary files of killed writers (only lock holders write them)."""
        for name in os.listdir(self.dir_fd):
            if name.startswith(files.TMP_PREFIX):
                files.remove(name, self.dir_fd)

    # -- leases -------------------------------------------------------------

    def reserve(self, ip, container_id, ifname):
        """Create the lease file for ip; False if it exists. Never leaves a partial file."""
        # The body is written once under a temporary name, then hard-linked to each address
        # tried: a lease file is never empty or partial (a kill leaves the page cache as it
        # is). Once linked, the lease and then the directory (the link) are fsync'ed in the
        # background, beside the rest of the ADD, which waits for it before it answers
        # (files.wait_synced). A power loss before then may leave an empty lease: ADD had not
        # answered, and an empty lease is nobody's (lease_index.py rebuild_index).
        owner = (container_id, ifname)
        if self.lease_tmp is None or self.lease_tmp[0] != owner:
            self.drop_lease_tmp()
            body = lease_content(container_id, ifname).encode()
            self.lease_tmp = (owner, *files.write_temp(body, self.dir_fd, keep_open=True))
        try:
            os.link(self.lease_tmp[1], ip, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        files.sync_in_background([os.dup(self.lease_tmp[2]), os.dup(self.dir_fd)])
        return True

    def drop_lease_tmp(self):
        if self.lease_tmp is not None:
            files.remove(self.lease_tmp[1], self.dir_fd)
            os.close(self.lease_tmp[2])
            self.lease_tmp = None

    def owner(self, ip):
        """(containerID, ifname or None) of a lease; None if there is none we can read (or ip holds
        a conflict record: nobody's)."""
        try:
            data = self._read(ip)
        except CniError:
            return None  # a symlink or an unreadable file: nobody we could name
        return None if data is None or data.startswith(CONFLICT) else parse_owner(data)

    def release(self, ip, container_id, ifname):
        """Remove the lease of ip if it still belongs to (container_id, ifname); True if it did."""
        owner = self.owner(ip)
        if owner is not None and owner[0] == container_id and owner[1] in (ifname, None):
            files.remove(ip, self.dir_fd)
            return True
        return False

    # -- conflict records and release times ----------------------------------------

    def write_conflict(self, ip, conflict):
        """Turn the file of ip into a conflict record, in one rename (never a moment without either)."""
        files.replace(ip, conflict_content(conflict), self.dir_fd, sync=True)

    def conflict(self, ip):
        """The Conflict recorded at ip, or None."""
        try:
            return parse_conflict(self._read(ip))
        except CniError:
            return None

    def released(self):
        """{ip: release time} of .underlay-released (a torn line is skipped: that address just does not cool)."""
        try:
            data = self._read(RELEASED)
        except CniError:
            return {}
        found = {}
        for line in (data or b"").decode(errors="replace").split("\r\n")[1:]:
            ip, _, t = line.partition(" ")
            try:
                found[ip] = float(t)
            except ValueError:
                continue
        return found

    def write_released(self, released):
        if released:
            lines = [RELEASED_HEAD] + [f"{ip} {seconds_text(t)}" for ip, t in sorted(released.items())]
            files.replace(RELEASED, "\r\n".join(lines).encode(), self.dir_fd)
        else:
            files.remove(RELEASED, self.dir_fd)

    def unlink_lease(self, ip):
        files.remove(ip, self.dir_fd)

    def last_reserved(self, set_index):
        """The address last handed out from a range set: only a hint, so unreadable is None."""
        try:
            data = self._read(f"{LAST_RESERVED}{set_index}")
        except CniError:
            return None
        return data.decode(errors="replace").strip() if data else None

    def set_last_reserved(self, set_index, ip):
        # in place, not fsync'ed (as the reference writes it): a torn one only moves round-robin
        files.overwrite(f"{LAST_RESERVED}{set_index}", ip.encode(), self.dir_fd)

    def lease_names(self):
        """The names of all lease files (listing only, no reads)."""
        return {name for name in os.listdir(self.dir_fd) if looks_like_ip(name)}

    def leases(self):
        """Every lease on disk: {ip: (containerID, ifname or None) or None if empty}; a full scan."""
        return self.records()[0]

    def records(self):
        """({ip: owner or None}, {ip: Conflict}): every lease (as leases()) and conflict record on
        disk; a full scan. Only regular files named by an IP count: symlinks and stray files are
        never read."""
        leases, conflicts = {}, {}
        with os.scandir(self.dir_fd) as entries:
            for entry in entries:
                if looks_like_ip(entry.name) and entry.is_file(follow_symlinks=False) and is_ip(entry.name):
                    data = self._read(entry.name)
                    if data is None:
                        continue
                    conflict = parse_conflict(data)
                    if conflict is not None:
                        conflicts[entry.name] = conflict
                    else:
                        leases[entry.name] = parse_owner(data)
        return leases, conflicts
