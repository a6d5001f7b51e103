"""`underlay` run as an operator runs it, on data dirs filled by real host-local ADDs
(ours and Debian's reference plugin), checked against what the plugins then do."""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pathlib

import pytest

from ipam.stores.disk import INDEX_DIR, STAMP
from tests import netns as nsutil
from tests.exec.conftest import HostLocal
from tests.operator import run_underlay, tree, underlay_argv
from tests.plugins import run_plugin

ROOT = pathlib.Path(__file__).resolve().parents[2]

V4 = "10.1.0.0/24"
V6 = "fd00:1::/64"
CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def live_netns(pod_ns):
    """A real network namespace (a pod that is still there)."""
    return nsutil.netns_path(pod_ns())


def leases(hl, *extra):
    out = run_underlay("leases", "--data-dir", hl.data_dir, "-o", "json", *extra)
    assert out.code == 0, out
    return out.json


def by_address(rows):
    return {row["address"]: row for row in rows}


# -- leases -----------------------------------------------------------------------------

def test_leases_of_ours_and_of_the_reference_plugin(hl, reference):
    conf = hl.config(V4, V6)
    assert hl.add(conf, CID, "eth0").ok
    assert reference.add(conf, "refctr", "net1").ok
    assert hl.add(hl.config(V4, name="other"), "c3", "eth1", netns="/run/netns/uop-pod3").ok
    rows = leases(hl)
    assert [(r["network"], r["address"], r["container"], r["ifname"], r["netns"]) for r in rows] == [
        ("net1", "10.1.0.2", CID, "eth0", "/run/netns/underlay-test"),
        ("net1", "10.1.0.3", "refctr", "net1", None),              # the reference records no netns
        ("net1", "fd00:1::2", CID, "eth0", "/run/netns/underlay-test"),
        ("net1", "fd00:1::3", "refctr", "net1", None),
        ("other", "10.1.0.2", "c3", "eth1", "/run/netns/uop-pod3"),
    ]
    for row in rows:
        since = datetime.datetime.strptime(row["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        assert abs((datetime.datetime.now(datetime.UTC) - since).total_seconds()) < 600
    assert [r["address"] for r in leases(hl, "--network", "other")] == ["10.1.0.2"]

    table = run_underlay("leases", "--data-dir", hl.data_dir)
    assert table.code == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "NETNS", "SINCE"]
    assert lines[1].split()[:5] == ["net1", "10.1.0.2", CID[:12], "eth0", "/run/netns/underlay-test"]
    assert lines[2].split()[:5] == ["net1", "10.1.0.3", "refctr", "net1", "-"]
    full = run_underlay("leases", "--data-dir", hl.data_dir, "--no-trunc")
    assert CID in full.stdout


def test_a_data_dir_only_the_reference_wrote_is_read_and_left_as_it_was(hl, reference):
    conf = hl.config(V4)
    for cid in ("r1", "r2"):
        assert reference.add(conf, cid).ok
    before = tree(hl.data_dir)
    assert INDEX_DIR not in os.listdir(hl.net_dir())
    assert [r["container"] for r in leases(hl)] == ["r1", "r2"]
    for args in (["who-has", "10.1.0.2"], ["gc", "--dry-run", "--valid", "r1/eth0"]):
        assert run_underlay(*args, "--data-dir", hl.data_dir).code == 0
    # opening the store makes an empty .underlay-index/, as any plugin's open does; nothing else changes
    after = tree(hl.data_dir)
    assert os.listdir(os.path.join(hl.net_dir(), INDEX_DIR)) == []
    del after[os.path.join("net1", INDEX_DIR)]
    assert {k: v for k, v in after.items() if k != "net1"} == {k: v for k, v in before.items() if k != "net1"}
    assert after["net1"][:2] == before["net1"][:2]         # the directory's mtime moved with the mkdir


def test_reading_changes_nothing_even_with_a_stale_or_torn_index(hl, reference):
    conf = hl.config(V4)
    assert hl.add(conf, "c1").ok
    assert reference.add(conf, "r1").ok          # our index is stale now: a plugin call would rebuild it
    index = os.path.join(hl.net_dir(), INDEX_DIR)
    with open(os.path.join(index, "c1@eth0"), "wb") as f:
        f.write(b"torn")                          # and torn: the store's repair would rewrite it
    before = tree(hl.data_dir)
    rows = leases(hl)
    assert [(r["container"], r["netns"]) for r in rows] == [("c1", None), ("r1", None)]
    assert run_underlay("gc", "--dry-run", "--valid", "c1/eth0", "--data-dir", hl.data_dir).code == 0
    assert tree(hl.data_dir) == before


def test_empty_data_dir_and_missing_data_dir(hl, tmp_path):
    os.makedirs(hl.data_dir)
    out = run_underlay("leases", "--data-dir", hl.data_dir)
    assert out.code == 0 and "no leases" in out.stdout, out
    assert leases(hl) == []
    out = run_underlay("leases", "--data-dir", tmp_path / "nowhere")
    assert out.code == 3 and "does not exist" in out.stderr, out
    out = run_underlay("leases", "--data-dir", hl.data_dir, "--network", "nosuch")
    assert out.code == 3 and "network nosuch" in out.stderr, out


# -- the lock -----------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_store_locked_by_another_process(hl):
    conf = hl.config(V4)
    assert hl.add(conf, "c1").ok
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, os.path.join(hl.net_dir(), "lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        out = run_underlay("leases", "--data-dir", hl.data_dir, "--lock-timeout", "0.5", timeout=30)
        assert out.code == 3, out
        assert f"held by pid {holder.pid} for over 0.5s" in out.stderr and "net1" in out.stderr, out
        assert out.stdout == "", out   # nothing read is nothing shown: not "no leases"
        out = run_underlay("who-has", "10.1.0.2", "--data-dir", hl.data_dir, "--lock-timeout", "0.5",
                           "-o", "json", timeout=30)
        assert out.code == 3 and "net1" in out.json["error"], out
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert [r["container"] for r in leases(hl, "--lock-timeout", "0.5")] == ["c1"]


# -- a store it may not read ----------------------------------------------------------------

AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture
def open_dir():
    """A directory anyone may enter (pytest's tmp_path is root's alone)."""
    path = tempfile.mkdtemp(prefix="uop-")
    os.chmod(path, 0o755)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path)


def test_a_store_it_may_not_read_is_no_answer(open_dir):
    """Run as non-root on a store only root reads: nothing on stdout a script could take for the
    answer ("nobody holds", "no leases", []), the JSON form an error object, exit 3."""
    hl = HostLocal(open_dir / "networks")
    conf = hl.config(V4)
    assert hl.add(conf, "c1").ok
    config = open_dir / "net1.conf"
    config.write_text(json.dumps(conf))
    os.chmod(config, 0o644)
    os.chmod(hl.data_dir, 0o755)
    os.chmod(hl.net_dir(), 0o700)
    as_nobody = AS_NOBODY + underlay_argv()
    commands = (["leases"], ["who-has", "10.1.0.2"], ["pools", "--config", config],
                ["gc", "--dry-run", "--valid", "c1/eth0"])
    for args in commands:
        out = run_underlay(*args, "--data-dir", hl.data_dir, argv=as_nobody)
        assert out.code == 3 and "Permission denied" in out.stderr and out.stdout == "", (args, out)
        out = run_underlay(*args, "--data-dir", hl.data_dir, "-o", "json", argv=as_nobody)
        assert out.code == 3 and "Permission denied" in out.json["error"], (args, out)
        assert isinstance(out.json["problems"], list) and out.json["problems"], (args, out)
    os.chmod(hl.data_dir, 0o700)    # the data dir itself: the same
    for args in commands:
        out = run_underlay(*args, "--data-dir", hl.data_dir, "-o", "json", argv=as_nobody)
        assert out.code == 3 and "permission denied" in out.json["error"].lower(), (args, out)
    assert [r["address"] for r in leases(hl)] == ["10.1.0.2"]        # root reads it all


# -- who-has ------------------------------------------------------------------------------

def test_who_has(hl):
    assert hl.add(hl.config(V4, V6), "c1").ok
    assert hl.add(hl.config(V6, name="net2"), "c2", "net1").ok
    out = run_underlay("who-has", "fd00:1:0:0::2", "--data-dir", hl.data_dir, "-o", "json")  # any spelling
    assert out.code == 0, out
    assert [(r["network"], r["container"], r["ifname"]) for r in out.json] == [("net1", "c1", "eth0"),
                                                                                ("net2", "c2", "net1")]
    out = run_underlay("who-has", "10.1.0.9", "--data-dir", hl.data_dir)
    assert out.code == 1 and "nobody holds 10.1.0.9" in out.stdout, out
    out = run_underlay("who-has", "10.1.0.300", "--data-dir", hl.data_dir)
    assert out.code == 2 and "not an IP address" in out.stderr, out


# -- pools --------------------------------------------------------------------------------

def test_pools_match_what_add_can_still_hand_out(hl, tmp_path):
    # .1-.14: gateway .1 reserved, .8-.11 excluded, aux .14: 8 an ADD may hand out
    conf = hl.config([{"subnet": "10.1.0.0/28"}], exclude=["10.1.0.8/30"], auxAddresses={"router": "10.1.0.14"})
    path = tmp_path / "net1.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "net1",
                                "plugins": [{k: v for k, v in conf.items() if k not in ("cniVersion", "name")}]}))
    for i in range(3):
        assert hl.add(conf, f"c{i}").ok

    def pools():
        out = run_underlay("pools", "--config", path, "-o", "json")
        assert out.code == 0, out
        (row,) = out.json
        return {k: row[k] for k in ("network", "set", "size", "excluded", "aux", "reserved", "in_use", "free")}

    assert pools() == {"network": "net1", "set": 0, "size": 14, "excluded": 4, "aux": 1, "reserved": 1,
                       "in_use": 3, "free": 5}
    for i in range(3, 8):
        assert hl.add(conf, f"c{i}").ok
    assert pools()["free"] == 0
    assert hl.add(conf, "c9").cni_code == 101         # the plugin agrees: nothing left
    table = run_underlay("pools", "--config", path)
    assert table.stdout.splitlines()[0].split() == ["NETWORK", "SET", "RANGES", "SIZE", "EXCLUDED", "AUX",
                                                    "RESERVED", "IN", "USE", "FREE"]


