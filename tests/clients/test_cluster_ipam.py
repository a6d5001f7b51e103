"""cluster-ipam under a real client: libcni (tests/clients/cnitool) running conflists in a test "host"
netns, with etcd (TLS, client certificates) running in that netns too.

- every cluster-ipam NetworkAttachmentDefinition of conf/nads, as Multus would run it: our macvlan
  with cluster-ipam in-process; ADD, CHECK, DEL; GC through libcni; sticky across two nodes;
- Debian's Go bridge exec'ing cluster-ipam from CNI_PATH.
"""

import copy
import json
import os
import subprocess
import sys
import tempfile
import uuid

import pytest

from ipam import cluster
from tests import netns as nsutil
from tests.clients import libcni
from tests.bundle import built_bin_dir
from tests.clients.conftest import install_plugin
from tests.etcd import ETCD, TlsFiles, _die_with_parent

pytestmark = [pytest.mark.root, pytest.mark.clients, pytest.mark.both_paths, pytest.mark.etcd]
CLUSTER_NADS = sorted(p.name for p in libcni.NADS.glob("*.yaml")
                      if (libcni.load_nad(p.name)[1]["plugins"][0].get("ipam") or {}).get("type") == "cluster-ipam")
URL = "https://127.0.0.1:2379"     # inside host_ns: a fresh netns, nothing else listens there


@pytest.fixture
def ns_etcd(host_ns):
    """One etcd member with TLS and client certificates inside host_ns; the `etcd` section for it.
    Stopped and its data removed even when the test fails."""
    directory = tempfile.mkdtemp(prefix="uci-etcd-")
    tls = TlsFiles(os.path.join(directory, "tls"))
    peer = "http://127.0.0.1:2380"
    log = open(os.path.join(directory, "log"), "wb")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host_ns, ETCD, "--name", "uci", "--data-dir", f"{directory}/data",
         "--listen-client-urls", URL, "--advertise-client-urls", URL, "--listen-peer-urls", peer,
         "--initial-advertise-peer-urls", peer, "--initial-cluster", f"uci={peer}",
         "--cert-file", tls.server_cert, "--key-file", tls.server_key, "--client-cert-auth",
         "--trusted-ca-file", tls.ca, "--log-level", "warn", "--logger", "zap"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
    try:
        health = ["curl", "-sf", "--cacert", tls.ca, "--cert", tls.cert, "--key", tls.key, f"{URL}/health"]
        for _ in range(300):
            if nsutil.sh(*health, ns=host_ns, check=False).returncode == 0:
                break
            assert proc.poll() is None, open(os.path.join(directory, "log")).read()[-2000:]
            subprocess.run(["sleep", "0.1"])
        else:
            pytest.fail("etcd in the host netns never became healthy")
        yield {"endpoints": [URL], "certFile": tls.cert, "keyFile": tls.key, "trustedCAFile": tls.ca,
               "prefix": f"/uci-{uuid.uuid4().hex[:8]}"}
    finally:
        proc.kill()
        proc.wait()
        log.close()
        subprocess.run(["rm", "-rf", directory])


@pytest.fixture
def bin_dir(tmp_path, plugin_route, request):
    """CNI_PATH: our macvlan and cluster-ipam (install_plugin), Debian's bridge and loopback."""
    path = tmp_path / "bin"
    path.mkdir()
    for name in ("macvlan", "cluster-ipam"):
        install_plugin(str(path), name, plugin_route, built_bin_dir(request))
    for name in ("bridge", "loopback"):
        os.symlink(os.path.join(libcni.REFERENCE_DIR, name), path / name)
    return str(path)


@pytest.fixture
def drivers(cnitool, bin_dir, host_ns):
    """Factory of libcni drivers in host_ns (one per simulated node); each cleaned up at teardown."""
    made = []

    def make():
        made.append(libcni.Driver(cnitool, bin_dir, host_ns))
        return made[-1]

    try:
        yield make
    finally:
        for d in made:
            d.cleanup()


