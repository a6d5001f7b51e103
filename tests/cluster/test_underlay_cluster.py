"""`underlay cluster ...` on leases made by real cluster-ipam ADDs from several simulated nodes.

From the checkout by default; the built command with UNDERLAY_BIN_DIR=dist/bin
(tests/build/test_operator.py runs the bundle's too).
"""

import ipaddress
import json
import os
import time

import pytest

from tests.cluster.conftest import addresses
from tests.operator import run_underlay
from tests.plugins import run_plugin

# a /27 cut into /29 blocks: .1 the gateway, .20 excluded, .25 aux; 27 addresses to hand out
NET1 = {"subnet": "10.80.0.0/27"}
NET1_IPAM = dict(blockSize=29, exclude=["10.80.0.20/32"], auxAddresses={"router": "10.80.0.25"}, sticky=True)


def write(tmp_path, conf, name="net.conf"):
    path = tmp_path / name
    path.write_text(json.dumps(conf))
    return path


def revision(cl):
    return int(cl.client.status()["header"]["revision"])


@pytest.fixture
def nodes(cl):
    """Three nodes' configs of net1 (sticky) and one of net2; leases from each node, one borrowed, one hold."""
    n = {name: cl.conf(NET1, node=name, **NET1_IPAM) for name in ("n1", "n2", "n3")}
    n["net2"] = cl.conf("10.81.0.0/24", node="n3", name="net2")
    got = {}
    got["c1"] = addresses(cl.add(n["n1"], "c1" * 20, pod=("ns1", "web-0")))[0]
    got["c2"] = addresses(cl.add(n["n1"], "c2"))[0]
    got["c3"] = addresses(cl.add(n["n2"], "c3", pod=("ns1", "web-1")))[0]
    # n3 asks for an address in n1's block: borrowed
    n1_block = ipaddress.ip_network(cl.leases()[got["c1"]]["block"])
    inside = str(n1_block[5])
    assert addresses(cl.run("ADD", dict(n["n3"], runtimeConfig={"ips": [inside]}), "c4")) == [inside]
    got["c4"] = inside
    got["c5"] = addresses(cl.add(n["net2"], "c5"))[0]
    # web-1 goes away: its address is held for it (sticky)
    assert cl.delete(n["n2"], "c3").ok
    got["hold"] = got.pop("c3")
    return n, got