def test_pools_of_a_network_with_no_lease_yet_and_data_dir_override(hl, tmp_path):
    conf = hl.config(V4)
    path = tmp_path / "net1.conf"
    path.write_text(json.dumps(dict(conf, ipam=dict(conf["ipam"], dataDir=str(tmp_path / "elsewhere")))))
    assert hl.add(conf, "c1").ok
    rows = run_underlay("pools", "--config", path, "-o", "json").json
    assert rows[0]["in_use"] == 0 and rows[0]["data_dir"] == str(tmp_path / "elsewhere")
    rows = run_underlay("pools", "--config", path, "--data-dir", hl.data_dir, "-o", "json").json
    assert rows[0]["in_use"] == 1 and rows[0]["free"] == 252


# -- validate -----------------------------------------------------------------------------

NAD = """\
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: lan, namespace: pods}
spec:
  config: '{"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]]}}'
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: not-a-network}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: bad}
spec:
  config: '{"cniVersion": "1.0.0", "name": "bad", "type": "ipvlan", "mode": "l4",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.8.0.0/24"}]]}}'
"""


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_validate_clean_files_exit_zero(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "a", "type": "macvlan", "master": "eth1",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    out = run_underlay("validate", write(tmp_path, "a.conf", conf))
    assert out.code == 0, out
    assert out.stdout == "1 file(s): 0 error(s), 0 warning(s)\n"


def test_validate_names_file_network_and_field(tmp_path):
    bad = {"cniVersion": "1.0.0", "name": "net-a", "plugins": [
        {"type": "macvlan", "master": "eth1",
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]],
                  "auxAddresses": {"router": "10.2.0.1"}}}]}
    excl = {"cniVersion": "1.0.0", "name": "net-b", "type": "macvlan",
            "ipam": {"type": "host-local", "subnet": "10.3.0.0/24", "exclude": ["10.4.0.0/28"]}}
    files = [write(tmp_path, "a.conflist", bad), write(tmp_path, "b.conf", excl), write(tmp_path, "nads.yaml", NAD)]
    out = run_underlay("validate", *files, "-o", "json")
    assert out.code == 1, out
    problems = {(p["file"], p["network"], p["field"], p["severity"]): p["message"] for p in out.json["problems"]}
    assert "lies outside every subnet" in problems[(files[0], "net-a", "plugins[0].ipam.auxAddresses.router", "error")]
    assert "lies outside every subnet" in problems[(files[1], "net-b", "ipam.exclude[0]", "error")]
    assert "per node" in problems[(files[2], "lan", "ipam.type", "warning")]   # named by the NAD
    assert "l3s" in problems[(files[2], "bad", "mode", "error")]
    assert out.json["errors"] == 3 and out.json["warnings"] == 2   # the other: "bad" is a NAD with host-local too
    wheres = {p["where"] for p in out.json["problems"] if p["file"] == files[2]}
    assert wheres == {"document 1, NetworkAttachmentDefinition pods/lan",
                      "document 3, NetworkAttachmentDefinition default/bad"}

    table = run_underlay("validate", *files)
    assert table.code == 1
    assert f"error: {files[1]}: network net-b: ipam.exclude[0]: " in table.stdout, table


