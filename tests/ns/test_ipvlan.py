"""ipvlan against a real kernel. This machine's kernel has no ipvlan: the tests
marked `kernel("ipvlan")` run inside the VM harness (tests/vm), one boot for all."""

import pytest

from tests import netns as ns
from tests.ns.test_macvlan import leases, rx_packets
from tests.plugins import run_on_node, run_plugin

VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def conf(master, data_dir, version="1.1.0", **extra):
    c = {"cniVersion": version, "name": "ivnet", "type": "ipvlan",
         "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.30.0.0/24"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}}
    if master:
        c["master"] = master
    c.update(extra)
    return c


def plugin(command, c, host_ns, pod=None, cid="c1", ifname="eth0", **kw):
    return run_on_node("ipvlan", command, c, host_ns, pod, cid, ifname, **kw)


def add(c, host_ns, pod, cid="c1", **kw):
    out = plugin("ADD", c, host_ns, pod, cid, **kw)
    assert out.ok, out
    return out.json


def ip_of(result):
    return result["ips"][0]["address"].split("/")[0]


needs_ipvlan = pytest.mark.kernel("ipvlan")


@needs_ipvlan
@pytest.mark.parametrize("mode", ["l2", "l3", "l3s"])
def test_pods_reach_each_other_in_every_mode(host_ns, master, pod_ns, data_dir, mode):
    c = conf(master, data_dir, mode=mode)
    a, b = pod_ns(), pod_ns()
    ra, rb = add(c, host_ns, a, "ca"), add(c, host_ns, b, "cb")
    assert ns.ping(a, ip_of(rb)) and ns.ping(b, ip_of(ra))
    info = ns.link_json(a, "eth0")["linkinfo"]["info_data"]
    assert info["mode"] == mode and info.get("bridge") is True  # iproute2 prints the flag as a boolean
    routes = ns.sh("ip", "route", "show", "default", ns=a).stdout
    if mode == "l2":
        assert "via 10.30.0.1" in routes and ra["ips"][0]["gateway"] == "10.30.0.1"
    else:
        # as Docker: a device default route and no gateway
        assert "default dev eth0" in routes and "via" not in routes, routes
        assert "gateway" not in ra["ips"][0] and ra["routes"] == [{"dst": "0.0.0.0/0"}]


@needs_ipvlan
@pytest.mark.parametrize("flag", ["private", "vepa"])
def test_flags_isolate_pods(host_ns, pod_ns, data_dir, flag):
    parent, peer = ns.add_parent(host_ns)
    c = conf(parent, data_dir, flag=flag)
    a, b = pod_ns(), pod_ns()
    ra, rb = add(c, host_ns, a, "ca"), add(c, host_ns, b, "cb")
    assert ns.link_json(a, "eth0")["linkinfo"]["info_data"].get(flag) is True
    ns.sh("ip", "neigh", "replace", ip_of(rb), "lladdr", rb["interfaces"][0]["mac"], "dev", "eth0", ns=a)
    before = rx_packets(host_ns, peer)
    reached = ns.ping(a, ip_of(rb), count=3, timeout=1)
    seen = rx_packets(host_ns, peer) - before
    assert not reached, f"{flag}: pods reached each other directly"
    if flag == "vepa":
        assert seen >= 3, f"vepa: only {seen} frames left through the parent"
    assert ra


