"""underlayd's bookkeeping and options, without sockets or forks (tests/reliability/test_agent.py runs it)."""

import os

import pytest

from cni.agent import metrics, options, pools, server, service, worker
from ipam import cluster


class Bookkeeping:
    """The agent's counting parts as cni/agent/__init__.py joins them, fed through a real report pipe."""

    def __init__(self, idle=(), busy=()):
        self.options = options.Options([])
        self.reports, self.metrics = service.Reports(), metrics.Metrics()
        self.metrics.listen(self.reports)
        self.reports.on("K", worker.note_served)
        self.server = server.Server(self.options, None, self.reports, self.metrics)
        self.server.idle, self.server.busy = set(idle), set(busy)

    def report(self, data):
        os.write(self.reports.write_fd, data)
        self.reports.read()


def test_a_worker_reaped_before_its_busy_report_frees_its_slot():
    """The race that once leaked a slot per occurrence (a burst then stalled with every slot 'busy')."""
    a = Bookkeeping(idle=[101, 102])
    a.server.exited(101, 0)                   # reaped: it served and exited before its report was read
    a.report(b"B 101\nB 102\n")
    assert a.server.busy == {102} and a.server.idle == set()


def test_reports_are_counted_and_split_across_reads():
    a = Bookkeeping(busy=[7])
    a.report(b"D 7 macvlan ADD 1 101 0.020000 -\nN 8\nA 9\nH 10 net")
    a.report(b"1 3\n")
    m = a.metrics
    assert m.requests == {("macvlan", "ADD", 101): 1} and m.refused == 1 and m.abandoned == 1
    assert m.healed == {"net1": 3}
    text = m.render(1, 2, a.options)
    assert 'underlay_agent_request_duration_seconds_bucket{plugin="macvlan",verb="ADD",le="0.025"} 1' in text
    assert 'underlay_agent_request_duration_seconds_bucket{plugin="macvlan",verb="ADD",le="0.01"} 0' in text


@pytest.mark.parametrize("args, fragment", [
    (["--workers", "0"], "--workers"), (["--spares", "x"], "--spares"), (["--socket", "a.sock"], "absolute"),
    (["--metrics", "9377"], "HOST:PORT"), (["--textfile", "/x.txt"], ".prom"), (["--heal-every", "-1"], "seconds"),
    (["--data-dir", "rel"], "absolute"), (["--queue"], "needs a value"), (["--nope"], "unknown option"),
    (["--cluster-data-dir", "rel"], "--cluster-data-dir: must be an absolute"),
    (["--dhcp-dir", "rel"], "--dhcp-dir: must be an absolute"), (["--dhcp-dir"], "needs a value"),
])
def test_bad_options_are_refused_naming_them(args, fragment):
    with pytest.raises(options.Usage, match=fragment):
        options.Options(args)


def test_options_defaults_and_forms():
    o = options.Options(["--socket=/run/x/u.sock", "--metrics", ":9377", "--workers", "2", "--spares", "5"])
    assert o.socket == "/run/x/u.sock" and o.metrics == ("0.0.0.0", 9377)
    assert o.workers == 2 and o.spares == 2          # never more spares than workers
    assert o.data_dirs == ["/var/lib/cni/networks"] and o.heal_every == options.DEFAULT_HEAL_EVERY
    assert o.cluster_data_dirs == [cluster.DEFAULT_DATA_DIR]   # cluster-ipam's own default, where ADD records
    o = options.Options(["--cluster-data-dir", "/a", "--cluster-data-dir=/b", "--data-dir", "/c"])
    assert o.cluster_data_dirs == ["/a", "/b"] and o.data_dirs == ["/c"]
    assert o.dhcp_dir == "/var/lib/cni/dhcp" and options.Options(["--dhcp-dir=/d"]).dhcp_dir == "/d"


