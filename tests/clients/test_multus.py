"""Multus-shaped delegation through libcni, with the NADs of conf/nads.

Multus needs a cluster; what it sends its delegates is reproduced exactly:
CNI_IFNAME net1, net2, ...; CNI_ARGS `IgnoreUnknown=true;K8S_POD_NAMESPACE=..;
K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..` (plus IP=/MAC=);
runtimeConfig ips/mac for the capabilities a NAD declares; DEL after the pod
netns is gone; and sometimes no DEL at all, which GC must make up for.
"""

import json
import uuid

import pytest

from tests import netns as nsutil
from tests.clients import libcni
from tests.clients.libcni import version_key
from tests.plugins import run_plugin

pytestmark = [pytest.mark.root, pytest.mark.clients, pytest.mark.both_paths]


class Pod:
    """A pod as Multus sees it: sandbox ID, netns, the K8S_* CNI_ARGS."""

    def __init__(self, pod_ns, name):
        self.ns = pod_ns()
        self.netns = nsutil.netns_path(self.ns)
        self.cid = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex, like a sandbox ID
        self.name = name
        self.uid = str(uuid.uuid4())

    def args(self, **extra):
        args = {"IgnoreUnknown": "true", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": self.name,
                "K8S_POD_INFRA_CONTAINER_ID": self.cid, "K8S_POD_UID": self.uid}
        args.update(extra)
        return args


@pytest.fixture
def networks(driver, master, data_dir, state_dir):
    """The storage and lab-dual NADs installed as libcni conflists on the test master."""
    out = {}
    for nad in ("macvlan-storage.yaml", "macvlan-dual-stack.yaml"):
        _, conflist = libcni.load_nad(nad)
        out[driver.install(libcni.localize(conflist, master, data_dir, state_dir))] = conflist
    return out


def attach(driver, net, pod, ifname, **kw):
    added = driver.add(net, pod.netns, ifname=ifname, container_id=pod.cid, args=kw.pop("args", pod.args()), **kw)
    assert added.ok, added
    return added.json


def detach(driver, net, pod, ifname):
    deleted = driver.delete(net, pod.netns, ifname=ifname, container_id=pod.cid, args=pod.args())
    assert deleted.ok, deleted


def test_two_secondary_networks_on_one_pod(driver, networks, pod_ns, data_dir):
    pod = Pod(pod_ns, "web-0")
    # net1: the NAD declares ips/mac capabilities, so Multus puts them in runtimeConfig
    first = attach(driver, "storage", pod, "net1", cap_args={"ips": ["10.20.1.50/16"], "mac": "02:00:0a:14:01:32"})
    # net2: no capabilities declared; the request travels as CNI_ARGS IP=/MAC=
    second = attach(driver, "lab-dual", pod, "net2",
                    args=pod.args(IP="172.30.0.77,fd00:30::1077", MAC="02:00:ac:1e:00:4d"))

    assert [ip["address"] for ip in first["ips"]] == ["10.20.1.50/16"]
    assert first["interfaces"][0]["mac"] == "02:00:0a:14:01:32"
    assert sorted(ip["address"] for ip in second["ips"]) == ["172.30.0.77/24", "fd00:30::1077/64"]
    assert second["interfaces"][0]["mac"] == "02:00:ac:1e:00:4d"
    assert {"net1", "net2"} <= set(nsutil.links(pod.ns))
    assert nsutil.addrs(pod.ns, "net1") == ["10.20.1.50/16"]
    assert nsutil.addrs(pod.ns, "net2") == ["172.30.0.77/24", "fd00:30::1077/64"]

    for net, ifname in (("storage", "net1"), ("lab-dual", "net2")):
        checked = driver.check(net, pod.netns, ifname=ifname, container_id=pod.cid, args=pod.args())
        assert checked.ok, checked
    assert sorted(libcni.leases(data_dir, "storage")) == ["10.20.1.50"]
    assert sorted(libcni.leases(data_dir, "lab-dual")) == ["172.30.0.77", "fd00:30::1077"]

    detach(driver, "lab-dual", pod, "net2")
    detach(driver, "storage", pod, "net1")
    assert libcni.leases(data_dir, "storage") == {} and libcni.leases(data_dir, "lab-dual") == {}
    assert not {"net1", "net2"} & set(nsutil.links(pod.ns))
    assert driver.cached() == {}


def test_result_carries_what_network_status_needs(driver, networks, pod_ns, host_ns, data_dir):
    """Multus's network-status: interface with sandbox and mac (mtu from 1.1.0 on),
    ips pointing at it, the 0/0 route as gateway, dns."""
    pod = Pod(pod_ns, "db-0")
    result = attach(driver, "storage", pod, "net1")
    status = libcni.network_status("default/storage", result)
    assert len(status) == 1
    entry = status[0]
    link = nsutil.link_json(pod.ns, "net1")
    assert result["interfaces"][0]["sandbox"] == pod.netns
    assert entry["interface"] == "net1" and entry["mac"] == link["address"]
    assert entry["ips"] and nsutil.addrs(pod.ns, "net1") == [f"{ip}/16" for ip in entry["ips"]]
    assert entry["gateway"] == ["10.20.0.1"]
    assert entry["dns"] == {"nameservers": ["10.20.0.53"], "search": ["storage.example"]}
    if version_key(driver.libcni_version) >= (1, 1, 0):
        assert entry["mtu"] == link["mtu"]
    detach(driver, "storage", pod, "net1")

    # The mtu comes with spec 1.1.0 results, which Debian's libcni 1.1.2 cannot read;
    # what a libcni >= 1.2 Multus receives, straight from the plugin:
    config = libcni.plugin_configs(driver.conflists["storage"], "1.1.0")[0]
    env = dict(container_id=pod.cid, netns=pod.netns, ifname="net1",
               args=";".join(f"{k}={v}" for k, v in pod.args().items()))
    added = run_plugin("macvlan", "ADD", config, in_netns=host_ns, **env)
    assert added.ok, added
    entry = libcni.network_status("default/storage", added.json)[0]
    assert entry["mtu"] == nsutil.link_json(pod.ns, "net1")["mtu"]
    assert entry["gateway"] == ["10.20.0.1"] and entry["mac"] == nsutil.link_json(pod.ns, "net1")["address"]
    assert run_plugin("macvlan", "DEL", config, in_netns=host_ns, **env).ok
    assert libcni.leases(data_dir, "storage") == {}


