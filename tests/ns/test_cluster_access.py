"""cluster-access on the real kernel (issue 20): a node, its LAN with a router and a host behind it,
its uplink, the cluster's bridge network with a backend pod and kube-proxy's nftables rules
(tests/cluster_lab.py), and pods attached with macvlan + cluster-access."""

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
