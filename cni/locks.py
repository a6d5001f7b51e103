"""An exclusive flock whose wait is bounded, shared by every store and record of underlay.

A plugin waiting forever on a lock held by a hung process hangs the runtime with
it; after `timeout` seconds it answers code 11 "try again later" instead, naming
the holder's PID so an operator can find it.
"""

import fcntl
import os
import signal

from cni.errors import ERR_TRY_AGAIN, CniError


class _WaitExpired(Exception):
    pass


def _expired(signum, frame):
    raise _WaitExpired()


def lock(fd, timeout, what):
    """flock(fd, LOCK_EX), waiting at most `timeout` seconds; `what` names the file in the error."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    # Wait in the kernel's queue (woken the moment the holder lets go), bounded
    # by a timer whose signal interrupts the wait.
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except _WaitExpired:
        holder = holder_pid(fd)
        raise CniError(ERR_TRY_AGAIN, f"try again later: {what} is held"
                       f"{f' by pid {holder}' if holder else ''} for over {timeout:g}s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def try_lock(fd):
    """flock(fd, LOCK_EX) if nobody holds it: True; False at once if someone does."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def unlock(fd):
    """Let go of a flock taken on fd, keeping fd open (to take it again)."""
    fcntl.flock(fd, fcntl.LOCK_UN)


def holder_pid(fd):
    """The PID holding a flock on fd's file, from /proc/locks; None if unknown."""
    st = os.fstat(fd)
    # the kernel's "%02x:%02x:%lu" (fs/locks.c): an inode number alone may be another filesystem's
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "->" in fields:
                    continue  # a waiter, not the holder
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == where:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None
