"""Small file helpers written once: the boot ID and whole-file atomic writes.

Used by the lease store (ipam/stores/lease_files.py, ipam/stores/lease_index.py), the
kernel probe's cache (cni/net/kernel.py), the parents' records (cni/net/parents.py)
and cluster-ipam's network records (ipam/cluster.py).
"""

import _thread   # not threading: the cold path would pay its import
import os
import stat
import time

BOOT_ID = "/proc/sys/kernel/random/boot_id"
TMP_PREFIX = ".tmp-"      # a temporary file's name starts so: a killed writer's leftover is recognisable
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def boot_id():
    """This boot's ID; "" where /proc does not say (reboots then go unnoticed)."""
    try:
        fd = os.open(BOOT_ID, os.O_RDONLY | os.O_CLOEXEC)   # 3 syscalls, open()'s 8: read by every host-local call
    except OSError:
        return ""
    try:
        return os.read(fd, 256).decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def write_temp(data, dir_fd=None, directory="", sync=False, keep_open=False):
    """A fully written new file (0600, never through a symlink) in `directory` (relative to dir_fd
    if given); returns its path (with `keep_open`: (path, an fd open on it)). `sync`: fsync'ed."""
    path = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove(path, dir_fd)
        raise
    if keep_open:
        return path, fd
    os.close(fd)
    return path


_syncing = []   # [lock held until done, OSError or None] of each sync_in_background() not waited for


def sync_in_background(fds):
    """fsync each of `fds` in turn, then close them all, in a thread of its own: the caller goes
    on with other work and calls wait_synced() before it reports what they hold as written."""
    done = _thread.allocate_lock()
    done.acquire()
    job = [done, None]

    def run():
        try:
            for fd in fds:
                os.fsync(fd)
        except OSError as e:
            job[1] = e
        finally:
            for fd in fds:
                os.close(fd)
            done.release()
    try:
        _thread.start_new_thread(run, ())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    _syncing.append(job)


def wait_synced():
    """Wait until every sync_in_background() is done; raise the first OSError one met."""
    error = None
    while _syncing:
        job = _syncing.pop(0)
        job[0].acquire()
        error = error or job[1]
    if error is not None:
        raise error


def replace(path, data, dir_fd=None, sync=False):
    """Write a whole file atomically: a temporary file beside it, renamed over `path`. Readers see
    the old content or the new, never a part. Not fsync'ed unless `sync`."""
    tmp = write_temp(data, dir_fd, os.path.dirname(path), sync)
    try:
        os.rename(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        remove(tmp, dir_fd)
        raise


def overwrite(path, data, dir_fd=None):
    """Write a small file in place, where a torn one is harmless (read under the store's lock, never
    fsync'ed, a hint or checked: last_reserved_ip.N, the index's stamp). Cheaper than replace() once
    the file exists: ext4 starts writing back the new file of a rename over an old one (0.05 ms idle,
    ~0.2 ms on a busy disk). One pwrite is whole or not at all against a kill; a kill before the
    truncate leaves the old tail after a shorter new text. Anything but a regular file with one link
    (a planted symlink, hard link, FIFO or directory) is replaced as replace() does, never written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | NOFOLLOW, 0o600, dir_fd=dir_fd)
    except OSError:
        return replace(path, data, dir_fd)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            os.pwrite(fd, data, 0)
            if st.st_size > len(data):
                os.ftruncate(fd, len(data))
            return
    finally:
        os.close(fd)
    replace(path, data, dir_fd)


def replace_if_changed(path, data, dir_fd=None):
    """replace() unless `path` holds `data` already: what is written the same on every call (once
    per ADD) then costs one small read, not a write and a rename. True if it wrote."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        old = None   # missing, a symlink, unreadable: written anew (the rename replaces a symlink itself)
    else:
        try:
            old = os.read(fd, len(data) + 1)
        finally:
            os.close(fd)
    if old == data:
        return False
    replace(path, data, dir_fd)
    return True


def remove(path, dir_fd=None):
    """Unlink a file; one already gone is fine."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
