"""cluster-ipam when etcd fails: members killed (one, the leader, two, all), mid-run of parallel ADDs,
answers lost after a write went out, TLS with client certificates. Real etcd members (tests/etcd.py),
cluster-ipam exec'd as a runtime does; where a link is involved, our macvlan in real namespaces.

What every test holds it to: code 11 within `requestTimeout` when etcd cannot serve, nothing
half-done (no lease or block in etcd, nothing in dataDir that claims an address, no link), the
same ADD moving to another endpoint when one member is gone, and once etcd is back, ADDs working
with no manual step; never an address handed out twice, never one lost.
"""

import concurrent.futures
import fcntl
import ipaddress
import json
import os
import signal
import time

import pytest

from tests import netns as ns
from tests.cluster.conftest import addresses, error
from tests.cluster.conftest import dir_snapshot, start_nodes, wait_nodes
from tests.cluster.proxy import FaultProxy, is_claim, is_release
from tests.plugins import run_on_node

pytestmark = pytest.mark.etcd

SUBNET = "10.80.0.0/24"
# The bound is requestTimeout, and the answer names it ("within 2s": given only once its deadline
# passed). `took < 2 + SLACK` only rules out a hang or retrying far past the deadline: SLACK is
# generous so that no load on the machine can fail it (speed is never asserted).
SLACK = 30


def timed(fn, *args, **kw):
    start = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - start


def only_config(cl, *subnets):
    """The keys of a range nobody holds anything in: each pool's config alone."""
    return {f"pools/{s}/config" for s in subnets or (SUBNET,)}


def no_address_claimed(snapshot):
    """dataDir holds the node lock and the last-reserved cache, never a lease: assert no file claims one."""
    for name in snapshot:
        leaf = name.rsplit("/", 1)[-1]
        assert leaf == "lock" or leaf.startswith("last_reserved_ip."), f"dataDir has {name}"


# --------------------------------------------------------------------------
# etcd unreachable

def test_unreachable_and_silent_endpoints_are_code_11_within_request_timeout(make_cl, silent_endpoint, tmp_path):
    cl = make_cl(1)
    # a refused port, an unroutable address, and a listener that accepts and never answers
    for endpoints in (["http://127.0.0.1:9", "http://192.0.2.1:2379"], [silent_endpoint]):
        conf = cl.conf(SUBNET, etcd={"endpoints": endpoints, "prefix": cl.prefix, "requestTimeout": 2,
                                     "dialTimeout": 0.5})
        out, took = timed(cl.add, conf, "c1")
        error(out, 11, "within 2s")
        assert took < 2 + SLACK, took
        no_address_claimed(dir_snapshot(cl.data_dir("n1")))
    assert cl.keys() == {}


