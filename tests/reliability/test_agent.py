"""underlayd's safety: who is served, bounded waits, kills, restarts, stale sockets, the limit.

Each test starts an agent of its own (tests/agent.py) in a temporary directory,
so it may stop, kill or restart it; the plugins find it through UNDERLAY_SOCKET.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from tests import plugins
from tests.agent import Agent, agent_argv, busy_cores
from tests.bundle import built_bin_dir
from tests.plugins import ROOT
from tests.reliability.node import Audit

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True, params=["python", "compiled"])
def client(request, monkeypatch):
    """Every case through both clients of the protocol: cni/handoff.py (the plugins run from
    Python) and cni/handoff.c (the bundle's plugin names, what a runtime execs)."""
    if request.param == "compiled":
        monkeypatch.setattr(plugins, "BIN_DIR", built_bin_dir(request))
    return request.param


@pytest.fixture
def agent(tmp_path):
    (tmp_path / "run").mkdir()
    a = Agent(directory=str(tmp_path / "run" / "underlay"))   # the agent makes this one
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def via(monkeypatch):
    """Route the plugin runs of this test (tests.plugins, the reliability Node) to `agent`."""
    def route(agent_or_path):
        monkeypatch.setattr(plugins, "AGENT_SOCKET", getattr(agent_or_path, "socket", agent_or_path))
    return route


def oplog(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def host_local_conf(tmp_path, log=None):
    conf = {"cniVersion": "1.1.0", "name": "agnet", "type": "macvlan",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "networks"),
                     "ranges": [[{"subnet": "10.88.0.0/24"}]]}}
    if log:
        conf.update(logFile=str(log), logLevel="debug")
    return conf


def leases(tmp_path):
    path = tmp_path / "networks" / "agnet"
    return sorted(n for n in os.listdir(path) if n[0].isdigit()) if path.exists() else []


def stopped_children(pid):
    """PIDs of `pid`'s children in state T (stopped)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    out = []
    for child in children:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "T":
                    out.append(child)
        except FileNotFoundError:
            pass
    return out


def wait_for(predicate, timeout=60, what="condition"):   # the timeout only catches a hang
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def queued(path):
    """Connections waiting in the accept queue of the socket listening on `path` (ss's Recv-Q)."""
    line = subprocess.run(["ss", "-xlnH", "src", path], capture_output=True, text=True, check=True).stdout
    return int(line.split()[2])


# -- who is served -----------------------------------------------------------------


def test_served_by_a_worker_of_the_agent(agent, via, tmp_path):
    via(agent)
    log = tmp_path / "op.log"
    out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path, log), netns="/run/netns/x")
    assert out.ok, out
    served = agent.wait_served(1)
    assert [s[:3] for s in served] == [("host-local", "ADD", 0)]
    line, = oplog(log)
    assert line["agent"] == "served by underlayd" and line["pid"] == served[0][3], line
    assert line["pid"] != os.getpid()


def test_socket_is_root_only(agent):
    st, parent = os.stat(agent.socket), os.stat(os.path.dirname(agent.socket))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(parent.st_mode) == 0o700 and parent.st_uid == 0


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# the socket's mode keeps nobody out already; this lets it reach the socket, so SO_PEERCRED is what refuses
DAC = ["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]

PEEK = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
print(s.recv(100).decode())
"""


def test_a_non_root_peer_is_refused(agent, tmp_path):
    out = subprocess.run(NOBODY + DAC + [sys.executable, "-I", "-c", PEEK, agent.socket],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out
    assert out.stdout.strip() == "Nonly root is served", out
    wait_for(lambda: "(uid 65534): only root is served" in agent.log(), what="the refusal in the agent's log")
    assert agent.served() == []


@pytest.fixture
def world_writable():
    path = tempfile.mkdtemp(prefix="uag-")
    os.chmod(path, 0o777)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_non_root_plugin_works_in_process(agent, via, world_writable):
    """Refused, the plugin does the work itself with its own privileges."""
    via(agent)
    tmp_path = world_writable
    log = tmp_path / "op.log"
    conf = host_local_conf(tmp_path, log)
    out = plugins.run_plugin("host-local", "ADD", conf, argv=NOBODY + DAC + plugins.plugin_argv("host-local"),
                             netns="/run/netns/x")
    assert out.ok, out
    line, = oplog(log)
    assert line["agent"].endswith("refused: only root is served"), line
    assert os.stat(tmp_path / "networks" / "agnet" / leases(tmp_path)[0]).st_uid == 65534
    assert agent.served() == []


# a listener that is not root's: it takes one connection, offers a worker ("R") as the agent would,
# and reports what the caller then sent (a forged answer would follow, had it been given a request)
IMPOSTOR = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(8)
print("listening", flush=True)
s.settimeout(60)
conn, _ = s.accept()
conn.settimeout(30)
try:
    conn.sendall(b"R")
except OSError:
    pass
got, fds = b"", 0
while True:
    try:
        data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(64))
    except OSError:
        break
    fds += sum(len(blob) // 4 for _, _, blob in ancdata)
    if not data:
        break
    got += data
print(json.dumps({"bytes": len(got), "fds": fds, "uid": __import__("os").getuid()}), flush=True)
"""


def test_a_listener_that_is_not_roots_gets_nothing_and_the_plugin_works_in_process(via, tmp_path, world_writable):
    """UNDERLAY_SOCKET naming a socket that a non-root process listens on: the plugin, root, sends it
    nothing (no environment, config, fds), takes no answer from it, and does the ADD itself."""
    path = world_writable / "underlay.sock"
    impostor = subprocess.Popen(NOBODY + [sys.executable, "-I", "-c", IMPOSTOR, str(path)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout.readline() == "listening\n"
        via(str(path))
        log = tmp_path / "op.log"
        out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path, log), netns="/run/netns/x")
        assert out.ok, out
        lease, = leases(tmp_path)
        assert [ip["address"] for ip in out.json["ips"]] == [f"{lease}/24"], out
        line, = oplog(log)
        assert line["agent"].startswith(f"{path} is not root's: its listener runs as uid 65534"), line
        received = json.loads(impostor.communicate(timeout=60)[0])
        assert received == {"bytes": 0, "fds": 0, "uid": 65534}, received
    finally:
        impostor.kill()
        impostor.wait()


# -- no agent, or a broken one ---------------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "stale socket", "not a socket", "directory missing"])
def test_no_agent_means_in_process(via, tmp_path, what):
    path = tmp_path / "run" / "underlay.sock"
    if what != "directory missing":
        path.parent.mkdir()
    if what == "stale socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()    # the file stays, nobody listens: what a killed agent leaves
    elif what == "not a socket":
        path.write_text("")
    via(str(path))
    log = tmp_path / "op.log"
    conf = host_local_conf(tmp_path, log)
    out = plugins.run_plugin("host-local", "ADD", conf, netns="/run/netns/x")
    assert out.ok and out.stderr == "", out
    line, = oplog(log)
    reason = {"missing": "No such file", "directory missing": "No such file"}.get(what, "Connection refused")
    assert line["agent"].startswith(f"no agent at {path}: {reason}"), line
    assert len(leases(tmp_path)) == 1


def test_the_default_socket_is_used_without_underlay_socket(tmp_path):
    """UNDERLAY_SOCKET unset: the plugin looks at /run/underlay/underlay.sock (here: none, in-process)."""
    if os.path.exists("/run/underlay/underlay.sock"):
        pytest.fail("an underlayd runs on this machine; this test needs it absent")
    log = tmp_path / "op.log"
    out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path, log), netns="/run/netns/x",
                             extra={"UNDERLAY_SOCKET": None})
    assert out.ok, out
    assert oplog(log)[0]["agent"].startswith("no agent at /run/underlay/underlay.sock: "), oplog(log)