@pytest.mark.parametrize("traceparent, expected", [
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "0af7651916cd43dd8448eb211c80319c"),
    (" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\n", "0af7651916cd43dd8448eb211c80319c"),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", "-"),   # the spec's invalid all-zero id
    ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "-"),   # upper case is not W3C's form
    ("00-0af7651916cd43dd8448eb211c80319c x-b7ad6b7169203331-01", "-"),  # nothing else reaches the log
    ("", "-"),
])
def test_the_served_line_names_the_callers_trace(traceparent, expected):
    assert worker.trace_id(traceparent) == expected


def test_a_served_report_with_a_trace_is_logged_with_it(capfd):
    a = Bookkeeping(busy=[7])
    a.report(b"D 7 macvlan ADD 0 0 0.002000 0af7651916cd43dd8448eb211c80319c\n"
             b"D 8 macvlan DEL 0 0 0.001000 -\n")
    err = capfd.readouterr().err
    assert "served macvlan ADD exit 0 in 2.0 ms (worker 7, trace 0af7651916cd43dd8448eb211c80319c)" in err
    assert "served macvlan DEL exit 0 in 1.0 ms (worker 8)\n" in err


def test_pool_label_values_are_escaped():
    """Network names come from directory and record names on disk: any character may be there."""
    rows = [pools.pool_row('a"b\\c\nd', "host-local", in_use=2)]
    text = pools.render_pools(rows, {("cluster-ipam", 'x"y'): False}, ["one"])
    assert 'underlay_pool_addresses{network="a\\"b\\\\c\\nd",ipam="host-local",state="in_use"} 2\n' in text
    assert 'underlay_pool_readable{network="x\\"y",ipam="cluster-ipam"} 0\n' in text
    assert "underlay_pool_problems 1\n" in text
    assert "underlay_pool_size_addresses{" not in text   # no size where the ranges are unknown


def test_a_cluster_ipam_network_directory_is_no_host_local_pool(tmp_path):
    """A dataDir given to both IPAMs: the directory holding cluster-ipam's record is cluster-ipam's
    (as `underlay leases` reads it), not a host-local network with 0 addresses in use."""
    (tmp_path / "hl").mkdir()
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / cluster.RECORD).write_text('{"name": "ci", "ipam": {"type": "cluster-ipam"}}')
    rows, readable, problems = pools.host_local_pools(str(tmp_path / "no-configs"), [str(tmp_path)])
    assert [r["network"] for r in rows] == ["hl"] and readable == {("host-local", "hl"): True}, (rows, problems)


def test_conflict_records_are_a_pool_state_of_their_own(tmp_path):
    """An address held as a conflict (conflictDetection) is neither in use nor free: state="conflict"."""
    import json
    from ipam.stores.disk import DiskStore
    data_dir, config_dir = tmp_path / "networks", tmp_path / "net.d"
    config_dir.mkdir()
    (config_dir / "lan.conf").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "lan", "type": "macvlan", "master": "eth0",
         "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.9.0.0/29"}]]}}))
    with DiskStore(str(data_dir), "lan") as store:
        assert store.reserve("10.9.0.2", "c1", "eth0", 0) and store.reserve("10.9.0.3", "c2", "eth0", 0)
        assert store.hold_conflict("10.9.0.3", "c2", "eth0", "02:00:00:00:00:09", 60)
    rows, readable, problems = pools.host_local_pools(str(config_dir), [])
    assert [(r["in_use"], r["conflict"], r["free"]) for r in rows] == [(1, 1, 3)] and not problems
    text = pools.render_pools(rows, readable, problems)
    assert 'underlay_pool_addresses{network="lan",ipam="host-local",set="0",ranges="10.9.0.0/29 ' \
           '10.9.0.1-10.9.0.6",state="conflict"} 1\n' in text