def test_validate_finds_ranges_overlapping_across_files(tmp_path):
    def conf(name, subnet, master):
        return {"cniVersion": "1.0.0", "name": name, "type": "macvlan", "master": master,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}}
    a = write(tmp_path, "a.conf", conf("a", "10.5.0.0/24", "eth1"))
    b = write(tmp_path, "b.conf", conf("b", "10.5.0.0/23", "eth1"))
    c = write(tmp_path, "c.conf", conf("c", "10.5.0.0/24", "eth2"))
    out = run_underlay("validate", a, b, "-o", "json")
    assert out.code == 1, out
    (p,) = out.json["problems"]
    assert (p["file"], p["network"], p["field"], p["severity"]) == (b, "b", "ipam.ranges[0][0]", "error")
    assert "overlaps 10.5.0.0/24" in p["message"] and "network a" in p["message"] and a in p["message"]
    out = run_underlay("validate", a, c, "-o", "json")     # other master: may be another L2
    assert out.code == 0 and [p["severity"] for p in out.json["problems"]] == ["warning"], out
    # the same network twice (a conflist and its NAD) is one store, not an overlap
    out = run_underlay("validate", a, a)
    assert out.code == 0, out


CLUSTER_NAD = """\
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {{name: {name}, namespace: pods}}
spec:
  config: '{{"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1",
            "ipam": {ipam}}}'
"""


