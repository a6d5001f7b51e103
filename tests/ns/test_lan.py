"""The LAN as a partner (issue 19): conflict detection, gateway detection and announcements,
against a "LAN" namespace on the other end of the test's master: static hosts and the
gateway are addresses held there, its neighbour cache is what a LAN host has."""

import json
import os
import time

import pytest

from tests import netns as ns
from tests.cluster.test_netns import node_etcd  # noqa: F401  (a fixture: etcd in the host netns)
from tests.ns.test_macvlan import conf, leases, plugin

GO_HOST_LOCAL = "/usr/lib/cni/host-local"   # Debian's reference host-local: an IPAM that is not ours
OLD_MAC = "02:00:00:00:00:99"


class Lan:
    """The master's peer in a namespace of its own: the pod's LAN."""

    def __init__(self, name, master, peer):
        self.name, self.master, self.peer = name, master, peer
        self.mac = ns.link_json(name, peer)["address"]

    def hold(self, *addresses):
        """Hosts with these addresses (a.b.c.d/n), answering ARP and neighbour solicitations."""
        for address in addresses:
            ns.sh("ip", "addr", "add", address, "dev", self.peer, "nodad", ns=self.name)

    def cache(self, address, mac):
        """A stale neighbour entry: what a LAN host keeps after the address's last owner left."""
        ns.sh("ip", "neigh", "replace", address, "lladdr", mac, "dev", self.peer, "nud", "stale", ns=self.name)

    def neighbour(self, address):
        out = ns.sh("ip", "-j", "neigh", "show", address, "dev", self.peer, ns=self.name).stdout
        entries = json.loads(out or "[]")
        return entries[0].get("lladdr") if entries else None


@pytest.fixture
def lan(host_ns):
    name = ns.unique("ull")
    ns.add_netns(name)
    try:
        master, peer = ns.add_parent(host_ns)
        ns.sh("ip", "link", "set", peer, "netns", name, ns=host_ns)
        ns.sh("ip", "link", "set", peer, "up", ns=name)
        lan = Lan(name, master, peer)
        lan.hold("10.40.0.254/24", "fd40::fe/64")   # a LAN host's own addresses, in the pods' subnets
        yield lan
    finally:
        ns.del_netns(name)


