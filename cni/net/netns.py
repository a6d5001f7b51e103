"""Network namespaces: open and validate CNI_NETNS, and the one place that setns.

The plugins enter a pod's netns for a moment (`entered`); underlayd's worker and
healer take on another process's mount and network namespaces for good
(`enter_for_good`), as an exec'd plugin would have been born in them.

A plugin is a single-threaded process, so switching the whole process into
the pod's netns for a moment is safe (the Go plugins need a locked OS thread
for the same thing). Everything that must happen inside the pod (opening its
netlink socket, writing its /proc/sys/net sysctls) happens in `entered`;
netlink sockets keep the namespace they were opened in, so the rest of the
work uses them from outside.
"""

import errno
import fcntl
import os
import stat
from contextlib import contextmanager

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd (linux/nsfs.h)
SELF = "/proc/self/ns/net"


class NetnsError(Exception):
    pass


class NetnsNotFound(NetnsError):
    pass


class NotANetns(NetnsError):
    pass


class NotPermitted(NetnsError):
    """setns refused (EPERM): the process lacks CAP_SYS_ADMIN (a plugin run as non-root)."""


def open_netns(path):
    """An fd for the network namespace at `path`; never creates one."""
    # A namespace file (nsfs) is a regular file: anything else is refused before it
    # is opened, since opening a FIFO blocks and opening a device may have effects.
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotANetns(f"{path} is not a network namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise NetnsNotFound(f"network namespace {path} does not exist") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise NetnsError(f"cannot open network namespace {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise NotANetns(f"{path} is not a network namespace")
    return fd


def is_current(fd, own=SELF):
    """True if fd is the namespace this process is in (`own`: our /proc/self/ns file of fd's kind)."""
    mine, theirs = os.stat(own), os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


_setns = None


def libc_setns(fd, nstype):
    """setns(2) through libc (loaded on first use): 0, or -1 with ctypes_errno() set."""
    global _setns
    if _setns is None:
        import ctypes
        _setns = ctypes.CDLL(None, use_errno=True).setns
    return _setns(fd, nstype)


def setns(fd):
    if libc_setns(fd, CLONE_NEWNET) != 0:
        err = ctypes_errno()
        raise (NotPermitted if err == errno.EPERM else NetnsError)(f"setns: {os.strerror(err)}")


def unshare_net():
    """Move this process into a new, private network namespace (unshare(2) through libc; Python 3.11
    has no os.unshare). OSError when refused."""
    import ctypes
    if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes_errno(), "unshare")


def enter_for_good(fd, nstype, own):
    """setns() into the namespace `fd` (of kind nstype: CLONE_NEWNS, CLONE_NEWNET) unless it is ours
    already (`own`: our /proc/self/ns file of that kind); no way back. OSError when refused."""
    if is_current(fd, own):
        return
    if libc_setns(fd, nstype) != 0:
        raise OSError(ctypes_errno(), f"setns {own.rsplit('/', 1)[1]}")


def ctypes_errno():
    import ctypes
    return ctypes.get_errno() or errno.EINVAL


@contextmanager
def entered(fd):
    """Run the block inside the namespace `fd`, then return to our own."""
    home = os.open(SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def sysctl_path(family, ifname, key):
    # interface names may contain '.', which /proc/sys keeps as is
    return f"/proc/sys/net/{family}/conf/{ifname}/{key}"


def set_interface_sysctl(family, ifname, key, value):
    """FileNotFoundError when the interface (or the family: IPv6 disabled) has no such setting."""
    fd = os.open(sysctl_path(family, ifname, key), os.O_WRONLY | os.O_CLOEXEC)   # 3 syscalls, open()'s 8
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
