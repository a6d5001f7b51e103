"""macvlan against the real kernel: a "host" netns with veth parents, pods in
further namespaces, traffic between them, the plugin exec'd as a runtime does."""

import json
import os

import pytest

from tests import netns as ns
from tests.plugins import run_on_node, run_plugin

VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def conf(master, data_dir, version="1.1.0", ranges=None, **extra):
    c = {
        "cniVersion": version,
        "name": extra.pop("name", "mvnet"),
        "type": "macvlan",
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": ranges or [[{"subnet": "10.20.0.0/24"}]],
        },
    }
    if master is not None:
        c["master"] = master
    c.update(extra)
    return c


def plugin(command, c, host_ns, pod=None, cid="c1", ifname="eth0", **kw):
    return run_on_node("macvlan", command, c, host_ns, pod, cid, ifname, **kw)


def add(c, host_ns, pod, cid="c1", ifname="eth0", **kw):
    out = plugin("ADD", c, host_ns, pod, cid, ifname, **kw)
    assert out.ok, out
    return out.json


def leases(data_dir, network="mvnet"):
    path = os.path.join(data_dir, network)
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if n[0].isalnum() and n != "lock"
                  and not n.startswith("last_reserved"))


def ipv4(result):
    return result["ips"][0]["address"].split("/")[0]


# -- modes and traffic ----------------------------------------------------------

@pytest.mark.both_paths
def test_bridge_mode_pods_reach_each_other(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir, mode="bridge")
    a, b = pod_ns(), pod_ns()
    ra, rb = add(c, host_ns, a, "ca"), add(c, host_ns, b, "cb")
    assert ns.ping(a, ipv4(rb)) and ns.ping(b, ipv4(ra))
    link = ns.link_json(a, "eth0")
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == "bridge"
    assert link["address"] == ra["interfaces"][0]["mac"]


def test_private_mode_pods_cannot_reach_each_other(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir, mode="private")
    a, b = pod_ns(), pod_ns()
    ra, rb = add(c, host_ns, a, "ca"), add(c, host_ns, b, "cb")
    assert ns.link_json(a, "eth0")["linkinfo"]["info_data"]["mode"] == "private"
    assert not ns.ping(a, ipv4(rb), timeout=1)


def rx_packets(host_ns, name):
    return ns.link_stats(host_ns, name)["rx"]["packets"]


@pytest.mark.parametrize("mode,leaves", [("vepa", True), ("bridge", False)])
def test_vepa_sends_pod_to_pod_traffic_out_through_the_parent(host_ns, pod_ns, data_dir, mode, leaves):
    parent, peer = ns.add_parent(host_ns)
    c = conf(parent, data_dir, mode=mode)
    a, b = pod_ns(), pod_ns()
    for pod in (a, b):  # no IPv6 chatter (MLD, router solicitations) to count
        ns.sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", ns=pod)
    ra, rb = add(c, host_ns, a, "ca"), add(c, host_ns, b, "cb")
    # a static neighbour entry: no ARP broadcast, only unicast pod-to-pod frames
    ns.sh("ip", "neigh", "replace", ipv4(rb), "lladdr", rb["interfaces"][0]["mac"], "dev", "eth0", ns=a)
    before = rx_packets(host_ns, peer)
    ns.sh("ping", "-c", "30", "-i", "0.01", "-W", "1", ipv4(rb), ns=a, check=False)
    seen = rx_packets(host_ns, peer) - before
    if leaves:
        assert seen >= 30, f"vepa: only {seen} frames reached the parent's peer"
    else:
        assert seen < 5, f"{mode}: {seen} frames reached the parent's peer"


def test_passthru_inherits_parent_mac_and_allows_one_attachment(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir, mode="passthru")
    a, b = pod_ns(), pod_ns()
    ra = add(c, host_ns, a, "ca")
    assert ra["interfaces"][0]["mac"] == ns.link_json(host_ns, master)["address"]
    out = plugin("ADD", c, host_ns, b, "cb")
    assert out.cni_code == 102 and "passthru" in out.json["msg"] and master in out.json["msg"], out
    assert ns.links(b) == ["lo"]
    assert len(leases(data_dir)) == 1