def test_an_agent_that_accepts_and_hangs_is_code_11_with_nothing_done(via, tmp_path):
    """A socket that takes connections (the kernel queues them) and never serves one."""
    path = str(tmp_path / "hung.sock")
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(path)
    hung.listen(8)
    via(path)
    try:
        started = time.monotonic()
        out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path, tmp_path / "op.log"),
                                 netns="/run/netns/x", extra={"UNDERLAY_AGENT_TIMEOUT": "1"}, timeout=30)
        elapsed = time.monotonic() - started
        # nothing of the request was sent before a worker's b"R": a worker accepting this connection
        # now, after the caller gave up, finds nothing it could start
        conn, _ = hung.accept()
        conn.settimeout(5)
        left = conn.recv(1 << 16)
        conn.close()
    finally:
        hung.close()
    assert left == b"", left[:80]
    assert out.cni_code == 11, out
    assert "did not start the request (silent for over 1 s" in out.json["msg"], out
    assert "nothing was done" in out.json["msg"]
    assert out.json["cniVersion"] == "1.1.0"
    assert elapsed < 25, elapsed      # bounded (the bound is 1 s; this only rules out waiting for ever)
    assert leases(tmp_path) == []
    line = oplog(tmp_path / "op.log")[0]
    assert line["code"] == 11 and line["plugin"] == "host-local"   # the record's name, as an in-process answer logs it


def test_a_stopped_agent_is_code_11_and_serves_nothing_late(via, tmp_path):
    """The whole agent stopped (SIGSTOP): the caller gives up within the bound; once the agent
    runs again, the connection it finds queued is dropped, not served."""
    # one worker at a time takes the queue in order: the first connection is dealt with before the
    # second is served, so "nothing served late" needs no wait, however slow the machine
    agent = Agent("--workers", "1", directory=str(tmp_path / "run"))
    try:
        via(agent)
        agent.signal_group(signal.SIGSTOP)
        try:
            out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path), netns="/run/netns/x",
                                     extra={"UNDERLAY_AGENT_TIMEOUT": "1"}, timeout=120)
        finally:
            agent.signal_group(signal.SIGCONT)
        assert out.cni_code == 11, out
        out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path), netns="/run/netns/x",
                                 container_id="c2")
        assert out.ok, out
        assert [s[:3] for s in agent.wait_served(1)] == [("host-local", "ADD", 0)]
        assert len(agent.served()) == 1 and len(leases(tmp_path)) == 1
    finally:
        agent.close()


# -- kills and restarts --------------------------------------------------------------


def test_agent_killed_mid_request_then_restarted(tmp_path, via, node):
    """SIGKILL of the agent's own process: the worker in flight finishes its invocation; callers
    then find a stale socket and work in-process; a restarted agent serves the same stores."""
    agent = Agent(directory=str(tmp_path / "run"))
    try:
        via(agent)
        conf = node.conf()
        a, b, c = node.add_pods(3)
        call = node.start("ADD", conf, "c1", a, stop_at="add:after-create")
        worker, = wait_for(lambda: stopped_children(agent.proc.pid), what="a worker stopped at the point")
        spares = [p for p in agent.workers() if p != worker]
        agent.kill()
        os.kill(worker, signal.SIGCONT)
        out = call.wait()
        assert out.ok, out                                   # the request in flight completed
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in spares), what="idle spares to exit")
        out = node.run("ADD", conf, "c2", b)                 # stale socket: in-process
        assert out.ok, out
        agent = Agent(directory=str(tmp_path / "run"))       # replaces the stale socket
        via(agent)
        assert node.run("ADD", conf, "c3", c).ok
        assert node.run("DEL", conf, "c1", a).ok
        assert [s[:3] for s in agent.wait_served(2)] == [("macvlan", "ADD", 0), ("macvlan", "DEL", 0)]
        Audit(node, ["rel"], {("rel", "c2", "eth0"): b, ("rel", "c3", "eth0"): c}).assert_clean()
    finally:
        agent.close()


def test_sigterm_removes_the_socket_and_finishes_the_request_in_flight(agent, via, node):
    via(agent)
    conf = node.conf()
    pod, = node.add_pods(1)
    call = node.start("ADD", conf, "c1", pod, stop_at="add:after-ipam")
    worker, = wait_for(lambda: stopped_children(agent.proc.pid), what="a worker stopped at the point")
    agent.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: not os.path.exists(agent.socket), what="the socket to go")
    assert agent.proc.poll() is None                         # still waiting for its worker
    os.kill(worker, signal.SIGCONT)
    assert call.wait().ok
    assert agent.proc.wait(timeout=20) == 0
    Audit(node, ["rel"], {("rel", "c1", "eth0"): pod}).assert_clean()


def test_a_caller_killed_mid_request_takes_its_worker_with_it(agent, via, node):
    """As a runtime's SIGKILL ends an exec'd plugin, it ends the worker serving it: no work goes on
    that the runtime has given up on (and would race the DEL that follows)."""
    via(agent)
    conf = node.conf()
    pod, = node.add_pods(1)
    call = node.start("ADD", conf, "c1", pod, stop_at="add:after-create")
    worker, = wait_for(lambda: stopped_children(agent.proc.pid), what="a worker stopped at the point")
    call.kill()
    # dead (not waited for: the worker holds its stdout), so its end of the connection is closed and the
    # worker's SIGIO pending before the worker runs on, however slow the machine
    wait_for(lambda: call.proc.poll() is not None, what="the caller to die")
    os.kill(worker, signal.SIGCONT)   # a stopped process acts on its signals once it runs again
    assert call.killed
    wait_for(lambda: f"worker {worker} was killed by signal {int(signal.SIGIO)} mid-request" in agent.log(),
             what="the worker to die of SIGIO")
    assert node.run("DEL", conf, "c1", pod).ok
    Audit(node, ["rel"], {}).assert_clean()


def test_a_del_worker_killed_right_after_its_answer_leaves_nothing(agent, via, node):
    """A DEL answers once the link is unlisted; the kernel's DELLINK may still be working in the
    worker (cni/net/netlink.py delete_link). Stopped right after its answer, then SIGKILLed: the
    link was already gone when the caller had its answer, nothing is left half done, and the same
    ifname can be added again in the same netns at once."""
    via(agent)
    conf = node.conf()
    pod, = node.add_pods(1)
    assert node.run("ADD", conf, "c1", pod).ok
    call = node.start("DEL", conf, "c1", pod, stop_at="served:closed")
    out = call.wait()
    assert out.ok and out.stdout == "", out
    assert node.pod_links(pod) == {}                       # gone when the caller had its answer
    worker, = wait_for(lambda: stopped_children(agent.proc.pid), what="the worker stopped after its answer")
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: worker not in agent.workers(), what="the worker to be reaped")
    Audit(node, ["rel"], {}).assert_clean()
    assert node.run("ADD", conf, "c2", pod).ok             # the same ifname, the same netns
    Audit(node, ["rel"], {("rel", "c2", "eth0"): pod}).assert_clean()
    assert node.run("DEL", conf, "c2", pod).ok
    Audit(node, ["rel"], {}).assert_clean()


# -- the concurrency limit ------------------------------------------------------------