def hold_node_lock(cl, node="n1", network="net1"):
    """The node lock of (node, network), taken by the test: an ADD that got it first and is slow on etcd."""
    directory = os.path.join(cl.data_dir(node), network)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def waiting_on(fd):
    """How many processes wait for the flock of fd's file (/proc/locks' "->" lines)."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and line.split()[6:7] == [where])


def test_etcd_down_every_add_and_del_of_a_node_names_etcd_never_the_node_lock(make_cl):
    """etcd down, concurrent ADDs and DELs on one node, the node lock held meanwhile (as by an ADD slow on
    etcd): each answers code 11 naming etcd, within its requestTimeout, none queues on the lock and
    answers "lock held" at lockTimeout (lockTimeout < requestTimeout makes a queue show)."""
    cl = make_cl(1)
    conf = cl.conf(SUBNET, lockTimeout=1, etcd=cl.etcd_conf(requestTimeout=2, dialTimeout=0.5))
    assert cl.add(conf, "c0").ok
    cl.etcd.kill(0)
    fd = hold_node_lock(cl)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda verb_cid: cl.run(verb_cid[0], conf, verb_cid[1]),
                                 [("ADD", f"c{n}") for n in range(1, 7)] + [("DEL", "c0"), ("DEL", "c1")]))
    finally:
        os.close(fd)
    for out in outs:
        error(out, 11, "etcd: no endpoint answered within 2s")
        assert "lock" not in out.json["msg"] + out.json["details"], out
    cl.etcd.start(0)
    assert [lease["containerID"] for lease in cl.leases().values()] == ["c0"]   # nothing done, nothing undone


def test_etcd_gone_while_an_add_waits_on_the_node_lock_is_named_as_the_cause(make_cl):
    """etcd answered, the ADD queued on the node lock, then etcd died: the lock wait's expiry names etcd
    (the holder is most likely slow on it), the lock as what happened meanwhile."""
    cl = make_cl(1)
    conf = cl.conf(SUBNET, lockTimeout=2, etcd=cl.etcd_conf(requestTimeout=2, dialTimeout=0.5))
    fd = hold_node_lock(cl)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(cl.add, conf, "c1")
            while not waiting_on(fd):
                assert not waiting.done(), waiting.result()
                time.sleep(0.01)
            cl.etcd.kill(0)
            out = waiting.result()
    finally:
        os.close(fd)
    error(out, 11, "etcd: no endpoint answered within 2s")
    assert "meanwhile try again later: " in out.json["details"] and "/lock is held" in out.json["details"], out
    cl.etcd.start(0)
    assert cl.keys() == {}


@pytest.mark.root
def test_our_macvlan_with_etcd_unreachable_is_11_and_leaves_no_link_no_lease(host_ns, master, pod_ns, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()                      # nothing to exec: cluster-ipam runs in-process
    data_dir = tmp_path / "n1"
    conf = {"cniVersion": "1.1.0", "name": "ucimv", "type": "macvlan", "master": master,
            "ipam": {"type": "cluster-ipam", "node": "n1", "dataDir": str(data_dir),
                     "etcd": {"endpoints": ["http://127.0.0.1:9", "http://192.0.2.1:2379"],
                              "requestTimeout": 2, "dialTimeout": 0.5},
                     "ranges": [[{"subnet": "10.81.0.0/24"}]]}}
    pod = pod_ns()
    host_links = sorted(ns.links(host_ns))
    out, took = timed(run_on_node, "macvlan", "ADD", conf, host_ns, pod, cid="c1", path=str(empty))
    assert out.cni_code == 11 and "no endpoint answered within 2s" in out.json["msg"], out
    assert took < 2 + SLACK, took
    assert ns.links(pod) == ["lo"]
    assert sorted(ns.links(host_ns)) == host_links
    no_address_claimed(dir_snapshot(data_dir))
    # DEL must ask etcd what the attachment holds: 11 too, and the runtime repeats it later
    gone = run_on_node("macvlan", "DEL", conf, host_ns, pod, cid="c1", path=str(empty))
    assert gone.cni_code == 11, gone
    assert ns.links(pod) == ["lo"]


# --------------------------------------------------------------------------
# One member of three killed

@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_one_member_sigkilled_the_same_add_moves_to_another_endpoint(make_cl, victim):
    cl = make_cl(3)
    leader = cl.etcd.leader()
    i = leader if victim == "leader" else (leader + 1) % 3
    first = [cl.etcd.endpoints[i]] + [e for j, e in enumerate(cl.etcd.endpoints) if j != i]
    conf = cl.conf(SUBNET, etcd=cl.etcd_conf(endpoints=first, requestTimeout=10))
    before = addresses(cl.add(conf, "before"))
    cl.etcd.kill(i)                                  # the dead member is the first endpoint of every exec
    during = addresses(cl.add(conf, "during"))       # one ADD: it must move on by itself
    assert during != before
    out = cl.add(conf, "during")                     # (the same attachment twice is refused, as host-local)
    error(out, 101, "duplicate allocation is not allowed")
    assert cl.run("CHECK", dict(conf, prevResult={"cniVersion": "1.1.0", "ips": [
        {"address": f"{during[0]}/24", "gateway": "10.80.0.1"}]}), "during").ok
    assert cl.delete(conf, "before").ok
    cl.etcd.start(i)
    assert sorted(cl.leases()) == during
    assert cl.delete(conf, "during").ok
    assert set(cl.keys()) == only_config(cl)


@pytest.mark.parametrize("first", ["leader", "follower"])
def test_leader_sigkilled_mid_burst_of_parallel_adds_costs_no_add(make_cl, tmp_path, first):
    """4 simulated nodes x 15 ADDs, the leader SIGKILLed once 20 have answered. An election takes
    1-2 s, requestTimeout is 5 s: every ADD in flight must succeed by itself, none answering 11 (the
    simulated runtime would retry it, and records every such answer). A follower holds a write
    sent to the dead leader for etcd's 7 s: the client gives up on it at half the call, reads the
    outcome once a new leader answers and repeats the guarded txn. `first`: the member every node
    names first (the dead leader: its connections break; a follower: writes held). 0 duplicates,
    no lease but the successful ADDs', then all DELs and the range is whole."""
    nodes, per_node, kill_after = 4, 15, 20
    subnet, exclude, aux = "10.82.0.0/22", ["10.82.1.0/28"], {"router": "10.82.2.1"}
    cl = make_cl(3)
    leader = cl.etcd.leader()
    i = leader if first == "leader" else (leader + 1) % 3
    eps = [cl.etcd.endpoints[i]] + [e for j, e in enumerate(cl.etcd.endpoints) if j != i]
    confs = {f"n{i}": cl.conf(subnet, node=f"n{i}", exclude=exclude, auxAddresses=aux, blockSize=27,
                              etcd=cl.etcd_conf(endpoints=eps, requestTimeout=5))
             for i in range(nodes)}
    progress = tmp_path / "progress"
    progress.touch()
    procs = start_nodes(confs, "ADD", per_node, tmp_path, progress)
    while progress.stat().st_size < kill_after:
        assert any(p.poll() is None for p, _ in procs.values()), "the simulated nodes stopped early"
        time.sleep(0.01)
    cl.etcd.kill(leader)
    killed_at = progress.stat().st_size
    added = wait_nodes(procs)
    assert killed_at < nodes * per_node, "the kill came after the run"

    retried = [f for run in added.values() for f in run["failed"]]
    assert not retried, f"leader {leader} SIGKILLed after {killed_at} ADDs: answered 11: {retried}"
    got = []
    for node, run in added.items():
        for r in run["results"]:
            assert r["code"] == 0 and r["tries"] == 1, (node, r)
            got += [ip["address"].split("/")[0] for ip in json.loads(r["out"])["ips"]]
    assert len(got) == nodes * per_node
    assert len(set(got)) == len(got), "duplicate addresses"
    net = ipaddress.ip_network(subnet)
    assert not [ip for ip in got if ipaddress.ip_address(ip) in ipaddress.ip_network(exclude[0])
                or ip in aux.values() or ipaddress.ip_address(ip) in (net.network_address + 1,
                                                                     net.broadcast_address)]
    assert sorted(cl.leases()) == sorted(got), "a lease in etcd that no successful ADD handed out"
    assert not [m for node in confs for m in cl.marks(node)], "an ADD left half-done"
    slowest = max(r["seconds"] for run in added.values() for r in run["results"])
    print(f"\nleader {leader} SIGKILLed after {killed_at}/{nodes * per_node} ADDs; the slowest took {slowest:.1f}s")

    deleted = wait_nodes(start_nodes(confs, "DEL", per_node, tmp_path))
    assert all(r["code"] == 0 for run in deleted.values() for r in run["results"])
    cl.etcd.start(leader)
    assert set(cl.keys()) == only_config(cl, subnet)