def test_validate_checks_a_cluster_ipam_section_without_etcd(tmp_path):
    """cluster-ipam's schema and loader, as its ADD checks them; etcd is never asked (an address nobody
    serves: a contact would be an error or a long wait) and its certificate files need not exist here."""
    etcd = {"endpoints": ["https://192.0.2.1:2379"], "certFile": "/nonexistent/c.crt",
            "keyFile": "/nonexistent/c.key", "trustedCAFile": "/nonexistent/ca.crt", "requestTimeout": 1}
    cases = {
        "size": ({"blockSize": 99, "ranges": [[{"subnet": "10.9.0.0/24"}]]}, "ipam.blockSize"),
        "bits": ({"ranges": [[{"subnet": "10.8.0.0/24", "exclude": ["10.8.0.1/30"]}]]},
                 "ipam.ranges[0][0].exclude[0]"),
        "timeout": ({"ranges": [[{"subnet": "10.7.0.0/24"}]], "etcd": dict(etcd, dialTimeout=0)},
                    "ipam.etcd.dialTimeout"),
        "node": ({"ranges": [[{"subnet": "10.6.0.0/24"}]], "node": "a/b"}, "ipam.node"),
    }
    files = {}
    for name, (ipam, _) in cases.items():
        ipam = dict({"type": "cluster-ipam", "etcd": etcd}, **ipam)
        files[name] = write(tmp_path, f"{name}.yaml", CLUSTER_NAD.format(name=name, ipam=json.dumps(ipam)))
    whereabouts = {"type": "cluster-ipam", "etcd": etcd, "range": "192.168.2.225/28",
                   "exclude": ["192.168.2.229/30", "192.168.2.236/32"]}
    clean = write(tmp_path, "clean.yaml", CLUSTER_NAD.format(name="clean", ipam=json.dumps(whereabouts)))
    out = run_underlay("validate", clean, *files.values(), "-o", "json")
    assert out.code == 1, out
    found = {p["network"]: (p["field"], p["severity"]) for p in out.json["problems"]}
    # host bits in an exclusion: taken as the network they name, as before the one CIDR rule (issue 17)
    assert found == {name: (field, "warning" if name == "bits" else "error") for name, (_, field) in cases.items()}, \
        out.json
    assert out.json["errors"] == len(cases) - 1 and out.json["warnings"] == 1
    shipped = sorted(str(p) for p in (ROOT / "conf" / "nads").glob("cluster-*.yaml"))
    assert shipped, "no cluster-ipam NAD examples found"
    out = run_underlay("validate", *shipped)   # not with `clean`: the whereabouts example's subnet, another etcd
    assert out.code == 0 and out.stdout == f"{len(shipped)} file(s): 0 error(s), 0 warning(s)\n", out