def test_at_most_workers_run_at_once_and_the_rest_queue(tmp_path, via, node):
    # no healing: its child would be counted with the workers (agent.workers() lists every child)
    agent = Agent("--workers", "2", "--spares", "1", "--heal-every", "0", directory=str(tmp_path / "run"))
    try:
        via(agent)
        conf = node.conf()
        pods = node.add_pods(5)
        calls = [node.start("ADD", conf, f"c{i}", pod, stop_at="add:after-ipam") for i, pod in enumerate(pods)]
        most = 0
        deadline = time.monotonic() + 60
        while any(c.proc.poll() is None for c in calls) and time.monotonic() < deadline:
            most = max(most, len(agent.workers()))
            stopped = stopped_children(agent.proc.pid)
            if stopped:
                time.sleep(0.3)   # were the queued ones (wrongly) started, they would show now
                most = max(most, len(agent.workers()))
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        outs = [c.wait() for c in calls]
        assert all(o.ok for o in outs), outs
        assert most == 2, most
        Audit(node, ["rel"], {("rel", f"c{i}", "eth0"): p for i, p in enumerate(pods)}).assert_clean()
    finally:
        agent.close()


def test_options_are_checked():
    for args, fragment in [(["--workers", "0"], "--workers"), (["--socket", "rel.sock"], "absolute"),
                           (["--metrics", "nope"], "HOST:PORT"), (["--bogus"], "unknown option")]:
        out = subprocess.run([sys.executable, "-m", "cni.agent"] + args, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=30)
        assert out.returncode == 2 and fragment in out.stderr and "usage: underlayd" in out.stderr, out


def test_an_agent_without_cap_sys_admin_says_so_and_does_not_start(tmp_path):
    """It could enter no caller's netns: a clear error at start, not a socket that fails every pod."""
    from tests.agent import agent_argv
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", "--", *agent_argv(),
                          "--socket", str(tmp_path / "a.sock"), "--config-dir", str(tmp_path / "none")],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert out.returncode == 1, out
    assert "cannot enter network namespaces" in out.stderr and "CAP_SYS_ADMIN" in out.stderr, out
    assert "Traceback" not in out.stderr and not (tmp_path / "a.sock").exists()


def test_an_agent_that_cannot_take_on_the_callers_context_has_the_plugin_work_in_process(tmp_path, via):
    """Without CAP_SYS_CHROOT (a container given only NET_ADMIN and SYS_ADMIN) a worker cannot enter
    the caller's mount namespace: it answers "F" before doing anything, and the plugin runs itself."""
    from tests.agent import agent_argv
    agent = Agent(command=["setpriv", "--bounding-set", "-sys_chroot", "--", *agent_argv()])
    try:
        via(agent)
        log = tmp_path / "op.log"
        out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path, log), netns="/run/netns/x")
        assert out.ok and out.stderr == "", out
        line, = oplog(log)
        assert line["agent"] == f"agent at {agent.socket} could not serve this context: Operation not permitted", line
        assert line["pid"] != agent.proc.pid and line["result"] == "ok"
        assert len(leases(tmp_path)) == 1 and agent.served() == []
        assert "cannot take on the context of caller" in agent.log()
    finally:
        agent.close()


def start_failing(*args):
    """Run underlayd with `args` where it must refuse to start: its output (it must have exited)."""
    return subprocess.run([*agent_argv(), *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)


@pytest.mark.parametrize("where", ["directory 0777", "directory 0770", "directory 1777", "directory nobody's",
                                   "parent 0777 created", "parent 0757 under a symlink"])
def test_a_socket_directory_others_could_write_to_is_refused(tmp_path, where):
    """Anyone who can write to the socket's directory (or one above it) could put their own listener
    there: underlayd refuses to start, says why, and leaves nothing behind."""
    kind, mode = where.split()[:2]
    target = tmp_path / "d"
    target.mkdir()
    if mode == "nobody's":
        os.chown(target, 65534, 65534)
    else:
        os.chmod(target, int(mode, 8))
    if kind == "directory":
        sock = target / "u.sock"
    elif where.endswith("created"):
        sock = target / "run" / "u.sock"          # the agent would create run/, in an unsafe parent
    else:
        (target / "run").mkdir(mode=0o700)
        os.symlink(target / "run", tmp_path / "link")
        sock = tmp_path / "link" / "u.sock"       # as written, nothing is unsafe; where it leads is
    out = start_failing("--socket", str(sock), "--config-dir", str(tmp_path))
    assert out.returncode == 1, out
    assert f"underlayd: --socket {sock}: {target}" in out.stderr and "root's and writable by root alone" in out.stderr, out
    assert "Traceback" not in out.stderr
    assert not sock.exists() and not (target / "run" / "u.sock").exists()
    assert where.endswith("symlink") or not (target / "run").exists()


def test_a_socket_below_a_sticky_directory_is_served(world_writable, via, tmp_path):
    """/tmp-like (sticky, world-writable) above the socket's own directory is fine: nobody can rename
    what is not theirs there. The directories it creates are root's, mode 0700, whatever the umask."""
    os.chmod(world_writable, 0o1777)
    sock = world_writable / "a" / "run" / "u.sock"
    agent = subprocess.Popen([*agent_argv(), "--socket", str(sock), "--config-dir", str(tmp_path)], umask=0,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sock.exists() or agent.poll() is not None, timeout=60, what="the agent's socket")
        assert agent.poll() is None, agent.communicate()
        for made in (world_writable / "a", world_writable / "a" / "run"):
            st = os.stat(made)
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700, (made, oct(st.st_mode))
        via(str(sock))
        log = tmp_path / "op.log"
        assert plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path, log), netns="/run/netns/x").ok
        line, = oplog(log)
        assert line["agent"] == "served by underlayd", line
    finally:
        agent.terminate()
        agent.wait(timeout=60)


def test_a_failed_start_leaves_no_socket(tmp_path):
    """--metrics on a port already taken: exit 1 saying so, and no socket file left for plugins to try."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sock = tmp_path / "run" / "u.sock"
        out = start_failing("--socket", str(sock), "--metrics", f"127.0.0.1:{port}", "--config-dir", str(tmp_path))
    assert out.returncode == 1 and f"--metrics 127.0.0.1:{port}: Address already in use" in out.stderr, out
    assert not sock.exists()


def test_a_missing_directory_named_on_the_command_line_is_a_warning(tmp_path):
    """A typo in --config-dir, --data-dir or --cluster-data-dir would read as "no networks", "nothing to
    heal": the agent starts (a data dir appears with the first ADD) and logs a warning for each."""
    (tmp_path / "file").write_text("")
    agent = Agent("--config-dir", str(tmp_path / "confs"), "--data-dir", str(tmp_path / "file"),
                  "--data-dir", str(tmp_path), "--cluster-data-dir", str(tmp_path / "cluster"),
                  directory=str(tmp_path / "run"))
    try:
        wait_for(lambda: "--cluster-data-dir" in agent.log(), what="the warnings")
        warnings = [line for line in agent.log().splitlines() if "warning" in line]
        assert warnings == [
            f"underlayd: warning: --config-dir {tmp_path}/confs does not exist: no network configs are read "
            "from it (pool figures, cluster-ipam healing) until it is there",
            f"underlayd: warning: --data-dir {tmp_path}/file is not a directory: no host-local leases to heal "
            "there until a plugin creates it",
            f"underlayd: warning: --cluster-data-dir {tmp_path}/cluster does not exist: no cluster-ipam records "
            "to heal there until a plugin creates it"], warnings
    finally:
        agent.close()