V4 = [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.2", "rangeEnd": "10.40.0.9", "gateway": "10.40.0.1"}]]
V6 = [[{"subnet": "fd40::/64", "rangeStart": "fd40::2", "rangeEnd": "fd40::9", "gateway": "fd40::1"}]]


def lan_conf(lan, data_dir, ranges, **extra):
    return conf(lan.master, data_dir, ranges=ranges, name="lannet", **extra)


def go_host_local(c, tmp_path):
    """The config's IPAM made Debian's Go host-local, exec'd from a CNI_PATH of its own."""
    path = tmp_path / "cni-bin"
    path.mkdir()
    os.symlink(GO_HOST_LOCAL, path / "go-host-local")
    c["ipam"]["type"] = "go-host-local"
    c["cniVersion"] = "1.0.0"   # Debian's plugins stop at 1.0.0
    return str(path)


def eventually(condition, bound=10):
    """condition() true, read again until `bound` seconds pass: the frames were sent before ADD
    returned, the LAN's kernel handles them in its own softirq (never a pass by waiting)."""
    deadline = time.monotonic() + bound
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def leases_of(data_dir, cid):
    """The addresses host-local (ours or Go's: the same files) leases to container `cid`."""
    path = os.path.join(data_dir, "lannet")
    owned = []
    for name in leases(data_dir, "lannet"):
        with open(os.path.join(path, name), "rb") as f:
            if f.read().split(b"\r\n")[0].strip().decode() == cid:
                owned.append(name)
    return owned


def nothing_left(pod, data_dir, cid="c1"):
    assert ns.links(pod) == ["lo"], ns.links(pod)
    assert leases_of(data_dir, cid) == []


# -- announcements ----------------------------------------------------------------

@pytest.mark.both_paths
@pytest.mark.parametrize("detection", [{}, {"conflictDetection": True}], ids=["plain", "conflictDetection"])
def test_add_announces_every_address_to_a_neighbour_that_cached_another_mac(host_ns, lan, pod_ns, data_dir,
                                                                            detection):
    """Before: arp_notify's gratuitous ARP at link up carried the IPv4 address (it was added before
    the link went up), and nothing told the LAN of the IPv6 one: its entry kept the old MAC. With
    conflictDetection the link is up before its addresses, so arp_notify has nothing to announce:
    the plugin's own gratuitous ARP does."""
    lan.cache("10.40.0.2", OLD_MAC)
    lan.cache("fd40::2", OLD_MAC)
    pod = pod_ns()
    out = plugin("ADD", lan_conf(lan, data_dir, V4 + V6, **detection), host_ns, pod)
    assert out.ok, out
    mac = out.json["interfaces"][0]["mac"]
    assert [ip["address"] for ip in out.json["ips"]] == ["10.40.0.2/24", "fd40::2/64"]
    assert eventually(lambda: lan.neighbour("10.40.0.2") == mac), lan.neighbour("10.40.0.2")
    assert eventually(lambda: lan.neighbour("fd40::2") == mac), lan.neighbour("fd40::2")


# -- conflicts ----------------------------------------------------------------------

@pytest.mark.parametrize("ranges, taken", [(V4, "10.40.0.2"), (V6, "fd40::2")], ids=["ipv4", "ipv6"])
def test_conflict_with_an_ipam_not_ours_fails_naming_address_and_mac(host_ns, lan, pod_ns, tmp_path, ranges,
                                                                       taken):
    data_dir = str(tmp_path / "leases")
    lan.hold(taken + ("/24" if "." in taken else "/64"))
    c = lan_conf(lan, data_dir, ranges, conflictDetection=True)
    path = go_host_local(c, tmp_path)
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod, path=path)
    assert out.cni_code == 101, out
    assert taken in out.json["msg"] and lan.mac in out.json["msg"] and "released" in out.json["msg"], out
    nothing_left(pod, data_dir)   # no link, and Go host-local's lease released


def test_conflict_on_a_chained_result_fails_naming_address_and_mac(host_ns, lan, pod_ns):
    lan.hold("10.40.0.7/24")
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.40.0.7/24"}]}
    c = {"cniVersion": "1.1.0", "name": "lannet", "type": "macvlan", "master": lan.master,
         "conflictDetection": True, "prevResult": prev}
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod)
    assert out.cni_code == 101 and "10.40.0.7" in out.json["msg"] and lan.mac in out.json["msg"], out
    assert ns.links(pod) == ["lo"]


@pytest.mark.both_paths
def test_conflict_detection_on_a_quiet_lan_gives_the_first_address(host_ns, lan, pod_ns, data_dir):
    pod = pod_ns()
    out = plugin("ADD", lan_conf(lan, data_dir, V4 + V6, conflictDetection=True), host_ns, pod)
    assert out.ok, out
    assert ns.addrs(pod, "eth0") == ["10.40.0.2/24", "fd40::2/64"]


