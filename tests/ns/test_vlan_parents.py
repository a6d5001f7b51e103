"""802.1q parents created on demand, shared, and removed with their last user, as
Docker does. This machine's kernel has no 8021q: tests marked `kernel("8021q")`
run inside the VM harness (tests/vm)."""

import pytest

from tests import netns as ns
from tests.ns.test_macvlan import leases
from tests.plugins import run_on_node


def conf(kind, name, master, data_dir, state_dir, subnet, **extra):
    c = {"cniVersion": "1.1.0", "name": name, "type": kind, "master": master, "stateDir": state_dir,
         "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]]}}
    c.update(extra)
    return c


plugin = run_on_node


@pytest.mark.parametrize("kind", [
    pytest.param("macvlan", marks=pytest.mark.kernel("8021q")),
    pytest.param("ipvlan", marks=pytest.mark.kernel("8021q", "ipvlan")),
])
def test_vlan_parent_created_shared_and_removed_with_last_user(host_ns, master, pod_ns, data_dir,
                                                               state_dir, kind):
    parent = f"{master}.50"
    net_a = conf(kind, "neta", parent, data_dir, state_dir, "10.40.0.0/24")
    net_b = conf(kind, "netb", master, data_dir, state_dir, "10.41.0.0/24", vlan=50)
    pa, pb = pod_ns(), pod_ns()
    assert plugin(kind, "ADD", net_a, host_ns, pa, "ca").ok
    link = ns.link_json(host_ns, parent)
    assert link["linkinfo"]["info_kind"] == "vlan" and link["linkinfo"]["info_data"]["id"] == 50
    assert "UP" in link["flags"]
    out = plugin(kind, "ADD", net_b, host_ns, pb, "cb")  # the same parent, spelled master+vlan
    assert out.ok, out
    assert plugin(kind, "DEL", net_a, host_ns, pa, "ca").ok
    assert parent in ns.links(host_ns), "removed while network b still uses it"
    assert plugin(kind, "DEL", net_a, host_ns, pa, "ca").ok  # a repeated DEL changes nothing
    assert parent in ns.links(host_ns)
    assert plugin(kind, "DEL", net_b, host_ns, pb, "cb").ok
    assert parent not in ns.links(host_ns)
    assert leases(data_dir, "neta") == leases(data_dir, "netb") == []


@pytest.mark.kernel("8021q", "ipvlan")
def test_ipvlan_on_a_vlan_parent(host_ns, master, pod_ns, data_dir, state_dir):
    parent = f"{master}.60"
    c = conf("ipvlan", "ivlan", parent, data_dir, state_dir, "10.42.0.0/24")
    a, b = pod_ns(), pod_ns()
    ra = plugin("ipvlan", "ADD", c, host_ns, a, "ca")
    rb = plugin("ipvlan", "ADD", c, host_ns, b, "cb")
    assert ra.ok and rb.ok, (ra, rb)
    assert ns.link_json(a, "eth0")["link_index"] == ns.link_json(host_ns, parent)["ifindex"]
    assert ns.ping(a, rb.json["ips"][0]["address"].split("/")[0])
    for pod, cid in ((a, "ca"), (b, "cb")):
        assert plugin("ipvlan", "DEL", c, host_ns, pod, cid).ok
    assert parent not in ns.links(host_ns)


@pytest.mark.kernel("8021q")
def test_gc_removes_a_vlan_parent_whose_users_are_gone(host_ns, master, pod_ns, data_dir, state_dir):
    parent = f"{master}.70"
    c = conf("macvlan", "gcnet", parent, data_dir, state_dir, "10.43.0.0/24")
    pod = pod_ns()
    assert plugin("macvlan", "ADD", c, host_ns, pod).ok
    ns.del_netns(pod)  # the pod vanished and DEL never came
    out = plugin("macvlan", "GC", dict(c, **{"cni.dev/valid-attachments": []}), host_ns)
    assert out.ok, out
    assert parent not in ns.links(host_ns)
    assert leases(data_dir, "gcnet") == []


@pytest.mark.kernel("8021q")
def test_a_vlan_interface_underlay_did_not_create_is_never_removed(host_ns, master, pod_ns, data_dir,
                                                                   state_dir):
    parent = f"{master}.80"
    ns.sh("ip", "link", "add", "link", master, "name", parent, "type", "vlan", "id", "80", ns=host_ns)
    ns.sh("ip", "link", "set", parent, "up", ns=host_ns)
    c = conf("macvlan", "foreign", parent, data_dir, state_dir, "10.44.0.0/24")
    pod = pod_ns()
    assert plugin("macvlan", "ADD", c, host_ns, pod).ok
    assert plugin("macvlan", "DEL", c, host_ns, pod).ok
    assert parent in ns.links(host_ns)


@pytest.mark.kernel("8021q")
def test_rollback_removes_a_vlan_parent_created_for_a_failed_add(host_ns, master, pod_ns, data_dir,
                                                                state_dir):
    parent = f"{master}.90"
    c = conf("macvlan", "rollback", parent, data_dir, state_dir, "10.45.0.0/24")
    c["ipam"]["routes"] = [{"dst": "10.90.0.0/16"}, {"dst": "10.90.0.0/16"}]  # fails after the link exists
    pod = pod_ns()
    out = plugin("macvlan", "ADD", c, host_ns, pod)
    assert out.cni_code == 102, out
    assert parent not in ns.links(host_ns) and ns.links(pod) == ["lo"]


# These fail before any link is made, so they need no 802.1q support.

@pytest.mark.parametrize("master_name,vlan,words", [
    ("{m}.5000", None, "4094"),
    ("{m}.0", None, "4094"),
    ("nosuch9.50", None, "nosuch9"),
    ("{m}", 4095, "vlan"),
])
def test_bad_vlan_parents_are_code_7(host_ns, master, pod_ns, data_dir, state_dir, master_name, vlan, words):
    extra = {} if vlan is None else {"vlan": vlan}
    c = conf("macvlan", "badvlan", master_name.format(m=master), data_dir, state_dir, "10.46.0.0/24", **extra)
    pod = pod_ns()
    out = plugin("macvlan", "ADD", c, host_ns, pod)
    assert out.cni_code == 7 and words in out.json["msg"], out
    assert ns.links(pod) == ["lo"] and leases(data_dir, "badvlan") == []