def test_a_second_agent_on_the_same_socket_is_refused(agent):
    out = subprocess.run([sys.executable, "-m", "cni.agent", "--socket", agent.socket], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert out.returncode != 0 and "another agent answers" in out.stderr, out
    assert agent.answers()


# -- metrics ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, path="/metrics"):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.headers.get("Content-Type"), response.read().decode()


def samples(text):
    """{name{labels}: value} of a Prometheus text page; every family has HELP and TYPE."""
    out, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            name = key.split("{")[0]
            assert any(name == t or name.startswith(t + "_") for t in typed), f"{name} has no TYPE"
            assert name.startswith("underlay_"), name
            out[key] = float(value)
    return out


def test_metrics_count_requests_by_plugin_verb_and_code(tmp_path, via):
    port = free_port()
    textfile = tmp_path / "underlay.prom"
    agent = Agent("--metrics", f"127.0.0.1:{port}", "--textfile", str(textfile), directory=str(tmp_path / "run"))
    try:
        via(agent)
        conf = host_local_conf(tmp_path)
        assert plugins.run_plugin("host-local", "ADD", conf, netns="/run/netns/x").ok
        assert plugins.run_plugin("host-local", "ADD", conf, netns="/run/netns/x").cni_code == 101   # again: taken
        assert plugins.run_plugin("host-local", "DEL", conf, netns="/run/netns/x").ok
        agent.wait_served(3)
        status, kind, text = scrape(port)
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        got = samples(text)
        for key, value in [
                ('underlay_agent_requests_total{plugin="host-local",verb="ADD",code="0"}', 1),
                ('underlay_agent_requests_total{plugin="host-local",verb="ADD",code="101"}', 1),
                ('underlay_agent_requests_total{plugin="host-local",verb="DEL",code="0"}', 1),
                ('underlay_agent_request_duration_seconds_count{plugin="host-local",verb="ADD"}', 2),
                ('underlay_agent_request_duration_seconds_bucket{plugin="host-local",verb="ADD",le="+Inf"}', 2),
                ('underlay_agent_workers_limit', 8), ('underlay_agent_workers_killed_total', 0)]:
            assert got.get(key) == value, (key, got.get(key), text)
        assert scrape(port, "/healthz")[2] == "ok\n"
        agent.stop()
        assert 'underlay_agent_requests_total{plugin="host-local",verb="DEL",code="0"} 1' in textfile.read_text()
    finally:
        agent.close()


POOL_STATES = ("excluded", "aux", "reserved", "in_use", "conflict", "free")


def series(got, name, **want):
    """{labels: value} of the samples of `name` whose labels include `want` (values unescaped)."""
    import re
    out = {}
    for key, value in got.items():
        found, _, rest = key.partition("{")
        labels = {k: re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], v)
                  for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest)}
        if found == name and all(labels.get(k) == str(v) for k, v in want.items()):
            out[tuple(sorted(labels.items()))] = value
    return out


def pool_samples(got, network, index, ipam="host-local"):
    """{size, excluded, ...} of one range set, from a page's samples (None: no such sample)."""
    out = {"size": None, **{state: None for state in POOL_STATES}}
    for labels, value in series(got, "underlay_pool_size_addresses", network=network, ipam=ipam, set=index).items():
        out["size"] = value
    for labels, value in series(got, "underlay_pool_addresses", network=network, ipam=ipam, set=index).items():
        out[dict(labels)["state"]] = value
    return out


def test_metrics_show_the_pools_as_underlay_pools_counts_them(tmp_path, via):
    from tests.operator import run_underlay
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    data_dir = tmp_path / "networks"
    ipam = {"type": "host-local", "dataDir": str(data_dir),
            # .1-.14: gateway .1 reserved, .8-.11 excluded, aux .14; and a v6 set
            "ranges": [[{"subnet": "10.1.0.0/28"}], [{"subnet": "fd00:1::/120"}]],
            "exclude": ["10.1.0.8/30"], "auxAddresses": {"router": "10.1.0.14"}}
    (config_dir / "10-umxpool.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "umxpool", "plugins": [{"type": "macvlan", "master": "eth0", "ipam": ipam}]}))
    (config_dir / "20-umxidle.conf").write_text(json.dumps(       # no ADD yet: nothing in use
        {"cniVersion": "1.0.0", "name": "umxidle", "type": "macvlan", "master": "eth0",
         "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.2.0.0/24"}]]}}))
    (config_dir / "README").write_text("not a config")
    port = free_port()
    textfile = tmp_path / "underlay.prom"
    agent = Agent("--metrics", f"127.0.0.1:{port}", "--textfile", str(textfile), "--config-dir", str(config_dir),
                  "--heal-every", "0", directory=str(tmp_path / "run"))
    try:
        via(agent)
        # the periodic write (a child of the agent's) comes at start: the pools of then, nothing in use
        wait_for(lambda: textfile.exists() and pool_samples(samples(textfile.read_text()), "umxpool", 0)["free"] == 8,
                 what="the first textfile with the pools")
        plugin_conf = {"cniVersion": "1.0.0", "name": "umxpool", "ipam": ipam}
        for i in range(3):     # host-local ADDs as a runtime's main plugin makes them, through the agent
            assert plugins.run_plugin("host-local", "ADD", plugin_conf, container_id=f"umx{i}",
                                      netns=f"/run/netns/umx{i}").ok
        agent.wait_served(3)
        expected = run_underlay("pools", "--config", *sorted(str(p) for p in config_dir.glob("*.conf*")),
                                "-o", "json")
        assert expected.code == 0, expected
        rows = expected.json
        assert [(r["network"], r["set"], r["in_use"]) for r in rows] == [
            ("umxpool", 0, 3), ("umxpool", 1, 3), ("umxidle", 0, 0)], rows
        got = samples(scrape(port)[2])
        for row in rows:
            figures = pool_samples(got, row["network"], row["set"])
            assert figures == {k: row[k] for k in figures}, (row, figures)
            assert sum(figures[s] for s in POOL_STATES) == figures["size"]   # the states partition the size
        assert pool_samples(got, "umxpool", 0) == {"size": 14, "excluded": 4, "aux": 1, "reserved": 1,
                                                   "in_use": 3, "conflict": 0, "free": 5}
        assert got["underlay_pool_problems"] == 0
        assert plugins.run_plugin("host-local", "DEL", plugin_conf, container_id="umx0", netns="/run/netns/umx0").ok
        agent.wait_served(4)
        assert pool_samples(samples(scrape(port)[2]), "umxpool", 0)["in_use"] == 2   # read on each scrape
        agent.stop()                   # its last textfile: the figures of then
        written = samples(textfile.read_text())
        assert pool_samples(written, "umxpool", 0) == {"size": 14, "excluded": 4, "aux": 1, "reserved": 1,
                                                       "in_use": 2, "conflict": 0, "free": 6}
        assert pool_samples(written, "umxidle", 0)["free"] == 253
    finally:
        agent.close()


def test_a_store_locked_past_the_bound_is_a_pool_problem_not_a_hung_scrape(tmp_path, via):
    import fcntl
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    data_dir = tmp_path / "networks"
    ipam = {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.3.0.0/24"}]]}
    (config_dir / "umxlock.conf").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "umxlock", "type": "macvlan", "master": "eth0", "ipam": ipam}))
    port = free_port()
    agent = Agent("--metrics", f"127.0.0.1:{port}", "--config-dir", str(config_dir), "--heal-every", "0",
                  directory=str(tmp_path / "run"))
    try:
        via(agent)
        assert plugins.run_plugin("host-local", "ADD", {"cniVersion": "1.0.0", "name": "umxlock", "ipam": ipam},
                                  container_id="umx0", netns="/run/netns/umx0").ok
        with open(data_dir / "umxlock" / "lock", "a+") as held:   # a plugin stuck inside the lock
            fcntl.flock(held, fcntl.LOCK_EX)
            got = samples(scrape(port)[2])
            assert got["underlay_pool_problems"] == 1
            assert pool_samples(got, "umxlock", 0)["size"] is None
            assert got['underlay_pool_readable{network="umxlock",ipam="host-local"}'] == 0
            assert got["underlay_agent_workers_limit"] == 8        # the rest of the page is there
        assert "pools: network umxlock:" in agent.log()
        got = samples(scrape(port)[2])
        assert pool_samples(got, "umxlock", 0)["in_use"] == 1
        assert got['underlay_pool_readable{network="umxlock",ipam="host-local"}'] == 1
    finally:
        agent.close()