def test_validate_checks_whereabouts_etcd_host_as_add_does(tmp_path):
    """Review of issue 17, item 3: with whereabouts' etcd_host (no `etcd` section) a host ADD refuses
    (code 7) passed validate: the endpoints it makes are checked as ipam.etcd's are."""
    def conf(host):
        return {"cniVersion": "1.0.0", "name": "w", "type": "macvlan", "master": "eth1",
                "ipam": {"type": "cluster-ipam", "etcd_host": host, "range": "192.168.2.225/28"}}
    bad = write(tmp_path, "bad.conf", conf("ftp://192.0.2.1:2379"))
    out = run_underlay("validate", bad, "-o", "json")
    assert out.code == 1, out
    [p] = out.json["problems"]
    assert (p["field"], p["severity"]) == ("ipam.etcd.endpoints[0]", "error") and "ftp://" in p["message"], out
    on_node = conf("ftp://192.0.2.1:2379")
    on_node["ipam"].update(node="n1", dataDir=str(tmp_path / "n1"))
    add = run_plugin("cluster-ipam", "ADD", on_node, container_id="c1", netns="/run/netns/uop-none")
    assert add.cni_code == 7 and add.json["msg"].startswith("ipam.etcd.endpoints[0]"), add
    out = run_underlay("validate", write(tmp_path, "good.conf", conf("192.0.2.1:2379")))
    assert out.code == 0 and out.stdout == "1 file(s): 0 error(s), 0 warning(s)\n", out


def cluster_conf(name, subnet, prefix, master="eth1", endpoints=("http://192.0.2.1:2379",), **ipam):
    return {"cniVersion": "1.0.0", "name": name, "type": "macvlan", "master": master,
            "ipam": dict({"type": "cluster-ipam", "etcd": {"endpoints": list(endpoints), "prefix": prefix},
                          "ranges": [[{"subnet": subnet}]]}, **ipam)}