def test_another_host_probing_for_the_address_is_a_conflict(host_ns, lan, pod_ns, tmp_path):
    """RFC 5227 2.1.1: a probe for the same address from another host during ours is a conflict
    (both are about to take it). The LAN probes for 10.40.0.5 until the ADD is over."""
    import ipaddress
    import threading
    from cni.net import neighbours, netns
    fd = netns.open_netns(ns.netns_path(lan.name))
    try:
        with netns.entered(fd):
            port = neighbours.Port(lan.peer, neighbours.ETH_P_ARP, lan.mac)
    finally:
        os.close(fd)
    probe = neighbours.arp_frame(neighbours.ARP_REQUEST, port.mac, neighbours.ZERO4, ipaddress.ip_address("10.40.0.5"))
    done = threading.Event()

    def keep_probing():
        while not done.wait(0.02):
            port.send(probe)

    data_dir = str(tmp_path / "leases")
    c = lan_conf(lan, data_dir, [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.5", "rangeEnd": "10.40.0.5"}]],
                 conflictDetection=True)
    path = go_host_local(c, tmp_path)
    pod = pod_ns()
    prober = threading.Thread(target=keep_probing)
    prober.start()
    try:
        out = plugin("ADD", c, host_ns, pod, path=path)
    finally:
        done.set()
        prober.join()
        port.close()
    assert out.cni_code == 101 and "10.40.0.5" in out.json["msg"] and lan.mac in out.json["msg"], out
    nothing_left(pod, data_dir)


# Our IPAMs hold a conflict (dispatch.hold_ipam_conflict) and hand out the next address.

@pytest.mark.parametrize("ranges, taken, given", [(V4, ["10.40.0.2/24", "10.40.0.3/24"], ["10.40.0.4", "10.40.0.5"]),
                                                  (V6, ["fd40::2/64", "fd40::3/64"], ["fd40::4", "fd40::5"])],
                         ids=["ipv4", "ipv6"])
def test_our_ipam_holds_conflicts_and_gives_the_next_address(host_ns, lan, pod_ns, data_dir, ranges, taken, given):
    lan.hold(*taken)
    c = lan_conf(lan, data_dir, ranges, conflictDetection=True)
    got = []
    for cid in ("c1", "c2"):
        out = plugin("ADD", c, host_ns, pod_ns(), cid=cid)
        assert out.ok, out
        got.append(out.json["ips"][0]["address"].split("/")[0])
    assert got == given
    assert leases_of(data_dir, "c1") == given[:1] and leases_of(data_dir, "c2") == given[1:]
    from tests.operator import run_underlay
    rows = run_underlay("leases", "--data-dir", data_dir, "-o", "json").json
    conflicts = sorted((row["address"], row["mac"]) for row in rows if row.get("kind") == "conflict")
    assert conflicts == [(address.split("/")[0], lan.mac) for address in taken], rows


def test_a_range_all_in_use_on_the_lan_fails_101_naming_every_conflict(host_ns, lan, pod_ns, data_dir):
    lan.hold("10.40.0.2/24", "10.40.0.3/24", "10.40.0.4/24")
    ranges = [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.2", "rangeEnd": "10.40.0.4"}]]
    pod = pod_ns()
    out = plugin("ADD", lan_conf(lan, data_dir, ranges, conflictDetection=True), host_ns, pod)
    assert out.cni_code == 101, out
    for address in ("10.40.0.2", "10.40.0.3", "10.40.0.4"):
        assert f"{address} ({lan.mac})" in out.json["msg"], out
    nothing_left(pod, data_dir)


def test_one_add_stops_after_max_conflicts(host_ns, lan, pod_ns, data_dir):
    from cni.plugins.lan import MAX_CONFLICTS
    taken = [f"10.40.0.{i}" for i in range(2, 2 + MAX_CONFLICTS + 2)]
    lan.hold(*(f"{a}/24" for a in taken))
    pod = pod_ns()
    out = plugin("ADD", lan_conf(lan, data_dir, [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.2"}]],
                                 conflictDetection=True), host_ns, pod)
    assert out.cni_code == 101 and f"{MAX_CONFLICTS} addresses in use on the LAN" in out.json["msg"], out
    assert all(f"{a} ({lan.mac})" in out.json["msg"] for a in taken[:MAX_CONFLICTS]), out
    nothing_left(pod, data_dir)


def test_64_parallel_adds_on_a_range_with_conflicts_get_distinct_free_addresses(host_ns, lan, pod_ns, data_dir):
    from concurrent.futures import ThreadPoolExecutor
    taken = [f"10.40.0.{i}" for i in range(2, 80, 8)]
    lan.hold(*(f"{a}/24" for a in taken))
    c = lan_conf(lan, data_dir, [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.2", "rangeEnd": "10.40.0.90"}]],
                 conflictDetection=True)
    pods = [pod_ns() for _ in range(64)]
    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda i: plugin("ADD", c, host_ns, pods[i], cid=f"c{i}"), range(64)))
    assert all(out.ok for out in outs), [out for out in outs if not out.ok][:3]
    got = [out.json["ips"][0]["address"].split("/")[0] for out in outs]
    assert len(set(got)) == 64 and not set(got) & set(taken)


# -- gateways -----------------------------------------------------------------------

@pytest.mark.both_paths
@pytest.mark.parametrize("ranges, gateway", [(V4, "10.40.0.1"), (V6, "fd40::1")], ids=["ipv4", "ipv6"])
def test_a_gateway_that_does_not_answer_fails_naming_it_and_the_master(host_ns, lan, pod_ns, data_dir, ranges,
                                                                        gateway):
    pod = pod_ns()
    out = plugin("ADD", lan_conf(lan, data_dir, ranges, gatewayDetection=True, gatewayProbeTime=300), host_ns, pod)
    assert out.cni_code == 104, out
    assert gateway in out.json["msg"] and f"master {lan.master}" in out.json["msg"], out
    nothing_left(pod, data_dir)


@pytest.mark.kernel("8021q")
def test_a_gateway_missing_behind_a_vlan_names_the_vlan(host_ns, lan, pod_ns, data_dir, state_dir):
    lan.hold("10.40.0.1/24")   # on the untagged LAN: VLAN 50 does not reach it
    pod = pod_ns()
    c = lan_conf(lan, data_dir, V4, vlan=50, stateDir=state_dir, gatewayDetection=True, gatewayProbeTime=300)
    out = plugin("ADD", c, host_ns, pod)
    assert out.cni_code == 104, out
    assert all(words in out.json["msg"] for words in ("10.40.0.1", f"master {lan.master}.50", "VLAN 50", "trunked")), out
    nothing_left(pod, data_dir)
    assert f"{lan.master}.50" not in ns.links(host_ns)   # the VLAN parent it made is gone too


@pytest.mark.both_paths
def test_a_gateway_that_answers_lets_add_succeed(host_ns, lan, pod_ns, data_dir):
    lan.hold("10.40.0.1/24", "fd40::1/64")
    pod = pod_ns()
    out = plugin("ADD", lan_conf(lan, data_dir, V4 + V6, gatewayDetection=True, conflictDetection=True),
                 host_ns, pod)
    assert out.ok, out
    assert ns.addrs(pod, "eth0") == ["10.40.0.2/24", "fd40::2/64"]
    assert ns.ping(pod, "10.40.0.1") and ns.ping(pod, "fd40::1")


def test_detection_keys_are_checked(host_ns, lan, pod_ns, data_dir):
    out = plugin("ADD", lan_conf(lan, data_dir, V4, gatewayDetection="yes"), host_ns, pod_ns())
    assert out.cni_code == 7 and "gatewayDetection" in out.json["msg"], out
    out = plugin("ADD", lan_conf(lan, data_dir, V4, conflictProbeTime=0), host_ns, pod_ns())
    assert out.cni_code == 7 and "conflictProbeTime" in out.json["msg"], out


# -- ipvlan -------------------------------------------------------------------------
# l2 children are asked and told like macvlan's (the answers heard on the master, whose MAC they
# share); l3/l3s children send no ARP or neighbour discovery: detection is refused, not skipped.

def ipvlan(command, c, host_ns, pod=None, cid="c1", **kw):
    from tests.plugins import run_on_node
    return run_on_node("ipvlan", command, c, host_ns, pod, cid, "eth0", **kw)


def ipvlan_conf(lan, data_dir, ranges, **extra):
    c = lan_conf(lan, data_dir, ranges, **extra)
    c["type"] = "ipvlan"
    return c


@pytest.mark.parametrize("mode", ["l3", "l3s"])
@pytest.mark.parametrize("key", ["conflictDetection", "gatewayDetection"])
def test_ipvlan_l3_refuses_detection_saying_why(host_ns, lan, pod_ns, data_dir, mode, key):
    pod = pod_ns()
    out = ipvlan("ADD", ipvlan_conf(lan, data_dir, V4, mode=mode, **{key: True}), host_ns, pod)
    assert out.cni_code == 7 and key in out.json["msg"] and f"mode {mode}" in out.json["msg"], out
    assert "l2" in out.json["msg"]
    assert ns.links(pod) == ["lo"]


@pytest.mark.kernel("ipvlan")
@pytest.mark.parametrize("ranges, taken", [(V4, "10.40.0.2"), (V6, "fd40::2")], ids=["ipv4", "ipv6"])
def test_ipvlan_l2_conflict_names_the_address_and_the_mac(host_ns, lan, pod_ns, tmp_path, ranges, taken):
    data_dir = str(tmp_path / "leases")
    lan.hold(taken + ("/24" if "." in taken else "/64"))
    c = ipvlan_conf(lan, data_dir, ranges, conflictDetection=True)
    path = go_host_local(c, tmp_path)
    pod = pod_ns()
    out = ipvlan("ADD", c, host_ns, pod, path=path)
    assert out.cni_code == 101 and taken in out.json["msg"] and lan.mac in out.json["msg"], out
    nothing_left(pod, data_dir)


@pytest.mark.kernel("ipvlan")
def test_ipvlan_l2_announcements_and_gateways(host_ns, lan, pod_ns, data_dir):
    lan.cache("10.40.0.2", OLD_MAC)
    lan.cache("fd40::2", OLD_MAC)
    out = ipvlan("ADD", ipvlan_conf(lan, data_dir, V4 + V6), host_ns, pod_ns(), cid="announced")
    assert out.ok, out
    mac = out.json["interfaces"][0]["mac"]   # the master's
    assert eventually(lambda: lan.neighbour("10.40.0.2") == mac), lan.neighbour("10.40.0.2")
    assert eventually(lambda: lan.neighbour("fd40::2") == mac), lan.neighbour("fd40::2")

    pod = pod_ns()
    out = ipvlan("ADD", ipvlan_conf(lan, data_dir, V4, gatewayDetection=True, gatewayProbeTime=300), host_ns, pod)
    assert out.cni_code == 104 and "10.40.0.1" in out.json["msg"] and lan.master in out.json["msg"], out
    nothing_left(pod, data_dir)
    lan.hold("10.40.0.1/24", "fd40::1/64")
    out = ipvlan("ADD", ipvlan_conf(lan, data_dir, V4 + V6, gatewayDetection=True, conflictDetection=True),
                 host_ns, pod)
    assert out.ok, out


# -- cluster-ipam -------------------------------------------------------------------

def test_cluster_ipam_holds_conflicts_in_etcd(host_ns, lan, pod_ns, node_etcd, tmp_path):
    """cluster-ipam (in-process, its etcd member in the host netns) holds the addresses the LAN
    answers for: the pod gets the one left, whatever order the blocks hand them out in."""
    import sys
    from tests.plugins import ROOT
    lan.hold("10.40.0.2/24", "10.40.0.3/24", "10.40.0.4/24")
    c = lan_conf(lan, str(tmp_path), V4, conflictDetection=True)
    c["ipam"] = {"type": "cluster-ipam", "node": "n1", "dataDir": str(tmp_path / "n1"),
                 "etcd": {"endpoints": [node_etcd], "prefix": "/ullan"},
                 "ranges": [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.2", "rangeEnd": "10.40.0.5"}]]}
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod)
    assert out.ok, out
    assert ns.addrs(pod, "eth0") == ["10.40.0.5/24"]
    path = tmp_path / "lan.conf"
    path.write_text(json.dumps(c))
    listing = ns.sh("env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "cni.operator", "cluster", "leases",
                    "--config", str(path), "-o", "json", ns=host_ns).stdout
    conflicts = sorted((row["address"], row["mac"]) for row in json.loads(listing) if row.get("kind") == "conflict")
    assert conflicts == [(f"10.40.0.{i}", lan.mac) for i in (2, 3, 4)], listing
