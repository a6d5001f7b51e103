"""Bounded lock waits: a store lock held by a hung process gives code 11 "try again
later" naming the holder's PID within lockTimeout, never an endless wait."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.reliability.node import Audit

pytestmark = pytest.mark.root

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def holder(node):
    """Start a process holding <dataDir>/<network>/lock for `seconds`; killed at teardown."""
    procs = []

    def hold(network, seconds=600):
        os.makedirs(node.net_dir(network), exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLD, os.path.join(node.net_dir(network), "lock"),
                                 str(seconds)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "locked\n"
        return proc

    try:
        yield hold
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def try_again(out, pid, timeout):
    assert out.cni_code == 11, out
    assert "try again later" in out.json["msg"] and f"held by pid {pid}" in out.json["msg"], out
    assert f"{timeout:g}s" in out.json["msg"], out


@pytest.mark.parametrize("timeout", [0.5, 2])
def test_every_verb_gives_up_after_lock_timeout(node, holder, timeout):
    conf = node.conf(lockTimeout=timeout)
    pod, = node.add_pods(1)
    added = node.run("ADD", conf, "c0", pod, "net0")
    assert added.ok
    hung = holder("rel")
    calls = {
        "ADD": node.start("ADD", conf, "c1", pod),
        "DEL": node.start("DEL", conf, "c0", pod, "net0"),
        "CHECK": node.start("CHECK", dict(conf, prevResult=added.json), "c0", pod, "net0"),
        "GC": node.start("GC", dict(conf, **{"cni.dev/valid-attachments": []})),
    }
    for verb, call in calls.items():
        try_again(call.wait(), hung.pid, timeout)
        # waited the whole timeout (the message names it); the upper bound only rules out a hang
        assert timeout <= call.elapsed < timeout + 60, (verb, call.elapsed)
    hung.kill()
    hung.wait()
    # the failed ADD undid its link; the store is untouched
    Audit(node, ["rel"], {("rel", "c0", "net0"): pod}).assert_clean()
    assert node.run("ADD", conf, "c1", pod).ok   # the kernel dropped the dead holder's lock


def waiting_on(path):
    """Whether a process waits in the kernel's queue for the flock on `path` (a "->" line of /proc/locks)."""
    st = os.stat(path)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return any(fields[1] == "->" and fields[2] == "FLOCK" and fields[6] == where
                   for fields in (line.split() for line in f) if len(fields) > 6)


def test_a_short_hold_is_waited_for(node, holder):
    """The DEL is seen queued on the held lock, and succeeds once the holder lets go: it waited
    (an order of events, not a duration, so no load on the machine changes the outcome)."""
    conf = node.conf(lockTimeout=600)
    pod, = node.add_pods(1)
    assert node.run("ADD", conf, "c0", pod).ok
    hung = holder("rel")
    call = node.start("DEL", conf, "c0", pod)
    deadline = time.monotonic() + 60
    while not waiting_on(os.path.join(node.net_dir("rel"), "lock")):
        assert call.proc.poll() is None and time.monotonic() < deadline, "the DEL never waited for the lock"
        time.sleep(0.01)
    hung.kill()
    hung.wait()
    assert call.wait().ok


@pytest.mark.in_process   # the plugin's own pid and state; tests/reliability/test_agent.py has the agent's
def test_a_plugin_hung_inside_the_lock_is_named(node):
    """A plugin stopped while it holds the lock (an ADD stuck after writing its lease)."""
    conf = node.conf(lockTimeout=1)
    a, b = node.add_pods(2)
    stuck = node.start("ADD", conf, "stuck", a, stop_at="add:after-lease")
    deadline = time.monotonic() + 30
    while open(f"/proc/{stuck.pid}/stat").read().split(") ")[1][0] != "T":
        assert time.monotonic() < deadline, "the plugin never stopped"
        time.sleep(0.02)
    try_again(node.run("ADD", conf, "other", b), stuck.pid, 1)
    os.kill(stuck.pid, signal.SIGKILL)        # the runtime's timeout
    assert stuck.wait().code == -9
    assert node.run("DEL", conf, "stuck", a).ok   # and its usual DEL
    assert node.run("ADD", conf, "other", b).ok
    Audit(node, ["rel"], {("rel", "other", "eth0"): b}).assert_clean()


def test_other_networks_are_not_held_up(node, holder):
    """Locks are per network: a hung holder on one leaves a network sharing the dataDir alone."""
    held, free = node.conf("rela", "10.77.0.0/24", lockTimeout=0.5), node.conf("relb", "10.78.0.0/24")
    pod, = node.add_pods(1)
    holder("rela")
    assert node.run("ADD", held, "c1", pod).cni_code == 11
    assert node.run("ADD", free, "c1", pod, "net1").ok


def test_holder_is_matched_by_device_and_inode(tmp_path, monkeypatch):
    """/proc/locks may list a lock on another filesystem's file with the same inode number first."""
    import builtins
    import fcntl
    import io

    from ipam.stores.lease_files import LeaseFiles
    store = LeaseFiles(str(tmp_path), "net")
    store.lock()
    st = os.fstat(store.lock_fd)
    ours = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    other = f"{os.major(st.st_dev) + 1:02x}:07:{st.st_ino}"
    fake = (f"1: FLOCK  ADVISORY  WRITE 4242 {other} 0 EOF\n"
            f"2: FLOCK  ADVISORY  WRITE {os.getpid()} {ours} 0 EOF\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **kw: io.StringIO(fake) if path == "/proc/locks"
                        else real_open(path, *a, **kw))
    try:
        assert store.lock_holder() == os.getpid()
    finally:
        fcntl.flock(store.lock_fd, fcntl.LOCK_UN)
        store.close()