def test_secondary_default_route_next_to_the_primary_one(driver, networks, pod_ns, data_dir):
    """The pod's primary network (eth0) has the default route; a NAD that also routes
    0.0.0.0/0 adds a second one, as the reference plugins do (RouteAddEcmp: append)."""
    pod = Pod(pod_ns, "router-0")
    for argv in (("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"),
                 ("addr", "add", "10.244.1.5/24", "dev", "eth0"), ("link", "set", "eth0", "up"),
                 ("link", "set", "eth0peer", "up"), ("route", "add", "default", "via", "10.244.1.1")):
        nsutil.sh("ip", *argv, ns=pod.ns)
    result = attach(driver, "storage", pod, "net1")
    defaults = [r for r in json.loads(nsutil.sh("ip", "-j", "route", "show", "default", ns=pod.ns).stdout)]
    assert sorted((r["dev"], r["gateway"]) for r in defaults) == [("eth0", "10.244.1.1"), ("net1", "10.20.0.1")]
    assert libcni.network_status("default/storage", result)[0]["gateway"] == ["10.20.0.1"]
    detach(driver, "storage", pod, "net1")
    assert [r["dev"] for r in json.loads(nsutil.sh("ip", "-j", "route", "show", "default", ns=pod.ns).stdout)] \
        == ["eth0"]


def test_del_after_the_pod_netns_is_gone(driver, networks, pod_ns, data_dir):
    pod = Pod(pod_ns, "batch-1")
    attach(driver, "storage", pod, "net1")
    attach(driver, "lab-dual", pod, "net2")
    nsutil.del_netns(pod.ns)
    detach(driver, "lab-dual", pod, "net2")
    detach(driver, "storage", pod, "net1")
    assert libcni.leases(data_dir, "storage") == {} and libcni.leases(data_dir, "lab-dual") == {}
    assert driver.cached() == {}
    detach(driver, "storage", pod, "net1")  # and again: DEL is idempotent


def test_gc_reclaims_the_lease_of_a_pod_whose_del_never_came(driver, networks, pod_ns, data_dir):
    """The runtime knows its live pods; libcni DELs every cached attachment not among them."""
    gone, alive = Pod(pod_ns, "gone-0"), Pod(pod_ns, "alive-0")
    lost = attach(driver, "storage", gone, "net1")["ips"][0]["address"].split("/")[0]
    kept = attach(driver, "storage", alive, "net1")["ips"][0]["address"].split("/")[0]
    nsutil.del_netns(gone.ns)  # the pod went away; Multus never sent DEL

    collected = driver.gc("storage", valid=[(alive.cid, "net1")])
    assert collected.ok, collected
    assert sorted(libcni.leases(data_dir, "storage")) == [kept] != [lost]
    assert list(driver.cached("storage")) == [("storage", alive.cid, "net1")]
    assert "net1" in nsutil.links(alive.ns)
    assert driver.check("storage", alive.netns, ifname="net1", container_id=alive.cid, args=alive.args()).ok
    detach(driver, "storage", alive, "net1")


def test_gc_without_a_cache_entry_reaches_host_local(driver, networks, pod_ns, data_dir):
    """The node lost libcni's cache as well (reinstall, tmpfs): only the plugins' own GC
    (spec 1.1.0, cni.dev/valid-attachments) can release the stale lease."""
    gone, alive = Pod(pod_ns, "gone-1"), Pod(pod_ns, "alive-1")
    lost = attach(driver, "storage", gone, "net1")["ips"][0]["address"].split("/")[0]
    kept = attach(driver, "storage", alive, "net1")["ips"][0]["address"].split("/")[0]
    nsutil.del_netns(gone.ns)
    driver.forget("storage", gone.cid, "net1")
    assert sorted(libcni.leases(data_dir, "storage")) == sorted([lost, kept])

    # GC exists from spec 1.1.0 on; Debian's libcni 1.1.2 could not have ADDed at 1.1.0,
    # so the same network is GCed as an operator's upgraded 1.1.0 conflist.
    installed = driver.conflists["storage"]
    driver.install(dict(installed, cniVersion="1.1.0"))
    collected = driver.gc("storage", valid=[(alive.cid, "net1")])
    assert collected.ok, collected
    assert sorted(libcni.leases(data_dir, "storage")) == [kept]
    on_disk = libcni.leases(data_dir, "storage")[kept]
    assert on_disk == f"{alive.cid}\r\nnet1".encode(), json.dumps(on_disk.decode())
    driver.install(installed)
    detach(driver, "storage", alive, "net1")