# --------------------------------------------------------------------------
# Two members of three down

def test_two_members_down_is_11_within_the_bound_nothing_half_done_then_back_with_no_manual_step(make_cl):
    cl = make_cl(3)
    conf = cl.conf(SUBNET, etcd=cl.etcd_conf(requestTimeout=2, dialTimeout=0.5))
    [kept] = addresses(cl.add(conf, "c1"))
    keys_before = cl.keys()
    files_before = dir_snapshot(cl.data_dir("n1"))
    leader = cl.etcd.leader()
    down = [leader, (leader + 1) % 3]
    for i in down:
        cl.etcd.kill(i)
    out, took = timed(cl.add, conf, "c2")
    error(out, 11, "no endpoint answered within 2s")
    assert took < 2 + SLACK, took
    out, took = timed(cl.delete, conf, "c1")        # a DEL cannot release either, and must not half-release
    error(out, 11)
    assert took < 2 + SLACK, took
    files = dir_snapshot(cl.data_dir("n1"))
    # the ADD's mark may stay: a claim sent to the member left, which cannot answer it, is in doubt
    assert files.pop("net1/adding/c2@eth0", b"") == b"" and files == files_before
    cl.etcd.start(*down)
    assert cl.keys() == keys_before                 # no lease, attachment or block changed
    [again] = addresses(cl.add(conf, "c2"))         # the same config, nothing done by hand
    assert again != kept and cl.marks() == []
    assert cl.delete(conf, "c1").ok and cl.delete(conf, "c2").ok
    assert set(cl.keys()) == only_config(cl)


