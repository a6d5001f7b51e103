"""The on-disk lease store of host-local, in the reference plugin's format.

Under `<dataDir>/<network>/`, exactly as containernetworking/plugins writes it:
  <ip>                  one file per lease, content "containerID\\r\\nifname"
                        (old versions wrote the container ID alone)
  last_reserved_ip.<N>  the last address handed out from range set N
  lock                  flock'ed for the whole of every operation

and one addition the reference ignores (it reads it but never matches it):
  .underlay-index/<containerID>@<ifname>   "containerID\\r\\nifname\\r\\n<ip>..." per attachment
  .underlay-index/.stamp                    the network directory's mtime after our last write

The index makes DEL, CHECK and GC O(attachment) instead of reading every lease.
It is trusted only while the directory's mtime equals the stamp: any write we did
not finish (a crash) or did not make (the reference plugin) changes the mtime,
and the index is rebuilt from the lease files.

Every file is reached through a directory fd with O_NOFOLLOW, so a symlink
planted in the data directory is refused rather than followed.
"""

import errno
import fcntl
import os
import time

from cni.contract import ERR_INVALID_CONFIG, ERR_IO, ERR_TRY_AGAIN, CniError

INDEX_DIR = ".underlay-index"
STAMP = ".stamp"
TMP_PREFIX = ".tmp-"
LAST_RESERVED = "last_reserved_ip."
LOCK = "lock"
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def io_error(what, err):
    if err.errno == errno.ELOOP:
        return CniError(ERR_IO, f"{what} is a symlink; refusing to follow it")
    return CniError(ERR_IO, f"{what}: {os.strerror(err.errno)}")


