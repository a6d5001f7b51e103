"""The on-disk lease store of host-local, in the reference plugin's format.

Under `<dataDir>/<network>/`, exactly as containernetworking/plugins writes it:
  <ip>                  one file per lease, content "containerID\\r\\nifname"
                        (old versions wrote the container ID alone)
  last_reserved_ip.<N>  the last address handed out from range set N
  lock                  flock'ed for the whole of every operation

and one addition the reference ignores (it reads it but never matches it):
  .underlay-index/<containerID>@<ifname>   "containerID\\r\\nifname\\r\\nnetns\\r\\n<ip>..." per attachment
  .underlay-index/.stamp                    "2 <mtime> <boot>": the index format, the network
                                            directory's mtime as our last commit left it, the boot ID

The index makes DEL, CHECK and GC O(attachment) instead of reading every lease.
It is trusted only while the directory's mtime equals the stamp: any write we did
not finish (a crash) or did not make (the reference plugin) changes the mtime,
and the index is rebuilt from the lease files. An index file that does not parse
(torn by a power loss: index writes are not fsync'ed) rebuilds it too. Lease
files are the truth; the index only ever names them.

Healing after a reboot: the index records the netns path of each attachment our
ADD made, and the stamp the boot ID (/proc/sys/kernel/random/boot_id) it was
written under. The first operation after a new boot rebuilds the index and
releases the leases of attachments whose netns no longer exists (no pod survives
a reboot; a netns path that still opens is kept all the same). Leases with no
recorded netns (written by the reference plugin, or by a runtime that gave no
CNI_NETNS) are kept and left to GC.

Everything under the data directory is reached through a directory fd with
O_NOFOLLOW, so a symlink planted there is refused (directories) or skipped
(leases) rather than followed. The data directory itself must not be a symlink
either: whoever can write its parent (a dataDir under /tmp, say) could otherwise
point the root-run store anywhere. Its parents are resolved as usual.
"""

import errno
import ipaddress
import os
import re
import stat
import time

from cni import locks
from cni.contract import ERR_INVALID_CONFIG, ERR_IO, CniError, check_container_id, check_ifname

INDEX_DIR = ".underlay-index"
STAMP = ".stamp"
INDEX_FORMAT = "2"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
BOOT_ID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TMP_PREFIX = ".tmp-"
LAST_RESERVED = "last_reserved_ip."
LOCK = "lock"
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


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


def index_name(container_id, ifname):
    # container IDs never hold '@' (CNI_CONTAINERID pattern), so the first '@' splits;
    # "id@" is a lease of an old version that recorded no ifname.
    return f"{container_id}@{ifname or ''}"


def index_content(container_id, ifname, ips, netns=None):
    return "\r\n".join([container_id, ifname or "", netns or ""] + list(ips)).encode()


def parse_index(name, data):
    """An index file -> (containerID, ifname or None, netns, [ip, ...]); None if it is torn."""
    lines = data.decode(errors="replace").split("\r\n") if data else []
    if len(lines) < 4 or index_name(lines[0], lines[1] or None) != name or not all(map(is_ip, lines[3:])):
        return None
    return lines[0], lines[1] or None, lines[2], lines[3:]


def current_boot_id():
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""  # no /proc: reboots go unnoticed, GC still heals


def parse_stamp(data):
    """(format, mtime, boot ID or "-") of the stamp; Nones for a missing or torn one
    (a torn stamp is no proof of a reboot)."""
    fields = data.decode(errors="replace").split() if data else []
    if len(fields) == 3 and fields[0] == INDEX_FORMAT and fields[1].isdigit() and \
            (fields[2] == "-" or BOOT_ID_FORM.match(fields[2])):
        return tuple(fields)
    return None, None, None


def netns_gone(path):
    """True only when `path` is certainly no network namespace any more."""
    from cni import netns  # only after a reboot: keeps it off the common path
    try:
        os.close(netns.open_netns(path))
    except (netns.NetnsNotFound, netns.NotANetns):
        return True
    except netns.NetnsError:
        return False  # unreadable is not gone
    return False