@pytest.mark.parametrize("source,field,code", [
    ("mac", "mac", 2), ("args", "CNI_ARGS MAC", 2), ("runtime", "runtimeConfig.mac", 2)])
def test_passthru_refuses_a_requested_mac_naming_its_source(host_ns, master, pod_ns, data_dir, source, field,
                                                            code):
    """The kernel would hand the MAC on to the master itself: refused as ipvlan refuses it."""
    mac = "02:00:00:00:00:07"
    extra, args = {"mode": "passthru"}, ""
    if source == "mac":
        extra["mac"] = mac
    elif source == "args":
        args = f"MAC={mac}"
    else:
        extra.update(capabilities={"mac": True}, runtimeConfig={"mac": mac})
    before = ns.link_json(host_ns, master)["address"]
    pod = pod_ns()
    out = plugin("ADD", conf(master, data_dir, **extra), host_ns, pod, args=args)
    assert out.cni_code == code and out.json["msg"].startswith(f"{field}: ") and "passthru" in out.json["msg"], out
    assert ns.links(pod) == ["lo"] and leases(data_dir) == []
    assert ns.link_json(host_ns, master)["address"] == before


@pytest.mark.parametrize("first,second", [("passthru", "bridge"), ("passthru", "private"), ("bridge", "passthru")])
def test_passthru_and_other_modes_on_one_master_say_so(host_ns, master, pod_ns, data_dir, first, second):
    a, b = pod_ns(), pod_ns()
    add(conf(master, data_dir, mode=first), host_ns, a, "ca")
    out = plugin("ADD", conf(master, data_dir, mode=second), host_ns, b, "cb")
    assert out.cni_code == 102 and master in out.json["msg"], out
    words = "held by a passthru macvlan" if first == "passthru" else "already has a macvlan child"
    assert words in out.json["msg"] and "Invalid argument" not in out.json["msg"], out
    assert ns.links(b) == ["lo"] and len(leases(data_dir)) == 1


def test_passthru_with_a_host_shim_is_refused_up_front(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir, mode="passthru", hostShim={"name": ns.unique("shim"), "address": "10.20.0.250"})
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod)
    assert out.cni_code == 7 and "hostShim" in out.json["msg"] and "passthru" in out.json["msg"], out
    assert ns.links(pod) == ["lo"] and leases(data_dir) == []


# -- master selection -------------------------------------------------------------

def test_default_route_interface_is_the_master(host_ns, master, pod_ns, data_dir):
    ns.sh("ip", "addr", "add", "10.99.0.2/24", "dev", master, ns=host_ns)
    ns.sh("ip", "route", "add", "default", "via", "10.99.0.1", "dev", master, ns=host_ns)
    pod = pod_ns()
    add(conf(None, data_dir), host_ns, pod)
    parent_index = ns.link_json(pod, "eth0")["link_index"]
    assert parent_index == ns.link_json(host_ns, master)["ifindex"]


def test_no_master_and_no_default_route_is_code_7(host_ns, pod_ns, data_dir):
    pod = pod_ns()
    out = plugin("ADD", conf(None, data_dir), host_ns, pod)
    assert out.cni_code == 7 and "no default route interface found" in out.json["msg"], out
    assert leases(data_dir) == []


def test_missing_master_is_code_7_naming_it(host_ns, pod_ns, data_dir):
    out = plugin("ADD", conf("nosuch0", data_dir), host_ns, pod_ns())
    assert out.cni_code == 7 and "nosuch0" in out.json["msg"], out


def test_bad_mode_lists_the_valid_modes(host_ns, master, pod_ns, data_dir):
    out = plugin("ADD", conf(master, data_dir, mode="l2"), host_ns, pod_ns())
    assert out.cni_code == 7 and "mode" in out.json["msg"], out
    for mode in ("bridge", "private", "vepa", "passthru"):
        assert mode in out.json["msg"]


