"""cluster-ipam exec'd as a runtime runs it, several simulated nodes on one real etcd."""

import ipaddress
import json
import time
import uuid

import pytest

from ipam import cluster
from tests.cluster.conftest import addresses, error, files_under

V4 = {"subnet": "10.30.0.0/24"}
V6 = {"subnet": "fd30::/120"}
POD = ("ns1", "web-0")


@pytest.mark.both_paths
def test_add_records_the_lease_and_del_returns_everything(cl):
    conf = cl.conf([V4], [V6])
    out = cl.add(conf, "c1", pod=POD)
    v4, v6 = addresses(out)
    assert out.json["ips"][0]["gateway"] == "10.30.0.1"
    record = cl.leases()[v4]
    assert {k: record[k] for k in ("network", "containerID", "ifname", "node", "namespace", "pod", "pool")} == \
        {"network": "net1", "containerID": "c1", "ifname": "eth0", "node": "n1", "namespace": "ns1", "pod": "web-0",
         "pool": "10.30.0.0/24"}
    assert abs(time.mktime(time.strptime(record["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime())) < 60
    # the ADD completed: no pending mark; the pod's netns recorded for the agent's healing, the lease's
    # block for DEL (which reads the lease and its block at once)
    leases = cl.leases()
    assert cl.keys("attachments/") == {
        f"attachments/net1/c1@eth0/{ip}": {"node": "n1", "netns": "/run/netns/ucl-none",
                                           "block": f"pools/{leases[ip]['pool']}/blocks/{leases[ip]['block']}"}
        for ip in (v4, v6)}
    blocks = {k: v for k, v in cl.keys("pools/").items() if "/blocks/" in k}
    assert all(b["node"] == "n1" for b in blocks.values()) and len(blocks) == 2
    # CHECK with the result as prevResult passes; one address missing from it fails
    prev = dict(conf, prevResult=out.json)
    assert cl.run("CHECK", prev, "c1").ok
    error(cl.run("CHECK", dict(conf, prevResult=dict(out.json, ips=out.json["ips"][:1])), "c1"), 100, v6)
    assert cl.delete(conf, "c1").ok
    assert cl.delete(conf, "c1").ok          # DEL twice is fine
    assert set(cl.keys()) == {"pools/10.30.0.0/24/config", "pools/fd30::/120/config"}   # blocks went back
    error(cl.run("CHECK", prev, "c1"), 100, "not leased")


def test_exclusions_aux_gateway_network_broadcast_never_handed_out(cl):
    spec = {"subnet": "10.31.0.0/27", "rangeStart": "10.31.0.0", "rangeEnd": "10.31.0.31", "gateway": "10.31.0.9"}
    confs = [cl.conf([spec], node=f"n{i}", blockSize=29, exclude=["10.31.0.16/30", "10.31.0.2-10.31.0.3"],
                     auxAddresses={"dns": "10.31.0.30"}) for i in range(3)]
    got = []
    for n in range(40):
        out = cl.add(confs[n % 3], f"c{n}")
        if not out.ok:
            error(out, 101, "no free address in range set 0")
            break
        got += addresses(out)
    refused = {"10.31.0.0", "10.31.0.31", "10.31.0.9", "10.31.0.30", "10.31.0.2", "10.31.0.3",
               "10.31.0.16", "10.31.0.17", "10.31.0.18", "10.31.0.19"}
    assert len(got) == len(set(got)) == 32 - len(refused)
    assert not set(got) & refused


def test_a_27_filled_exactly_across_8_nodes_by_borrowing_then_101(cl):
    # one /26 block would hold the whole /27: the first node claims it, the 7 others must borrow
    confs = [cl.conf({"subnet": "10.32.0.0/27"}, node=f"n{i}") for i in range(8)]
    got = []
    for n in range(29):
        got += addresses(cl.add(confs[n % 8], f"c{n}"))
    assert len(set(got)) == 29                                   # 32 - network, broadcast, gateway
    out = error(cl.add(confs[3], "c-last"), 101, "no free address in range set 0 (10.32.0.0/27 "
                                                  "10.32.0.1-10.32.0.30)", "29 in use")
    assert "29 addresses" not in out["msg"]
    nodes = {v["node"] for v in cl.leases().values()}
    assert nodes == {f"n{i}" for i in range(8)}
    [block] = [v for k, v in cl.keys("pools/").items() if "/blocks/" in k]
    assert len(block["used"]) == 29                               # borrowed addresses count in the owner's block
    # a DEL on a borrower frees its address for anyone
    victim = next(ip for ip, v in cl.leases().items() if v["node"] == "n5")
    assert cl.delete(confs[5], next(v["containerID"] for ip, v in cl.leases().items() if ip == victim)).ok
    assert addresses(cl.add(confs[2], "c-again")) == [victim]


def test_two_networks_sharing_a_subnet_on_different_nodes_never_share_an_address(cl):
    a = [cl.conf("10.33.0.0/26", name="neta", node=f"a{i}", blockSize=28) for i in range(2)]
    b = [cl.conf("10.33.0.0/26", name="netb", node=f"b{i}", blockSize=28) for i in range(2)]
    # a third network overlaps with another subnet: address keys are global, not per pool
    c = [cl.conf({"subnet": "10.33.0.0/27", "gateway": "10.33.0.30"}, name="netc", node="c0", blockSize=29)]
    got = []
    for n in range(80):
        conf = (a + b + c)[n % 5]
        out = cl.add(conf, f"x{n}")
        if out.ok:
            got += addresses(out)
    assert len(got) == len(set(got))
    assert len(got) == 62           # the /26 less network, broadcast and gateway: every address once
    networks = {v["network"] for v in cl.leases().values()}
    assert networks == {"neta", "netb", "netc"}


def test_requested_addresses_across_blocks_and_nodes(cl):
    n1, n2 = cl.conf("10.34.0.0/24", node="n1"), cl.conf("10.34.0.0/24", node="n2")
    assert cl.add(n1, "c1").ok and cl.add(n2, "c2").ok
    # in a block nobody owns yet, from n2; then asked for again from n1
    out = cl.run("ADD", dict(n2, runtimeConfig={"ips": ["10.34.0.200/24"]}), "c3")
    assert addresses(out) == ["10.34.0.200"]
    error(cl.run("ADD", dict(n1, runtimeConfig={"ips": ["10.34.0.200"]}), "c4"), 101,
          "requested IP 10.34.0.200 is already allocated to container c3")
    error(cl.run("ADD", dict(n1, runtimeConfig={"ips": ["10.34.0.1"]}), "c5"), 7, "it is the gateway")
    error(cl.run("ADD", dict(n1, runtimeConfig={"ips": ["10.35.0.9"]}), "c6"), 7, "in no subnet")
    assert "c4" not in json.dumps(cl.leases()) and "c5" not in json.dumps(cl.leases())


@pytest.mark.both_paths
def test_gc_releases_only_this_nodes_leases_of_this_network(cl):
    n1, n2 = cl.conf("10.36.0.0/24", node="n1"), cl.conf("10.36.0.0/24", node="n2")
    other = cl.conf("10.37.0.0/24", node="n1", name="net2")
    for cid in ("keep", "gone1", "gone2"):
        assert cl.add(n1, cid).ok
    assert cl.add(n2, "n2pod").ok
    assert cl.add(other, "gone1").ok
    gc = dict(n1, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert cl.run("GC", gc, cid=None).ok
    owners = sorted((v["network"], v["containerID"], v["node"]) for v in cl.leases().values())
    assert owners == [("net1", "keep", "n1"), ("net1", "n2pod", "n2"), ("net2", "gone1", "n1")]
    # without valid-attachments, cni.dev/attachments is the list
    assert cl.add(n1, "gone3").ok
    assert cl.run("GC", dict(n1, **{"cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
                  cid=None).ok
    assert sorted(v["containerID"] for v in cl.leases().values()) == ["gone1", "keep", "n2pod"]


@pytest.mark.both_paths
def test_status(cl):
    conf = cl.conf("10.38.0.0/30")        # one usable address (.2)
    assert cl.run("STATUS", conf, cid=None).ok
    assert cl.add(conf, "c1").ok
    error(cl.run("STATUS", conf, cid=None), 50, "range set 0 (10.38.0.0/30 10.38.0.1-10.38.0.2) has no free address")
    dead = cl.conf("10.38.0.0/30", etcd={"endpoints": ["http://127.0.0.1:9"], "requestTimeout": 0.5})
    error(cl.run("STATUS", dead, cid=None), 50, "etcd not usable", "no endpoint answered")


@pytest.mark.both_paths
def test_etcd_unreachable_is_code_11_within_request_timeout_and_leaves_nothing(cl, tmp_path):
    conf = cl.conf("10.39.0.0/24", etcd={"endpoints": ["http://127.0.0.1:9", "http://127.0.0.1:11"],
                                         "requestTimeout": 1.5, "dialTimeout": 0.5})
    start = time.monotonic()
    out = cl.add(conf, "c1")
    took = time.monotonic() - start
    error(out, 11, "no endpoint answered within 1.5s")
    assert took < 1.5 + 30, took                   # the message names the bound; this only rules out a hang
    assert files_under(tmp_path / "nodes") == []    # etcd is asked before the lock: no lock, lease or cache
    assert cl.keys() == {}


@pytest.mark.both_paths
def test_add_keeps_a_record_of_the_network_rewritten_only_when_its_config_changes(cl, tmp_path):
    """<dataDir>/<network>/network.json, by which underlayd heals a network no config file names (a
    NetworkAttachmentDefinition's): written 0600 by the first ADD, read and left alone by the next."""
    cl.prefix = f"/ujl-{uuid.uuid4().hex[:8]}"
    conf = cl.conf("10.43.0.0/24", node="uj-n1", name="ujrec")
    path = tmp_path / "nodes" / "uj-n1" / "ujrec" / cluster.RECORD
    assert addresses(cl.add(conf, "c1"))
    assert json.loads(path.read_text()) == {"network": "ujrec", "ipam": conf["ipam"]}
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.stat()
    assert addresses(cl.add(conf, "c2")) and cl.delete(conf, "c1").ok
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)   # not rewritten
    changed = cl.conf("10.43.0.0/24", node="uj-n1", name="ujrec", etcd=cl.etcd_conf(requestTimeout=4))
    assert addresses(cl.add(changed, "c3"))
    assert path.stat().st_ino != first.st_ino
    assert json.loads(path.read_text()) == {"network": "ujrec", "ipam": changed["ipam"]}
    assert addresses(cl.add(conf, "c4"))                            # and back
    assert json.loads(path.read_text()) == {"network": "ujrec", "ipam": conf["ipam"]}
    assert files_under(tmp_path / "nodes") == ["uj-n1/ujrec/last_reserved_ip.0", "uj-n1/ujrec/lock",
                                               "uj-n1/ujrec/network.json",
                                               "uj-n1/ujrec/own-blocks.json"]   # no temporary file left
    for cid in ("c2", "c3", "c4"):
        assert cl.delete(conf, cid).ok


def test_whereabouts_config_is_accepted_as_it_is(cl):
    conf = cl.conf(range="10.40.0.0/24", range_start="10.40.0.50", range_end="10.40.0.52",
                   exclude=["10.40.0.51/32"], gateway="10.40.0.1")
    got = [addresses(cl.add(conf, f"c{i}"))[0] for i in range(2)]
    assert sorted(got) == ["10.40.0.50", "10.40.0.52"]
    error(cl.add(conf, "c3"), 101)
    span = cl.conf(range="10.41.0.225-10.41.0.226/28", name="net2")
    assert sorted(addresses(cl.add(span, f"d{i}"))[0] for i in range(2)) == ["10.41.0.225", "10.41.0.226"]
    hostbits = cl.conf(range="10.42.0.13/28", name="net3")
    assert addresses(cl.add(hostbits, "e1")) == ["10.42.0.1"]   # whereabouts ignores a CIDR's host bits
    error(cl.add(cl.conf(range="10.43.0.0/33", name="net4"), "f1"), 7, "ipam.range")


@pytest.mark.parametrize("ipam, fragment", [
    ({"etcd": None}, "ipam.etcd"),
    ({"etcd": {"endpoints": []}}, "ipam.etcd.endpoints"),
    ({"blockSize": 31}, "ipam.blockSize"),
    ({"sticky": "yes"}, "ipam.sticky"),
    ({"stickySeconds": 0}, "ipam.stickySeconds"),
    ({"node": "a/b"}, "ipam.node"),
])
def test_bad_config_is_code_7_naming_the_field(cl, ipam, fragment):
    conf = cl.conf("10.44.0.0/24")
    conf["ipam"].update(ipam)
    if ipam.get("etcd", 0) is None:
        del conf["ipam"]["etcd"]
    error(cl.add(conf, "c1"), 7, fragment)
    assert cl.keys() == {}


def test_a_pool_keeps_the_block_size_of_its_first_user(cl):
    assert cl.add(cl.conf("10.45.0.0/24", blockSize=28), "c1").ok
    error(cl.add(cl.conf("10.45.0.0/24", name="net2", blockSize=27), "c2"), 7,
          "ipam.blockSize: pool 10.45.0.0/24 is cut into /28 blocks")


def test_sticky_address_is_held_for_the_pod_and_nobody_else_gets_it(cl):
    n1 = cl.conf("10.46.0.0/29", node="n1", sticky=True)                 # .2-.6: five addresses
    n2 = cl.conf("10.46.0.0/29", node="n2", sticky=True, stickySeconds=2)
    first = addresses(cl.add(n1, "c1", pod=POD))[0]
    assert cl.delete(n1, "c1").ok
    hold = cl.leases()[first]
    assert hold["sticky"] is True and hold["namespace"] == "ns1" and hold["pod"] == "web-0"
    others = [addresses(cl.add(n2, f"o{i}", pod=("ns1", f"other-{i}")))[0] for i in range(4)]
    assert first not in others
    error(cl.add(n2, "o9", pod=("ns1", "other-9")), 101)                  # the held one is not free
    # the StatefulSet pod comes back on another node, with a new container: same address
    assert addresses(cl.add(n2, "c1-again", pod=POD)) == [first]
    assert cl.keys("sticky/") == {}


def test_sticky_hold_expires(cl):
    conf = cl.conf("10.47.0.0/30", sticky=True, stickySeconds=1)          # one address: .2
    # the DEL sets the hold's end: held for an hour first, so the refusal holds however slow the machine
    held = cl.conf("10.47.0.0/30", sticky=True, stickySeconds=3600)
    assert addresses(cl.add(conf, "c1", pod=POD)) == ["10.47.0.2"]
    assert cl.delete(held, "c1").ok
    error(cl.add(conf, "c2", pod=("ns1", "someone-else")), 101)
    assert addresses(cl.add(conf, "c1-again", pod=POD)) == ["10.47.0.2"]  # its pod takes it back
    assert cl.delete(conf, "c1-again").ok                                 # now held for 1 s
    time.sleep(1.2)
    assert addresses(cl.add(conf, "c2", pod=("ns1", "someone-else"))) == ["10.47.0.2"]
    assert cl.keys("sticky/") == {}
    assert cl.leases()["10.47.0.2"]["containerID"] == "c2"


def test_gc_drops_expired_holds_and_returns_the_block(cl):
    conf = cl.conf("10.48.0.0/24", sticky=True, stickySeconds=1)
    assert cl.add(conf, "c1", pod=POD).ok
    assert cl.delete(conf, "c1").ok
    assert len(cl.leases()) == 1
    time.sleep(1.2)
    assert cl.run("GC", dict(conf, **{"cni.dev/valid-attachments": []}), cid=None).ok
    assert set(cl.keys()) == {"pools/10.48.0.0/24/config"}


def test_dead_node_release(cl):
    dead, live = cl.conf("10.49.0.0/24", node="dead"), cl.conf("10.49.0.0/24", node="live")
    for i in range(3):
        assert cl.add(dead, f"d{i}").ok
    other = cl.conf("10.50.0.0/24", node="dead", name="net2")
    assert cl.add(other, "d9").ok
    [dead_block] = [k for k, v in cl.keys("pools/10.49.0.0/24/blocks/").items()]
    # a borrower in the dead node's block: requested inside it
    inside = str(ipaddress.ip_network(dead_block.split("blocks/")[1])[10])
    assert addresses(cl.run("ADD", dict(live, runtimeConfig={"ips": [inside]}), "l1")) == [inside]
    assert cl.add(live, "l2").ok
    with pytest.raises(cluster.CniError) as e:
        cluster.release_node(dead, "dead")
    assert e.value.code == 50 and "node dead still holds 4 lease(s)" in e.value.msg
    assert len(cl.leases()) == 6
    rows = cluster.leases(dead)
    assert sorted((r["node"], r["network"]) for r in rows) == [("dead", "net1")] * 3 + [("dead", "net2")] + \
        [("live", "net1")] * 2
    assert cluster.release_node(dead, "dead", force=True) == {"node": "dead", "leases": 4, "blocks_deleted": 1,
                                                              "blocks_orphaned": 1, "blocks_held": 0}
    assert sorted(v["containerID"] for v in cl.leases().values()) == ["l1", "l2"]
    assert cl.keys("pools/10.49.0.0/24/blocks/")[dead_block]["node"] is None
    # nothing of it left: a second release names no node etcd knows; the orphan is adopted by whoever
    # allocates there
    with pytest.raises(cluster.UnknownNode, match=r"no node dead .*known nodes: live\)"):
        cluster.release_node(dead, "dead")
    assert cl.delete(live, "l1").ok
    assert dead_block not in cl.keys("pools/10.49.0.0/24/blocks/")   # emptied: returned to the pool


def test_a_block_size_that_leaves_one_block_is_warned_of_on_add(cl, tmp_path):
    """Issue 17: blockSize /26 on a /28 was silently one block: the first node owns it, every other
    node borrows. Every ADD says so (stderr and the log), so whichever node's log is read shows it."""
    from tests.plugins import run_plugin
    log = tmp_path / "ops.log"
    warning = ("ipam.blockSize: a /26 block holds all of ipam.ranges[0][0] (10.47.0.0/28 10.47.0.1-10.47.0.14): "
               "the first node to ADD owns it and every other node borrows from it address by address; a blockSize "
               "of /30 cuts it into 4 blocks")
    for node in ("n1", "n2"):
        conf = dict(cl.conf("10.47.0.0/28", node=node, blockSize=26), logFile=str(log))
        out = run_plugin("cluster-ipam", "ADD", conf, container_id=f"c-{node}", ifname="eth0", netns="/run/netns/x")
        assert out.ok and out.stderr == f"cluster-ipam: warning: {warning}\n", out
    assert [json.loads(line)["warnings"] for line in log.read_text().splitlines()] == [[warning], [warning]]
    assert [b["node"] for b in cl.keys("pools/").values() if "node" in b] == ["n1"]   # n2 borrowed
    # the default blockSize on a small range is whereabouts' way (no blocks): not warned of
    assert cl.add(cl.conf("10.48.0.0/28", node="n1", name="net2"), "c3").ok
    # nor a blockSize that cuts the range into blocks
    assert cl.add(cl.conf("10.49.0.0/26", node="n1", name="net3", blockSize=28), "c4").ok


def test_del_of_an_attachment_recorded_without_its_block(cl):
    """An attachment record written before records named the lease's block (an older version's ADD):
    DEL reads the lease, then its block, and releases it whole as before."""
    conf = cl.conf("10.31.8.0/24", name="uoldrec")
    ip, = addresses(cl.add(conf, "c1"))
    key = f"attachments/uoldrec/c1@eth0/{ip}"
    cl.client.put(f"{cl.prefix}/{key}", json.dumps({"node": "n1", "netns": "/run/netns/ucl-none"}))
    assert cl.delete(conf, "c1").ok
    assert cl.leases() == {} and cl.keys("attachments/") == {}
    assert not [k for k in cl.keys("pools/") if "/blocks/" in k]    # the block given back whole


def test_a_stale_sticky_index_entry_is_never_taken(cl):
    """A sticky ADD takes the pod's holds as their index (sticky/...) has them; an entry whose address
    key holds something else (here another pod's lease) is not the pod's: its claim is refused, the
    other lease stays, and the pod gets another address."""
    conf = cl.conf("10.31.9.0/24", name="ustale", sticky=True)
    ip, = addresses(cl.add(conf, "c1", pod=POD))
    assert cl.delete(conf, "c1", pod=POD).ok
    assert cl.leases()[ip]["sticky"] is True                  # held for the pod
    other = dict(cl.leases()[ip], sticky=None, containerID="other", ifname="eth0", pod="other-0")
    other = {k: v for k, v in other.items() if v is not None and k not in ("until", "released")}
    cl.client.put(f"{cl.prefix}/ips/{ip}", json.dumps(other))   # the index entry left behind
    again, = addresses(cl.add(conf, "c2", pod=POD))
    assert again != ip
    assert cl.leases()[ip] == other