def test_leases_who_has_and_pools_read_etcd_and_write_nothing(cl, nodes, tmp_path):
    n, got = nodes
    conf = write(tmp_path, n["n1"])
    before = revision(cl)

    out = run_underlay("cluster", "leases", "--config", conf, "-o", "json")
    assert out.code == 0, out
    rows = {r["address"]: r for r in out.json}
    etcd = cl.leases()
    assert set(rows) == set(etcd) == set(got.values())
    for address, record in etcd.items():
        row = rows[address]
        assert row["network"] == record["network"] and row["node"] == record["node"]
        assert row["container"] == record.get("containerID") and row["ifname"] == record.get("ifname")
        assert row["kind"] == ("hold" if record.get("sticky") else "lease")
    c1 = rows[got["c1"]]
    assert (c1["container"], c1["namespace"], c1["pod"], c1["node"]) == ("c1" * 20, "ns1", "web-0", "n1")
    assert abs(time.mktime(time.strptime(c1["since"], "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime())) < 120
    hold = rows[got["hold"]]
    assert (hold["kind"], hold["container"], hold["namespace"], hold["pod"]) == ("hold", None, "ns1", "web-1")
    assert hold["until"] > hold["since"]
    assert [r["address"] for r in out.json] == sorted(rows, key=lambda a: int(ipaddress.ip_address(a)))

    out = run_underlay("cluster", "leases", "--config", conf, "--node", "n3", "-o", "json")
    assert sorted(r["address"] for r in out.json) == sorted([got["c4"], got["c5"]]), out
    out = run_underlay("cluster", "leases", "--config", conf, "--network", "net2", "--node", "n3", "-o", "json")
    assert [r["address"] for r in out.json] == [got["c5"]], out
    out = run_underlay("cluster", "leases", "--config", conf, "--node", "nobody")
    assert out.code == 0 and out.stdout == "no leases\n", out

    out = run_underlay("cluster", "leases", "--config", conf)
    assert out.code == 0, out
    header, *lines = out.stdout.splitlines()
    assert header.split() == ["NETWORK", "ADDRESS", "NODE", "KIND", "CONTAINER", "IFNAME", "POD", "SINCE"]
    line = next(x for x in lines if x.split()[1] == got["c1"])
    assert line.split()[:7] == ["net1", got["c1"], "n1", "lease", ("c1" * 20)[:12], "eth0", "ns1/web-0"]
    assert "c1" * 20 in run_underlay("cluster", "leases", "--config", conf, "--no-trunc").stdout

    out = run_underlay("cluster", "who-has", got["c4"], "--config", conf, "-o", "json")
    assert out.code == 0 and [(r["node"], r["container"]) for r in out.json] == [("n3", "c4")], out
    out = run_underlay("cluster", "who-has", got["hold"] + "/27", "--config", conf)
    assert out.code == 0 and "hold" in out.stdout and "ns1/web-1" in out.stdout, out
    out = run_underlay("cluster", "who-has", "10.80.0.30", "--config", conf)
    assert out.code == 1 and out.stdout == "nobody holds 10.80.0.30\n", out
    out = run_underlay("cluster", "who-has", "10.80.0.300", "--config", conf)
    assert out.code == 2 and "not an IP address" in out.stderr, out

    out = run_underlay("cluster", "pools", "--config", conf, "-o", "json")
    assert out.code == 0, out
    [pool] = out.json
    assert pool["ranges"] == "10.80.0.0/27 10.80.0.1-10.80.0.30"
    assert (pool["size"], pool["excluded"], pool["aux"]) == (30, 1, 1)
    assert pool["in_use"] == 4 and pool["held"] == 1 and pool["borrowed"] == 1    # c1 c2 c4, and the hold
    assert pool["size"] == pool["excluded"] + pool["aux"] + pool["reserved"] + pool["in_use"] + pool["free"]
    by_node = {x["node"]: x for x in pool["nodes"]}
    assert by_node["n1"] == {"node": "n1", "blocks": 1, "leases": 2, "borrowed": 0}
    assert by_node["n2"] == {"node": "n2", "blocks": 1, "leases": 0, "borrowed": 0}   # its block keeps the hold
    assert by_node["n3"] == {"node": "n3", "blocks": 0, "leases": 1, "borrowed": 1}
    assert pool["blocks"] == 2
    out = run_underlay("cluster", "pools", "--config", conf)
    assert out.code == 0, out
    assert out.stdout.splitlines()[0].split() == ["NETWORK", "SET", "RANGES", "SIZE", "EXCLUDED", "AUX", "RESERVED",
                                                  "IN", "USE", "FREE", "HELD", "BLOCKS", "BORROWED"]
    assert "NODE" in out.stdout and "n3" in out.stdout

    # a network nobody has allocated in yet: read, and its pool's config is not written
    fresh = write(tmp_path, cl.conf("10.82.0.0/28", name="net3", node="n1"), "net3.conf")
    out = run_underlay("cluster", "pools", "--config", fresh, "-o", "json")
    assert out.code == 0 and (out.json[0]["in_use"], out.json[0]["free"], out.json[0]["nodes"]) == (0, 13, []), out
    assert "no blocks claimed yet" in run_underlay("cluster", "pools", "--config", fresh).stdout

    assert revision(cl) == before            # nothing above wrote to etcd

    # free is what ADDs can still hand out: fill it from the three nodes; then 101
    free = pool["free"]
    taken = [addresses(cl.add(n[f"n{1 + i % 3}"], f"f{i}"))[0] for i in range(free)]
    assert not set(taken) & (set(got.values()) | {"10.80.0.1", "10.80.0.20", "10.80.0.25"})
    assert not cl.add(n["n2"], "one-more").ok
    after = run_underlay("cluster", "pools", "--config", conf, "-o", "json").json[0]
    assert (after["free"], after["in_use"]) == (0, 4 + free)


def test_release_node_refuses_while_the_node_holds_leases_then_forced(cl, nodes, tmp_path):
    n, got = nodes
    conf = write(tmp_path, n["n2"])
    out = run_underlay("cluster", "release-node", "n1", "--config", conf)
    assert out.code == 2 and "--yes" in out.stderr, out
    before = revision(cl)
    out = run_underlay("cluster", "release-node", "n1", "--config", conf, "--yes")
    assert out.code == 1, out
    assert "refused: node n1 still holds 2 lease(s)" in out.stderr and got["c1"] in out.stderr, out
    assert out.stderr.rstrip().endswith("add --force to release them"), out
    assert revision(cl) == before and len(cl.leases()) == 5

    out = run_underlay("cluster", "release-node", "n1", "--config", conf, "--yes", "--force", "-o", "json")
    assert out.code == 0, out
    # n1's block keeps n3's borrowed address: orphaned, not deleted
    assert out.json == {"node": "n1", "leases": 2, "blocks_deleted": 0, "blocks_orphaned": 1, "blocks_held": 0}
    left = run_underlay("cluster", "leases", "--config", conf, "-o", "json").json
    # the config is sticky: web-0's lease became a hold for it, as its DEL would have made it; c2 (no pod) went.
    # Each hold is its pod's node's (web-0 ran on n1), never the operator's config's node (n2)
    assert sorted((r["kind"], r["pod"], r["container"], r["node"]) for r in left) == [
        ("hold", "web-0", None, "n1"), ("hold", "web-1", None, "n2"), ("lease", None, "c4", "n3"),
        ("lease", None, "c5", "n3")]
    pool = run_underlay("cluster", "pools", "--config", conf, "-o", "json").json[0]
    assert {x["node"]: x["blocks"] for x in pool["nodes"]} == {"n2": 1, "n3": 0, None: 1}
    assert "(orphaned)" in run_underlay("cluster", "pools", "--config", conf).stdout

    # nothing left on n1: no refusal; a table says what was done
    out = run_underlay("cluster", "release-node", "n1", "--config", conf, "--yes")
    assert out.code == 0 and out.stdout.startswith("released node n1: 0 lease(s)"), out
    # n3 is alive: the live pods of every network are named
    out = run_underlay("cluster", "release-node", "n3", "--config", conf, "--yes")
    assert out.code == 1 and "node n3 still holds 2 lease(s)" in out.stderr and "net2/c5" in out.stderr, out


def test_etcd_unreachable_bad_configs_and_wrong_files(cl, tmp_path):
    dead = cl.conf(NET1, etcd={"endpoints": ["http://127.0.0.1:9"], "requestTimeout": 1, "dialTimeout": 0.5})
    conf = write(tmp_path, dead)
    for args in (["leases"], ["who-has", "10.80.0.2"], ["pools"], ["release-node", "n1", "--yes"]):
        start = time.monotonic()
        out = run_underlay("cluster", *args, "--config", conf)
        assert out.code == 3, (args, out)
        assert f"underlay: {conf}: etcd: no endpoint answered within 1s" in out.stderr, (args, out)
        assert time.monotonic() - start < 1 + 30, args    # the message names the bound; this only rules out a hang
        assert out.stdout == "", (args, out)               # nothing a script could take for "none"
    out = run_underlay("cluster", "who-has", "10.80.0.2", "--config", conf, "-o", "json")
    assert out.code == 3 and "etcd: no endpoint answered" in out.json["error"], out

    bad = cl.conf(NET1)
    bad["ipam"]["etcd"] = {"endpoints": ["ftp://127.0.0.1:2379"]}
    out = run_underlay("cluster", "leases", "--config", write(tmp_path, bad, "bad.conf"))
    assert out.code == 2 and "ipam.etcd.endpoints" in out.stderr and "bad.conf" in out.stderr, out
    bad = cl.conf(NET1, blockSize=40)
    out = run_underlay("cluster", "pools", "--config", write(tmp_path, bad, "bad2.conf"))
    assert out.code == 2 and "ipam.blockSize" in out.stderr, out

    host_local = {"cniVersion": "1.0.0", "name": "hl", "type": "macvlan", "ipam": {"type": "host-local"}}
    out = run_underlay("cluster", "leases", "--config", write(tmp_path, host_local, "hl.conf"))
    assert out.code == 2 and "no plugin with ipam type cluster-ipam" in out.stderr, out
    out = run_underlay("cluster", "leases", "--config", tmp_path / "missing.conf")
    assert out.code == 2 and "missing.conf" in out.stderr, out
    out = run_underlay("cluster")
    assert out.code == 2 and "name a cluster subcommand" in out.stderr, out


def test_tls_etcd_with_client_certificates(etcd_cluster, tmp_path):
    etcd = etcd_cluster(members=1, tls=True)

    def conf(**tls):
        return {"cniVersion": "1.0.0", "name": "net1", "type": "macvlan",
                "ipam": {"type": "cluster-ipam", "node": "n1", "dataDir": str(tmp_path / "n1"),
                         "ranges": [[{"subnet": "10.84.0.0/28"}]],
                         "etcd": etcd.config(prefix="/uhs-tls", requestTimeout=2, **tls)}}

    assert run_plugin("cluster-ipam", "ADD", conf(), container_id="c1", netns="/run/netns/uhs-none",
                      ifname="eth0").ok
    out = run_underlay("cluster", "leases", "--config", write(tmp_path, conf()), "-o", "json")
    assert out.code == 0 and [r["container"] for r in out.json] == ["c1"], out
    # a client certificate of another CA: refused by etcd, a bad config, named (not "etcd unreachable")
    other = conf(certFile=etcd.tls.other_cert, keyFile=etcd.tls.other_key)
    out = run_underlay("cluster", "leases", "--config", write(tmp_path, other, "other.conf"))
    assert out.code == 2 and "other.conf: ipam.etcd.certFile: " in out.stderr \
        and "refused the client certificate" in out.stderr, out
    # a CA file that is not one: a bad config, named
    bad = conf(trustedCAFile=str(tmp_path / "other.conf"))
    out = run_underlay("cluster", "pools", "--config", write(tmp_path, bad, "bad.conf"))
    assert out.code == 2 and "ipam.etcd.trustedCAFile" in out.stderr, out



def nad(name, conf):
    """A NetworkAttachmentDefinition document holding `conf`."""
    config = json.dumps({k: v for k, v in conf.items() if k != "name"})
    return (f"apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n"
            f"metadata: {{name: {name}, namespace: pods}}\nspec:\n  config: '{config}'\n")


def test_every_document_of_a_nad_file_is_read(cl, tmp_path):
    """Two NADs in one file, each network's leases under its own etcd prefix: who-has, leases and
    pools answer for both (not only the first document's)."""
    lan = cl.conf("10.85.0.0/28", name="lan", node="n1", etcd=dict(cl.etcd_conf(), prefix=cl.prefix + "-lan"))
    san = cl.conf("10.86.0.0/28", name="san", node="n2", etcd=dict(cl.etcd_conf(), prefix=cl.prefix + "-san"))
    [on_lan] = addresses(cl.add(lan, "c1"))
    [on_san] = addresses(cl.add(san, "c2"))
    path = tmp_path / "nads.yaml"
    path.write_text(nad("lan", lan) + "---\n" + nad("san", san))

    out = run_underlay("cluster", "who-has", on_san, "--config", path, "-o", "json")
    assert out.code == 0 and [(r["network"], r["container"]) for r in out.json] == [("san", "c2")], out
    out = run_underlay("cluster", "who-has", on_lan, "--config", path, "-o", "json")
    assert out.code == 0 and [(r["network"], r["container"]) for r in out.json] == [("lan", "c1")], out
    out = run_underlay("cluster", "leases", "--config", path, "-o", "json")
    assert out.code == 0 and sorted((r["network"], r["address"]) for r in out.json) == [
        ("lan", on_lan), ("san", on_san)], out
    out = run_underlay("cluster", "pools", "--config", path, "-o", "json")
    assert out.code == 0 and [(p["network"], p["in_use"]) for p in out.json] == [("lan", 1), ("san", 1)], out
    table = run_underlay("cluster", "pools", "--config", path).stdout
    assert [line.split()[0] for line in table.splitlines()[1:3]] == ["lan", "san"], table

    # release-node works on one store: with two, it asks which; named, it takes that one's
    before = revision(cl)
    out = run_underlay("cluster", "release-node", "n2", "--config", path, "--yes", "--force")
    assert out.code == 2 and "--network NAME" in out.stderr and "lan, san" in out.stderr, out
    assert revision(cl) == before
    out = run_underlay("cluster", "release-node", "n2", "--config", path, "--network", "san", "--yes", "--force",
                       "-o", "json")
    assert out.code == 0 and out.json["leases"] == 1, out
    assert [r["network"] for r in run_underlay("cluster", "leases", "--config", path, "-o", "json").json] == ["lan"]


def test_stores_are_told_apart_by_prefix_network_name_and_endpoints_only(cl, tmp_path):
    """Review of issue 17, item 1: whereabouts-style NADs (etcd_host, no `etcd` section) with
    different network_name are two stores, each read; configs differing only in timeouts are one,
    each lease listed once."""
    host = cl.etcd.endpoints[0].split("://", 1)[1]

    def named(name, subnet, node):
        conf = cl.conf(subnet, name=name, node=node, network_name=f"{cl.prefix[1:]}-{name}")
        del conf["ipam"]["etcd"]
        conf["ipam"]["etcd_host"] = host
        return conf

    lan, san = named("lan", "10.87.0.0/28", "n1"), named("san", "10.87.0.0/28", "n2")
    [on_lan] = addresses(cl.add(lan, "c1"))
    [on_san] = addresses(cl.add(san, "c2"))
    assert on_lan == on_san                      # each network_name its own allocation
    path = tmp_path / "nads.yaml"
    path.write_text(nad("lan", lan) + "---\n" + nad("san", san))
    out = run_underlay("cluster", "who-has", on_lan, "--config", path, "-o", "json")
    assert out.code == 0 and sorted((r["network"], r["container"]) for r in out.json) == [
        ("lan", "c1"), ("san", "c2")], out
    out = run_underlay("cluster", "release-node", "n2", "--config", path, "--yes", "--force")
    assert out.code == 2 and "--network NAME" in out.stderr and "lan, san" in out.stderr, out

    a = cl.conf("10.88.0.0/28", name="a", node="n1", etcd=cl.etcd_conf(requestTimeout=5))
    b = cl.conf("10.89.0.0/28", name="b", node="n1", etcd=cl.etcd_conf(requestTimeout=6, dialTimeout=2))
    [on_a] = addresses(cl.add(a, "c3"))
    [on_b] = addresses(cl.add(b, "c4"))
    path = tmp_path / "timeouts.yaml"
    path.write_text(nad("a", a) + "---\n" + nad("b", b))
    out = run_underlay("cluster", "leases", "--config", path, "-o", "json")
    assert out.code == 0 and sorted(r["address"] for r in out.json) == sorted([on_a, on_b]), out
    out = run_underlay("cluster", "release-node", "n1", "--config", path, "--yes", "--force", "-o", "json")
    assert out.code == 0 and out.json["leases"] == 2, out


def test_pools_count_by_the_pools_block_size_not_an_edited_config(cl, tmp_path):
    """A node's own leases are its own after the NAD's blockSize was edited (which ADD refuses):
    the pool's stored block size is the truth."""
    conf = cl.conf("10.87.0.0/24", node="n1", blockSize=28)
    for i in range(20):
        assert cl.add(conf, f"c{i}").ok
    edited = cl.conf("10.87.0.0/24", node="n1", blockSize=26)
    refused = cl.add(edited, "c-edited")
    assert refused.cni_code == 7 and "ipam.blockSize" in refused.json["msg"], refused
    out = run_underlay("cluster", "pools", "--config", write(tmp_path, edited), "-o", "json")
    assert out.code == 0, out
    [pool] = out.json
    assert pool["nodes"] == [{"node": "n1", "blocks": 2, "leases": 20, "borrowed": 0}], out
    assert (pool["in_use"], pool["borrowed"]) == (20, 0)


def test_release_node_keeps_a_dead_nodes_holds_as_its_own(cl, tmp_path):
    """release-node --force on a sticky network, run with the operator's own node n1 in --config:
    the pods of n3 get holds that are n3's, and the block they alone occupy is said to keep them."""
    n1 = cl.conf("10.88.0.0/27", node="n1", blockSize=29, sticky=True)
    n3 = cl.conf("10.88.0.0/27", node="n3", blockSize=29, sticky=True)
    assert cl.add(n1, "a1", pod=("db", "web-1")).ok
    [web0] = addresses(cl.add(n3, "c3", pod=("db", "web-0")))
    conf = write(tmp_path, n1)
    out = run_underlay("cluster", "release-node", "n3", "--config", conf, "--yes")
    assert out.code == 1 and out.stderr.rstrip().endswith("add --force to release them"), out
    assert "(force)" not in out.stderr

    out = run_underlay("cluster", "release-node", "n3", "--config", conf, "--yes", "--force")
    assert out.code == 0, out
    assert "0 orphaned (other nodes still borrow in them), 1 orphaned keeping sticky holds" in out.stdout, out
    rows = run_underlay("cluster", "leases", "--config", conf, "-o", "json").json
    [hold] = [r for r in rows if r["address"] == web0]
    assert (hold["kind"], hold["node"], hold["namespace"], hold["pod"]) == ("hold", "n3", "db", "web-0"), rows
    assert cl.leases()[web0]["node"] == "n3"
    # the pod comes back on n1: its address is still kept for it
    assert addresses(cl.add(n1, "c3-again", pod=("db", "web-0"))) == [web0]


def test_release_node_of_a_name_no_node_had_and_no_abbreviated_flags(cl, nodes, tmp_path):
    n, _ = nodes
    conf = write(tmp_path, n["n1"])
    before = revision(cl)
    out = run_underlay("cluster", "release-node", "node-3", "--config", conf, "--yes")
    assert out.code == 2 and "no node node-3" in out.stderr and "known nodes: n1, n2, n3" in out.stderr, out
    assert out.stdout == ""
    for abbreviated in (["--y"], ["--ye"], ["--yes", "--for"], ["--yes", "--forc"]):
        out = run_underlay("cluster", "release-node", "n3", "--config", conf, *abbreviated)
        assert out.code == 2 and "unrecognized arguments" in out.stderr, (abbreviated, out)
    assert revision(cl) == before


def test_host_local_commands_on_a_cluster_ipam_network_name_the_cluster_command(cl, tmp_path):
    conf = cl.conf("10.89.0.0/28", node="n1")
    [address] = addresses(cl.add(conf, "c1"))
    path = write(tmp_path, conf)
    out = run_underlay("pools", "--config", path)
    assert out.code == 2 and "network net1 is cluster-ipam's" in out.stderr, out
    assert f"underlay cluster pools --config {path}" in out.stderr and out.stdout == "", out

    data_dir = cl.data_dir("n1")            # cluster-ipam's dataDir, as host-local's
    out = run_underlay("who-has", address, "--data-dir", data_dir)
    assert out.code == 2 and out.stdout == "", out
    assert "network net1 is cluster-ipam's" in out.stderr and f"underlay cluster who-has {address}" in out.stderr
    out = run_underlay("leases", "--data-dir", data_dir, "--network", "net1")
    assert out.code == 2 and "underlay cluster leases" in out.stderr, out
    out = run_underlay("leases", "--data-dir", data_dir)
    assert out.code == 0 and "underlay cluster leases" in out.stderr, out
    assert not os.path.exists(os.path.join(data_dir, "net1", ".underlay-index"))   # never opened as host-local's