def sent_and_received(payload, chunks=None):
    """What worker.receive makes of `payload` sent as cni/handoff.py sends it (or as raw `chunks`
    after the first, fd-carrying one), over a real socketpair with real fds."""
    import socket
    from cni import handoff
    client, agent = socket.socketpair()
    try:
        if chunks is None:
            handoff.send_request(client, payload)
        else:
            first, *rest = chunks
            client.sendmsg([first], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      b"".join(fd.to_bytes(4, "little") for fd in (1, 2, 0, 0, 0, 0)))])
            for chunk in rest:
                client.sendall(chunk)
        client.shutdown(socket.SHUT_WR)
        request = worker.receive(agent)
        if request is not None:
            for fd in (request.stdout, request.stderr, request.netns, request.mntns, request.root, request.cwd):
                os.close(fd)
        return request
    finally:
        client.close()
        agent.close()


@pytest.mark.parametrize("stdin_size", [0, 100, 3 * worker.RECEIVE_SIZE])   # larger: several reads
def test_a_request_is_read_whole_with_its_fds_and_a_stdin_holding_nuls(stdin_size):
    from cni import handoff
    stdin = (b'{"a": 1}\0\0x' * stdin_size)[:stdin_size]
    env = {"CNI_COMMAND": "ADD", "EMPTY": "", "WITH=EQUALS": "x=y", "BYTES": "\udcff"}
    mask = os.umask(0o027)
    try:
        request = sent_and_received(handoff.request_payload("underlay-macvlan", ["/opt/cni/bin/macvlan", "-x", ""],
                                                            env, stdin))
    finally:
        os.umask(mask)
    assert request.plugin == "macvlan"
    assert request.argv == ["/opt/cni/bin/macvlan", "-x", ""]
    assert request.env == [b"CNI_COMMAND=ADD", b"EMPTY=", b"WITH=EQUALS=x=y", b"BYTES=\xff"]
    assert request.stdin == stdin
    assert request.umask == 0o027


@pytest.mark.parametrize("body", [
    b"underlay/2\0macvlan\0" b"22\0" b"0\0" b"0\0",            # another protocol
    b"underlay/1\0macvlan\0" b"22\0" b"2\0" b"a\0",            # fewer args than said
    b"underlay/1\0macvlan\0" b"22\0" b"0\0" b"3\0" b"A=1\0",   # fewer env entries than said
    b"underlay/1\0macvlan\0" b"22\0" b"x\0" b"0\0",            # not a count
    b"underlay/1\0macvlan",                                      # cut short
])
def test_a_malformed_request_is_none(body):
    assert sent_and_received(None, [len(body).to_bytes(8, "big") + body]) is None


def test_a_request_shorter_than_its_length_or_longer_is_none():
    body = b"underlay/1\0macvlan\0" b"22\0" b"0\0" b"0\0{}"
    assert sent_and_received(None, [(len(body) + 5).to_bytes(8, "big") + body]) is None
    assert sent_and_received(None, [(len(body) - 1).to_bytes(8, "big") + body]) is None
    assert sent_and_received(None, [len(body).to_bytes(8, "big")[:3], len(body).to_bytes(8, "big")[3:] + body]) \
        .stdin == b"{}"


KINDS = [worker.FIRST_KIND, ("ipvlan", "host-local"), ("macvlan", "cluster-ipam"), ("host-local", "host-local"),
         ("cluster-ipam", "cluster-ipam"), ("macvlan", None), ("dhcp", None)]


def preloaded():
    """The modules a spare's samples run, imported as the agent's preload does."""
    import importlib
    for name in list(worker.PLUGINS.values()) + ["cni.results"] + ["cni.schemas." + p.replace("-", "_")
                                                                  for p in worker.PLUGINS]:
        importlib.import_module(name)


@pytest.mark.parametrize("kind", KINDS)
def test_the_sample_a_spare_warms_up_with_reads_cleanly(kind):
    """prepare() swallows its warm-up's errors (a spare is never lost to it): a sample a config rule
    no longer takes would silently warm nothing up. Each kind's reads like a request: the schemas, its
    IPAM's config, without a warning."""
    from cni import contract, dispatch, registry
    preloaded()
    worker.read_sample(kind)
    request = contract.read_request(worker.SAMPLE_ENV, worker.sample_config(kind))
    if kind[0] in worker.LINK_PLUGINS:
        registry.EXECUTABLES[kind[0]] and dispatch.plugin_module(registry.EXECUTABLES[kind[0]]).KIND.load(request)
    if kind[1] is not None:
        dispatch.load_ipam_config(request)
        assert request.ipam_config is not None
    assert request.warnings == []