# --------------------------------------------------------------------------
# A write whose answer was lost: etcd applied it, the client could not know

@pytest.fixture
def lossy(make_cl):
    """(Cluster on one member, FaultProxy in front of it, a config going through the proxy)."""
    cl = make_cl(1)
    with FaultProxy(cl.etcd.endpoints[0]) as proxy:
        yield cl, proxy, cl.conf(SUBNET, etcd=cl.etcd_conf(endpoints=[proxy.url], requestTimeout=2,
                                                           dialTimeout=0.5))


def test_lost_claim_answer_the_add_recognises_its_own_claim(lossy):
    """etcd applied the claim, its answer never came: the same ADD reads the outcome and succeeds
    with that one address, nothing taken twice."""
    cl, proxy, conf = lossy
    proxy.lose_answer(is_claim)
    [ip] = addresses(cl.add(conf, "c1"))
    assert len(proxy.lost) == 1                                   # the claim did go out, once
    lease = cl.leases()
    assert list(lease) == [ip] and lease[ip]["containerID"] == "c1"
    [block] = [v for k, v in cl.keys("pools/").items() if "/blocks/" in k]
    assert len(block["used"]) == 1
    assert cl.delete(conf, "c1").ok
    assert set(cl.keys()) == only_config(cl)


def test_lost_claim_answer_with_etcd_gone_the_lease_is_never_handed_out_again_and_del_or_gc_frees_it(lossy):
    cl, proxy, conf = lossy
    for cid in ("c1", "c2"):
        proxy.lose_answer(is_claim, then_refuse=True)    # etcd gone right after: no read of the outcome,
        error(cl.add(conf, cid), 11, "no endpoint answered")   # no rollback either
        proxy.refuse = False
    left = cl.leases()
    assert sorted(v["containerID"] for v in left.values()) == ["c1", "c2"]   # kept: its ADD failed, not etcd
    # nobody else gets those addresses meanwhile
    others = [addresses(cl.add(conf, f"o{n}"))[0] for n in range(5)]
    assert not set(others) & set(left)
    # the runtime's DEL of the failed attachment frees it ...
    assert cl.delete(conf, "c1").ok
    # ... and a node's GC frees one whose DEL never came
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": f"o{n}", "ifname": "eth0"} for n in range(5)]})
    assert cl.run("GC", gc, cid=None).ok
    assert sorted(cl.leases()) == sorted(others)
    for n in range(5):
        assert cl.delete(conf, f"o{n}").ok
    assert set(cl.keys()) == only_config(cl)


def test_retried_add_after_a_lost_claim_answer_recognises_its_own_lease(lossy):
    """A runtime retries an ADD answered 11 ("try again later") as it was. When the claim was applied
    but its answer lost and the rollback could not reach etcd, that lease is the attachment's own:
    the retry must succeed (giving it, or another address with it released), not refuse forever."""
    cl, proxy, conf = lossy
    proxy.lose_answer(is_claim, then_refuse=True)
    error(cl.add(conf, "c1"), 11, "no endpoint answered")
    proxy.refuse = False
    [left] = cl.leases()
    out = cl.add(conf, "c1")
    assert out.ok, f"the retried ADD of c1 (its own lease {left} left by the lost claim) failed: {out}"
    assert set(cl.leases()) == set(addresses(out))                # exactly one lease: nothing leaked
    assert cl.delete(conf, "c1").ok
    assert set(cl.keys()) == only_config(cl)


def test_lost_release_answer_the_del_recognises_its_own_release(lossy):
    cl, proxy, conf = lossy
    [ip] = addresses(cl.add(conf, "c1"))
    proxy.lose_answer(is_release)
    assert cl.delete(conf, "c1").ok
    assert len(proxy.lost) == 1
    assert set(cl.keys()) == only_config(cl)
    asked = dict(conf, args={"cni": {"ips": [ip]}})
    assert addresses(cl.add(asked, "c2")) == [ip]                 # the address is free for anyone
    assert cl.delete(conf, "c2").ok