def test_metrics_show_the_host_local_networks_served_without_a_config_file(tmp_path, via):
    """A NetworkAttachmentDefinition's host-local network (Multus hands its config to the plugin: no
    file in --config-dir names it) is known by its directory in --data-dir: its leases in use are
    reported; its ranges are in no file on the node, so in_use is all it has (no size, no set). Beside
    it a configured network's full figures; a NAD's store locked past the bound is its problem."""
    import fcntl
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    data_dir = tmp_path / "networks"
    file_ipam = {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.4.0.0/28"}]]}
    (config_dir / "10-umxfile.conf").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "umxfile", "type": "macvlan", "master": "eth0", "ipam": file_ipam}))
    nad_ipam = {"type": "host-local", "dataDir": str(data_dir),
                "ranges": [[{"subnet": "10.5.0.0/24"}], [{"subnet": "fd00:5::/120"}]]}
    port = free_port()
    agent = Agent("--metrics", f"127.0.0.1:{port}", "--config-dir", str(config_dir), "--data-dir", str(data_dir),
                  "--heal-every", "0", directory=str(tmp_path / "run"))
    try:
        via(agent)
        got = samples(scrape(port)[2])
        assert series(got, "underlay_pool_addresses", network="umxnad") == {}   # no ADD yet: not known
        assert pool_samples(got, "umxfile", 0)["free"] == 13
        for i in range(2):   # as Multus runs a NAD's plugin: the config on stdin, no file
            assert plugins.run_plugin("host-local", "ADD", {"cniVersion": "1.0.0", "name": "umxnad", "ipam": nad_ipam},
                                      container_id=f"nad{i}", netns=f"/run/netns/nad{i}").ok
        assert plugins.run_plugin("host-local", "ADD", {"cniVersion": "1.0.0", "name": "umxfile", "ipam": file_ipam},
                                  container_id="file0", netns="/run/netns/file0").ok
        agent.wait_served(3)
        got = samples(scrape(port)[2])
        assert series(got, "underlay_pool_addresses", network="umxnad") == {   # two attachments, two families
            (("ipam", "host-local"), ("network", "umxnad"), ("state", "in_use")): 4}
        assert series(got, "underlay_pool_size_addresses", network="umxnad") == {}
        assert pool_samples(got, "umxfile", 0) == {"size": 14, "excluded": 0, "aux": 0, "reserved": 1,
                                                   "in_use": 1, "conflict": 0, "free": 12}
        assert series(got, "underlay_pool_size_addresses", network="umxfile") == {
            (("ipam", "host-local"), ("network", "umxfile"), ("ranges", "10.4.0.0/28 10.4.0.1-10.4.0.14"),
             ("set", "0")): 14}
        assert got['underlay_pool_readable{network="umxnad",ipam="host-local"}'] == 1
        assert got['underlay_pool_readable{network="umxfile",ipam="host-local"}'] == 1
        assert got["underlay_pool_problems"] == 0
        with open(data_dir / "umxnad" / "lock", "a+") as held:   # a plugin stuck inside the NAD's lock
            fcntl.flock(held, fcntl.LOCK_EX)
            got = samples(scrape(port)[2])
            assert got['underlay_pool_readable{network="umxnad",ipam="host-local"}'] == 0
            assert series(got, "underlay_pool_addresses", network="umxnad") == {}
            assert got["underlay_pool_problems"] == 1
            assert pool_samples(got, "umxfile", 0)["in_use"] == 1        # the others are there
        assert f"pools: {data_dir}: network umxnad:" in agent.log()
    finally:
        agent.close()


@pytest.mark.etcd
def test_metrics_show_the_cluster_ipam_pools_configured_or_recorded_and_count_an_etcd_down(tmp_path, cl, via):
    """cluster-ipam networks in --config-dir and those only recorded by their ADDs (a NAD's, in a
    --cluster-data-dir) have their pools as `underlay cluster pools` counts them, the whole cluster's.
    An etcd that never answers, or is down, or a record no ADD could have written, is a problem of that
    network: counted, logged, and the scrape answers with everything else."""
    from tests.operator import run_underlay
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)          # the kernel accepts; nobody ever answers
    cl.prefix = f"/ucm-{uuid.uuid4().hex[:8]}"
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    configured = cl.conf("10.79.7.0/28", node="uc-n1", name="ucpool")
    write_conflist(config_dir, "10-ucpool.conflist", configured)
    write_conflist(config_dir, "20-ucsilent.conflist", cl.conf(
        "10.79.9.0/28", node="uc-n1", name="ucsilent",
        etcd={"endpoints": [f"http://127.0.0.1:{silent.getsockname()[1]}"], "dialTimeout": 1, "requestTimeout": 1}))
    nad_dir = tmp_path / "nad-cluster-ipam"
    nad = cl.conf("10.79.8.0/28", node="uc-n1", name="ucnad", dataDir=str(nad_dir))
    elsewhere = cl.conf("10.79.8.0/28", node="uc-n2", name="ucnad")    # another node's: the cluster's figures
    (nad_dir / 'uc"odd').mkdir(parents=True)       # a record no ADD wrote: no valid network name
    (nad_dir / 'uc"odd' / "network.json").write_text(json.dumps(
        {"network": 'uc"odd', "ipam": dict(nad["ipam"], dataDir=str(nad_dir))}))
    port = free_port()
    agent = Agent("--metrics", f"127.0.0.1:{port}", "--config-dir", str(config_dir), "--cluster-data-dir",
                  str(nad_dir), "--heal-every", "0", directory=str(tmp_path / "run"))
    try:
        via(agent)
        for cid, conf in (("p0", configured), ("p1", configured), ("n0", nad), ("n1", nad), ("e0", elsewhere)):
            assert cl.add(conf, cid).ok
        agent.wait_served(5)
        got = samples(scrape(port)[2])
        for name, conf in (("ucpool", configured), ("ucnad", nad)):
            path = tmp_path / f"{name}.conflist"      # the operator's copy, outside --config-dir
            write_conflist(tmp_path, path.name, conf)
            expected = run_underlay("cluster", "pools", "--config", str(path), "-o", "json")
            assert expected.code == 0, expected
            row, = expected.json
            figures = pool_samples(got, name, 0, "cluster-ipam")
            assert figures == {k: row[k] for k in figures}, (row, figures)
            assert series(got, "underlay_pool_size_addresses", network=name)   # with its ranges label
            assert got[f'underlay_pool_readable{{network="{name}",ipam="cluster-ipam"}}'] == 1
        assert pool_samples(got, "ucnad", 0, "cluster-ipam")["in_use"] == 3   # uc-n2's lease too
        assert pool_samples(got, "ucpool", 0, "cluster-ipam")["in_use"] == 2
        assert got['underlay_pool_readable{network="ucsilent",ipam="cluster-ipam"}'] == 0
        assert got['underlay_pool_readable{network="uc\\"odd",ipam="cluster-ipam"}'] == 0
        assert got["underlay_pool_problems"] == 2
        assert "pools: cluster-ipam network ucsilent" in agent.log()
        cl.etcd.stop(0)
        try:
            got = samples(scrape(port)[2])
            assert got['underlay_pool_readable{network="ucpool",ipam="cluster-ipam"}'] == 0
            assert got['underlay_pool_readable{network="ucnad",ipam="cluster-ipam"}'] == 0
            assert pool_samples(got, "ucnad", 0, "cluster-ipam")["size"] is None
            assert got["underlay_pool_problems"] == 4
            assert got["underlay_agent_workers_limit"] == 8        # the rest of the page is there
        finally:
            cl.etcd.start(0)
        got = samples(scrape(port)[2])
        assert got['underlay_pool_readable{network="ucnad",ipam="cluster-ipam"}'] == 1
    finally:
        agent.close()
        silent.close()


