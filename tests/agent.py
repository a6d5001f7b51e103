"""underlayd for tests: started on a socket of its own, stopped (or killed) by the test.

From a checkout the agent runs under tests/reliability/killpoint.py, whose
points then fire in the worker serving a request that carries
UNDERLAY_KILL_AT (the wrappers read the environment at call time); with
UNDERLAY_BIN_DIR it is the bundle's `underlayd`.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests.plugins import ROOT

SERVED = re.compile(r"^underlayd: served (\S+) (\S+) exit (\d+) in [\d.]+ ms \(worker (\d+)(?:, trace (\w+))?\)$",
                    re.M)


@contextlib.contextmanager
def busy_cores():
    """Twice as many busy loops as this process may run on, running once it is entered (each has
    said so), killed when it is left: some task waits for a core all the while (PSI)."""
    spinners = []
    try:
        for _ in range(2 * len(os.sched_getaffinity(0))):
            spinners.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('up'); "
                                                                    "sys.stdout.flush()\nwhile True: pass"],
                                             stdout=subprocess.PIPE))
        for spinner in spinners:
            assert spinner.stdout.read(2) == b"up"
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
            spinner.stdout.close()


def new_traceparent():
    """A W3C trace context of its own (TRACEPARENT) for one test's plugin runs: the agent names its
    trace id in each served line, so a test counts its own runs, never one an earlier test left running."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def trace_of(traceparent):
    return traceparent.split("-")[1]


def agent_argv():
    bin_dir = os.environ.get("UNDERLAY_BIN_DIR")
    if bin_dir:
        return [os.path.join(bin_dir, "underlayd")]
    return [sys.executable, "-m", "tests.reliability.killpoint", "cni.agent"]


class Agent:
    """One underlayd process; `socket` is what UNDERLAY_SOCKET names for the plugins."""

    def __init__(self, *args, directory=None, command=None):
        self.own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="underlay-agent-")
        self.socket = os.path.join(self.directory, "underlay.sock")
        self.log_path = self.directory.rstrip("/") + ".log"   # beside: the agent makes the directory
        self.args = list(args)
        if "--config-dir" not in self.args:   # never the host's /etc/cni/net.d (its stores' locks)
            self.args += ["--config-dir", self.directory.rstrip("/") + ".no-configs"]
        if "--data-dir" not in self.args:   # nor the host's host-local stores (healed, and read by /metrics)
            self.args += ["--data-dir", self.directory.rstrip("/") + ".no-host-local"]
        if "--dhcp-dir" not in self.args:   # nor the host's dhcp lease records
            self.args += ["--dhcp-dir", self.directory.rstrip("/") + ".dhcp"]
        if "--cluster-data-dir" not in self.args:   # nor the networks the host's cluster-ipam recorded
            self.args += ["--cluster-data-dir", self.directory.rstrip("/") + ".no-cluster-ipam"]
        self.command = command or agent_argv()
        self.proc = None
        self.start()

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("UNDERLAY_KILL_AT", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command + ["--socket", self.socket] + self.args, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                         start_new_session=True)   # its own group: a test may stop it whole
        deadline = time.monotonic() + 30
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"underlayd did not start: {self.log()}")
            time.sleep(0.02)

    def answers(self):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1)
            probe.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def served(self, traceparent=None):
        """[(plugin, verb, exit code, worker pid)] of every invocation the agent has logged, or only
        of those whose caller had `traceparent`."""
        trace = trace_of(traceparent) if traceparent else None
        return [(p, v, int(c), int(w)) for p, v, c, w, t in SERVED.findall(self.log()) if trace in (None, t)]

    def wait_served(self, count, timeout=30, traceparent=None):
        """The served list once it has at least `count` entries (the log is written after the answer)."""
        deadline = time.monotonic() + timeout
        while len(self.served(traceparent)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.served(traceparent)

    def workers(self):
        """PIDs of the agent's children: its spares and busy workers, and a healing run or a scrape
        while one lasts (--heal-every 0 and no --metrics leave only the workers)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def signal_group(self, sig):
        """Send `sig` to the agent and every worker it forked (one process group)."""
        os.killpg(self.proc.pid, sig)

    def kill(self):
        """SIGKILL the agent's own process (its workers live on, spares exit)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        if self.own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            shutil.rmtree(self.directory.rstrip("/") + ".dhcp", ignore_errors=True)
            try:
                os.unlink(self.log_path)
            except FileNotFoundError:
                pass