def test_link_in_container(host_ns, pod_ns, data_dir):
    pod = pod_ns()
    inner, peer = ns.unique("m"), ns.unique("p")
    ns.sh("ip", "link", "add", inner, "type", "veth", "peer", "name", peer, ns=pod)
    ns.sh("ip", "link", "set", inner, "up", ns=pod)
    result = add(conf(inner, data_dir, linkInContainer=True), host_ns, pod)
    assert ns.link_json(pod, "eth0")["link"] == inner
    out = plugin("DEL", conf(inner, data_dir, linkInContainer=True), host_ns, pod)
    assert out.ok, out
    assert "eth0" not in ns.links(pod) and result


# -- MTU, MAC, bcqueuelen --------------------------------------------------------

def test_mtu_above_master_is_code_7_naming_both(host_ns, master, pod_ns, data_dir):
    ns.sh("ip", "link", "set", master, "mtu", "1400", ns=host_ns)
    out = plugin("ADD", conf(master, data_dir, mtu=1500), host_ns, pod_ns())
    assert out.cni_code == 7 and "1500" in out.json["msg"] and "1400" in out.json["msg"], out
    assert leases(data_dir) == []


def test_mtu_below_master_is_applied_and_reported(host_ns, master, pod_ns, data_dir):
    pod = pod_ns()
    result = add(conf(master, data_dir, mtu=1280), host_ns, pod)
    assert result["interfaces"][0]["mtu"] == 1280
    assert ns.link_json(pod, "eth0")["mtu"] == 1280


@pytest.mark.parametrize("sources,expected", [
    ({"mac": "02:00:00:00:00:01"}, "02:00:00:00:00:01"),
    ({"mac": "02:00:00:00:00:01", "args": "MAC=02:00:00:00:00:02"}, "02:00:00:00:00:02"),
    ({"mac": "02:00:00:00:00:01", "args": "MAC=02:00:00:00:00:02", "runtime": "02:00:00:00:00:03"},
     "02:00:00:00:00:03"),
])
def test_mac_sources_and_priority(host_ns, master, pod_ns, data_dir, sources, expected):
    extra = {"mac": sources["mac"]}
    if "runtime" in sources:
        extra["capabilities"] = {"mac": True}
        extra["runtimeConfig"] = {"mac": sources["runtime"]}
    pod = pod_ns()
    result = add(conf(master, data_dir, **extra), host_ns, pod, args=sources.get("args", ""))
    assert result["interfaces"][0]["mac"] == expected
    assert ns.link_json(pod, "eth0")["address"] == expected


@pytest.mark.parametrize("where,code", [("mac", 7), ("args", 4), ("runtime", 7)])
def test_malformed_mac_is_refused_naming_it(host_ns, master, pod_ns, data_dir, where, code):
    bad = "02:00:00:zz:00:01"
    extra, args = {}, ""
    if where == "mac":
        extra["mac"] = bad
    elif where == "args":
        args = f"MAC={bad}"
    else:
        extra["runtimeConfig"] = {"mac": bad}
    pod = pod_ns()
    out = plugin("ADD", conf(master, data_dir, **extra), host_ns, pod, args=args)
    assert out.cni_code == code and bad in out.json["msg"], out
    assert ns.links(pod) == ["lo"] and leases(data_dir) == []


def test_bcqueuelen(host_ns, master, pod_ns, data_dir):
    pod = pod_ns()
    add(conf(master, data_dir, bcqueuelen=123), host_ns, pod)
    assert ns.link_json(pod, "eth0")["linkinfo"]["info_data"]["bcqueuelen"] == 123


# -- addressing -----------------------------------------------------------------

def test_l2_only_with_empty_ipam(host_ns, master, pod_ns):
    c = {"cniVersion": "1.1.0", "name": "l2net", "type": "macvlan", "master": master, "ipam": {}}
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod)
    assert out.ok, out
    assert "ips" not in out.json and out.json["interfaces"][0]["name"] == "eth0"
    link = ns.link_json(pod, "eth0")
    assert "UP" in link["flags"] and ns.addrs(pod, "eth0") == []


