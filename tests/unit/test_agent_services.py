"""underlayd's loop walking its services (cni/agent/service.py), on real pipes and a real child.

No test here waits on a clock: a service is due at 0 (long past) or never (math.inf), and
each walk ends when a service says so."""

import math
import os
import signal

from cni.agent import healing, metrics, options, server, service


class Probe:
    """A service of the test's own, as a new job would be one: its fds, its due time, what it saw."""

    def __init__(self, fds=(), due=math.inf, then=None):
        self._fds, self._due, self.then = list(fds), due, then
        self.runs = []

    def fds(self):
        return self._fds

    def due(self):
        return self._due

    def run(self, ready, now):
        self.runs.append(ready)
        for fd in ready:
            os.read(fd, 64)
        if self.then:
            self.then(self)

    def stop(self):
        pass


def until(done, checks=1000):
    """stopping() for walk: true once done() is, or after `checks` calls (a loop that never gets
    there then fails the test's assertions instead of spinning for ever)."""
    left = [checks]

    def stopping():
        left[0] -= 1
        return done() or left[0] < 0
    return stopping


def test_a_due_service_runs_and_one_not_due_does_not():
    r, w = os.pipe()
    due = Probe(due=0.0)
    idle = Probe(fds=[r])            # never due, its fd never written
    service.walk([idle, due], until(lambda: bool(due.runs)))
    assert due.runs == [set()] and idle.runs == []


def test_an_fd_ready_runs_the_service_that_waits_on_it():
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    first, second = Probe(fds=[r1]), Probe(fds=[r2])
    os.write(w2, b"x")
    service.walk([first, second], until(lambda: bool(second.runs)))
    assert second.runs == [{r2}] and first.runs == []


def test_a_new_periodic_service_is_walked_beside_the_agents_own(tmp_path):
    """A job the loop has never heard of (say, a lease renewer) joins the list, with the
    agent's own periodic jobs: the heartbeat touches the socket file, healing starts a run."""
    socket_file = tmp_path / "underlay.sock"
    socket_file.write_text("")
    os.utime(socket_file, (0, 0))

    class Renewer(Probe):
        def run(self, ready, now):
            super().run(ready, now)
            self._due = math.inf if len(self.runs) == 3 else 0.0   # due again at once, three times

    class Forks:
        """Children's fork, recorded instead of forking (the healer itself is tests/reliability's)."""
        def __init__(self):
            self.started = []

        def fork(self, work, on_exit=None, close=None, sigint=None):
            self.started.append(work)
            return 4242

    renewer, forks = Renewer(due=0.0), Forks()
    heal = healing.Healing(options.Options([]), forks, None, metrics.Metrics())
    service.walk([server.Heartbeat(str(socket_file)), heal, renewer], until(lambda: len(renewer.runs) == 3))
    assert renewer.runs == [set(), set(), set()]
    assert os.stat(socket_file).st_mtime != 0                     # beaten
    assert len(forks.started) == 1 and heal.healer == 4242        # one run at start, and it is still going
    assert heal.due() > 0 and heal.metrics.heal_runs == 1


def test_no_service_runs_once_the_agent_stops():
    stopping = []
    first = Probe(due=0.0, then=lambda probe: stopping.append(True))
    second = Probe(due=0.0)
    service.walk([first, second], until(lambda: bool(stopping)))
    assert first.runs == [set()] and second.runs == []


def test_a_childs_exit_wakes_the_loop_and_reaches_whoever_forked_it():
    children = service.Children()
    exits = []
    old_wakeup = signal.set_wakeup_fd(-1)
    old_chld = signal.getsignal(signal.SIGCHLD)
    children.catch_signals()
    try:
        pid = children.fork(lambda: os._exit(3), on_exit=lambda pid, status: exits.append((pid, status)), close=())
        service.walk([children], until(lambda: bool(exits)))
    finally:
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGCHLD, old_chld)
    assert exits == [(pid, exits[0][1])] and os.waitstatus_to_exitcode(exits[0][1]) == 3


def test_reports_reach_the_handler_of_their_kind():
    reports = service.Reports()
    seen = []
    reports.on("R", lambda pid, *fields: seen.append((pid, fields)))
    reports.report("R 12 lease 10.0.0.9")
    reports.report("Z 13")                       # a kind nobody handles: dropped
    service.walk([reports], until(lambda: bool(seen)))
    assert seen == [(12, ("lease", "10.0.0.9"))]
