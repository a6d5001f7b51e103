"""cluster-access on the real kernel (issue 20): a node, its LAN with a router and a host behind it,
its uplink, the cluster's bridge network with a backend pod and kube-proxy's nftables rules
(tests/cluster_lab.py), and pods attached with macvlan + cluster-access."""

import re

import pytest

from tests import cluster_lab as lab_
from tests import netns as nsutil
from tests.cluster_lab import (FAR4, FAR6, NODE_LAN4, NODE_LAN6, NODE_UPLINK4, NODE_UPLINK6, SERVICE4, SERVICE6,
                               SERVICE_CIDRS, access_conf, connect, macvlan_conf, pod_addresses, run_chain)


@pytest.fixture
def lab(tmp_path):
    made = lab_.Lab(tmp_path)
    try:
        yield made
    finally:
        made.close()


def attach(lab, chain, pod, cid="ca-pod-1", ifname="eth0", **kw):
    out, result = run_chain(chain, "ADD", lab, pod, cid, ifname, **kw)
    assert out.ok, out
    return result


def reaches_everything(lab, pod, result, families):
    """The ClusterIP answers through the node (kube-proxy's DNAT and masquerade), the node's own
    addresses answer, the LAN host behind the router still answers directly, the node reaches the pod."""
    for version in families:
        service, far = (SERVICE4, FAR4) if version == 4 else (SERVICE6, FAR6)
        node_addresses = (NODE_UPLINK4, NODE_LAN4) if version == 4 else (NODE_UPLINK6, NODE_LAN6)
        answer = connect(pod, service)
        assert answer is not None and answer.startswith("backend "), (service, answer)
        for node_address in node_addresses:
            assert lab_.until(lambda: nsutil.ping(pod, node_address, timeout=1), f"ping {node_address}") is None
        # the LAN host answers the pod's own address: the path is the macvlan, not the node
        mine = pod_addresses(result, version)[0]
        assert connect(pod, far, lab_.PORT) == f"far {mine}"
        lab_.until(lambda: nsutil.ping(lab.node, mine, timeout=1), f"the node pings {mine}")


def test_primary_ipv4_clusterip_node_and_lan(lab, pod_ns, data_dir, state_dir):
    lab.build()
    pod = pod_ns()
    chain = [macvlan_conf(lab, data_dir, state_dir, families=(4,)),
             access_conf(mode="primary", serviceCIDRs=SERVICE_CIDRS)]
    result = attach(lab, chain, pod)
    assert [i["name"] for i in result["interfaces"]] == ["eth0"]   # the veth is no interface of the result
    reaches_everything(lab, pod, result, (4,))