@pytest.mark.parametrize("kind, link, ipam", [
    (("macvlan", "host-local"), "macvlan", "host-local"), (("ipvlan", "cluster-ipam"), "ipvlan", "cluster-ipam"),
    (("cluster-ipam", "cluster-ipam"), None, "cluster-ipam"), (("host-local", "host-local"), None, "host-local"),
    (("macvlan", None), "macvlan", None), (("dhcp", None), None, None)])
def test_a_spare_rehearses_only_the_parts_its_kind_of_request_runs(kind, link, ipam, monkeypatch):
    """A cluster-ipam request alone runs no link and no host-local: its spare rehearses neither (CPU
    for nothing, ~2 ms a request), and a macvlan one with cluster-ipam no host-local."""
    from cni.plugins import child_link
    from ipam import host_local
    preloaded()
    rehearsed = []
    real_link, real = child_link.rehearse, {"host-local": host_local.rehearse, "cluster-ipam": cluster.rehearse}
    monkeypatch.setattr(child_link, "rehearse", lambda k, r: rehearsed.append(k.name) or real_link(k, r))
    for name, module in (("host-local", host_local), ("cluster-ipam", cluster)):
        monkeypatch.setattr(module, "rehearse", lambda r, name=name: rehearsed.append(name) or real[name](r))
    worker.read_sample(kind)
    assert rehearsed == [part for part in (link, ipam) if part]


def test_spares_warm_up_for_the_kinds_the_agent_served_last(monkeypatch):
    """What the next spares rehearse follows the kinds of request served (the worker's "K" report), the
    latest first, each once, the last RECENT requests; before any, a macvlan + host-local one. Only
    names of this build's plugins and IPAMs are kept: a kind is no request data."""
    monkeypatch.setattr(worker, "recent", [])
    a = Bookkeeping()
    assert worker.kinds_to_warm() == [("macvlan", "host-local")]
    a.report(b"K 7 cluster-ipam cluster-ipam\nD 7 cluster-ipam ADD 0 0 0.006000 -\n")   # as a worker writes them
    assert worker.kinds_to_warm() == [("cluster-ipam", "cluster-ipam")]
    assert a.metrics.requests == {("cluster-ipam", "ADD", 0): 1}
    a.report(b"K 8 cluster-ipam cluster-ipam\nK 9 macvlan host-local\nK 10 cluster-ipam cluster-ipam\n")
    assert worker.kinds_to_warm() == [("cluster-ipam", "cluster-ipam"), ("macvlan", "host-local")]
    a.report(b"K 11 nonsuch host-local\nK 12 ipvlan /etc/passwd\nK 13 ipvlan -\n")
    assert worker.kinds_to_warm() == [("ipvlan", None), ("cluster-ipam", "cluster-ipam"), ("macvlan", "host-local")]
    a.report(b"".join(b"K %d host-local host-local\n" % pid for pid in range(14, 14 + worker.RECENT)))
    assert worker.kinds_to_warm() == [("host-local", "host-local")]


def test_a_caller_coming_during_the_warm_up_stops_it_at_the_next_kind(monkeypatch):
    """A spare warming up for several kinds looks for a caller after each: one that comes during the
    first kind's sample is served then, not after the others and the rehearsal."""
    import socket
    listener, caller = socket.socketpair()
    with listener, caller:
        monkeypatch.setattr(worker, "WARM_UP_AFTER", 0)
        monkeypatch.setattr(worker.Cores, "busy", lambda self: False)   # whatever else runs beside the test
        monkeypatch.setattr(worker, "recent", [("cluster-ipam", "cluster-ipam"), ("macvlan", "host-local")])
        read, rehearsed = [], []
        monkeypatch.setattr(worker, "read_sample", lambda kind: read.append(kind) or caller.send(b"R"))
        monkeypatch.setattr(worker, "rehearse", lambda: rehearsed.append(True))
        monkeypatch.setattr(worker.os, "environb", {})   # prepare() clears the agent's environment
        worker.prepare(listener)
    assert read == [("macvlan", "host-local")] and rehearsed == []


