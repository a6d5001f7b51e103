"""cluster-ipam under real plugins in real namespaces: Debian's Go macvlan exec'ing it, our macvlan in-process.

The plugins run inside the test's "host" netns; the etcd member they use runs
there too (on that netns's loopback), so nothing is opened on the machine's own.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests import netns as ns
from tests.etcd import ETCD, _die_with_parent
from tests.plugins import REFERENCE_DIR, ROOT, run_on_node, run_plugin

pytestmark = pytest.mark.root
PORT = 2379   # a fresh netns: nothing else listens there


@pytest.fixture
def node_etcd(host_ns):
    """One etcd member inside host_ns; stopped and its data removed even when the test fails."""
    directory = tempfile.mkdtemp(prefix="ucl-etcd-")
    url = f"http://127.0.0.1:{PORT}"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host_ns, ETCD, "--name", "ucl", "--data-dir", f"{directory}/data",
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{PORT + 1}", "--initial-advertise-peer-urls",
         f"http://127.0.0.1:{PORT + 1}", "--initial-cluster", f"ucl=http://127.0.0.1:{PORT + 1}",
         "--log-level", "warn", "--logger", "zap"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(f"{directory}/log", "wb"),
        preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + 30
        while ns.sh("curl", "-sf", f"{url}/health", ns=host_ns, check=False).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, open(f"{directory}/log").read()
            time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def bin_dir(tmp_path):
    """A CNI_PATH holding only cluster-ipam (a wrapper around this checkout, or the built one)."""
    path = tmp_path / "bin"
    path.mkdir()
    built = os.environ.get("UNDERLAY_BIN_DIR")
    if built:
        os.symlink(os.path.join(os.path.abspath(built), "cluster-ipam"), path / "cluster-ipam")
    else:
        (path / "cluster-ipam").write_text(f"#!/bin/sh\nPYTHONPATH='{ROOT}' exec '{sys.executable}' -P "
                                           "-m ipam.cluster \"$@\"\n")
        (path / "cluster-ipam").chmod(0o755)
    return str(path)


def conf(master, etcd_url, tmp_path, node="n1", version="1.0.0"):
    return {"cniVersion": version, "name": "uclmv", "type": "macvlan", "master": master,
            "ipam": {"type": "cluster-ipam", "node": node, "dataDir": str(tmp_path / node),
                     "etcd": {"endpoints": [etcd_url], "prefix": "/ucl"},
                     "ranges": [[{"subnet": "10.70.0.0/24"}]], "exclude": ["10.70.0.2-10.70.0.9"]}}


def leases(host_ns, c):
    """cluster-ipam's own listing, run where etcd is reachable."""
    code = "import json,sys; from ipam import cluster; print(json.dumps(cluster.leases(json.loads(sys.argv[1]))))"
    out = ns.sh("env", f"PYTHONPATH={ROOT}", sys.executable, "-c", code, json.dumps(c), ns=host_ns).stdout
    return {row["ip"]: row for row in json.loads(out)}


def test_debian_go_macvlan_execs_cluster_ipam(host_ns, master, pod_ns, node_etcd, bin_dir, tmp_path):
    c = conf(master, node_etcd, tmp_path)
    pod = pod_ns()
    go = [os.path.join(REFERENCE_DIR, "macvlan")]
    out = run_plugin("macvlan", "ADD", c, in_netns=host_ns, argv=go, container_id="c1",
                     netns=ns.netns_path(pod), ifname="eth0", path=bin_dir,
                     args="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1")
    assert out.ok, out
    [ip] = out.json["ips"]
    assert ip["address"] == "10.70.0.10/24" and ip["gateway"] == "10.70.0.1"
    assert ns.addrs(pod, "eth0") == ["10.70.0.10/24"]
    record = leases(host_ns, c)["10.70.0.10"]
    assert (record["containerID"], record["ifname"], record["node"], record["pod"]) == ("c1", "eth0", "n1", "p1")
    check = run_plugin("macvlan", "CHECK", dict(c, prevResult=out.json), in_netns=host_ns, argv=go,
                       container_id="c1", netns=ns.netns_path(pod), ifname="eth0", path=bin_dir)
    assert check.ok, check
    gone = run_plugin("macvlan", "DEL", c, in_netns=host_ns, argv=go, container_id="c1",
                      netns=ns.netns_path(pod), ifname="eth0", path=bin_dir)
    assert gone.ok, gone
    assert leases(host_ns, c) == {}
    assert "eth0" not in ns.links(pod)