@pytest.mark.parametrize("node_rp_filter,pod_rp_filter", [(1, 1), (2, 2), (0, 1)])
def test_primary_dual_stack_with_reverse_path_filters(lab, pod_ns, data_dir, state_dir, node_rp_filter,
                                                      pod_rp_filter):
    """Strict (1) or loose (2) reverse-path filtering on the node and in the pod: every source
    arrives on the link its route leaves by, so nothing is dropped and no sysctl is changed."""
    lab.build(node_rp_filter=node_rp_filter)
    pod = pod_ns()
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
        lab_.sysctl(pod, key, pod_rp_filter)
    before = {key: lab_.sysctl(lab.node, key) for key in
              ("net.ipv4.conf.all.rp_filter", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")}
    chain = [macvlan_conf(lab, data_dir, state_dir), access_conf(serviceCIDRs=SERVICE_CIDRS)]   # mode auto
    result = attach(lab, chain, pod)
    reaches_everything(lab, pod, result, (4, 6))
    assert {key: lab_.sysctl(lab.node, key) for key in before} == before


def test_primary_cluster_cidrs_and_listed_node_addresses(lab, pod_ns, data_dir, state_dir):
    """clusterCIDRs: the pod reaches the cluster's pods directly through the node (no NAT: the backend
    sees the pod's own address); nodeAddresses: only those are routed through the veth."""
    lab.build()
    pod = pod_ns()
    access = access_conf(serviceCIDRs=SERVICE_CIDRS, clusterCIDRs=[lab_.CLUSTER4, lab_.CLUSTER6],
                         nodeAddresses=[NODE_UPLINK4, NODE_UPLINK6])
    result = attach(lab, [macvlan_conf(lab, data_dir, state_dir), access], pod)
    for version in (4, 6):
        assert connect(pod, lab.backend_ips[version], lab_.PORT) == f"backend {pod_addresses(result, version)[0]}"
    through_veth = {r["dst"] for r in lab_.routes(pod) if r.get("dev") == "veth0"}
    assert through_veth == {"10.96.0.0/16", "fd00:96::/112", lab_.CLUSTER4, lab_.CLUSTER6, NODE_UPLINK4,
                            NODE_UPLINK6}


def test_primary_ipv6_only(lab, pod_ns, data_dir, state_dir):
    lab.build()
    pod = pod_ns()
    result = attach(lab, [macvlan_conf(lab, data_dir, state_dir, families=(6,)),
                          access_conf(mode="primary", serviceCIDRs=SERVICE_CIDRS)], pod)
    reaches_everything(lab, pod, result, (6,))
    assert not any(r["dst"].startswith("10.") for r in lab_.routes(pod))   # no IPv4 plumbing for an IPv6 pod


def test_primary_after_debians_go_macvlan(lab, pod_ns, data_dir, state_dir):
    lab.build()
    pod = pod_ns()
    chain = [macvlan_conf(lab, data_dir, state_dir, reference=True), access_conf(serviceCIDRs=SERVICE_CIDRS)]
    result = attach(lab, chain, pod, reference=("macvlan",))
    reaches_everything(lab, pod, result, (4, 6))
    out, _ = run_chain(chain, "CHECK", lab, pod, "ca-pod-1", prev=result, reference=("macvlan",))
    assert out.ok, out
    out, _ = run_chain(chain, "DEL", lab, pod, "ca-pod-1", prev=result, reference=("macvlan",))
    assert out.ok, out


@pytest.mark.kernel("ipvlan")
@pytest.mark.parametrize("reference", [False, True], ids=["ours", "debians-go"])
def test_primary_after_ipvlan(lab, pod_ns, data_dir, state_dir, reference):
    """ipvlan l2 children share the master's MAC; the veth does not care (run in the VM: tests/vm)."""
    lab.build()
    pod = pod_ns()
    chain = [macvlan_conf(lab, data_dir, state_dir, plugin="ipvlan", reference=reference),
             access_conf(serviceCIDRs=SERVICE_CIDRS)]
    runners = ("ipvlan",) if reference else ()
    result = attach(lab, chain, pod, reference=runners)
    reaches_everything(lab, pod, result, (4, 6))
    out, _ = run_chain(chain, "CHECK", lab, pod, "ca-pod-1", prev=result, reference=runners)
    assert out.ok, out
    out, _ = run_chain(chain, "DEL", lab, pod, "ca-pod-1", prev=result, reference=runners)
    assert out.ok, out


def test_del_leaves_nothing_and_tolerates_a_gone_netns_and_a_repeat(lab, pod_ns, data_dir, state_dir):
    lab.build()
    pod = pod_ns()
    node_before, pod_before = lab_.snapshot(lab.node), lab_.snapshot(pod)
    chain = [macvlan_conf(lab, data_dir, state_dir), access_conf(serviceCIDRs=SERVICE_CIDRS)]
    result = attach(lab, chain, pod)
    assert lab_.snapshot(lab.node) != node_before
    for _ in range(2):   # kubelet retries a DEL
        out, _ = run_chain(chain, "DEL", lab, pod, "ca-pod-1", prev=result)
        assert out.ok, out
        assert lab_.snapshot(lab.node) == node_before and lab_.snapshot(pod) == pod_before
    # a pod whose netns went first: its veth went with it, DEL still succeeds
    gone = pod_ns()
    result = attach(lab, chain, gone, cid="ca-pod-2")
    nsutil.del_netns(gone)
    out, _ = run_chain(chain, "DEL", lab, gone, "ca-pod-2", prev=result)
    assert out.ok, out
    # the kernel dismantles a deleted netns (and the veth end in it) asynchronously
    lab_.until(lambda: lab_.snapshot(lab.node) == node_before, "the node is as it was")


def test_check_catches_a_removed_route(lab, pod_ns, data_dir, state_dir):
    lab.build()
    pod = pod_ns()
    chain = [macvlan_conf(lab, data_dir, state_dir), access_conf(serviceCIDRs=SERVICE_CIDRS)]
    result = attach(lab, chain, pod)
    out, _ = run_chain(chain, "CHECK", lab, pod, "ca-pod-1", prev=result)
    assert out.ok, out
    lab_.sh("ip", "route", "del", "10.96.0.0/16", ns=pod)
    out, _ = run_chain(chain, "CHECK", lab, pod, "ca-pod-1", prev=result)
    assert out.cni_code == 100 and "10.96.0.0/16" in out.json["msg"], out
    run_chain(chain, "DEL", lab, pod, "ca-pod-1", prev=result)
    result = attach(lab, chain, pod)
    mine = pod_addresses(result, 6)[0]
    lab_.sh("ip", "-6", "route", "del", f"{mine}/128", ns=lab.node)
    out, _ = run_chain(chain, "CHECK", lab, pod, "ca-pod-1", prev=result)
    assert out.cni_code == 100 and mine in out.json["msg"], out
    lab_.sh("ip", "link", "del", "veth0", ns=pod)   # the node's end goes with it
    out, _ = run_chain([dict(chain[1], mode="primary")], "CHECK", lab, pod, "ca-pod-1", prev=result)
    assert out.cni_code == 100 and "veth" in out.json["msg"], out


@pytest.mark.parametrize("settings,field", [
    ({"mode": "primary"}, "serviceCIDRs"),
    ({}, "serviceCIDRs"),                                       # auto: eth0 holds the default route
    ({"mode": "sideways", "serviceCIDRs": SERVICE_CIDRS}, "mode"),
    ({"serviceCIDRs": ["10.96.0.1/12"]}, "serviceCIDRs[0]"),
    ({"serviceCIDRs": SERVICE_CIDRS, "prevResult": {"ips": [{"address": "192.168.50.9"}]}}, "prevResult"),
    ({"serviceCIDRs": SERVICE_CIDRS, "prevResult": None}, "prevResult"),
])
def test_bad_configs_are_refused_naming_the_field_with_nothing_left(lab, pod_ns, data_dir, state_dir, settings,
                                                                     field):
    lab.build(cluster=False)
    pod = pod_ns()
    macvlan = macvlan_conf(lab, data_dir, state_dir)
    _, result = run_chain([macvlan], "ADD", lab, pod, "ca-pod-1")
    node_before, pod_before = lab_.snapshot(lab.node), lab_.snapshot(pod)
    access = access_conf(**{k: v for k, v in settings.items() if k != "prevResult"})
    prev = settings.get("prevResult", result)
    out, _ = run_chain([access], "ADD", lab, pod, "ca-pod-1", prev=prev)
    assert out.cni_code in (6, 7) and re.search(rf"(^|: ){re.escape(field)}[ :.]", out.json["msg"]), out
    assert lab_.snapshot(lab.node) == node_before and lab_.snapshot(pod) == pod_before
    out, _ = run_chain([access], "DEL", lab, pod, "ca-pod-1", prev=prev)   # kubelet's DEL after the refused ADD
    assert out.ok, out


def test_a_node_without_forwarding_is_an_error_not_a_change(lab, pod_ns, data_dir, state_dir):
    lab.build(forwarding=False, cluster=False)
    pod = pod_ns()
    node_before = lab_.snapshot(lab.node)
    out, _ = run_chain([macvlan_conf(lab, data_dir, state_dir, families=(4,)),
                        access_conf(serviceCIDRs=SERVICE_CIDRS)], "ADD", lab, pod, "ca-pod-1")
    assert out.cni_code == 50 and "forward" in out.json["msg"], out
    assert lab_.sysctl(lab.node, "net.ipv4.ip_forward") == "0"
    assert [link for link in nsutil.links(lab.node) if link.startswith("ulca")] == []
    assert lab_.snapshot(lab.node)["routes"] == node_before["routes"]


# -- secondary mode ------------------------------------------------------------------

def test_secondary_the_lan_host_is_answered_through_net1(lab, pod_ns, data_dir, state_dir):
    """eth0 from the cluster's bridge holds the default route; net1 is ours. A host behind the
    router connects to net1's address: without cluster-access the answer would leave by eth0 and
    the router's strict reverse-path filter would drop it; with it, it leaves by net1."""
    lab.build()
    pod = pod_ns()
    lab.cluster_pod(pod, "ca-pod-1")
    macvlan = macvlan_conf(lab, data_dir, state_dir, default=False)
    _, result = run_chain([macvlan], "ADD", lab, pod, "ca-pod-1", ifname="net1")
    mine = {v: pod_addresses(result, v)[0] for v in (4, 6)}
    assert lab_.route_dev(pod, FAR4, mine[4]) == "eth0"      # the asymmetric path, before
    node_before, pod_before = lab_.snapshot(lab.node), lab_.snapshot(pod)

    access = access_conf()   # auto: eth0 holds the default route, so secondary; no serviceCIDRs needed
    out, result = run_chain([access], "ADD", lab, pod, "ca-pod-1", ifname="net1", prev=result)
    assert out.ok, out
    assert [i["name"] for i in result["interfaces"]] == ["net1"]
    lab.serve(pod, "pod")
    for version, far in ((4, FAR4), (6, FAR6)):
        assert lab_.route_dev(pod, far, mine[version]) == "net1"
        assert connect(lab.far, mine[version], lab_.PORT) == f"pod {far}"
    assert lab_.snapshot(lab.node) == node_before             # secondary mode changes nothing on the node
    out, _ = run_chain([access], "CHECK", lab, pod, "ca-pod-1", ifname="net1", prev=result)
    assert out.ok, out

    lab_.sh("ip", "-6", "rule", "del", "from", mine[6], ns=pod)
    out, _ = run_chain([access], "CHECK", lab, pod, "ca-pod-1", ifname="net1", prev=result)
    assert out.cni_code == 100 and mine[6] in out.json["msg"], out
    for _ in range(2):
        out, _ = run_chain([access], "DEL", lab, pod, "ca-pod-1", ifname="net1", prev=result)
        assert out.ok, out
        assert lab_.snapshot(pod) == pod_before


def test_secondary_routes_and_default_route(lab, pod_ns, data_dir, state_dir):
    lab.build(cluster=False)
    lab.build_cluster()
    pod = pod_ns()
    lab.cluster_pod(pod, "ca-pod-1")
    _, result = run_chain([macvlan_conf(lab, data_dir, state_dir, default=False)], "ADD", lab, pod, "ca-pod-1",
                          ifname="net1")
    mine = pod_addresses(result, 4)[0]
    access = access_conf(mode="secondary", routes=["10.99.0.0/24"])
    out, result = run_chain([access], "ADD", lab, pod, "ca-pod-1", ifname="net1", prev=result)
    assert out.ok, out
    assert connect(pod, FAR4, lab_.PORT) == f"far {mine}"     # the pod's own connection goes through net1
    out, _ = run_chain([access], "DEL", lab, pod, "ca-pod-1", ifname="net1", prev=result)
    assert out.ok, out
    assert not [r for r in lab_.routes(pod) if r["dst"] == "10.99.0.0/24"]

    access = access_conf(mode="secondary", defaultRoute=True)
    out, result = run_chain([access], "ADD", lab, pod, "ca-pod-1", ifname="net1", prev=result)
    assert out.ok, out
    assert sorted(r["dev"] for r in lab_.routes(pod, "default")) == ["net1", "net1"]


# -- GC and STATUS ---------------------------------------------------------------------

def test_gc_removes_the_veths_of_attachments_no_longer_valid(lab, pod_ns, data_dir, state_dir):
    """A pod whose DEL never came but whose netns lives on (its veth would otherwise stay)."""
    lab.build(cluster=False)
    chain = [macvlan_conf(lab, data_dir, state_dir), access_conf(serviceCIDRs=SERVICE_CIDRS)]
    kept, lost = pod_ns(), pod_ns()
    attach(lab, chain, kept, cid="ca-kept")
    attach(lab, chain, lost, cid="ca-lost")
    other = [macvlan_conf(lab, data_dir, state_dir, name="ca-other"),
             access_conf(name="ca-other", serviceCIDRs=SERVICE_CIDRS)]
    attach(lab, other, pod_ns(), cid="ca-lost")   # another network's: not this GC's to take
    ours = lambda: sorted(link for link in nsutil.links(lab.node) if link.startswith("ulca"))  # noqa: E731
    assert len(ours()) == 3
    gc = dict(access_conf(serviceCIDRs=SERVICE_CIDRS), cniVersion="1.1.0",
              **{"cni.dev/valid-attachments": [{"containerID": "ca-kept", "ifname": "eth0"}]})
    out = lab_.run_plugin("cluster-access", "GC", gc, in_netns=lab.node)
    assert out.ok, out
    from cni.plugins.cluster_access import node_link_name
    assert ours() == sorted([node_link_name("ca-lan", "ca-kept", "eth0"),
                             node_link_name("ca-other", "ca-lost", "eth0")])
    assert nsutil.links(lost) == ["lo", "eth0"]


@pytest.mark.parametrize("forwarding", [True, False])
def test_status_says_whether_the_node_forwards(lab, forwarding):
    lab.build(forwarding=forwarding, cluster=False)
    conf = dict(access_conf(serviceCIDRs=SERVICE_CIDRS), cniVersion="1.1.0")
    out = lab_.run_plugin("cluster-access", "STATUS", conf, in_netns=lab.node)
    assert (out.ok, out.cni_code) == ((True, None) if forwarding else (False, 50)), out
    out = lab_.run_plugin("cluster-access", "STATUS", dict(conf, mode="secondary"), in_netns=lab.node)
    assert out.ok, out


def test_del_removes_the_veth_of_an_add_killed_before_its_alias(lab, pod_ns):
    """An ADD killed right after creating the veth: DEL finds the node's end by its hash name."""
    lab.build(cluster=False)
    pod = pod_ns()
    from cni.plugins.cluster_access import node_link_name
    name = node_link_name("ca-lan", "ca-killed", "eth0")
    lab_.sh("ip", "link", "add", name, "type", "veth", "peer", "name", "veth0", "netns", pod, ns=lab.node)
    out, _ = run_chain([access_conf(serviceCIDRs=SERVICE_CIDRS)], "DEL", lab, pod, "ca-killed")
    assert out.ok, out
    assert name not in nsutil.links(lab.node) and nsutil.links(pod) == ["lo"]


def test_one_pod_primary_on_eth0_and_secondary_on_net1(lab, pod_ns, data_dir, state_dir):
    """Two underlay interfaces: eth0 (primary, its veth) and net1 on another LAN subnet (secondary,
    its table): both work, and each DEL takes only its own."""
    lab.build()
    lab_.address(lab.lan, "lan", "192.168.51.1/24")
    lab_.address(lab.node, lab.master, "192.168.51.2/24")
    pod = pod_ns()
    primary = [macvlan_conf(lab, data_dir, state_dir, families=(4,)), access_conf(serviceCIDRs=SERVICE_CIDRS)]
    eth0 = attach(lab, primary, pod)
    net1_ipam = {"type": "host-local", "dataDir": data_dir,
                 "ranges": [[{"subnet": "192.168.51.0/24", "rangeStart": "192.168.51.10", "gateway": "192.168.51.1"}]]}
    secondary = [dict(macvlan_conf(lab, data_dir, state_dir, name="ca-lan2"), ipam=net1_ipam),
                 access_conf(name="ca-lan2")]
    net1 = attach(lab, secondary, pod, ifname="net1")
    lab.serve(pod, "pod")
    answer = connect(pod, SERVICE4)
    assert answer is not None and answer.startswith("backend ")
    mine = pod_addresses(net1, 4)[0]
    assert lab_.route_dev(pod, FAR4, mine) == "net1"
    assert connect(lab.far, mine, lab_.PORT) == f"pod {FAR4}"
    out, _ = run_chain(secondary, "DEL", lab, pod, "ca-pod-1", ifname="net1", prev=net1)
    assert out.ok, out
    assert connect(pod, SERVICE4).startswith("backend ")   # eth0's veth is untouched
    out, _ = run_chain(primary, "DEL", lab, pod, "ca-pod-1", prev=eth0)
    assert out.ok, out
    assert nsutil.links(pod) == ["lo"]