def test_dual_stack_addresses_routes_and_ipv6_traffic(host_ns, master, pod_ns, data_dir):
    ranges = [[{"subnet": "10.21.0.0/24"}], [{"subnet": "fd21::/64"}]]
    c = conf(master, data_dir, ranges=ranges)
    c["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    a, b = pod_ns(), pod_ns()
    ra, rb = add(c, host_ns, a, "ca"), add(c, host_ns, b, "cb")
    assert [ip["address"] for ip in ra["ips"]] == ns.addrs(a, "eth0")
    # optimistic DAD: usable at once, though the first neighbour solicitation may go unanswered
    assert ns.ping(a, rb["ips"][1]["address"].split("/")[0], count=4, timeout=2)
    routes = ns.sh("ip", "-6", "route", "show", "default", ns=a).stdout
    assert "via fd21::1" in routes
    assert "via 10.21.0.1" in ns.sh("ip", "route", "show", "default", ns=a).stdout


def test_ipv6_add_does_not_wait_for_dad(host_ns, master, pod_ns, data_dir):
    pod = pod_ns()
    result = add(conf(master, data_dir, ranges=[[{"subnet": "fd22::/64"}]]), host_ns, pod)
    out = ns.sh("ip", "-6", "addr", "show", "dev", "eth0", ns=pod).stdout
    address = result["ips"][0]["address"]
    line = next(line for line in out.splitlines() if address in line)
    # usable at once: optimistic while DAD runs, instead of blocking the ADD for it
    assert "optimistic" in line or "tentative" not in line, line


def test_excluded_and_aux_addresses_never_reach_pods(host_ns, master, pod_ns, data_dir):
    ranges = [[{"subnet": "10.23.0.0/28", "exclude": ["10.23.0.2-10.23.0.4"]}]]
    c = conf(master, data_dir, ranges=ranges)
    c["ipam"]["exclude"] = ["10.23.0.8/30"]
    c["ipam"]["auxAddresses"] = {"router": "10.23.0.6"}
    given = [ipv4(add(c, host_ns, pod_ns(), f"c{i}")) for i in range(5)]
    assert sorted(given, key=lambda ip: int(ip.split(".")[3])) == [
        "10.23.0.5", "10.23.0.7", "10.23.0.12", "10.23.0.13", "10.23.0.14"]
    # the range is now exhausted: ADD fails and rolls back its link
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod, "c6")
    assert out.cni_code == 101 and "3 excluded" not in out.json["msg"] and "excluded" in out.json["msg"], out
    assert ns.links(pod) == ["lo"]
    assert len(leases(data_dir)) == 5


# -- rollback -----------------------------------------------------------------------

def test_ipam_failure_leaves_no_link_and_no_lease(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir, ranges=[[{"subnet": "10.24.0.0/30"}]])  # one usable address
    add(c, host_ns, pod_ns(), "c1")
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod, "c2")
    assert out.cni_code == 101, out
    assert ns.links(pod) == ["lo"]
    assert leases(data_dir) == ["10.24.0.2"]


@pytest.mark.both_paths
def test_failure_after_addresses_rolls_back_link_and_lease(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir)
    # the second route collides with the first inside the pod: fails after IPAM and addresses
    c["ipam"]["routes"] = [{"dst": "10.50.0.0/16"}, {"dst": "10.50.0.0/16"}]
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod)
    assert out.cni_code == 102 and "10.50.0.0/16" in out.json["msg"], out
    assert ns.links(pod) == ["lo"]
    assert leases(data_dir) == []


def test_existing_ifname_is_refused_and_untouched(host_ns, master, pod_ns, data_dir):
    pod = pod_ns()
    ns.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0", ns=pod)
    out = plugin("ADD", conf(master, data_dir), host_ns, pod)
    assert out.cni_code == 4 and "eth0" in out.json["msg"] and "exists" in out.json["msg"], out
    assert ns.link_json(pod, "eth0")["linkinfo"]["info_kind"] == "veth"
    assert sorted(ns.links(pod)) == ["eth0", "lo", "other0"]
    assert leases(data_dir) == []


def test_plugin_own_netns_is_refused(host_ns, master, data_dir):
    out = run_plugin("macvlan", "ADD", conf(master, data_dir), in_netns=host_ns,
                     netns=ns.netns_path(host_ns), container_id="c1", ifname="eth9")
    assert out.cni_code == 4 and "own network namespace" in out.json["msg"], out
    assert "eth9" not in ns.links(host_ns)