def test_validate_finds_overlaps_between_stores_of_cluster_ipam_and_host_local(tmp_path):
    """Issue 17: two cluster-ipam networks on one master, overlapping subnets on two etcd prefixes,
    both handed out the same address, and validate said nothing. Address keys are global under one
    etcd cluster and prefix: networks sharing those share the pool (fine, whatever their names)."""
    a = write(tmp_path, "a.conf", cluster_conf("a", "10.70.0.0/24", "/a"))
    b = write(tmp_path, "b.conf", cluster_conf("b", "10.70.0.0/25", "/b"))
    out = run_underlay("validate", a, b, "-o", "json")
    assert out.code == 1, out
    (p,) = out.json["problems"]
    assert (p["file"], p["network"], p["field"], p["severity"]) == (b, "b", "ipam.ranges[0][0]", "error")
    assert p["message"] == (
        f"range 10.70.0.0/25 10.70.0.1-10.70.0.126 overlaps 10.70.0.0/24 10.70.0.1-10.70.0.254 of network a ({a}, "
        "ipam.ranges[0][0]): their leases are in separate stores (etcd http://192.0.2.1:2379 prefix /b; etcd "
        "http://192.0.2.1:2379 prefix /a), so both hand out the same addresses")
    # one store: same prefix, an endpoint in common (another member listed too): no problem
    shared = write(tmp_path, "shared.conf", cluster_conf("shared", "10.70.0.0/25", "/a",
                                                         endpoints=("http://192.0.2.2:2379", "http://192.0.2.1:2379/")))
    out = run_underlay("validate", a, shared)
    assert out.code == 0 and out.stdout == "2 file(s): 0 error(s), 0 warning(s)\n", out
    # host-local beside cluster-ipam: its own files, another store
    hl = write(tmp_path, "hl.conf", {"cniVersion": "1.0.0", "name": "hl", "type": "macvlan", "master": "eth1",
                                     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.70.0.128/26"}]]}})
    out = run_underlay("validate", a, hl, "-o", "json")
    assert out.code == 1 and [(p["network"], p["severity"]) for p in out.json["problems"]] == [("hl", "error")], out
    assert "separate stores (network hl's host-local files; etcd http://192.0.2.1:2379 prefix /a)" in \
        out.json["problems"][0]["message"]
    # warnings only where it may be fine: other masters (separate L2s?), the same prefix on endpoint
    # lists with no URL in common (one cluster named otherwise?)
    other_master = write(tmp_path, "m.conf", cluster_conf("m", "10.70.0.0/25", "/b", master="eth2"))
    other_names = write(tmp_path, "e.conf", cluster_conf("e", "10.70.0.0/25", "/a",
                                                         endpoints=("http://etcd.example:2379",)))
    for path, words in ((other_master, "fine only if their masters are separate L2s"),
                        (other_names, "fine only if both endpoint lists name one etcd cluster")):
        out = run_underlay("validate", a, path, "-o", "json")
        assert out.code == 0 and [p["severity"] for p in out.json["problems"]] == ["warning"], out
        assert words in out.json["problems"][0]["message"], out


def test_validate_says_what_block_size_accepts_and_warns_of_one_block(tmp_path):
    """Issue 17: blockSize mistakes were "valid exactly by one definition"; a blockSize larger than
    the range was silently one block."""
    files = {name: write(tmp_path, f"{name}.conf", cluster_conf(name, "10.71.0.0/24" if name != "one" else
                                                                "10.72.0.0/28", f"/{name}", blockSize=size))
             for name, size in (("typo", {"ipv4": 28, "ip6": 124}), ("big", 32), ("text", "26"), ("one", 26))}
    out = run_underlay("validate", *files.values(), "-o", "json")
    assert out.code == 1, out
    found = {p["network"]: (p["field"], p["severity"], p["message"]) for p in out.json["problems"]}
    assert found["typo"] == ("ipam.blockSize.ip6", "error",
                             "unknown key 'ip6'; did you mean 'ipv6'? (the plugin refuses it)")
    words = ('must be a prefix length from 8 to 30 (a number, for IPv4; IPv6 blocks then hold as many addresses) '
             'or {"ipv4": 8-30, "ipv6": 104-126}; got ')
    assert found["big"] == ("ipam.blockSize", "error", words + "32")
    assert found["text"] == ("ipam.blockSize", "error", words + "'26'")
    assert found["one"] == ("ipam.blockSize", "warning",
                            "a /26 block holds all of ipam.ranges[0][0] (10.72.0.0/28 10.72.0.1-10.72.0.14): the "
                            "first node to ADD owns it and every other node borrows from it address by address; a "
                            "blockSize of /30 cuts it into 4 blocks")
    assert (out.json["errors"], out.json["warnings"]) == (3, 1)


def test_validate_warns_of_host_bits_in_an_exclusion(tmp_path):
    """Issue 17: accepted again (as before the one CIDR rule), so a warning, not an error."""
    conf = {"cniVersion": "1.0.0", "name": "x", "type": "macvlan", "master": "eth1",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.97.0.0/24"}]], "exclude": ["10.97.0.100/27"]}}
    out = run_underlay("validate", write(tmp_path, "x.conf", conf), "-o", "json")
    assert out.code == 0, out
    assert [(p["field"], p["severity"], p["message"]) for p in out.json["problems"]] == [
        ("ipam.exclude[0]", "warning", "10.97.0.100/27 has host bits set; excluded as 10.97.0.96/27, the network "
                                       "it names (write 10.97.0.96/27 to say so)")]


def test_validate_unreadable_and_malformed_files(tmp_path):
    out = run_underlay("validate", tmp_path / "missing.conf", write(tmp_path, "x.json", "{"),
                       write(tmp_path, "y.yaml", "a: [1,"), "-o", "json")
    assert out.code == 1
    messages = [p["message"] for p in out.json["problems"]]
    assert "cannot read it" in messages[0] and "not valid JSON" in messages[1] and "YAML" in messages[2], messages


# -- gc --dry-run -------------------------------------------------------------------------

def gc_dry_run(hl, *args):
    out = run_underlay("gc", "--dry-run", "--data-dir", hl.data_dir, "-o", "json", *args)
    assert out.code == 0, out
    return {(r["container"], r["ifname"], r["address"]): (r["action"], r["reason"]) for r in out.json}


def gc_for_real(hl, conf, valid):
    attachments = [{"containerID": c, "ifname": i} for c, i in valid]
    out = hl.run("GC", dict(conf, **{"cni.dev/valid-attachments": attachments}), cid=None, ifname=None, netns=None)
    assert out.ok, out


def test_gc_dry_run_says_what_gc_then_releases(hl, reference, tmp_path):
    conf = hl.config(V4, version="1.1.0")
    for cid, ifname in (("keep", "eth0"), ("keep", "net1"), ("drop", "eth0")):
        assert hl.add(conf, cid, ifname).ok
    assert reference.add(hl.config(V4), "refdrop", "eth0").ok
    assert reference.add(hl.config(V4), "refkeep", "eth0").ok
    valid = [("keep", "eth0"), ("refkeep", "eth0")]
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]})
    before = tree(hl.data_dir)
    plan = gc_dry_run(hl, "--valid-from", write(tmp_path, "gc.json", gc_conf))
    assert tree(hl.data_dir) == before
    assert plan == {
        ("keep", "eth0", "10.1.0.2"): ("keep", "in the valid list, but its netns /run/netns/underlay-test is gone"),
        ("keep", "net1", "10.1.0.3"): ("release", "not in the valid list; its netns /run/netns/underlay-test is gone"),
        ("drop", "eth0", "10.1.0.4"): ("release", "not in the valid list; its netns /run/netns/underlay-test is gone"),
        ("refdrop", "eth0", "10.1.0.5"): ("release", "not in the valid list"),
        ("refkeep", "eth0", "10.1.0.6"): ("keep", "in the valid list"),
    }
    assert gc_dry_run(hl, *[x for c, i in valid for x in ("--valid", f"{c}/{i}")]) == plan   # same list, by hand
    gc_for_real(hl, conf, valid)
    assert sorted(hl.leases()) == sorted(ip for (_, _, ip), (action, _) in plan.items() if action == "keep")