def test_a_worker_hung_inside_the_lock_is_named_and_killed_with_its_caller(agent, via, node):
    """As tests/reliability/test_locks.py for an exec'd plugin: the lock's holder named is the worker."""
    via(agent)
    conf = node.conf(lockTimeout=1)
    a, b = node.add_pods(2)
    stuck = node.start("ADD", conf, "stuck", a, stop_at="add:after-lease")
    worker, = wait_for(lambda: stopped_children(agent.proc.pid), what="a worker stopped in the lock")
    out = node.run("ADD", conf, "other", b)
    assert out.cni_code == 11 and f"held by pid {worker}" in out.json["msg"], out
    stuck.kill()                               # the runtime's timeout
    os.kill(worker, signal.SIGCONT)
    assert stuck.wait().code == -9
    assert node.run("DEL", conf, "stuck", a).ok
    assert node.run("ADD", conf, "other", b).ok
    Audit(node, ["rel"], {("rel", "other", "eth0"): b}).assert_clean()


# -- healing missed DELs ------------------------------------------------------------------


def test_healing_releases_the_leases_of_gone_netns_and_only_those(tmp_path, node):
    conf = node.conf()
    alive, dead = node.add_pods(2)
    assert node.run("ADD", conf, "alive", alive).ok
    assert node.run("ADD", conf, "dead", dead).ok
    node.remove_pod(dead)                          # its DEL never comes
    port = free_port()
    agent = Agent("--data-dir", node.data_dir, "--heal-every", "1", "--metrics", f"127.0.0.1:{port}",
                  directory=str(tmp_path / "run"))
    try:
        wait_for(lambda: "of dead/eth0 in" in agent.log(), what="the healing of dead/eth0")
        assert "its netns /run/netns/" in agent.log()
        got = wait_for(lambda: samples(scrape(port)[2]).get('underlay_heal_releases_total{network="rel"}'),
                       what="the healing counted")
        assert got == 1
        runs = samples(scrape(port)[2])["underlay_heal_runs_total"]
        wait_for(lambda: samples(scrape(port)[2])["underlay_heal_runs_total"] >= runs + 2,
                 what="two more healing runs")      # whole runs after the release: nothing more to release
        assert agent.log().count("healing: released") == 1
        Audit(node, ["rel"], {("rel", "alive", "eth0"): alive}).assert_clean()
    finally:
        agent.close()


