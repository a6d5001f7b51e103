"""What the agent's parts share: the Service protocol and the loop that walks the services,
the agent's children and its report pipe (both services themselves), and log().

A service is one job of the agent's own process (the workers of the socket, the heartbeat,
healing, scrapes, the textfile...). Each says which fds it waits on and when it is next due;
walk() polls all their fds until the nearest due time, then runs each service one of whose
fds is ready or whose time has come. A new job (a DHCP lease renewer) is one more service in
the list cni/agent/__init__.py builds: nothing here changes.
"""

import math
import os
import select
import signal
import time
from typing import Iterable, Protocol


class Service(Protocol):
    def fds(self) -> Iterable[int]:
        """The fds whose readability wakes this service (none: it runs only when due)."""

    def due(self) -> float:
        """When it next wants to run, on time.monotonic()'s clock (math.inf: only when an fd is ready)."""

    def run(self, ready: set, now: float) -> None:
        """Its work, never blocking: `ready` holds which of its fds are readable (empty: it was due)."""

    def stop(self) -> None:
        """The agent stops: let go, finish (called once the loop is over, in the list's order)."""


def walk(services, stopping):
    """Run `services` until stopping() says so: wait on every fd they name, at most until the
    nearest due time, then run each service whose fd is ready or whose time has come (a service
    made due by one before it in the list runs in the same pass)."""
    while not stopping():
        poller, owned = select.poll(), {}
        for service in services:
            owned[id(service)] = set(service.fds())
            for fd in owned[id(service)]:
                poller.register(fd, select.POLLIN)
        nearest = min((service.due() for service in services), default=math.inf)
        timeout = None if nearest == math.inf else max(0.0, nearest - time.monotonic()) * 1000
        ready = {fd for fd, _ in poller.poll(timeout)}
        now = time.monotonic()
        for service in services:
            if stopping():
                break
            mine = ready & owned[id(service)]
            if mine or service.due() <= now:
                service.run(mine, now)


def log(message):
    try:
        os.write(2, f"underlayd: {message}\n".encode(errors="replace"))
    except OSError:
        pass


class Children:
    """The agent's child processes: forked by the services, reaped here when SIGCHLD wakes the
    loop (through the signal wakeup pipe, its fd), each exit handed to whoever forked it."""

    def __init__(self):
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.exits = {}        # pid -> on_exit(pid, status)
        self.withheld = []     # what a background child must not hold: the agent's listening socket
        self.agent_only = []   # functions giving fds no child may hold (the renewer's pod netns: a child's
                               # copy would keep a deleted netns alive)

    def catch_signals(self):
        """Every signal writes to the wakeup pipe: SIGCHLD wakes the loop to reap, SIGTERM to stop."""
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def fork(self, work, on_exit=None, close=None, sigint=signal.SIG_DFL):
        """A child that runs `work` with default signals, without the fds in `close` (default:
        the withheld ones), then exits (0 if `work` returned); its pid, on_exit called once reaped."""
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, sigint)
                for fd in self.withheld if close is None else close:
                    os.close(fd)
                for fds in self.agent_only:
                    for fd in fds():
                        os.close(fd)
                work()
                os._exit(0)
            finally:
                os._exit(1)
        if on_exit is not None:
            self.exits[pid] = on_exit
        return pid

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            on_exit = self.exits.pop(pid, None)
            if on_exit is not None:
                on_exit(pid, status)

    def fds(self):
        return [self.wake_r]

    def due(self):
        return math.inf

    def run(self, ready, now):
        try:
            os.read(self.wake_r, 512)
        except BlockingIOError:
            pass
        self.reap()

    def stop(self):
        pass


class Reports:
    """The report pipe: a child (a worker, the healer) writes one line per event, the agent
    reads them here and hands each to the handler of its kind ("B": a spare took a caller,
    "D": an invocation done, ...): handler(pid, *fields)."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.handlers = {}
        self.buffer = b""

    def on(self, kind, handler):
        self.handlers[kind] = handler

    def report(self, line):
        """In a child: one line to the agent."""
        try:
            os.write(self.write_fd, line.encode() + b"\n")   # < PIPE_BUF: written whole
        except OSError:
            pass   # the agent is gone (killed): its worker still finishes the invocation

    def read(self):
        try:
            self.buffer += os.read(self.read_fd, 65536)
        except BlockingIOError:
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            kind, pid, *rest = line.decode(errors="replace").split(" ")
            handler = self.handlers.get(kind)
            if handler is not None:
                handler(int(pid), *rest)

    def fds(self):
        return [self.read_fd]

    def due(self):
        return math.inf

    def run(self, ready, now):
        self.read()

    def stop(self):
        pass
