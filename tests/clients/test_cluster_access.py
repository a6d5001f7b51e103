"""cluster-access through libcni, as a conflist and as Multus delegates to it (tests/clients/test_multus.py
says what Multus sends), on the node of tests/cluster_lab.py: the cluster's bridge network with a
backend behind a ClusterIP (kube-proxy's nftables rules), a LAN with a strict router and a host behind it."""

import uuid

import pytest

from tests import cluster_lab as lab_
from tests import netns as nsutil
from tests.cluster_lab import FAR4, FAR6, SERVICE4, SERVICE6, SERVICE_CIDRS, access_conf, macvlan_conf, pod_addresses
from tests.clients import libcni

pytestmark = [pytest.mark.root, pytest.mark.clients, pytest.mark.both_paths]


@pytest.fixture
def lab(tmp_path):
    made = lab_.Lab(tmp_path)
    try:
        yield made.build()
    finally:
        made.close()


@pytest.fixture
def node_driver(cnitool, cni_bin_dir, lab):
    """libcni run in the lab's node netns."""
    drv = libcni.Driver(cnitool, cni_bin_dir, lab.node)
    try:
        yield drv
    finally:
        drv.cleanup()


def conflist(lab, data_dir, state_dir, access, default=True):
    macvlan = macvlan_conf(lab, data_dir, state_dir, default=default)
    return {"cniVersion": "1.0.0", "name": "ca-lan",
            "plugins": [{k: v for k, v in macvlan.items() if k not in ("name", "cniVersion")},
                        {k: v for k, v in access.items() if k not in ("name", "cniVersion")}]}


def multus_args(cid, pod_name):
    return {"IgnoreUnknown": "true", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": pod_name,
            "K8S_POD_INFRA_CONTAINER_ID": cid, "K8S_POD_UID": str(uuid.uuid4())}


def test_primary_conflist_reaches_the_clusterip(lab, node_driver, pod_ns, data_dir, state_dir):
    net = node_driver.install(conflist(lab, data_dir, state_dir, access_conf(serviceCIDRs=SERVICE_CIDRS)))
    pod, cid = pod_ns(), uuid.uuid4().hex
    netns = nsutil.netns_path(pod)
    added = node_driver.add(net, netns, container_id=cid)
    assert added.ok, added
    assert [i["name"] for i in added.json["interfaces"]] == ["eth0"]
    for service in (SERVICE4, SERVICE6):
        answer = lab_.connect(pod, service)
        assert answer is not None and answer.startswith("backend "), (service, answer)
    assert node_driver.check(net, netns, container_id=cid).ok
    assert node_driver.delete(net, netns, container_id=cid).ok
    assert nsutil.links(pod) == ["lo"] and not [n for n in nsutil.links(lab.node) if n.startswith("ulca")]


@pytest.mark.parametrize("multus", [False, True], ids=["conflist", "multus"])
def test_secondary_net1_answers_the_lan_host_through_net1(lab, node_driver, pod_ns, data_dir, state_dir, multus):
    """eth0 is the cluster's (the Go bridge); net1 ours + cluster-access. The router filters reverse
    paths strictly: an answer leaving by eth0 would be dropped."""
    pod, cid = pod_ns(), uuid.uuid4().hex
    netns = nsutil.netns_path(pod)
    lab.cluster_pod(pod, cid)
    net = node_driver.install(conflist(lab, data_dir, state_dir, access_conf(), default=False))
    kw = dict(ifname="net1", container_id=cid, args=multus_args(cid, "web-0") if multus else None)
    added = node_driver.add(net, netns, **kw)
    assert added.ok, added
    if multus:   # network-status shows net1 alone: the plugin added no interface
        status = libcni.network_status("default/ca-lan", added.json)
        assert [entry["interface"] for entry in status] == ["net1"]
    lab.serve(pod, "pod")
    for version, far in ((4, FAR4), (6, FAR6)):
        assert lab_.connect(lab.far, pod_addresses(added.json, version)[0], lab_.PORT) == f"pod {far}"
    assert node_driver.check(net, netns, **kw).ok
    if multus:
        nsutil.del_netns(pod)   # Multus' DEL often comes after the sandbox is gone
    assert node_driver.delete(net, netns, **kw).ok
    assert node_driver.delete(net, netns, **kw).ok
    if not multus:
        assert lab_.rules(pod) == lab_.rules(lab.backend)   # the stock rules, ours gone
        assert "net1" not in nsutil.links(pod)