@pytest.mark.parametrize("busy_after", [0, 1, 2])
def test_a_spare_warms_up_only_while_the_cores_are_not_busy(busy_after, monkeypatch):
    """The cores busy since the spare last looked (before each kind and before the rehearsal): the
    spare stops warming up there, and waits for its caller cold (a warm-up spends more CPU than it spares)."""
    import socket
    listener, caller = socket.socketpair()
    with listener, caller:
        looks = []
        monkeypatch.setattr(worker, "WARM_UP_AFTER", 0)
        monkeypatch.setattr(worker.Cores, "busy", lambda self: looks.append(True) or len(looks) > busy_after)
        monkeypatch.setattr(worker, "recent", [("cluster-ipam", "cluster-ipam"), ("macvlan", "host-local")])
        read, rehearsed = [], []
        monkeypatch.setattr(worker, "read_sample", lambda kind: read.append(kind))
        monkeypatch.setattr(worker, "rehearse", lambda: rehearsed.append(True))
        monkeypatch.setattr(worker.os, "environb", {})
        worker.prepare(listener)
    assert read == [("macvlan", "host-local"), ("cluster-ipam", "cluster-ipam")][:busy_after]
    assert rehearsed == [] and len(looks) == busy_after + 1


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("share, seconds, busy", [
    (0, 0.010, False), (0.9, 0.010, True), (15, 0.010, True), (0.9, 0.002, True), (0.9, 1.5, True),
    ("below", 0.010, False), ("above", 0.010, True), ("below", 0.002, False), ("above", 0.002, True)])
def test_the_cores_are_busy_when_some_task_waited_for_one_over_busy_share_of_the_time(share, seconds, busy, tmp_path):
    """PSI's "some" CPU stall (microseconds since boot) against the time passed since the last look."""
    share = {"below": worker.BUSY_SHARE * 0.9, "above": worker.BUSY_SHARE * 1.1}.get(share, share)
    pressure, clock = tmp_path / "cpu", Clock()
    line = "some avg10=1.00 avg60=2.00 avg300=3.00 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    pressure.write_text(line.format(25_341_364_830))
    cores = worker.Cores(str(pressure), clock)
    pressure.write_text(line.format(25_341_364_830 + round(share * seconds * 1e6)))
    clock.now += seconds
    assert cores.busy() is busy
    clock.now += seconds   # and the next look is against this one: no stall since
    assert cores.busy() is False


@pytest.mark.parametrize("text", [None, "", "some avg10=0.00\n", "some total=x\n"])
def test_without_psi_the_cores_are_never_busy(text, tmp_path):
    """No /proc/pressure/cpu (a kernel without PSI, or booted with psi=0: reading it fails), or a
    line not understood: warm up, as before."""
    pressure, clock = tmp_path / "cpu", Clock()
    if text is not None:
        pressure.write_text(text)
    cores = worker.Cores(str(pressure), clock)
    clock.now += 1
    assert cores.busy() is False


@pytest.mark.skipif(not os.path.exists("/proc/pressure/cpu"), reason="this kernel has no PSI")
def test_the_cores_are_busy_while_more_tasks_than_cores_spin():
    """The real /proc/pressure/cpu, with twice as many busy loops as this process's cores."""
    import time
    from tests.agent import busy_cores
    with busy_cores():
        watch = worker.Cores()
        seen = []
        for _ in range(5):
            time.sleep(0.02)
            seen.append(watch.busy())
    assert all(seen), seen