def test_our_macvlan_runs_cluster_ipam_in_process_pods_of_two_nodes_talk(host_ns, master, pod_ns, node_etcd,
                                                                          tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()   # nothing to exec: cluster-ipam must run in-process
    pods, addresses = [pod_ns(), pod_ns()], []
    for i, pod in enumerate(pods):
        c = conf(master, node_etcd, tmp_path, node=f"n{i}", version="1.1.0")
        out = run_on_node("macvlan", "ADD", c, host_ns, pod, cid=f"c{i}", path=str(empty))
        assert out.ok, out
        addresses.append(out.json["ips"][0]["address"].split("/")[0])
    assert len(set(addresses)) == 2 and all(a.startswith("10.70.0.") for a in addresses)
    assert ns.ping(pods[0], addresses[1]) or ns.ping(pods[0], addresses[1], count=3)
    rows = leases(host_ns, conf(master, node_etcd, tmp_path))
    assert sorted((r["node"], r["ip"]) for r in rows.values()) == sorted(zip(("n0", "n1"), addresses))
    for i, pod in enumerate(pods):
        c = conf(master, node_etcd, tmp_path, node=f"n{i}", version="1.1.0")
        assert run_on_node("macvlan", "DEL", c, host_ns, pod, cid=f"c{i}", path=str(empty)).ok
    assert leases(host_ns, conf(master, node_etcd, tmp_path)) == {}


def test_a_failed_macvlan_add_gives_the_lease_back(host_ns, master, pod_ns, node_etcd, tmp_path):
    c = conf(master, node_etcd, tmp_path, version="1.1.0")
    # a route via a gateway on no link of the pod: the kernel refuses it after IPAM gave the address
    c["ipam"]["routes"] = [{"dst": "10.99.0.0/16", "gw": "192.0.2.1"}]
    pod = pod_ns()
    out = run_on_node("macvlan", "ADD", c, host_ns, pod, cid="c1", path=str(tmp_path))
    assert not out.ok and out.cni_code != 7, out
    assert leases(host_ns, c) == {}
    assert "eth0" not in ns.links(pod)


@pytest.mark.kernel("ipvlan")
@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_our_ipvlan_runs_cluster_ipam_in_process(host_ns, master, pod_ns, node_etcd, tmp_path, mode):
    """ipvlan (in the VM where this kernel has none) with cluster-ipam in-process: pods of two nodes
    get distinct addresses from one range and reach each other; CHECK passes; DEL gives them back."""
    empty = tmp_path / "empty"
    empty.mkdir()   # nothing to exec: cluster-ipam must run in-process
    pods, results = [pod_ns(), pod_ns()], []
    for i, pod in enumerate(pods):
        c = dict(conf(master, node_etcd, tmp_path, node=f"n{i}", version="1.1.0"), type="ipvlan", mode=mode)
        out = run_on_node("ipvlan", "ADD", c, host_ns, pod, cid=f"c{i}", path=str(empty))
        assert out.ok, out
        results.append(out.json)
        check = run_on_node("ipvlan", "CHECK", dict(c, prevResult=out.json), host_ns, pod, cid=f"c{i}",
                            path=str(empty))
        assert check.ok, check
    addresses = [r["ips"][0]["address"].split("/")[0] for r in results]
    assert len(set(addresses)) == 2 and all(a.startswith("10.70.0.") for a in addresses)
    assert ns.addrs(pods[1], "eth0") == [results[1]["ips"][0]["address"]]
    assert ns.ping(pods[0], addresses[1]) or ns.ping(pods[0], addresses[1], count=3)
    rows = leases(host_ns, conf(master, node_etcd, tmp_path))
    assert sorted((r["node"], r["ip"]) for r in rows.values()) == sorted(zip(("n0", "n1"), addresses))
    for i, pod in enumerate(pods):
        c = dict(conf(master, node_etcd, tmp_path, node=f"n{i}", version="1.1.0"), type="ipvlan", mode=mode)
        assert run_on_node("ipvlan", "DEL", c, host_ns, pod, cid=f"c{i}", path=str(empty)).ok
        assert "eth0" not in ns.links(pod)
    assert leases(host_ns, conf(master, node_etcd, tmp_path)) == {}


@pytest.mark.parametrize("plugin", ["ours", "debian-go"])
def test_whereabouts_readme_examples_attach_pods(host_ns, master, pod_ns, node_etcd, bin_dir, tmp_path, plugin):
    """Issue 17 item 12: whereabouts' README examples (its macvlan config with exclude, its IPv6 one
    with a gateway outside the subnet, its dual stack one), with `type` changed and `etcd` added,
    attach pods in real namespaces: by our macvlan (cluster-ipam in-process) and by Debian's Go
    macvlan exec'ing it. `master` is the test's (whereabouts' README: use one your nodes have)."""
    from tests.cluster.test_whereabouts_examples import README_DUAL_STACK, README_EXCLUDE, README_IPV6
    argv = [os.path.join(REFERENCE_DIR, "macvlan")] if plugin == "debian-go" else None
    path = bin_dir if argv else str(tmp_path / "empty")   # ours: nothing to exec, cluster-ipam in-process
    os.makedirs(tmp_path / "empty", exist_ok=True)
    cases = [(README_EXCLUDE, ["192.168.2.225/28"]), (README_IPV6, ["2001::1/116"]),
             (README_DUAL_STACK, ["192.168.10.1/24", "abcd::1/64"])]
    for i, (example, expected) in enumerate(cases):
        c = {"cniVersion": "0.3.0", "name": f"whereaboutsexample{i}", "type": "macvlan", "master": master,
             "mode": "bridge", "ipam": dict(example, type="cluster-ipam", node="n1", dataDir=str(tmp_path / "n1"),
                                            etcd={"endpoints": [node_etcd], "prefix": "/ucl"})}
        pod = pod_ns()
        out = run_plugin("macvlan", "ADD", c, in_netns=host_ns, argv=argv, container_id=f"c{i}",
                         netns=ns.netns_path(pod), ifname="eth0", path=path)
        assert out.ok, out
        assert [ip["address"] for ip in out.json["ips"]] == expected
        assert sorted(a for a in ns.addrs(pod, "eth0") if not a.startswith("fe80:")) == sorted(expected)
        gone = run_plugin("macvlan", "DEL", c, in_netns=host_ns, argv=argv, container_id=f"c{i}",
                          netns=ns.netns_path(pod), ifname="eth0", path=path)
        assert gone.ok, gone
    assert leases(host_ns, c) == {}