# -- DEL ---------------------------------------------------------------------------------

def test_del_releases_ipam_and_link_and_repeats(host_ns, master, pod_ns, data_dir):
    c, pod = conf(master, data_dir), pod_ns()
    add(c, host_ns, pod)
    for _ in range(2):
        out = plugin("DEL", c, host_ns, pod)
        assert out.ok and out.stdout == "", out
    assert ns.links(pod) == ["lo"] and leases(data_dir) == []


@pytest.mark.parametrize("case", ["empty", "missing", "not-a-netns", "link-gone", "master-gone"])
@pytest.mark.both_paths
def test_del_succeeds_whatever_is_already_gone(host_ns, master, pod_ns, data_dir, tmp_path, case):
    c, pod = conf(master, data_dir), pod_ns()
    add(c, host_ns, pod)
    netns = ns.netns_path(pod)
    if case == "empty":
        netns = ""
    elif case == "missing":
        netns = str(tmp_path / "gone")
    elif case == "not-a-netns":
        netns = str(tmp_path / "file")
        open(netns, "w").close()
    elif case == "link-gone":
        ns.sh("ip", "link", "del", "eth0", ns=pod)
    elif case == "master-gone":
        ns.sh("ip", "link", "del", master, ns=host_ns)
    out = run_plugin("macvlan", "DEL", c, in_netns=host_ns, netns=netns, container_id="c1", ifname="eth0")
    assert out.ok, out
    assert leases(data_dir) == []


# -- CHECK -----------------------------------------------------------------------------

def checked(c, result):
    c = dict(c, prevResult=result)
    return c


def test_check_passes_on_a_fresh_attachment(host_ns, master, pod_ns, data_dir):
    c, pod = conf(master, data_dir), pod_ns()
    c["ipam"]["routes"] = [{"dst": "10.60.0.0/16"}]
    result = add(c, host_ns, pod)
    out = plugin("CHECK", checked(c, result), host_ns, pod)
    assert out.ok and out.stdout == "", out


@pytest.mark.parametrize("drift,words", [
    ("mac", "MAC"),
    ("address", "10.20.0."),
    ("route", "10.60.0.0/16"),
    ("link", "missing"),
    ("mode", "mode"),
])
@pytest.mark.both_paths
def test_check_catches_drift(host_ns, master, pod_ns, data_dir, drift, words):
    c, pod = conf(master, data_dir), pod_ns()
    c["ipam"]["routes"] = [{"dst": "10.60.0.0/16"}]
    result = add(c, host_ns, pod)
    if drift == "mac":
        ns.sh("ip", "link", "set", "eth0", "address", "02:11:22:33:44:55", ns=pod)
    elif drift == "address":
        ns.sh("ip", "addr", "del", result["ips"][0]["address"], "dev", "eth0", ns=pod)
    elif drift == "route":
        ns.sh("ip", "route", "del", "10.60.0.0/16", ns=pod)
    elif drift == "link":
        ns.sh("ip", "link", "del", "eth0", ns=pod)
    elif drift == "mode":
        c = dict(c, mode="private")
    out = plugin("CHECK", checked(c, result), host_ns, pod)
    assert out.cni_code == 100 and words in out.json["msg"], out


def test_check_delegates_to_ipam(host_ns, master, pod_ns, data_dir):
    c, pod = conf(master, data_dir), pod_ns()
    result = add(c, host_ns, pod)
    for name in leases(data_dir):
        os.unlink(os.path.join(data_dir, "mvnet", name))
    out = plugin("CHECK", checked(c, result), host_ns, pod)
    assert out.cni_code == 100 and "not leased" in out.json["msg"], out


