"""The NetworkAttachmentDefinitions in conf/nads: well-formed, their config valid
against conf/schema, and each one attachable through Debian 12's libcni as
Multus attaches a secondary network.

The ipvlan and VLAN ones need kernel features this machine lacks: they run in the
VM harness (tests/vm), through the same libcni.
"""

import re
import uuid

import pytest

from tests import netns as nsutil
from tests.clients import libcni

NAD_NAMES = sorted(p.name for p in libcni.NADS.glob("*.yaml"))
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def needs_etcd(name):
    # cluster-ipam's NADs need etcd: tests/clients/test_cluster_ipam.py attaches them with a real one
    return (libcni.load_nad(name)[1]["plugins"][0].get("ipam") or {}).get("type") == "cluster-ipam"


SHIPPED = [pytest.param(name, marks=pytest.mark.kernel(*needs)) if needs else name
           for name in NAD_NAMES if not needs_etcd(name)
           for needs in [libcni.kernel_needs(libcni.load_nad(name)[1])]]


def test_nads_cover_the_documented_features():
    configs = [libcni.load_nad(name)[1]["plugins"][0] for name in NAD_NAMES]
    assert any(c["type"] == "macvlan" and c["ipam"].get("exclude") and c["ipam"].get("auxAddresses")
               for c in configs)
    assert any(c["type"] == "ipvlan" and c.get("mode") == "l3" for c in configs)
    assert any("vlan" in c or "." in c.get("master", "") for c in configs)
    assert any(len(c["ipam"].get("ranges", [])) == 2 for c in configs)


@pytest.mark.parametrize("name", NAD_NAMES)
def test_a_host_local_nad_says_it_is_per_node(name):
    """One NAD with host-local on several nodes of a shared L2 hands out the same addresses."""
    _, conflist = libcni.load_nad(name)
    if conflist["plugins"][0]["ipam"].get("type") != "host-local":
        return
    comment = "".join(line for line in (libcni.NADS / name).read_text().splitlines(True) if line.startswith("#"))
    assert "host-local is per node" in comment and "cluster-ipam" in comment, comment


@pytest.mark.parametrize("name", NAD_NAMES)
def test_nad_is_well_formed(name):
    nad, conflist = libcni.load_nad(name)
    assert nad["apiVersion"] == "k8s.cni.cncf.io/v1"
    assert nad["kind"] == "NetworkAttachmentDefinition"
    assert DNS_1123_LABEL.match(nad["metadata"]["name"]) and len(nad["metadata"]["name"]) <= 63
    assert conflist["name"] == nad["metadata"]["name"], "Multus users expect the network named after the NAD"
    assert conflist.get("cniVersion"), "spec.config needs a cniVersion"
    for config in libcni.plugin_configs(conflist, conflist["cniVersion"]):
        assert libcni.validate_plugin_config(config), f"{name}: {config['type']} has no schema in conf/schema"


@pytest.mark.root
@pytest.mark.clients
@pytest.mark.parametrize("name", SHIPPED)
def test_nad_attaches_as_a_secondary_network(name, driver, host_ns, master, pod_ns, data_dir, state_dir):
    """Every NAD, through Debian 12's libcni; those needing ipvlan or 802.1q in the VM (tests/vm)."""
    _, conflist = libcni.load_nad(name)
    node_links = sorted(nsutil.links(host_ns))
    net = driver.install(libcni.localize(conflist, master, data_dir, state_dir))
    if any(p["type"] == "cluster-access" for p in conflist["plugins"]):
        for family in ("ipv4/ip_forward", "ipv6/conf/all/forwarding"):   # a Kubernetes node forwards
            nsutil.sh("sh", "-c", f"echo 1 > /proc/sys/net/{family}", ns=host_ns)
    ns = pod_ns()
    netns = nsutil.netns_path(ns)
    cid = uuid.uuid4().hex
    args = {"IgnoreUnknown": "true", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "nad-check",
            "K8S_POD_INFRA_CONTAINER_ID": cid, "K8S_POD_UID": str(uuid.uuid4())}
    added = driver.add(net, netns, ifname="net1", container_id=cid, args=args)
    assert added.ok, added
    ipam = conflist["plugins"][0]["ipam"]
    for ip in added.json["ips"]:
        assert libcni.allowed(ip["address"], ipam), ip
    assert "net1" in nsutil.links(ns)
    assert driver.check(net, netns, ifname="net1", container_id=cid, args=args).ok
    assert driver.delete(net, netns, ifname="net1", container_id=cid, args=args).ok
    assert libcni.leases(data_dir, net) == {} and "net1" not in nsutil.links(ns)
    assert sorted(nsutil.links(host_ns)) == node_links, "a parent made for the NAD outlived its DEL"
