"""hostShim in real namespaces: the node reaching its own pods on Docker's documented topology
(the node has an address of the pod subnet on the master), in both families, and two networks
sharing one shim name on one master."""

import json
import os
import time

import pytest

from tests import netns as ns
from tests.plugins import run_on_node

V4, V6 = "10.72.0.0/24", "2001:db8:72::/64"


def conf(name, master, data_dir, state_dir, ranges, shim, version="1.1.0"):
    return {"cniVersion": version, "name": name, "type": "macvlan", "master": master, "stateDir": state_dir,
            "hostShim": shim,
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": ranges}}


@pytest.fixture
def shim_name():
    return ns.unique("shim")


def add(c, host_ns, pod, cid):
    out = run_on_node("macvlan", "ADD", c, host_ns, pod, cid)
    assert out.ok, out
    return out.json


def plugin(command, c, host_ns, pod, cid, result=None):
    if result is not None:
        c = dict(c, prevResult=result)
    return run_on_node("macvlan", command, c, host_ns, pod, cid)


def pod_ips(result):
    return [ip["address"].split("/")[0] for ip in result["ips"]]


def reaches(src_ns, address, within=30):
    """ping, retried: a fresh IPv6 neighbour may need a moment (longer on a loaded machine; the
    deadline only ends a wait for a path that never comes)."""
    deadline = time.monotonic() + within
    while not ns.ping(src_ns, address, timeout=1):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def routes_to(host_ns, address):
    family = "-6" if ":" in address else "-4"
    out = ns.sh("ip", family, "-j", "route", "show", "table", "all", ns=host_ns).stdout
    return [r for r in json.loads(out) if r["dst"].split("/")[0] == address]


def records(state_dir):
    found = []
    for root, _dirs, files in os.walk(os.path.join(state_dir, "links")):
        found += [f for f in files if f.endswith(".json")]
    return found


def leases(data_dir, network):
    path = os.path.join(data_dir, network)
    return sorted(n for n in os.listdir(path) if n[0].isalnum() and n != "lock"
                  and not n.startswith("last_reserved")) if os.path.isdir(path) else []


@pytest.mark.parametrize("families", ["4", "6", "46"])
def test_docker_style_shim_on_a_node_with_its_own_address_in_the_subnet(host_ns, master, pod_ns, data_dir,
                                                                        state_dir, shim_name, families):
    """{"name", "address"} and nothing else, on a node that has .254 of the pod subnet on the master:
    each pod gets a host route through the shim, the node reaches every pod in every family, CHECK
    notices a route gone, and the last DEL leaves nothing."""
    ranges, addresses = [], []
    if "4" in families:
        ns.sh("ip", "addr", "add", "10.72.0.254/24", "dev", master, ns=host_ns)
        ranges.append([{"subnet": V4, "rangeStart": "10.72.0.10", "rangeEnd": "10.72.0.20"}])
        addresses.append("10.72.0.250")
    if "6" in families:
        ns.sh("ip", "addr", "add", "2001:db8:72::fe/64", "dev", master, "nodad", ns=host_ns)
        ranges.append([{"subnet": V6, "rangeStart": "2001:db8:72::10", "rangeEnd": "2001:db8:72::20"}])
        addresses.append("2001:db8:72::250")
    shim = {"name": shim_name, "address": addresses if len(addresses) > 1 else addresses[0]}
    c = conf("dockerish", master, data_dir, state_dir, ranges, shim)
    a, b = pod_ns(), pod_ns()
    ra, rb = add(c, host_ns, a, "ca"), add(c, host_ns, b, "cb")

    shim_addrs = ns.addrs(host_ns, shim_name)
    assert shim_addrs == sorted(f"{x}/{32 if '.' in x else 128}" for x in addresses)
    for result, pod in ((ra, a), (rb, b)):
        assert len(pod_ips(result)) == len(families)
        for ip in pod_ips(result):
            assert [r["dev"] for r in routes_to(host_ns, ip)] == [shim_name], routes_to(host_ns, ip)
            assert reaches(host_ns, ip), f"the node cannot reach pod address {ip}"
        for address in addresses:
            assert reaches(pod, address), f"pod cannot reach the shim's {address}"
        assert plugin("CHECK", c, host_ns, pod, "ca" if pod == a else "cb", result).ok

    lost = pod_ips(rb)[-1]
    ns.sh("ip", "route", "del", f"{lost}/{32 if '.' in lost else 128}", "dev", shim_name, ns=host_ns)
    out = plugin("CHECK", c, host_ns, b, "cb", rb)
    assert out.cni_code == 100 and lost in out.json["msg"] and shim_name in out.json["msg"], out

    assert plugin("DEL", c, host_ns, a, "ca", ra).ok
    assert shim_name in ns.links(host_ns), "removed while pod b still uses it"
    for ip in pod_ips(ra):
        assert routes_to(host_ns, ip) == [], f"pod a's route to {ip} outlived its DEL"
    assert plugin("DEL", c, host_ns, b, "cb", rb).ok
    assert shim_name not in ns.links(host_ns)
    assert records(state_dir) == [] and leases(data_dir, "dockerish") == []
    for ip in pod_ips(ra) + pod_ips(rb):
        assert routes_to(host_ns, ip) == []


def two_networks(master, data_dir, state_dir, shim_name):
    """A: host routes per pod; B: an explicit route. One shim name, one master."""
    a = conf("neta", master, data_dir, state_dir,
             [[{"subnet": "10.73.0.0/24", "rangeStart": "10.73.0.10", "rangeEnd": "10.73.0.20"}]],
             {"name": shim_name, "address": "10.73.0.250"})
    b = conf("netb", master, data_dir, state_dir,
             [[{"subnet": "10.74.0.0/24", "rangeStart": "10.74.0.2", "rangeEnd": "10.74.0.14"}]],
             {"name": shim_name, "address": "10.74.0.250", "routes": ["10.74.0.0/28"]})
    return a, b


@pytest.mark.parametrize("first", ["neta", "netb"])
def test_two_networks_share_one_shim_and_each_leaves_with_its_last_user(host_ns, master, pod_ns, data_dir,
                                                                        state_dir, shim_name, first):
    ca, cb = two_networks(master, data_dir, state_dir, shim_name)
    pa, pb = pod_ns(), pod_ns()
    ra, rb = add(ca, host_ns, pa, "ca"), add(cb, host_ns, pb, "cb")
    ip_a, ip_b = pod_ips(ra)[0], pod_ips(rb)[0]
    assert ns.addrs(host_ns, shim_name) == ["10.73.0.250/32", "10.74.0.250/32"]
    assert reaches(host_ns, ip_a) and reaches(host_ns, ip_b)
    assert plugin("CHECK", ca, host_ns, pa, "ca", ra).ok and plugin("CHECK", cb, host_ns, pb, "cb", rb).ok

    gone, kept = (("ca", ca, pa, ra, "10.73.0.250/32", f"{ip_a}/32"), ("cb", cb, pb, rb, "10.74.0.250/32",
                                                                       "10.74.0.0/28"))
    if first == "netb":
        gone, kept = kept, gone
    assert plugin("DEL", gone[1], host_ns, gone[2], gone[0], gone[3]).ok
    assert ns.addrs(host_ns, shim_name) == [kept[4]], "the first network's address outlived it"
    assert routes_to(host_ns, gone[5].split("/")[0]) == []
    assert [r["dev"] for r in routes_to(host_ns, kept[5].split("/")[0])] == [shim_name]
    assert reaches(host_ns, pod_ips(kept[3])[0])
    assert plugin("CHECK", kept[1], host_ns, kept[2], kept[0], kept[3]).ok

    assert plugin("DEL", kept[1], host_ns, kept[2], kept[0], kept[3]).ok
    assert shim_name not in ns.links(host_ns) and records(state_dir) == []


def test_gc_withdraws_a_network_whose_del_never_came_from_a_shared_shim(host_ns, master, pod_ns, data_dir,
                                                                       state_dir, shim_name):
    ca, cb = two_networks(master, data_dir, state_dir, shim_name)
    pa, pb = pod_ns(), pod_ns()
    ra, rb = add(ca, host_ns, pa, "ca"), add(cb, host_ns, pb, "cb")
    ns.del_netns(pa)  # its DEL never comes
    assert run_on_node("macvlan", "GC", dict(ca, **{"cni.dev/valid-attachments": []}), host_ns).ok
    assert ns.addrs(host_ns, shim_name) == ["10.74.0.250/32"]
    assert routes_to(host_ns, pod_ips(ra)[0]) == []
    assert reaches(host_ns, pod_ips(rb)[0])
    assert run_on_node("macvlan", "GC", dict(cb, **{"cni.dev/valid-attachments": []}), host_ns).ok
    assert shim_name not in ns.links(host_ns) and records(state_dir) == []


def test_a_shim_name_on_another_master_is_refused_naming_the_network(host_ns, master, pod_ns, data_dir,
                                                                     state_dir, shim_name):
    other, _ = ns.add_parent(host_ns)   # its peer up too, as every parent's
    ca, cb = two_networks(master, data_dir, state_dir, shim_name)
    cb["master"] = other
    add(ca, host_ns, pod_ns(), "ca")
    pb = pod_ns()
    out = run_on_node("macvlan", "ADD", cb, host_ns, pb, "cb")
    assert out.cni_code == 7 and out.json["msg"].startswith("hostShim.name: ") and "'neta'" in out.json["msg"] \
        and other in out.json["msg"], out
    assert ns.links(pb) == ["lo"] and leases(data_dir, "netb") == []
    assert ns.addrs(host_ns, shim_name) == ["10.73.0.250/32"]


def test_a_link_underlay_did_not_create_is_not_taken_as_the_shim(host_ns, master, pod_ns, data_dir, state_dir,
                                                                 shim_name):
    ns.sh("ip", "link", "add", shim_name, "link", master, "type", "macvlan", "mode", "bridge", ns=host_ns)
    ca, _ = two_networks(master, data_dir, state_dir, shim_name)
    pod = pod_ns()
    out = run_on_node("macvlan", "ADD", ca, host_ns, pod, "ca")
    assert out.cni_code == 7 and "did not create" in out.json["msg"], out
    assert ns.links(pod) == ["lo"] and leases(data_dir, "neta") == []
    assert shim_name in ns.links(host_ns) and ns.addrs(host_ns, shim_name) == []


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_hung_link_records_lock_is_code_11_naming_its_holder(host_ns, master, pod_ns, data_dir, state_dir,
                                                               shim_name):
    """The records under stateDir are waited for as the lease store is: bounded (10 s), then code 11."""
    import subprocess
    import sys
    os.makedirs(state_dir, 0o700)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, os.path.join(state_dir, "links.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        ca, _ = two_networks(master, data_dir, state_dir, shim_name)
        pod = pod_ns()
        out = run_on_node("macvlan", "ADD", ca, host_ns, pod, "ca", timeout=30)
        assert out.cni_code == 11 and f"held by pid {holder.pid}" in out.json["msg"] and "10s" in out.json["msg"], out
        assert ns.links(pod) == ["lo"] and leases(data_dir, "neta") == []
        assert shim_name not in ns.links(host_ns)
    finally:
        holder.kill()
        holder.wait()
    add(ca, host_ns, pod, "ca")  # the holder gone, the next ADD goes through
    assert shim_name in ns.links(host_ns)


@pytest.mark.kernel("ipvlan")
@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_an_ipvlan_shim_reaches_the_pods_of_a_node_with_its_own_address(host_ns, master, pod_ns, data_dir,
                                                                        state_dir, shim_name, mode):
    ns.sh("ip", "addr", "add", "10.72.0.254/24", "dev", master, ns=host_ns)
    c = conf("ipvshim", master, data_dir, state_dir,
             [[{"subnet": V4, "rangeStart": "10.72.0.10", "rangeEnd": "10.72.0.20"}]],
             {"name": shim_name, "address": "10.72.0.250"})
    c.update(type="ipvlan", mode=mode)
    pod = pod_ns()
    out = run_on_node("ipvlan", "ADD", c, host_ns, pod, "ca")
    assert out.ok, out
    ip = pod_ips(out.json)[0]
    assert ns.link_json(host_ns, shim_name)["linkinfo"]["info_kind"] == "ipvlan"
    assert [r["dev"] for r in routes_to(host_ns, ip)] == [shim_name]
    assert reaches(host_ns, ip) and reaches(pod, "10.72.0.250")
    assert run_on_node("ipvlan", "CHECK", dict(c, prevResult=out.json), host_ns, pod, "ca").ok
    assert run_on_node("ipvlan", "DEL", c, host_ns, pod, "ca").ok
    assert shim_name not in ns.links(host_ns) and records(state_dir) == [] and routes_to(host_ns, ip) == []