# -- every version -----------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.both_paths
def test_add_check_del_in_every_version(host_ns, master, pod_ns, data_dir, version):
    c, pod = conf(master, data_dir, version=version), pod_ns()
    out = plugin("ADD", c, host_ns, pod)
    assert out.ok, out
    result = out.json
    assert result["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert result["ip4"]["ip"].startswith("10.20.0.") and "interfaces" not in result
    else:
        assert result["interfaces"][0]["sandbox"] == ns.netns_path(pod)
        assert result["ips"][0]["interface"] == 0
        assert ("version" in result["ips"][0]) == (version in ("0.3.0", "0.3.1", "0.4.0"))
        assert ("mtu" in result["interfaces"][0]) == (version == "1.1.0")
    check = plugin("CHECK", checked(c, result), host_ns, pod)
    if version in ("0.4.0", "1.0.0", "1.1.0"):
        assert check.ok, check
    else:
        assert check.cni_code == 1, check
    status = plugin("STATUS", c, host_ns)
    gc = plugin("GC", dict(c, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}),
                host_ns)
    if version == "1.1.0":
        assert status.ok and gc.ok and status.stdout == gc.stdout == "", (status, gc)
        assert len(leases(data_dir)) == 1
    else:
        assert status.cni_code == 1 and gc.cni_code == 1
    out = plugin("DEL", c, host_ns, pod)
    assert out.ok, out
    assert ns.links(pod) == ["lo"] and leases(data_dir) == []


@pytest.mark.both_paths
def test_gc_releases_leases_of_attachments_not_listed(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir)
    add(c, host_ns, pod_ns(), "keep")
    add(c, host_ns, pod_ns(), "lost")
    out = plugin("GC", dict(c, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
                 host_ns)
    assert out.ok, out
    assert len(leases(data_dir)) == 1
    owner = open(os.path.join(data_dir, "mvnet", leases(data_dir)[0]), "rb").read()
    assert owner == b"keep\r\neth0"


@pytest.mark.both_paths
def test_status_reports_exhaustion_as_code_50(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir, ranges=[[{"subnet": "10.25.0.0/30"}]])
    assert plugin("STATUS", c, host_ns).ok
    add(c, host_ns, pod_ns())
    out = plugin("STATUS", c, host_ns)
    assert out.cni_code == 50 and "no free address" in out.json["msg"], out


def test_result_carries_what_multus_needs(host_ns, master, pod_ns, data_dir):
    c = conf(master, data_dir, dns={"nameservers": ["10.20.0.53"], "search": ["svc.local"]})
    c["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}]
    pod = pod_ns()
    result = add(c, host_ns, pod, ifname="net1")
    iface = result["interfaces"][0]
    assert iface["name"] == "net1" and iface["sandbox"] == ns.netns_path(pod)
    assert iface["mac"] == ns.link_json(pod, "net1")["address"] and iface["mtu"] == 1500
    assert result["ips"] == [{"address": result["ips"][0]["address"], "gateway": "10.20.0.1", "interface": 0}]
    assert result["dns"] == {"nameservers": ["10.20.0.53"], "search": ["svc.local"]}
    assert json.dumps(result)


@pytest.mark.parametrize("ipam_type", ["host-local", "underlay-host-local"])
def test_our_ipam_runs_in_process_even_with_an_empty_cni_path(host_ns, master, pod_ns, data_dir, tmp_path,
                                                              ipam_type):
    c = conf(master, data_dir)
    c["ipam"]["type"] = ipam_type
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod, path=str(tmp_path))  # nothing to exec there
    assert out.ok, out
    assert leases(data_dir) == [ipv4(out.json)]


@pytest.mark.both_paths
def test_a_foreign_ipam_is_exec_d_from_cni_path(host_ns, master, pod_ns, tmp_path):
    c = conf(master, str(tmp_path), version="1.0.0")  # Debian's plugins stop at 1.0.0
    c["ipam"] = {"type": "static", "addresses": [{"address": "10.26.0.9/24"}]}
    pod = pod_ns()
    out = plugin("ADD", c, host_ns, pod, path="/usr/lib/cni")  # Debian's reference `static`
    assert out.ok, out
    assert ns.addrs(pod, "eth0") == ["10.26.0.9/24"]
    missing = plugin("ADD", c, host_ns, pod_ns(), cid="c2", path=str(tmp_path))
    assert missing.cni_code == 7 and "static" in missing.json["msg"], missing