def localize(conflist, master, etcd, node, data_dir):
    """A cluster-ipam NAD made runnable here: our master, this etcd (its address and certificates), a node."""
    conflist = copy.deepcopy(conflist)
    for plugin in conflist["plugins"]:
        plugin["master"] = master
        ipam = plugin["ipam"]
        ipam["etcd"] = dict(ipam["etcd"], **etcd)
        ipam.update(node=node, dataDir=os.path.join(data_dir, node))
    return conflist


def leases(host_ns, config):
    """cluster-ipam's own listing (ipam.cluster.leases), run where etcd is: {ip: row}."""
    code = "import json,sys; from ipam import cluster; print(json.dumps(cluster.leases(json.loads(sys.argv[1]))))"
    out = nsutil.sh("env", f"PYTHONPATH={libcni.ROOT}", sys.executable, "-c", code, json.dumps(config),
                    ns=host_ns).stdout
    return {row["ip"]: row for row in json.loads(out)}


def pod_args(cid, name, namespace="default"):
    return {"IgnoreUnknown": "true", "K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name,
            "K8S_POD_INFRA_CONTAINER_ID": cid, "K8S_POD_UID": str(uuid.uuid4())}


def allowed(address, ipam):
    return libcni.allowed(address, cluster.with_whereabouts(ipam))


@pytest.mark.parametrize("name", CLUSTER_NADS)
def test_libcni_attaches_each_cluster_nad(name, drivers, master, pod_ns, ns_etcd, host_ns, tmp_path):
    _, conflist = libcni.load_nad(name)
    conflist = localize(conflist, master, ns_etcd, "n1", str(tmp_path))
    config = conflist["plugins"][0]
    driver = drivers()
    net = driver.install(conflist)
    pod = pod_ns()
    netns = nsutil.netns_path(pod)
    cid = uuid.uuid4().hex
    args = pod_args(cid, "nad-check")
    added = driver.add(net, netns, ifname="net1", container_id=cid, args=args)
    assert added.ok, added
    ips = [ip["address"] for ip in added.json["ips"]]
    assert len(ips) == len(cluster.with_whereabouts(config["ipam"])["ranges"])
    assert all(allowed(ip, config["ipam"]) for ip in ips), ips
    assert set(nsutil.addrs(pod, "net1")) == set(ips)
    rows = leases(host_ns, config)
    assert sorted(rows) == sorted(ip.split("/")[0] for ip in ips)
    assert {(r["containerID"], r["ifname"], r["node"], r["namespace"], r["pod"]) for r in rows.values()} == \
        {(cid, "net1", "n1", "default", "nad-check")}
    if libcni.version_key(driver.version_of(net)) >= (0, 4, 0):     # whereabouts' sample says 0.3.1: no CHECK
        assert driver.check(net, netns, ifname="net1", container_id=cid, args=args).ok
    assert driver.delete(net, netns, ifname="net1", container_id=cid, args=args).ok
    left = leases(host_ns, config)
    if config["ipam"].get("sticky"):            # held for the pod, no longer leased
        assert {(ip, r["kind"], r["pod"]) for ip, r in left.items()} == \
            {(ip.split("/")[0], "hold", "nad-check") for ip in ips}
    else:
        assert left == {}
    assert "net1" not in nsutil.links(pod)


def test_libcni_gc_releases_only_what_is_not_valid(drivers, master, pod_ns, ns_etcd, host_ns, tmp_path):
    """A pod gone without DEL and without libcni's cache entry: only cluster-ipam's own GC (spec 1.1.0,
    cni.dev/valid-attachments, through our macvlan) can release its lease; the live one stays."""
    _, conflist = libcni.load_nad("cluster-macvlan.yaml")
    conflist = localize(conflist, master, ns_etcd, "n1", str(tmp_path))
    config = conflist["plugins"][0]
    driver = drivers()
    net = driver.install(conflist)
    cids, pods = [uuid.uuid4().hex for _ in range(2)], [pod_ns() for _ in range(2)]
    for cid, pod in zip(cids, pods):
        assert driver.add(net, nsutil.netns_path(pod), ifname="net1", container_id=cid,
                          args=pod_args(cid, f"gc-{cid[:6]}")).ok
    assert len(leases(host_ns, config)) == 2
    nsutil.del_netns(pods[1])
    driver.forget(net, cids[1], "net1")
    # Debian's libcni 1.1.2 ADDs at 1.0.0 at most; GC is the same network as an upgraded 1.1.0 conflist
    driver.install(dict(conflist, cniVersion="1.1.0"))
    gc = driver.gc(net, valid=[(cids[0], "net1")])
    assert gc.ok, gc
    assert {r["containerID"] for r in leases(host_ns, config).values()} == {cids[0]}
    driver.install(conflist)
    assert driver.delete(net, nsutil.netns_path(pods[0]), ifname="net1", container_id=cids[0]).ok
    assert leases(host_ns, config) == {}