def test_gc_dry_run_after_a_reboot(hl, live_netns):
    conf = hl.config(V4, version="1.1.0")
    assert hl.add(conf, "alive", netns=live_netns).ok
    assert hl.add(conf, "dead", netns="/run/netns/uop-gone").ok
    assert hl.add(conf, "stray", netns=live_netns).ok
    stamp = os.path.join(hl.net_dir(), INDEX_DIR, STAMP)
    fmt, mtime, _ = open(stamp).read().split()
    with open(stamp, "w") as f:
        f.write(f"{fmt} {mtime} {uuid.uuid4()}")          # stamped under another boot
    valid = [("alive", "eth0"), ("dead", "eth0")]
    plan = gc_dry_run(hl, "--valid", "alive/eth0", "dead/eth0")
    assert plan == {
        ("alive", "eth0", "10.1.0.2"): ("keep", "in the valid list"),
        ("dead", "eth0", "10.1.0.3"): ("release", "after a reboot: its netns /run/netns/uop-gone is gone"),
        ("stray", "eth0", "10.1.0.4"): ("release", f"not in the valid list; its netns {live_netns} still "
                                                   "exists: is the list complete?"),
    }
    gc_for_real(hl, conf, valid)
    assert sorted(hl.leases()) == ["10.1.0.2"]