@needs_ipvlan
def test_chained_mode_applies_prev_result_on_its_single_interface(host_ns, master, pod_ns):
    pod = pod_ns()
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": master}],
            "ips": [{"address": "10.31.0.7/24", "gateway": "10.31.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    c = {"cniVersion": "1.1.0", "name": "chain", "type": "ipvlan", "prevResult": prev}
    result = add(c, host_ns, pod)
    assert ns.addrs(pod, "eth0") == ["10.31.0.7/24"]
    assert ns.link_json(pod, "eth0")["link_index"] == ns.link_json(host_ns, master)["ifindex"]
    assert result["ips"][0]["interface"] == 0 and result["interfaces"][0]["name"] == "eth0"


@needs_ipvlan
def test_parent_with_macvlan_children_refuses_ipvlan_naming_it(host_ns, master, pod_ns, data_dir):
    mv = dict(conf(master, data_dir), type="macvlan", name="mvnet")
    out = run_plugin("macvlan", "ADD", mv, in_netns=host_ns, container_id="c1",
                     netns=ns.netns_path(pod_ns()), ifname="eth0")
    assert out.ok, out
    pod = pod_ns()
    out = plugin("ADD", conf(master, data_dir), host_ns, pod, "c2")
    assert out.cni_code == 102 and master in out.json["msg"] and "macvlan" in out.json["msg"], out
    assert ns.links(pod) == ["lo"]


@needs_ipvlan
@pytest.mark.both_paths
def test_del_cases_and_check_drift(host_ns, master, pod_ns, data_dir, tmp_path):
    c, pod = conf(master, data_dir, mode="l3", flag="private"), pod_ns()
    result = add(c, host_ns, pod)
    ok = plugin("CHECK", dict(c, prevResult=result), host_ns, pod)
    assert ok.ok, ok
    drift = plugin("CHECK", dict(c, flag="bridge", prevResult=result), host_ns, pod)
    assert drift.cni_code == 100 and "flag" in drift.json["msg"], drift
    drift = plugin("CHECK", dict(c, mode="l2", prevResult=result), host_ns, pod)
    assert drift.cni_code == 100 and "mode" in drift.json["msg"], drift
    ns.sh("ip", "link", "del", master, ns=host_ns)  # master gone (takes its children with it)
    for netns in (ns.netns_path(pod), "", str(tmp_path / "gone")):
        out = run_plugin("ipvlan", "DEL", c, in_netns=host_ns, container_id="c1", netns=netns, ifname="eth0")
        assert out.ok, out
    assert leases(data_dir, "ivnet") == []


@needs_ipvlan
@pytest.mark.both_paths
def test_every_version_add_del(host_ns, master, pod_ns, data_dir):
    for version in VERSIONS:
        c, pod = conf(master, data_dir, version=version), pod_ns()
        out = plugin("ADD", c, host_ns, pod)
        assert out.ok and out.json["cniVersion"] == version, out
        out = plugin("DEL", c, host_ns, pod)
        assert out.ok, out
        assert ns.links(pod) == ["lo"]
    assert leases(data_dir, "ivnet") == []


@needs_ipvlan
@pytest.mark.both_paths
def test_status_and_gc(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir)
    status = plugin("STATUS", c, host_ns)
    assert status.ok and status.stdout == "", status
    keep, lost = pod_ns(), pod_ns()
    add(c, host_ns, keep, "keep")
    add(c, host_ns, lost, "lost")
    gc = plugin("GC", dict(c, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
                host_ns)
    assert gc.ok and gc.stdout == "", gc
    lease, = leases(data_dir, "ivnet")
    with open(f"{data_dir}/ivnet/{lease}", "rb") as f:
        assert f.read() == b"keep\r\neth0"
    for pod, cid in ((keep, "keep"), (lost, "lost")):
        out = plugin("DEL", c, host_ns, pod, cid)
        assert out.ok, out
    assert leases(data_dir, "ivnet") == []
    small = dict(c, ipam=dict(c["ipam"], ranges=[[{"subnet": "10.30.0.0/30"}]]))   # one address to give
    pod = pod_ns()
    add(small, host_ns, pod)
    out = plugin("STATUS", small, host_ns)
    assert out.cni_code == 50 and "no free address" in out.json["msg"], out
    assert plugin("DEL", small, host_ns, pod).ok and leases(data_dir, "ivnet") == []


@pytest.mark.parametrize("where", ["mac", "args", "runtime"])
def test_mac_is_refused_as_unsupported(host_ns, master, pod_ns, data_dir, where):
    extra, args = {}, ""
    if where == "mac":
        extra["mac"] = "02:00:00:00:00:01"
    elif where == "args":
        args = "MAC=02:00:00:00:00:01"
    else:
        extra["runtimeConfig"] = {"mac": "02:00:00:00:00:01"}
    pod = pod_ns()
    out = plugin("ADD", conf(master, data_dir, **extra), host_ns, pod, args=args)
    assert out.cni_code == 2 and "MAC" in out.json["msg"], out
    assert ns.links(pod) == ["lo"] and leases(data_dir, "ivnet") == []
