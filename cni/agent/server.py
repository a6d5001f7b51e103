"""The socket (cni/handoff.py, the protocol): where callers queue, the workers that accept
from it, and the heartbeat that tells waiting callers the agent is alive.

At most --workers invocations run at once; --spares workers are forked ahead of requests
and wait on the socket themselves, so a caller is accepted by a process ready to serve it.
More callers wait in the socket's listen queue (--queue).
"""

import math
import os
import select
import signal
import socket
import stat
import time

from cni import handoff
from cni.agent import phases, worker
from cni.agent.service import log

DRAIN_WAIT = 60.0        # SIGTERM: how long invocations in flight may still take


def unsafe_directory(directory):
    """Why someone other than root could replace a socket in `directory` (None: nobody can):
    it, or a directory above it, is not root's or is writable by group or others. Above it,
    a sticky directory (/tmp) is fine: others cannot rename what is not theirs there. Directories
    that do not exist yet are created root's, mode 0700. Both the path as written and where its
    symlinks lead are checked."""
    real = os.path.realpath(directory)
    for path in sorted({*ancestors(directory), *ancestors(real)}, key=len, reverse=True):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue   # we create it
        except OSError as e:
            return f"{path}: {e.strerror or e}"
        if st.st_uid != 0:
            return f"{path} belongs to uid {st.st_uid}, not root"
        own = path in (directory, real)
        if st.st_mode & 0o022 and (own or not st.st_mode & stat.S_ISVTX):
            return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def ancestors(path):
    """`path` and every directory above it, up to /."""
    out = [path]
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        out.append(path)
    return out


def bind(path, queue):
    """Listen on `path` (mode 0600, its directory made 0700); refuse a directory others could
    write to (a socket there could be replaced by theirs), or another agent answering there."""
    directory = os.path.dirname(path)
    if path == handoff.DEFAULT_SOCKET and os.path.isdir(directory):
        os.chmod(directory, 0o700)   # ours alone (a DaemonSet's hostPath makes it 0755)
    unsafe = unsafe_directory(directory)
    if unsafe:
        raise SystemExit(f"underlayd: --socket {path}: {unsafe}; its directory and those above it must be "
                         "root's and writable by root alone (sticky ones above it excepted)")
    old = os.umask(0o077)   # the parents it creates too (makedirs gives them 0777 & ~umask)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    finally:
        os.umask(old)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise SystemExit(f"underlayd: {path} exists and is not a socket; not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1)
            probe.connect(path)
            raise SystemExit(f"underlayd: another agent answers on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)   # stale: left by an agent that was killed
        except OSError:
            raise SystemExit(f"underlayd: another agent holds {path}") from None
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)   # never reachable by others, not even for a moment
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(queue)
    listener.setblocking(False)
    return listener


def spare(listener, lifeline, report):
    """A worker forked ahead of requests: waits for a connection, serves it, exits.
    It exits too when the agent is gone (its lifeline pipe closes)."""
    worker.prepare(listener)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(lifeline, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if lifeline in events:
            os._exit(0)
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue   # another spare took it
        phases.mark("accepted")
        pid, uid = handoff.peer_of(conn)
        if uid != 0:
            log(f"refused a connection from pid {pid} (uid {uid}): only root is served")
            report(f"N {os.getpid()}")
            try:
                conn.send(handoff.REFUSED + b"only root is served")
            except OSError:
                pass
            conn.close()
            continue
        worker.serve(conn, report, listener, lifeline)


class Server:
    """The socket and its workers: keeps --spares of them forked (a service due whenever one is
    missing), counts them idle and busy from their reports and exits."""

    def __init__(self, options, children, reports, metrics):
        self.options, self.children, self.reports, self.metrics = options, children, reports, metrics
        self.idle, self.busy = set(), set()
        self.listener = None
        self.inode = None   # our socket file's, once bound
        reports.on("B", self.took_caller)

    def bind(self):
        self.listener = bind(self.options.socket, self.options.queue)
        self.inode = os.stat(self.options.socket).st_ino
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)
        self.children.withheld.append(self.listener.fileno())

    def took_caller(self, pid):
        if pid in self.idle:   # else reaped already: it served and exited meanwhile
            self.idle.discard(pid)
            self.busy.add(pid)

    def exited(self, pid, status):
        if pid in self.busy and os.WIFSIGNALED(status):
            self.metrics.killed += 1
            log(f"worker {pid} was killed by signal {os.WTERMSIG(status)} mid-request")
        self.idle.discard(pid)
        self.busy.discard(pid)

    def short_of_spares(self):
        return len(self.idle) < self.options.spares and len(self.idle) + len(self.busy) < self.options.workers

    def fds(self):
        return ()

    def due(self):
        return 0.0 if self.short_of_spares() else math.inf

    def run(self, ready, now):
        while self.short_of_spares():
            self.fork_spare()

    def fork_spare(self):
        children = self.children
        pid = children.fork(lambda: spare(self.listener, self.lifeline_r, self.reports.report), self.exited,
                            close=(self.reports.read_fd, self.lifeline_w, children.wake_r, children.wake_w),
                            sigint=signal.default_int_handler)
        self.idle.add(pid)

    def remove_socket(self):
        """Our socket file (not one another agent has put there since)."""
        try:
            if self.inode is not None and os.stat(self.options.socket).st_ino == self.inode:
                os.unlink(self.options.socket)
        except FileNotFoundError:
            pass

    def stop(self):
        """Stop accepting, remove our socket, let the invocations in flight finish."""
        self.remove_socket()
        self.listener.close()
        os.close(self.lifeline_w)    # idle spares exit
        deadline = time.monotonic() + DRAIN_WAIT
        while self.busy or self.idle:
            self.children.reap()
            self.reports.read()
            if time.monotonic() > deadline:
                log(f"{len(self.busy)} invocations still running at exit")
                break
            time.sleep(0.02)
        self.reports.read()


class Heartbeat:
    """Touches the socket file every handoff.HEARTBEAT: callers waiting in the queue see the
    agent alive (cni/handoff.py)."""

    def __init__(self, path):
        self.path = path
        self.beaten = -math.inf

    def fds(self):
        return ()

    def due(self):
        return self.beaten + handoff.HEARTBEAT

    def run(self, ready, now):
        self.beaten = now
        try:
            os.utime(self.path)
        except OSError:
            pass

    def stop(self):
        pass
