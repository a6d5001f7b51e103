"""Docker parity: internal networks, STATUS that asks the kernel, and the hostShim
that lets the node reach its own pods."""

import pytest

from tests import netns as ns
from tests.ns.test_macvlan import leases
from tests.plugins import run_on_node
from tests.vm.plugin import kernel_features


def conf(kind, name, data_dir, state_dir, subnet="10.70.0.0/24", **extra):
    c = {"cniVersion": "1.1.0", "name": name, "type": kind, "stateDir": state_dir,
         "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]]}}
    c.update(extra)
    return c


plugin = run_on_node


def ip_of(outcome):
    assert outcome.ok, outcome
    return outcome.json["ips"][0]["address"].split("/")[0]


# -- STATUS ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["macvlan", "ipvlan"])
def test_status_says_whether_this_kernel_can_make_the_link(host_ns, master, data_dir, state_dir, kind):
    out = plugin(kind, "STATUS", conf(kind, "st", data_dir, state_dir, master=master), host_ns)
    if kind in kernel_features():
        assert out.ok and out.stdout == "", out
    else:
        assert out.cni_code == 50 and f"cannot create {kind} links" in out.json["msg"], out


@pytest.mark.kernel("ipvlan")
def test_ipvlan_status_succeeds_on_a_kernel_with_ipvlan(host_ns, master, data_dir, state_dir):
    out = plugin("ipvlan", "STATUS", conf("ipvlan", "st", data_dir, state_dir, master=master), host_ns)
    assert out.ok and out.stdout == "", out


def test_status_is_50_when_the_master_is_missing(host_ns, data_dir, state_dir):
    out = plugin("macvlan", "STATUS", conf("macvlan", "st", data_dir, state_dir, master="gone0"), host_ns)
    assert out.cni_code == 50 and "gone0" in out.json["msg"], out


def test_status_is_50_when_ipam_status_fails(host_ns, master, pod_ns, data_dir, state_dir):
    c = conf("macvlan", "st", data_dir, state_dir, "10.71.0.0/30", master=master)
    assert plugin("macvlan", "STATUS", c, host_ns).ok
    assert plugin("macvlan", "ADD", c, host_ns, pod_ns()).ok
    out = plugin("macvlan", "STATUS", c, host_ns)
    assert out.cni_code == 50 and "host-local" in out.json["msg"] and "no free address" in out.json["msg"], out


# -- hostShim --------------------------------------------------------------------------

@pytest.fixture
def node_address(host_ns, master):
    """The node holds an address of the pod subnet on the master, as a node on that LAN would."""
    ns.sh("ip", "addr", "add", "10.70.0.254/24", "dev", master, ns=host_ns)
    return "10.70.0.254"


def shim_conf(master, data_dir, state_dir, shim=True):
    c = conf("macvlan", "shimnet", data_dir, state_dir, master=master)
    c["ipam"]["ranges"] = [[{"subnet": "10.70.0.0/24", "rangeStart": "10.70.0.2", "rangeEnd": "10.70.0.4"}]]
    if shim:
        c["hostShim"] = {"name": ns.unique("shim"), "address": "10.70.0.4", "routes": ["10.70.0.0/29"]}
    return c


def test_without_a_shim_the_node_cannot_reach_its_pods(host_ns, master, pod_ns, node_address, data_dir,
                                                       state_dir):
    pod = pod_ns()
    pod_ip = ip_of(plugin("macvlan", "ADD", shim_conf(master, data_dir, state_dir, shim=False), host_ns, pod))
    assert not ns.ping(host_ns, pod_ip, timeout=1)
    assert not ns.ping(pod, node_address, timeout=1)


def test_with_a_shim_node_and_pods_reach_each_other(host_ns, master, pod_ns, node_address, data_dir, state_dir):
    c = shim_conf(master, data_dir, state_dir)
    shim = c["hostShim"]["name"]
    a, b = pod_ns(), pod_ns()
    ip_a = ip_of(plugin("macvlan", "ADD", c, host_ns, a, "ca"))
    ip_b = ip_of(plugin("macvlan", "ADD", c, host_ns, b, "cb"))
    info = ns.link_json(host_ns, shim)
    assert info["linkinfo"]["info_kind"] == "macvlan" and info["linkinfo"]["info_data"]["mode"] == "bridge"
    assert ns.addrs(host_ns, shim) == ["10.70.0.4/32"]
    assert ns.ping(host_ns, ip_a) and ns.ping(host_ns, ip_b)
    assert ns.ping(a, "10.70.0.4")
    # the shim's address is reserved like an aux address: the range is now full
    out = plugin("macvlan", "ADD", c, host_ns, pod_ns(), "cc")
    assert out.cni_code == 101 and "1 aux" in out.json["msg"], out
    assert plugin("macvlan", "DEL", c, host_ns, a, "ca").ok
    assert shim in ns.links(host_ns), "removed while pod b still uses the network"
    assert plugin("macvlan", "DEL", c, host_ns, b, "cb").ok
    assert shim not in ns.links(host_ns)


def test_gc_removes_a_shim_no_attachment_uses(host_ns, master, pod_ns, node_address, data_dir, state_dir):
    c = shim_conf(master, data_dir, state_dir)
    pod = pod_ns()
    assert plugin("macvlan", "ADD", c, host_ns, pod).ok
    ns.del_netns(pod)  # DEL never came
    out = plugin("macvlan", "GC", dict(c, **{"cni.dev/valid-attachments": []}), host_ns)
    assert out.ok, out
    assert c["hostShim"]["name"] not in ns.links(host_ns)
    assert leases(data_dir, "shimnet") == []


def test_a_shim_route_the_node_already_has_fails_cleanly(host_ns, master, pod_ns, node_address, data_dir,
                                                          state_dir):
    c = shim_conf(master, data_dir, state_dir)
    c["hostShim"]["routes"] = ["10.70.0.0/24"]  # the node's own connected route
    pod = pod_ns()
    out = plugin("macvlan", "ADD", c, host_ns, pod)
    assert out.cni_code == 102 and "hostShim" in out.json["msg"] and "routes" in out.json["msg"], out
    assert c["hostShim"]["name"] not in ns.links(host_ns)
    assert ns.links(pod) == ["lo"] and leases(data_dir, "shimnet") == []


# -- internal networks --------------------------------------------------------------------

@pytest.mark.kernel("dummy")
def test_internal_networks_are_isolated_segments_with_their_own_dummy_parent(host_ns, pod_ns, data_dir,
                                                                            state_dir):
    net1 = conf("macvlan", "inner1", data_dir, state_dir, "10.72.0.0/24", internal=True)
    net2 = conf("macvlan", "inner2", data_dir, state_dir, "10.72.0.0/24", internal=True)
    net2["ipam"]["ranges"][0][0]["rangeStart"] = "10.72.0.100"
    a, b, c = pod_ns(), pod_ns(), pod_ns()
    ip_a = ip_of(plugin("macvlan", "ADD", net1, host_ns, a, "ca"))
    ip_b = ip_of(plugin("macvlan", "ADD", net1, host_ns, b, "cb"))
    ip_c = ip_of(plugin("macvlan", "ADD", net2, host_ns, c, "cc"))
    dummies = [name for name in ns.links(host_ns) if name.startswith("uli")]
    assert len(dummies) == 2 and all(len(d) <= 15 for d in dummies)
    for d in dummies:
        assert ns.link_json(host_ns, d)["linkinfo"]["info_kind"] == "dummy"
    assert ns.ping(a, ip_b)
    assert not ns.ping(a, ip_c, timeout=1), "two internal networks share a segment"
    assert plugin("macvlan", "DEL", net1, host_ns, a, "ca").ok
    assert plugin("macvlan", "DEL", net1, host_ns, b, "cb").ok
    assert len([n for n in ns.links(host_ns) if n.startswith("uli")]) == 1
    ns.del_netns(c)
    assert plugin("macvlan", "GC", dict(net2, **{"cni.dev/valid-attachments": []}), host_ns).ok
    assert [n for n in ns.links(host_ns) if n.startswith("uli")] == []


@pytest.mark.parametrize("extra", [{"master": "eth0"}, {"vlan": 5}, {"linkInContainer": True}])
def test_internal_excludes_master_vlan_and_link_in_container(host_ns, pod_ns, data_dir, state_dir, extra):
    c = conf("macvlan", "inner", data_dir, state_dir, internal=True, **extra)
    pod = pod_ns()
    out = plugin("macvlan", "ADD", c, host_ns, pod)
    assert out.cni_code == 7 and "internal" in out.json["msg"] and list(extra)[0] in out.json["msg"], out
    assert ns.links(pod) == ["lo"]


def test_internal_status_needs_dummy_links(host_ns, data_dir, state_dir):
    out = plugin("macvlan", "STATUS", conf("macvlan", "inner", data_dir, state_dir, internal=True), host_ns)
    if "dummy" in kernel_features():
        assert out.ok, out
    else:
        assert out.cni_code == 50 and "dummy" in out.json["msg"], out