def test_gc_valid_list_from_the_older_key_and_network_from_the_file(hl, tmp_path):
    conf = hl.config(V4, version="1.1.0")
    assert hl.add(conf, "c1").ok
    assert hl.add(hl.config(V4, name="net2"), "c2").ok
    path = write(tmp_path, "gc.json", dict(conf, **{"cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]}))
    plan = gc_dry_run(hl, "--valid-from", path)           # net1 only: the file names it
    assert plan == {("c1", "eth0", "10.1.0.2"): ("keep", "in the valid list, but its netns "
                                                          "/run/netns/underlay-test is gone")}


def test_gc_refuses_without_dry_run_or_without_a_list(hl):
    assert hl.add(hl.config(V4), "c1").ok
    before = tree(hl.data_dir)
    out = run_underlay("gc", "--valid", "c1/eth0", "--data-dir", hl.data_dir)
    assert out.code == 2 and "--dry-run" in out.stderr, out
    out = run_underlay("gc", "--dry-run", "--data-dir", hl.data_dir)
    assert out.code == 2 and "releases every lease" in out.stderr, out
    out = run_underlay("gc", "--dry-run", "--valid", "c1", "--data-dir", hl.data_dir)
    assert out.code == 2 and "CONTAINERID/IFNAME" in out.stderr, out
    assert tree(hl.data_dir) == before


def test_table_summary_of_a_dry_run(hl):
    assert hl.add(hl.config(V4), "c1").ok
    out = run_underlay("gc", "--dry-run", "--valid", "other/eth0", "--data-dir", hl.data_dir)
    assert out.code == 0, out
    assert out.stdout.splitlines()[0].split() == ["NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "ACTION", "WHY"]
    assert "GC would release 1 and keep 0 lease(s); nothing was changed" in out.stdout


# -- cluster hook -------------------------------------------------------------------------

def test_cluster_hook(tmp_path):
    """`underlay cluster` reaches ipam/cluster.py."""
    conf = write(tmp_path, "c.conf", {"cniVersion": "1.0.0", "name": "c", "type": "macvlan",
                                      "ipam": {"type": "cluster-ipam"}})
    out = run_underlay("cluster", "release-node", "node1", "--config", conf)
    assert out.code == 2 and "--yes" in out.stderr, out        # refused before anything is asked of a store
    import ipam.cluster as cluster
    from cni.operator.cluster import cluster_module
    assert cluster_module() is cluster
    assert callable(cluster.leases) and callable(cluster.release_node)

def test_validate_refuses_near_miss_keys_and_warns_of_unknown_ones(tmp_path):
    typo = {"cniVersion": "1.0.0", "name": "t", "type": "macvlan", "mdoe": "bridge", "master": "eth1", "foo": 1,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24", "rangStart": "10.1.0.10"}]],
                     "exlude": ["10.1.0.0/28"]}}
    path = write(tmp_path, "typo.conf", typo)
    out = run_underlay("validate", path, "-o", "json")
    assert out.code == 1, out
    found = {p["field"]: (p["severity"], p["message"], p["network"], p["file"]) for p in out.json["problems"]}
    assert found == {
        "mdoe": ("error", "unknown key 'mdoe'; did you mean 'mode'? (the plugin refuses it)", "t", path),
        "foo": ("warning", "unknown key 'foo' (kept and ignored by the plugin)", "t", path),
        "ipam.exlude": ("error", "unknown key 'exlude'; did you mean 'exclude'? (the plugin refuses it)", "t", path),
        "ipam.ranges[0][0].rangStart": ("error", "unknown key 'rangStart'; did you mean 'rangeStart'? "
                                                 "(the plugin refuses it)", "t", path),
    }