def test_lost_release_answer_with_etcd_gone_the_retried_del_finishes(lossy):
    cl, proxy, conf = lossy
    [ip] = addresses(cl.add(conf, "c1"))
    proxy.lose_answer(is_release, then_refuse=True)
    error(cl.delete(conf, "c1"), 11)
    proxy.refuse = False
    assert cl.leases() == {}                                      # etcd did release it
    assert cl.delete(conf, "c1").ok                               # the runtime's retry
    assert set(cl.keys()) == only_config(cl)


# --------------------------------------------------------------------------
# TLS with client certificates

def test_tls_with_client_certificates(make_cl):
    cl = make_cl(1, tls=True)
    tls = cl.etcd.tls
    conf = cl.conf(SUBNET)                                        # certFile, keyFile, trustedCAFile
    assert all(conf["ipam"]["etcd"][k] for k in ("certFile", "keyFile", "trustedCAFile"))
    assert conf["ipam"]["etcd"]["endpoints"][0].startswith("https://")
    added = cl.add(conf, "c1", pod=("ns1", "p1"))
    [ip] = addresses(added)
    assert cl.leases()[ip]["pod"] == "p1"
    assert cl.run("CHECK", dict(conf, prevResult=added.json), "c1").ok
    assert cl.run("STATUS", conf, cid=None).ok
    # A certificate mistake is a config error, said at once (not "try again later" at requestTimeout,
    # here the longest a config may give: waiting it out would outlast run_plugin's 60 s), for every
    # verb that talks to etcd.
    url = cl.etcd.endpoints[0]
    bad = {"a CA that did not sign etcd's certificate": (
               {"trustedCAFile": tls.other_ca},
               f"ipam.etcd.trustedCAFile: {tls.other_ca!r} does not verify the certificate of {url}: "
               "certificate verify failed"),
           "a client certificate of another CA": (
               {"certFile": tls.other_cert, "keyFile": tls.other_key},
               f"ipam.etcd.certFile: {url} refused the client certificate {tls.other_cert!r}: "),
           "no client certificate": (
               {"certFile": None, "keyFile": None},
               f"ipam.etcd.certFile: not given, and {url} requires a client certificate: ")}
    for why, (change, msg) in bad.items():
        etcd = {k: v for k, v in dict(cl.etcd_conf(requestTimeout=300), **change).items() if v is not None}
        broken = dict(conf, ipam=dict(conf["ipam"], etcd=etcd))
        for verb, cid in (("ADD", "c2"), ("DEL", "c1"), ("CHECK", "c1")):
            error(cl.run(verb, dict(broken, prevResult=added.json) if verb == "CHECK" else broken, cid), 7, msg)
    assert sorted(cl.leases()) == [ip]
    assert cl.delete(conf, "c1").ok
    assert set(cl.keys()) == only_config(cl)


def test_a_stopped_member_first_in_the_list_does_not_hold_every_add(make_cl):
    """A member that still accepts connections but does not answer (SIGSTOP: a frozen VM, a stalled
    process) is one member lost, like a killed one: the other two serve, so an ADD whose config
    names the frozen member first must still succeed within requestTimeout."""
    cl = make_cl(3)
    conf = cl.conf(SUBNET, etcd=cl.etcd_conf(requestTimeout=4, dialTimeout=0.5))
    victim = (cl.etcd.leader() + 1) % 3                        # a follower: no election involved
    order = [cl.etcd.endpoints[victim]] + [e for j, e in enumerate(cl.etcd.endpoints) if j != victim]
    conf["ipam"]["etcd"]["endpoints"] = order
    proc = cl.etcd.members[victim].proc
    proc.send_signal(signal.SIGSTOP)
    try:
        out, took = timed(cl.add, conf, "c1")
    finally:
        proc.send_signal(signal.SIGCONT)
    assert out.ok, f"one frozen member (of 3, first in the list) failed the ADD after {took:.1f}s: {out}"
    assert cl.delete(conf, "c1").ok