@pytest.mark.parametrize("plugin, stdin, kind", [
    ("macvlan", b'{"ipam": {"type": "cluster-ipam"}}', ("macvlan", "cluster-ipam")),
    ("ipvlan", b'{"ipam": {"type": "underlay-host-local"}}', ("ipvlan", "host-local")),
    ("macvlan", b'{"ipam": {"type": "dhcp"}}', ("macvlan", "-")),
    ("macvlan", b'{"ipam": {"type": "static"}}', ("macvlan", "-")),
    ("macvlan", b'{"ipam": {"type": "../x"}}', ("macvlan", "-")),
    ("macvlan", b"{", ("macvlan", "-")), ("macvlan", b"[]", ("macvlan", "-")),
    ("cluster-ipam", b"{", ("cluster-ipam", "cluster-ipam")), ("host-local", b"", ("host-local", "host-local")),
    ("dhcp", b"{}", ("dhcp", "-"))])
def test_the_kind_a_worker_reports_is_its_plugin_and_ipam(plugin, stdin, kind):
    import types
    assert worker.kind_of(types.SimpleNamespace(plugin=plugin, stdin=stdin)) == kind


@pytest.mark.root
@pytest.mark.parametrize("fd0", ["as it is", "a socket of the agent's"])   # started with fd 0 closed
def test_a_spares_rehearsal_takes_on_its_own_context_and_leaves_what_a_request_sees_as_it_was(fd0):
    """rehearse() receives the constant sample from the spare itself and takes on the spare's own
    context (prepare() swallows its errors: a rehearsal that fails would silently warm nothing up).
    After it, all a request could see is as before: the streams, argv, an empty environment, the
    root, cwd, umask, the open fds and what fds 0-2 are. In a fork: it takes on a context."""
    import importlib
    import json
    import stat
    import sys
    importlib.import_module(worker.PLUGINS[worker.SAMPLE_PLUGIN])   # as the agent's preload does

    def state():
        mask = os.umask(0)
        os.umask(mask)
        std = [os.fstat(fd)[stat.ST_INO:stat.ST_DEV + 1] + (os.get_inheritable(fd),) for fd in (0, 1, 2)]
        return {"objects": [id(sys.stdin), id(sys.stdout), id(sys.stderr), id(sys.argv)], "argv": sys.argv,
                "environ": dict(os.environ), "root": os.stat("/")[stat.ST_INO:stat.ST_DEV + 1],
                "cwd": os.getcwd(), "umask": mask, "fds 0-2": std, "fds": sorted(os.listdir("/proc/self/fd"))}

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover (the child)
        try:
            os.close(r)
            os.environ.clear()   # as prepare() leaves it
            if fd0 != "as it is":
                import socket
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                os.dup2(listener.fileno(), 0, inheritable=False)
            before = state()
            worker.rehearse()
            outcome = {"before": before, "after": state()}
        except BaseException as e:
            outcome = {"error": repr(e)}
        os.write(w, json.dumps(outcome).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        outcome = json.loads(f.read())
    os.waitpid(pid, 0)
    assert "error" not in outcome, outcome
    assert outcome["after"] == outcome["before"]


def open_fds():
    """This process's fds as (number, what it is open on): a number closed and reused is a new fd."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except FileNotFoundError:   # listdir's own fd, closed since
            pass
    return fds


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The warm-up's temporary data dir made under tmp_path, to see it removed."""
    from cni.agent import preload
    monkeypatch.setattr(preload, "WARM_UP_DIRS", (str(tmp_path),))
    return tmp_path


@pytest.mark.root
def test_the_agent_warms_up_on_a_sample_and_leaves_nothing_behind(private_tmp, capfd):
    """preload.warm_up() runs the sample ADD, CHECK and DEL in namespaces of its own and swallows its
    errors (the workers then only run cold): a sample that stopped working would go unnoticed but
    for this. Afterwards the process is back in its own netns, its environment and cwd untouched,
    the data dir gone, no fd left open."""
    from cni.agent import preload
    from cni.net import netns
    import sys
    import threading
    before = (os.readlink(netns.SELF), dict(os.environ), os.getcwd())
    fds, threads = open_fds(), set(threading.enumerate())
    connected, recording = [], [True]
    sys.addaudithook(lambda event, args: recording and event == "socket.connect" and connected.append(args[1]))
    try:
        preload.warm_up()
    finally:
        recording.clear()
    log = capfd.readouterr().err
    assert f"warmed up: {preload.WARM_UP_ROUNDS} sample ADD, CHECK and DEL" in log, log
    assert f"warmed up: {preload.WARM_UP_ROUNDS} cluster-ipam ADD and DEL" in log, log
    assert (os.readlink(netns.SELF), dict(os.environ), os.getcwd()) == before
    # what warm_up added, only: an fd or thread of an earlier test in this process may end meanwhile
    assert open_fds() - fds == set()
    assert set(threading.enumerate()) - threads == set()
    assert list(private_tmp.iterdir()) == []
    # cluster-ipam's etcd was the canned one, on the loopback of the warm-up's own namespace: no etcd contacted
    assert connected and {address[0] for address in connected} == {"127.0.0.1"}


@pytest.mark.root
def test_a_warm_up_that_fails_midway_is_skipped_and_undone(private_tmp, capfd, monkeypatch):
    """An ADD done, then the CHECK fails: the link and lease die with the private namespaces and
    the data dir; the agent is back home and starts (cold) all the same."""
    from cni import dispatch
    from cni.agent import preload
    from cni.net import netns
    real = dispatch.run

    def failing_check(plugin, verbs, env=None, **kwargs):
        return 1 if env["CNI_COMMAND"] == "CHECK" else real(plugin, verbs, env=env, **kwargs)
    monkeypatch.setattr(dispatch, "run", failing_check)
    home = os.readlink(netns.SELF)
    preload.warm_up()
    assert "warm-up skipped: RuntimeError: CHECK" in capfd.readouterr().err
    assert os.readlink(netns.SELF) == home and list(private_tmp.iterdir()) == []


@pytest.mark.root
def test_a_cluster_ipam_warm_up_that_fails_is_skipped_and_undone(private_tmp, capfd, monkeypatch):
    """Its canned etcd unable to answer: that part is skipped (the workers run cluster-ipam cold), the
    macvlan part done all the same; the agent is back home, its thread and data dir gone."""
    import threading
    from cni.agent import preload
    from cni.net import netns

    def broken(self, request):
        raise ValueError("no answer")
    monkeypatch.setattr(preload.CannedEtcd, "answer", broken)
    home, threads = os.readlink(netns.SELF), set(threading.enumerate())
    preload.warm_up()
    log = capfd.readouterr().err
    assert f"warmed up: {preload.WARM_UP_ROUNDS} sample ADD, CHECK and DEL" in log
    assert "cluster-ipam's warm-up skipped: RuntimeError: ADD" in log, log
    assert os.readlink(netns.SELF) == home and list(private_tmp.iterdir()) == []
    assert set(threading.enumerate()) - threads == set()    # an earlier test's thread may end meanwhile


@pytest.mark.parametrize("kind", KINDS)
def test_a_spare_s_rehearsal_touches_nothing_a_request_could_see(kind):
    """read_sample rehearses what the sample's ADD computes, in every spare before a caller
    comes: no file, socket, lock or namespace may be touched (Python's audit events of them), no
    background fsync left for a request to wait for."""
    import sys
    from cni import files
    preloaded()
    syncing = list(files._syncing)
    events, recording = [], []
    sys.addaudithook(lambda event, args: recording and events.append(event))   # stays: records only here
    recording.append(True)
    try:
        worker.read_sample(kind)
    finally:
        recording.clear()
    assert [e for e in events if e.startswith(("open", "os.", "socket.", "fcntl.", "ctypes.", "subprocess.",
                                                 "shutil.", "tempfile."))] == []
    assert files._syncing == syncing