class TornIndex(Exception):
    pass


def lease_content(container_id, ifname):
    return f"{container_id}\r\n{ifname}"


def parse_owner(data):
    """Lease file content -> (containerID, ifname or None); None for an empty file."""
    text = data.decode(errors="replace").strip()
    if not text:
        return None
    container_id, _, ifname = text.partition("\r\n")
    return container_id.strip(), (ifname.strip() or None)


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


def indexable(owner):
    """Only owners the CNI rules allow get index files: a lease's content must never pick a path."""
    container_id, ifname = owner
    try:
        check_container_id(container_id)
        if ifname is not None:
            check_ifname(ifname)
        return True
    except CniError:
        return False


class DiskStore:
    def __init__(self, data_dir, network, lock_timeout=10.0):
        if not os.path.isabs(data_dir):
            raise CniError(ERR_INVALID_CONFIG, f"ipam.dataDir: {data_dir!r} must be an absolute path")
        self.path = os.path.join(data_dir, network)
        self.lock_timeout = lock_timeout
        data_dir = data_dir.rstrip("/") or "/"   # "link/" would resolve the symlink despite O_NOFOLLOW
        try:
            os.makedirs(os.path.dirname(data_dir) or "/", 0o755, exist_ok=True)
            data_fd = open_dir(data_dir)
        except OSError as e:
            raise io_error(f"ipam.dataDir {data_dir}", e) from None
        try:
            try:
                self.dir_fd = open_dir(network, dir_fd=data_fd)
            finally:
                os.close(data_fd)
            self.index_fd = open_dir(INDEX_DIR, dir_fd=self.dir_fd)
        except OSError as e:
            raise io_error(f"ipam.dataDir {self.path}", e) from None
        self.lock_fd = None
        self.lease_tmp = None  # (owner, name): one fsync'ed lease body, linked to each address tried
        self.boot_id = ""      # the boot the index is stamped for

    def close(self):
        for fd in (self.index_fd, self.dir_fd, self.lock_fd):
            if fd is not None:
                os.close(fd)
        self.index_fd = self.dir_fd = self.lock_fd = None

    # -- locking ------------------------------------------------------------

    def __enter__(self):
        try:
            self.lock()
            self.ensure_index()
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def lock(self):
        try:
            self.lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600, dir_fd=self.dir_fd)
        except OSError as e:
            raise io_error(f"lock file {self.path}/{LOCK}", e) from None
        locks.lock(self.lock_fd, self.lock_timeout, f"{self.path}/{LOCK}")

    def __exit__(self, exc_type=None, exc=None, tb=None):
        try:
            if self.dir_fd is not None:
                self._drop_lease_tmp()
        except OSError:
            pass  # an orphan temp file is removed by the next rebuild
        finally:
            self.close()  # closing the lock fd drops the flock
        if isinstance(exc, OSError):
            # a write the kernel refused (ENOSPC, EROFS, EIO...) is an I/O error, not an internal one
            raise io_error(f"host-local store {self.path}", exc) from exc
        return False

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

    def _write_tmp(self, data, dir_fd, sync=False):
        """A fully written temporary file in dir_fd; returns its name."""
        name = f"{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=dir_fd)
        try:
            os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return name

    def _replace(self, name, data, dir_fd=None):
        """Atomically write a whole file: temp file, rename. Not fsync'ed: a torn
        index, stamp or last_reserved_ip after a power loss only costs a rebuild."""
        dir_fd = self.dir_fd if dir_fd is None else dir_fd
        tmp = self._write_tmp(data, dir_fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _unlink(self, name, dir_fd=None):
        try:
            os.unlink(name, dir_fd=self.dir_fd if dir_fd is None else dir_fd)
        except FileNotFoundError:
            pass

    # -- leases -------------------------------------------------------------

    def reserve(self, ip, container_id, ifname):
        """Create the lease file for ip; False if it exists. Never leaves a partial file."""
        # The body is written and fsync'ed once under a temporary name, then hard-linked
        # to each address tried: a lease file is never empty or partial, and a nearly
        # full range costs one fsync, not one per address probed.
        owner = (container_id, ifname)
        if self.lease_tmp is None or self.lease_tmp[0] != owner:
            self._drop_lease_tmp()
            body = lease_content(container_id, ifname).encode()
            self.lease_tmp = (owner, self._write_tmp(body, self.dir_fd, sync=True))
        try:
            os.link(self.lease_tmp[1], ip, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd, follow_symlinks=False)
            return True
        except FileExistsError:
            return False

    def _drop_lease_tmp(self):
        if self.lease_tmp is not None:
            self._unlink(self.lease_tmp[1])
            self.lease_tmp = None

    def owner(self, ip):
        """(containerID, ifname or None) of a lease; None if there is none we can read."""
        try:
            data = self._read(ip)
        except CniError:
            return None  # a symlink or an unreadable file: nobody we could name
        return None if data is None else parse_owner(data)

    def release(self, ip, container_id, ifname):
        """Remove the lease of ip if it still belongs to (container_id, ifname)."""
        owner = self.owner(ip)
        if owner is not None and owner[0] == container_id and owner[1] in (ifname, None):
            self._unlink(ip)

    def last_reserved(self, set_index):
        """The address last handed out from a range set: only a hint, so unreadable is None."""
        try:
            data = self._read(f"{LAST_RESERVED}{set_index}")
        except CniError:
            return None
        return data.decode(errors="replace").strip() if data else None

    def set_last_reserved(self, set_index, ip):
        self._replace(f"{LAST_RESERVED}{set_index}", ip.encode())

    def lease_names(self):
        """The names of all lease files (listing only, no reads)."""
        return {name for name in os.listdir(self.dir_fd) if looks_like_ip(name)}

    def leases(self):
        """Every lease on disk: {ip: (containerID, ifname or None) or None if empty}; a full scan.
        Only regular files named by an IP count: symlinks and stray files are never read."""
        result = {}
        with os.scandir(self.dir_fd) as entries:
            for entry in entries:
                if looks_like_ip(entry.name) and entry.is_file(follow_symlinks=False) and is_ip(entry.name):
                    data = self._read(entry.name)
                    if data is not None:
                        result[entry.name] = parse_owner(data)
        return result

    # -- the attachment index -----------------------------------------------

    def _entry(self, name):
        """The parsed index file `name`, None if there is none; TornIndex if it does not parse."""
        data = self._read(name, self.index_fd)
        if data is None:
            return None
        entry = parse_index(name, data)
        if entry is None:
            raise TornIndex(name)
        return entry

    def _rebuilt_if_torn(self, read):
        try:
            return read()
        except TornIndex:
            self.rebuild_index()
            return read()

    def ips_of(self, container_id, ifname):
        """Addresses leased to (container_id, ifname), including old id-only leases."""
        def read():
            entries = [self._entry(index_name(container_id, i)) for i in (ifname, None)]
            return [ip for entry in entries if entry for ip in entry[3]]
        return self._rebuilt_if_torn(read)

    def record(self, container_id, ifname, ips, netns=None):
        """Index the addresses of (container_id, ifname), with its netns path when it is absolute."""
        name = index_name(container_id, ifname)
        if ips:
            netns = netns if netns and netns.startswith("/") and "\r" not in netns and "\n" not in netns else None
            self._replace(name, index_content(container_id, ifname, ips, netns), self.index_fd)
        else:
            self._unlink(name, self.index_fd)

    def forget(self, container_id, ifname):
        """Drop the index entries of (container_id, ifname), old id-only ones too."""
        for name in (index_name(container_id, ifname), index_name(container_id, None)):
            self._unlink(name, self.index_fd)

    def entries(self):
        """{(containerID, ifname or None): (netns, [ip, ...])} from the index."""
        def read():
            result = {}
            for name in os.listdir(self.index_fd):
                if not name.startswith("."):
                    entry = self._entry(name)
                    if entry:
                        result[entry[:2]] = entry[2:]
            return result
        return self._rebuilt_if_torn(read)

    def attachments(self):
        """{(containerID, ifname or None): [ip, ...]} from the index."""
        return {owner: ips for owner, (_, ips) in self.entries().items()}

    def commit(self):
        """Mark the index as matching the lease files as they are now."""
        self._drop_lease_tmp()
        # The kernel may stamp directory changes with a clock that ticks only every few
        # ms, so a change made right after ours (the reference plugin; a writer of ours
        # that then crashed) could leave the mtime as it is now. Set it 1 ns into the
        # past and stamp that: any later change gets a newer time and is noticed.
        st = os.fstat(self.dir_fd)
        os.utime(self.dir_fd, ns=(st.st_atime_ns, st.st_mtime_ns - 1))
        # stamp what the filesystem stored: one with coarser times rounds down further
        stamp = f"{INDEX_FORMAT} {os.fstat(self.dir_fd).st_mtime_ns} {self.boot_id or '-'}"
        self._replace(STAMP, stamp.encode(), self.index_fd)

    def ensure_index(self):
        now = current_boot_id()
        _, mtime, boot = parse_stamp(self._read(STAMP, self.index_fd))
        if mtime == str(os.fstat(self.dir_fd).st_mtime_ns) and boot == (now or "-"):
            self.boot_id = now
            return
        rebooted = boot not in (None, "-") and now and boot != now
        # a new boot is stamped only once healed: a kill in between heals again next time
        self.boot_id = boot if rebooted else now
        self.rebuild_index()   # after a power loss the index may have lost files: always rebuild
        if rebooted:
            self.reclaim_dead_netns()
            self.boot_id = now
            self.commit()

    def reclaim_dead_netns(self):
        """After a reboot: release the leases of attachments whose netns is gone."""
        for (container_id, ifname), (netns, ips) in self.entries().items():
            if netns and netns_gone(netns):
                for ip in ips:
                    self.release(ip, container_id, ifname)
                self.forget(container_id, ifname)

    def rebuild_index(self):
        """Rebuild the index from the lease files; drop debris of killed writers.
        Index files already right are left as they are (a crash touches a few), and
        the netns paths recorded survive."""
        for name in os.listdir(self.dir_fd):
            if name.startswith(TMP_PREFIX):
                self._unlink(name)  # only lock holders write temp files: these are orphans
        old = {}
        for name in os.listdir(self.index_fd):
            if name == STAMP:
                continue
            try:
                old[name] = None if name.startswith(".") else parse_index(name, self._read(name, self.index_fd))
            except (CniError, OSError):
                old[name] = None  # a symlink or a directory planted here
            if old[name] is None:
                self._unlink(name, self.index_fd)
        owners = {}
        for ip, owner in self.leases().items():
            if owner is None:
                self._unlink(ip)  # an empty lease (reference #498) belongs to nobody
            elif indexable(owner):
                owners.setdefault(owner, []).append(ip)
            # else: a lease no CNI runtime could have written; it stays taken, untouched
        for (container_id, ifname), ips in owners.items():
            name = index_name(container_id, ifname)
            entry = old.pop(name, None)
            if entry is not None and sorted(entry[3]) == sorted(ips):
                continue
            # written in place, not via rename: the stamp comes last, so a rebuild cut
            # short (even in the middle of a file) is redone by the next operation
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o600, dir_fd=self.index_fd)
            try:
                os.write(fd, index_content(container_id, ifname, ips, entry[2] if entry else None))
            finally:
                os.close(fd)
        for name in old:
            self._unlink(name, self.index_fd)  # no lease left for it
        self.commit()