def test_libcni_sticky_address_follows_the_pod_to_another_node(drivers, master, pod_ns, ns_etcd, host_ns, tmp_path):
    _, conflist = libcni.load_nad("cluster-sticky.yaml")
    on = {node: localize(conflist, master, ns_etcd, node, str(tmp_path)) for node in ("n1", "n2")}
    node1, node2 = drivers(), drivers()
    net = node1.install(on["n1"])
    node2.install(on["n2"])
    first, again = uuid.uuid4().hex, uuid.uuid4().hex
    pod = pod_ns()
    out = node1.add(net, nsutil.netns_path(pod), ifname="net1", container_id=first, args=pod_args(first, "db-0"))
    assert out.ok, out
    address = out.json["ips"][0]["address"]
    assert node1.delete(net, nsutil.netns_path(pod), ifname="net1", container_id=first,
                        args=pod_args(first, "db-0")).ok
    # meanwhile another pod never gets it
    other = uuid.uuid4().hex
    taken = node2.add(net, nsutil.netns_path(pod_ns()), ifname="net1", container_id=other,
                      args=pod_args(other, "db-1"))
    assert taken.ok and taken.json["ips"][0]["address"] != address, taken
    # db-0 re-created on the other node gets its address back
    pod2 = pod_ns()
    out = node2.add(net, nsutil.netns_path(pod2), ifname="net1", container_id=again, args=pod_args(again, "db-0"))
    assert out.ok, out
    assert out.json["ips"][0]["address"] == address
    assert leases(host_ns, on["n2"]["plugins"][0])[address.split("/")[0]]["node"] == "n2"


def test_debian_go_bridge_execs_cluster_ipam_through_libcni(drivers, pod_ns, ns_etcd, host_ns, tmp_path):
    bridge = nsutil.unique("ucibr")
    ipam = {"type": "cluster-ipam", "node": "n1", "dataDir": str(tmp_path / "n1"), "etcd": ns_etcd,
            "ranges": [[{"subnet": "10.84.0.0/24", "gateway": "10.84.0.1"}]], "exclude": ["10.84.0.2-10.84.0.9"]}
    conflist = {"cniVersion": "1.0.0", "name": "ucibridge",
                "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipam": ipam}]}
    driver = drivers()
    net = driver.install(conflist)
    pods, cids, got = [pod_ns(), pod_ns()], [uuid.uuid4().hex for _ in range(2)], []
    for pod, cid in zip(pods, cids):
        out = driver.add(net, nsutil.netns_path(pod), ifname="eth0", container_id=cid, args=pod_args(cid, pod))
        assert out.ok, out
        [ip] = [i["address"] for i in out.json["ips"]]
        assert libcni.allowed(ip, ipam), ip
        assert nsutil.addrs(pod, "eth0") == [ip]
        got.append(ip.split("/")[0])
    assert len(set(got)) == 2
    assert nsutil.ping(pods[0], got[1]) or nsutil.ping(pods[0], got[1], count=3)
    assert sorted(leases(host_ns, conflist["plugins"][0])) == sorted(got)
    for pod, cid in zip(pods, cids):
        assert driver.check(net, nsutil.netns_path(pod), ifname="eth0", container_id=cid).ok
        assert driver.delete(net, nsutil.netns_path(pod), ifname="eth0", container_id=cid).ok
    assert leases(host_ns, conflist["plugins"][0]) == {}