def write_conflist(config_dir, file_name, conf):
    """A runtime's conflist of one plugin config (as tests/cluster's Cluster.conf builds them)."""
    plugin = {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}
    (config_dir / file_name).write_text(json.dumps(
        {"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [dict(plugin, master="eth0")]}))
    return config_dir / file_name


@pytest.fixture
def cl(etcd_cluster, tmp_path):
    """cluster-ipam configs for simulated nodes on a fresh etcd member (tests/cluster's Cluster)."""
    from tests.cluster.conftest import Cluster
    c = Cluster(etcd_cluster(), tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.etcd
def test_healing_releases_this_nodes_cluster_ipam_attachments_of_gone_netns_only(tmp_path, cl, pod_ns):
    from tests import netns as nsutil
    from tests.cluster.conftest import addresses
    from tests.operator import run_underlay
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    here = cl.conf("10.79.0.0/24", node="uh-n1", name="uhnet")
    other_node = cl.conf("10.79.0.0/24", node="uh-n2", name="uhnet")
    sticky = cl.conf("10.79.1.0/24", node="uh-n1", name="uhsticky", sticky=True)
    conflist = write_conflist(config_dir, "10-uhnet.conflist", here)
    write_conflist(config_dir, "20-uhsticky.conflist", sticky)
    pods = {cid: pod_ns() for cid in ("alive", "dead", "elsewhere", "old", "held")}
    ips = {}
    for cid, conf in (("alive", here), ("dead", here), ("elsewhere", other_node), ("old", here), ("held", sticky)):
        ips[cid], = addresses(cl.add(conf, cid, netns=nsutil.netns_path(pods[cid]),
                                     pod=("uh-ns", f"{cid}-0") if conf is sticky else None))
    records = cl.keys("attachments/")
    dead = cl.leases()[ips["dead"]]
    assert records[f"attachments/uhnet/dead@eth0/{ips['dead']}"] == {
        "node": "uh-n1", "netns": nsutil.netns_path(pods["dead"]),
        "block": f"pools/{dead['pool']}/blocks/{dead['block']}"}
    # an attachment an older version recorded (no netns): readable, never healed
    cl.client.put(f"{cl.prefix}/attachments/uhnet/old@eth0/{ips['old']}", json.dumps({"node": "uh-n1"}))
    for cid in ("dead", "elsewhere", "old", "held"):
        nsutil.del_netns(pods[cid])                      # their DELs never come
    adding = pathlib.Path(cl.data_dir("uh-n1")) / "uhnet" / "adding"
    adding.mkdir(exist_ok=True)
    for cid in ("alive", "dead"):                        # as a failed ADD of each would have left them
        (adding / f"{cid}@eth0").touch()
    listed = run_underlay("cluster", "leases", "--config", conflist, "-o", "json")
    assert listed.code == 0, listed
    assert sorted(r["address"] for r in listed.json) == sorted(ips.values())   # nothing healed yet

    port = free_port()
    agent = Agent("--config-dir", str(config_dir), "--data-dir", str(tmp_path / "no-host-local"),
                  "--heal-every", "1", "--metrics", f"127.0.0.1:{port}", directory=str(tmp_path / "run"))
    try:
        wait_for(lambda: "of dead/eth0 in cluster-ipam network uhnet" in agent.log(), what="the healing of dead")
        assert f"its netns {nsutil.netns_path(pods['dead'])} is gone" in agent.log()
        wait_for(lambda: samples(scrape(port)[2])["underlay_heal_runs_total"] >= 3, what="two more healing runs")
        got = samples(scrape(port)[2])
        assert got['underlay_heal_releases_total{network="uhnet"}'] == 1
        assert got['underlay_heal_releases_total{network="uhsticky"}'] == 1
        assert agent.log().count("healing: released") == 2, agent.log()   # once each, never again
    finally:
        agent.close()
    assert sorted(p.name for p in adding.iterdir()) == ["alive@eth0"]   # the healed attachment's mark gone
    rows = {r["address"]: r for r in run_underlay("cluster", "leases", "--config", conflist, "-o", "json").json}
    assert sorted(rows) == sorted(ips[c] for c in ("alive", "elsewhere", "old", "held")), rows
    assert (rows[ips["held"]]["kind"], rows[ips["held"]]["pod"]) == ("hold", "held-0")   # DEL's sticky rule
    assert (rows[ips["elsewhere"]]["node"], rows[ips["elsewhere"]]["kind"]) == ("uh-n2", "lease")
    # the rest DEL'd as usual (the old record too): uhnet's blocks go back whole, as if dead had had its DEL
    for cid, conf in (("alive", here), ("elsewhere", other_node), ("old", here)):
        assert cl.delete(conf, cid).ok
    assert not [k for k in cl.keys() if k.startswith(("attachments/uhnet/", "pools/10.79.0.0/24/blocks/"))], \
        cl.keys()


@pytest.mark.etcd
def test_healing_outlives_an_etcd_that_never_answers(tmp_path, cl, pod_ns):
    """A network whose etcd accepts connections and never answers costs the healer its client's
    timeouts, is logged, and the next network (a working etcd) is healed all the same."""
    from tests import netns as nsutil
    from tests.cluster.conftest import addresses
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)          # the kernel accepts; nobody ever answers
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    down = cl.conf("10.79.2.0/24", node="uh-n1", name="uhdown",
                   etcd={"endpoints": [f"http://127.0.0.1:{silent.getsockname()[1]}"], "dialTimeout": 1,
                         "requestTimeout": 1})
    write_conflist(config_dir, "10-uhdown.conflist", down)
    here = cl.conf("10.79.3.0/24", node="uh-n1", name="uhnet")
    write_conflist(config_dir, "20-uhnet.conflist", here)
    pod = pod_ns()
    ip, = addresses(cl.add(here, "dead", netns=nsutil.netns_path(pod)))
    nsutil.del_netns(pod)
    port = free_port()
    agent = Agent("--config-dir", str(config_dir), "--data-dir", str(tmp_path / "no-host-local"),
                  "--heal-every", "1", "--metrics", f"127.0.0.1:{port}", directory=str(tmp_path / "run"))
    try:
        wait_for(lambda: samples(scrape(port)[2])["underlay_heal_runs_total"] >= 3, what="healing runs ending")
        assert "healing: cluster-ipam network uhdown" in agent.log() and \
            "etcd: no endpoint answered within 1s" in agent.log(), agent.log()
        assert f"released {ip} of dead/eth0 in cluster-ipam network uhnet" in agent.log()
        assert samples(scrape(port)[2])['underlay_heal_releases_total{network="uhnet"}'] == 1
        assert agent.proc.poll() is None and agent.answers()
    finally:
        agent.close()
        silent.close()


@pytest.mark.etcd
def test_healing_releases_this_nodes_leases_of_a_network_known_only_by_its_record(tmp_path, etcd_cluster, pod_ns):
    """A NetworkAttachmentDefinition's network (Multus hands its config to the plugin: no file in
    --config-dir holds it) is healed by the record its ADDs left in their dataDir (--cluster-data-dir),
    over TLS by the certificate paths recorded; a malformed record is logged and skipped."""
    from tests import netns as nsutil
    from tests.cluster.conftest import Cluster, addresses
    cl = Cluster(etcd_cluster(members=1, tls=True), tmp_path)
    cl.prefix = f"/ujl-{uuid.uuid4().hex[:8]}"
    try:
        data_dir = tmp_path / "uj-cluster-ipam"
        here = cl.conf("10.79.4.0/24", node="uj-n1", name="ujnad", dataDir=str(data_dir))
        other_node = cl.conf("10.79.4.0/24", node="uj-n2", name="ujnad")    # its record: on its own node
        pods = {cid: pod_ns() for cid in ("alive", "dead", "elsewhere")}
        ips = {}
        for cid, conf in (("alive", here), ("dead", here), ("elsewhere", other_node)):
            ips[cid], = addresses(cl.add(conf, cid, netns=nsutil.netns_path(pods[cid])))
        record = (data_dir / "ujnad" / "network.json").read_text()
        assert cl.etcd.tls.key in record and "PRIVATE KEY" not in record     # the key's path, never the key
        for cid in ("dead", "elsewhere"):
            nsutil.del_netns(pods[cid])                  # their DELs never come
        (data_dir / "ujbad").mkdir()                     # listed first: the healer goes on past it
        (data_dir / "ujbad" / "network.json").write_text('{"network": "ujbad", "ipam": ')
        port = free_port()
        agent = Agent("--cluster-data-dir", str(data_dir), "--data-dir", str(tmp_path / "no-host-local"),
                      "--heal-every", "1", "--metrics", f"127.0.0.1:{port}", directory=str(tmp_path / "run"))
        try:
            wait_for(lambda: f"released {ips['dead']} of dead/eth0 in cluster-ipam network ujnad" in agent.log(),
                     what="the healing of dead")
            wait_for(lambda: samples(scrape(port)[2])["underlay_heal_runs_total"] >= 3, what="two more healing runs")
            assert f"healing: {data_dir}/ujbad/network.json: not a record of cluster-ipam: not JSON" in agent.log()
            assert samples(scrape(port)[2])['underlay_heal_releases_total{network="ujnad"}'] == 1
            assert agent.log().count("healing: released") == 1, agent.log()   # once, and nobody else's
            assert agent.proc.poll() is None
        finally:
            agent.close()
        assert sorted(cl.leases()) == sorted([ips["alive"], ips["elsewhere"]])
        assert cl.leases()[ips["elsewhere"]]["node"] == "uj-n2"
    finally:
        cl.close()


@pytest.mark.etcd
def test_healing_reads_records_in_the_configs_dataDirs_and_a_config_wins_over_a_record(tmp_path, cl, pod_ns):
    """The dataDirs of --config-dir's cluster-ipam configs hold records too (no --cluster-data-dir needed
    for them); a network a config file names is healed by that config alone, never by a record of its
    name: here the file names an etcd that refuses (moved, say), the record the one its ADD used."""
    from tests import netns as nsutil
    from tests.cluster.conftest import addresses
    cl.prefix = f"/ujl-{uuid.uuid4().hex[:8]}"
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    nad = cl.conf("10.79.5.0/24", node="uj-n1", name="ujnad")      # both in tmp_path/nodes/uj-n1
    configured = cl.conf("10.79.6.0/24", node="uj-n1", name="ujconf")
    pods = {name: pod_ns() for name in ("ujnad", "ujconf")}
    ips = {}
    for name, conf in (("ujnad", nad), ("ujconf", configured)):
        ips[name], = addresses(cl.add(conf, "dead", netns=nsutil.netns_path(pods[name])))
        nsutil.del_netns(pods[name])
    moved = dict(configured, ipam=dict(configured["ipam"], etcd={"endpoints": ["http://127.0.0.1:9"],
                                                                   "prefix": cl.prefix, "requestTimeout": 1}))
    conflist = write_conflist(config_dir, "10-ujconf.conflist", moved)
    port = free_port()
    agent = Agent("--config-dir", str(config_dir), "--data-dir", str(tmp_path / "no-host-local"),
                  "--heal-every", "1", "--metrics", f"127.0.0.1:{port}", directory=str(tmp_path / "run"))
    try:
        wait_for(lambda: f"released {ips['ujnad']} of dead/eth0 in cluster-ipam network ujnad" in agent.log(),
                 what="the healing of ujnad by its record")
        wait_for(lambda: samples(scrape(port)[2])["underlay_heal_runs_total"] >= 3, what="two more healing runs")
        assert f"healing: cluster-ipam network ujconf ({conflist}): etcd" in agent.log(), agent.log()
        assert agent.log().count("healing: released") == 1, agent.log()
    finally:
        agent.close()
    assert sorted(cl.leases()) == [ips["ujconf"]]                   # left for its config's etcd to come back


def test_a_queued_request_outwaits_the_bound_while_the_agent_is_alive(tmp_path, via, node):
    """UNDERLAY_AGENT_TIMEOUT bounds the agent's silence, not the queue: a burst on a busy node waits."""
    agent = Agent("--workers", "1", directory=str(tmp_path / "run"))
    try:
        via(agent)
        conf = node.conf()
        a, b = node.add_pods(2)
        first = node.start("ADD", conf, "c1", a, stop_at="add:after-ipam")
        worker, = wait_for(lambda: stopped_children(agent.proc.pid), what="the only worker stopped")
        waiting = node.start("ADD", conf, "c2", b, env={"UNDERLAY_AGENT_TIMEOUT": "1"})
        wait_for(lambda: queued(agent.socket) == 1, what="the second call queued on the socket")
        time.sleep(2.5)                              # well past the bound: still waiting, the agent beats
        assert waiting.proc.poll() is None
        os.kill(worker, signal.SIGCONT)
        assert first.wait().ok
        out = waiting.wait()
        assert out.ok, out
        Audit(node, ["rel"], {("rel", "c1", "eth0"): a, ("rel", "c2", "eth0"): b}).assert_clean()
    finally:
        agent.close()


def test_a_worker_dropping_the_request_unread_means_in_process(via, tmp_path):
    """A worker that said "R" and then closed without reading the request (it gave up waiting for
    it) started nothing: the plugin does the work itself."""
    import select
    import threading
    path = str(tmp_path / "drop.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def drop():
        conn, _ = server.accept()
        conn.sendall(b"R")
        select.select([conn], [], [], 30)   # the request has arrived: close with it unread (RST)
        conn.close()

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    via(path)
    log = tmp_path / "op.log"
    try:
        out = plugins.run_plugin("host-local", "ADD", host_local_conf(tmp_path, log), netns="/run/netns/x")
    finally:
        thread.join(30)
        server.close()
    assert out.ok, out
    assert oplog(log)[0]["agent"].endswith("dropped the request unread"), oplog(log)
    assert len(leases(tmp_path)) == 1


# -- tracing the phases (tests/bench/breakdown.py) -----------------------------------------


def test_a_traced_request_gets_its_phases_and_the_next_worker_is_not_traced(agent, via, tmp_path, client):
    """UNDERLAY_TRACE_PHASES: the worker (and the compiled client) append their marks; the wrappers
    the traced worker put on die with it, so the next request's worker writes nothing."""
    via(agent)
    trace = tmp_path / "phases.jsonl"
    conf = host_local_conf(tmp_path)
    assert plugins.run_plugin("host-local", "ADD", conf, netns="/run/netns/x", container_id="t1",
                              extra={"UNDERLAY_TRACE_PHASES": str(trace)}).ok
    agent.wait_served(1)
    expected = 2 if client == "compiled" else 1     # cni/handoff.py writes no line of its own
    wait_for(lambda: trace.exists() and trace.read_text().count("\n") == expected, what="the trace's lines")
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    worker, = [x for x in lines if x["who"] == "worker"]
    names = [name for name, _ in worker["marks"]]
    if names[0] == "warmed up":   # by a spare that had warmed up before it accepted
        names.pop(0)
    assert names == ["accepted", "ready sent", "request received", "context taken on", "plugin start",
                     "plugin done", "answer sent", "closed"]
    times = [t for _, t in worker["marks"]]
    assert times == sorted(times)
    spans = {span[0] for span in worker["spans"]}
    assert {"read request (stdin JSON, env)", "config: schema", "lease's fsync (waited for)", "result"} <= spans, spans
    if client == "compiled":
        client_line, = [x for x in lines if x["who"] == "client"]
        assert [name for name, _ in client_line["marks"]] == ["main", "connected", "stdin read", "request made",
                                                              "ready received",
                                                              "request sent", "answer received",
                                                              "connection closed"]
    before = trace.read_text()
    assert plugins.run_plugin("host-local", "ADD", conf, netns="/run/netns/x", container_id="t2").ok
    agent.wait_served(2)
    assert trace.read_text() == before


@pytest.mark.skipif(not os.path.exists("/proc/pressure/cpu"), reason="this kernel has no PSI")
def test_a_spare_forked_while_every_core_is_busy_serves_cold(tmp_path, via, client):
    """A spare does not warm up while the cores are busy (worker.Cores, PSI): with twice as many busy
    loops as cores, the spare forked for the next request does not, and serves it as well."""
    agent = Agent("--spares", "1", directory=str(tmp_path / "run"))
    try:
        via(agent)
        conf = host_local_conf(tmp_path)
        with busy_cores():
            # the spare forked before the loops may have warmed up: this request takes it
            assert plugins.run_plugin("host-local", "ADD", conf, netns="/run/netns/x", container_id="c1").ok
            agent.wait_served(1)
            time.sleep(1)   # time enough for the next spare to warm up, were it to (~5 ms of CPU)
            trace = tmp_path / "phases.jsonl"
            assert plugins.run_plugin("host-local", "ADD", conf, netns="/run/netns/x", container_id="c2",
                                      extra={"UNDERLAY_TRACE_PHASES": str(trace)}).ok
            agent.wait_served(2)
        wait_for(lambda: trace.exists() and '"worker"' in trace.read_text(), what="the worker's trace line")
        worker, = [x for x in map(json.loads, trace.read_text().splitlines()) if x["who"] == "worker"]
        assert [name for name, _ in worker["marks"]][:2] == ["accepted", "ready sent"], worker["marks"]
    finally:
        agent.close()
    assert len(leases(tmp_path)) == 2


ENV_IPAM = """#!/bin/sh
env > "$(dirname "$0")/env.$CNI_CONTAINERID"
cat > /dev/null
echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.126.0.5/24", "gateway": "10.126.0.1"}]}'
"""


def test_a_request_sees_its_own_environment_and_nothing_of_the_agents_or_the_last_one(
        tmp_path, via, host_ns, master, pod_ns, monkeypatch):
    """A spare drops the agent's environment while it waits; the request's replaces it: what the
    plugin execs (an IPAM from CNI_PATH) sees the caller's variables and no others."""
    monkeypatch.setenv("UNDERLAY_TEST_AGENTS_OWN", "agent")
    (tmp_path / "run").mkdir()
    agent = Agent(directory=str(tmp_path / "run" / "underlay"))
    monkeypatch.delenv("UNDERLAY_TEST_AGENTS_OWN")
    try:
        via(agent)
        ipam_dir = tmp_path / "ipam"
        ipam_dir.mkdir()
        (ipam_dir / "envipam").write_text(ENV_IPAM)
        (ipam_dir / "envipam").chmod(0o755)
        conf = {"cniVersion": "1.0.0", "name": "envnet", "type": "macvlan", "master": master,
                "ipam": {"type": "envipam"}}
        for k in range(2):
            out = plugins.run_on_node("macvlan", "ADD", conf, host_ns, pod=pod_ns(), cid=f"env{k}", path=str(ipam_dir),
                                      extra={f"UNDERLAY_TEST_REQUEST_{k}": "mine"})
            assert out.ok, out
        assert [s[:2] for s in agent.wait_served(2)] == [("macvlan", "ADD")] * 2
        for k in range(2):
            seen = dict(line.split("=", 1) for line in (ipam_dir / f"env.env{k}").read_text().splitlines()
                        if "=" in line)
            assert seen.get(f"UNDERLAY_TEST_REQUEST_{k}") == "mine" and seen["CNI_CONTAINERID"] == f"env{k}"
            assert f"UNDERLAY_TEST_REQUEST_{1 - k}" not in seen and "UNDERLAY_TEST_AGENTS_OWN" not in seen, seen
    finally:
        agent.close()