def open_dir(path, dir_fd=None, create=True):
    """Open (and create, 0700) a directory without following a symlink."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(path, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=dir_fd)


def index_name(container_id, ifname):
    # container IDs never hold '@' (CNI_CONTAINERID pattern), so the first '@' splits;
    # "id@" is a lease of an old version that recorded no ifname.
    return f"{container_id}@{ifname or ''}"


def lease_content(container_id, ifname):
    return f"{container_id}\r\n{ifname}"


def parse_owner(data):
    """Lease file content -> (containerID, ifname or None)."""
    text = data.decode(errors="replace").strip()
    if not text:
        return None
    container_id, _, ifname = text.partition("\r\n")
    return container_id.strip(), (ifname.strip() or None)


def looks_like_ip(name):
    return (name[:1].isalnum() and not name.startswith(LAST_RESERVED)
            and ("." in name or ":" in name) and name != LOCK)


class DiskStore:
    def __init__(self, data_dir, network, lock_timeout=10.0):
        if not os.path.isabs(data_dir):
            raise CniError(ERR_INVALID_CONFIG, f"ipam.dataDir: {data_dir!r} must be an absolute path")
        self.path = os.path.join(data_dir, network)
        self.lock_timeout = lock_timeout
        try:
            os.makedirs(os.path.dirname(data_dir.rstrip("/")) or "/", 0o755, exist_ok=True)
            data_fd = open_dir(data_dir)
            try:
                self.dir_fd = open_dir(network, dir_fd=data_fd)
            finally:
                os.close(data_fd)
            self.index_fd = open_dir(INDEX_DIR, dir_fd=self.dir_fd)
        except OSError as e:
            raise io_error(f"ipam.dataDir {self.path}", e) from None
        self.lock_fd = None

    def close(self):
        for fd in (self.index_fd, self.dir_fd, self.lock_fd):
            if fd is not None:
                os.close(fd)
        self.index_fd = self.dir_fd = self.lock_fd = None

    # -- locking ------------------------------------------------------------

    def __enter__(self):
        try:
            self.lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600, dir_fd=self.dir_fd)
        except OSError as e:
            raise io_error(f"lock file {self.path}/{LOCK}", e) from None
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.001
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.lock_holder()
                    raise CniError(ERR_TRY_AGAIN, f"try again later: {self.path}/{LOCK} is held"
                                   f"{f' by pid {holder}' if holder else ''} for over "
                                   f"{self.lock_timeout:g}s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
        try:
            self.ensure_index()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing drops the flock
            self.lock_fd = None
        self.close()

    def lock_holder(self):
        inode = os.fstat(self.lock_fd).st_ino
        try:
            with open("/proc/locks") as f:
                for line in f:
                    fields = line.split()
                    if "->" in fields:
                        continue  # a waiter, not the holder
                    if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                        return int(fields[4])
        except (OSError, ValueError):
            pass
        return None

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
        # fsync'ed before it gets its name: a lease file is never empty or partial.
        tmp = self._write_tmp(lease_content(container_id, ifname).encode(), self.dir_fd, sync=True)
        try:
            os.link(tmp, ip, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp, dir_fd=self.dir_fd)

    def owner(self, ip):
        data = self._read(ip)
        return None if data is None else parse_owner(data)

    def release(self, ip, container_id, ifname):
        """Remove the lease of ip if it still belongs to (container_id, ifname)."""
        owner = self.owner(ip)
        if owner is not None and owner[0] == container_id and owner[1] in (ifname, None):
            self._unlink(ip)

    def last_reserved(self, set_index):
        data = self._read(f"{LAST_RESERVED}{set_index}")
        return data.decode(errors="replace").strip() if data else None

    def set_last_reserved(self, set_index, ip):
        self._replace(f"{LAST_RESERVED}{set_index}", ip.encode())

    def lease_names(self):
        """The names of all lease files (listing only, no reads)."""
        return {name for name in os.listdir(self.dir_fd) if looks_like_ip(name)}

    def leases(self):
        """Every lease on disk: {ip: (containerID, ifname or None)}; a full scan."""
        result = {}
        for name in os.listdir(self.dir_fd):
            if looks_like_ip(name):
                data = self._read(name)
                if data is not None:
                    result[name] = parse_owner(data)
        return result

    # -- the attachment index -----------------------------------------------

    def ips_of(self, container_id, ifname):
        """Addresses leased to (container_id, ifname), including old id-only leases."""
        ips = []
        for name in (index_name(container_id, ifname), index_name(container_id, None)):
            data = self._read(name, self.index_fd)
            if data:
                ips += data.decode(errors="replace").split("\r\n")[2:]
        return [ip for ip in ips if ip]

    def record(self, container_id, ifname, ips):
        name = index_name(container_id, ifname)
        if ips:
            content = "\r\n".join([container_id, ifname or ""] + list(ips))
            self._replace(name, content.encode(), self.index_fd)
        else:
            self._unlink(name, self.index_fd)

    def forget(self, container_id, ifname):
        """Drop the index entries of (container_id, ifname), old id-only ones too."""
        for name in (index_name(container_id, ifname), index_name(container_id, None)):
            self._unlink(name, self.index_fd)

    def attachments(self):
        """{(containerID, ifname or None): [ip, ...]} from the index."""
        result = {}
        for name in os.listdir(self.index_fd):
            if name.startswith("."):
                continue
            data = self._read(name, self.index_fd)
            if data:
                lines = data.decode(errors="replace").split("\r\n")
                result[(lines[0], lines[1] or None)] = [ip for ip in lines[2:] if ip]
        return result

    def commit(self):
        """Mark the index as matching the lease files as they are now."""
        self._replace(STAMP, str(os.fstat(self.dir_fd).st_mtime_ns).encode(), self.index_fd)

    def ensure_index(self):
        stamp = self._read(STAMP, self.index_fd)
        if stamp and stamp.decode() == str(os.fstat(self.dir_fd).st_mtime_ns):
            return
        self.rebuild_index()

    def rebuild_index(self):
        """Rebuild the index from the lease files; drop debris of killed writers."""
        for name in os.listdir(self.dir_fd):
            if name.startswith(TMP_PREFIX):
                self._unlink(name)  # only lock holders write temp files: these are orphans
        for name in os.listdir(self.index_fd):
            self._unlink(name, self.index_fd)
        owners = {}
        for ip, owner in self.leases().items():
            if owner is None:
                self._unlink(ip)  # an empty lease (reference #498) belongs to nobody
                continue
            owners.setdefault(owner, []).append(ip)
        for (container_id, ifname), ips in owners.items():
            self.record(container_id, ifname, ips)
        self.commit()
