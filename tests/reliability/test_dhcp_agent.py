"""The dhcp IPAM end to end: the built plugins (the compiled thin client) handing off to an underlayd
of the test's own (its socket, --dhcp-dir, healing every second), against real DHCP servers on the
test's LAN (tests/lan.py: Kea4, Kea6, dnsmasq). What the servers' lease files and logs say is the
truth the tests read; every wait is a bounded poll of real state (tests/lan.py wait_for)."""

import concurrent.futures
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests import netns as nsutil
from tests import plugins
from tests.agent import Agent, agent_argv
from tests.bundle import built_bin_dir
from tests.lan import DNS4, POOL4, POOL6, ROUTER4, dnsmasq, kea4, kea6, lan, wait_for  # noqa: F401 (fixtures)
from tests.plugins import REFERENCE_DIR, ROOT, run_on_node

NETWORK = "dalan"


def in_pool(address, pool):
    first, last = (ipaddress.ip_address(a) for a in pool)
    return first <= ipaddress.ip_address(address) <= last


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DhcpAgent:
    """underlayd for one test: its own socket and dhcp dir, healing every second (or `heal_every`), /metrics
    on a port."""

    def __init__(self, tmp_path, heal_every=1, netns=None):
        """`netns`: run it in that netns (the node's, where the master is), without /metrics."""
        self.dhcp_dir = str(tmp_path / "dhcp")
        self.port = free_port()
        metrics = [] if netns else ["--metrics", f"127.0.0.1:{self.port}"]
        command = ["ip", "netns", "exec", netns] + agent_argv() if netns else None
        self.agent = Agent("--dhcp-dir", self.dhcp_dir, "--heal-every", str(heal_every), *metrics,
                           directory=str(tmp_path / "run"), command=command)

    def records(self):
        try:
            names = sorted(n for n in os.listdir(self.dhcp_dir) if n.endswith(".json"))
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            with open(os.path.join(self.dhcp_dir, name)) as f:
                out[name] = json.load(f)
        return out

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    def kill_all(self):
        """kill -9 of underlayd and of everything it started (its workers: one process group)."""
        self.agent.signal_group(signal.SIGKILL)
        self.agent.proc.wait()

    def log(self):
        return self.agent.log()


def serving(agent, monkeypatch, request):
    """The test's plugins hand off to `agent`, through the built thin client."""
    monkeypatch.setattr(plugins, "AGENT_SOCKET", agent.agent.socket)
    monkeypatch.setattr(plugins, "BIN_DIR", built_bin_dir(request))
    return agent


@pytest.fixture
def dhcp_agent(tmp_path, monkeypatch, request):
    agent = DhcpAgent(tmp_path)
    try:
        yield serving(agent, monkeypatch, request)
    finally:
        agent.agent.close()


@pytest.fixture
def unhealing_agent(tmp_path, monkeypatch, request):
    """One that heals only at start: what the agent does on a report is seen alone."""
    agent = DhcpAgent(tmp_path, heal_every=0)
    try:
        yield serving(agent, monkeypatch, request)
    finally:
        agent.agent.close()


def conf(master, version="1.0.0", **ipam):
    return {"cniVersion": version, "name": NETWORK, "type": "macvlan", "master": master, "mode": "bridge",
            "ipam": dict({"type": "dhcp", "timeout": 15}, **ipam)}


def add(lan, config, pod, cid="c1", ifname="net1", **kw):
    out = run_on_node(config["type"], "ADD", config, lan.host_ns, pod=pod, cid=cid, ifname=ifname, **kw)
    assert out.ok, out
    return out.json


def delete(lan, config, pod, cid="c1", ifname="net1", **kw):
    out = run_on_node(config["type"], "DEL", config, lan.host_ns, pod=pod, cid=cid, ifname=ifname, **kw)
    assert out.ok, out


def address_of(result, family=4):
    return next(ip["address"].split("/")[0] for ip in result["ips"] if (":" in ip["address"]) == (family == 6))


def discovers(server):
    """DHCPDISCOVERs the Kea4 server has answered: its log's offers (DHCP4_LEASE_ADVERT)."""
    with open(server.log, errors="replace") as f:
        return len(re.findall(r"DHCP4_LEASE_ADVERT", f.read()))


def expiry_of(server, address):
    lease = server.leased().get(address)
    return lease.expires if lease else None


# --------------------------------------------------------------------------
# ADD, CHECK, DEL

def test_add_check_del_through_underlayd_against_kea(lan, kea4, dhcp_agent, pod_ns):
    server = kea4(valid_lifetime=600)
    pod = pod_ns()
    config = conf(lan.master, provide=[{"option": "host-name", "fromArg": "K8S_POD_NAME"}])
    args = "IgnoreUnknown=1;K8S_POD_NAME=web-0"
    result = add(lan, config, pod, args=args)
    address = address_of(result)
    assert in_pool(address, POOL4)
    assert result["ips"][0]["address"] == f"{address}/24" and result["ips"][0]["gateway"] == ROUTER4
    assert {"dst": "0.0.0.0/0", "gw": ROUTER4} in result["routes"]
    assert DNS4 in result["dns"]["nameservers"]
    assert nsutil.addrs(pod, "net1") == [f"{address}/24"]
    held = server.leased()[address]
    assert held.hostname.startswith("web-0")

    # the record on disk before ADD answered, the agent told of it
    (record,) = dhcp_agent.records().values()
    assert (record["address"], record["container_id"], record["ifname"], record["network"]) == \
        (address, "c1", "net1", NETWORK)
    wait_for(lambda: dhcp_agent.metric("underlay_dhcp_leases") == 1, what="the agent holding the lease")
    listing = subprocess.run([sys.executable, "-m", "cni.operator", "dhcp", "--dhcp-dir", dhcp_agent.dhcp_dir,
                              "-o", "json"], cwd=ROOT, capture_output=True, text=True)
    assert [(x["address"], x["state"]) for x in json.loads(listing.stdout)] == [(f"{address}/24", "bound")]

    check = dict(config, cniVersion="1.0.0", prevResult=result)
    out = run_on_node("macvlan", "CHECK", check, lan.host_ns, pod=pod, cid="c1", ifname="net1", args=args)
    assert out.ok, out

    delete(lan, config, pod, args=args)
    wait_for(lambda: address not in server.leased(), what="the server freeing the released lease")
    assert dhcp_agent.records() == {}
    wait_for(lambda: dhcp_agent.metric("underlay_dhcp_leases") == 0, what="the agent forgetting the lease")
    delete(lan, config, pod, args=args)   # idempotent


def test_a_provided_client_identifier_is_sent_as_it_is_and_renewals_keep_it(lan, kea4, dhcp_agent, pod_ns):
    server = kea4(valid_lifetime=20, renew_timer=2, rebind_timer=15)
    pod = pod_ns()
    config = conf(lan.master, provide=[{"option": "dhcp-client-identifier", "value": "pod-id-1"}])
    address = address_of(add(lan, config, pod))
    first = server.leased()[address]
    assert first.client_id == b"pod-id-1".hex()
    wait_for(lambda: (expiry_of(server, address) or 0) > first.expires, timeout=30, what="a renewal at T1")
    assert server.leased()[address].client_id == b"pod-id-1".hex()
    delete(lan, config, pod)
    wait_for(lambda: address not in server.leased(), what="the release")


def test_check_fails_when_the_address_is_gone_from_the_interface(lan, kea4, dhcp_agent, pod_ns):
    kea4(valid_lifetime=600)
    pod = pod_ns()
    config = conf(lan.master)
    result = add(lan, config, pod)
    nsutil.sh("ip", "addr", "flush", "dev", "net1", "scope", "global", ns=pod)
    out = run_on_node("macvlan", "CHECK", dict(config, prevResult=result), lan.host_ns, pod=pod, cid="c1",
                      ifname="net1")
    assert out.cni_code is not None and out.cni_code >= 100, out
    delete(lan, config, pod)


def test_dnsmasq_with_classless_routes(lan, dnsmasq, dhcp_agent, pod_ns):
    """Option 121 replaces option 3 (RFC 3442): the gateway and routes come from it."""
    routes = [{"dst": "0.0.0.0/0", "gw": ROUTER4}, {"dst": "192.168.77.0/24", "gw": "10.88.0.2"}]
    server = dnsmasq(routes121=routes)
    pod = pod_ns()
    config = conf(lan.master)
    result = add(lan, config, pod)
    address = address_of(result)
    assert server.leased()[address]
    assert {"dst": "192.168.77.0/24", "gw": "10.88.0.2"} in result["routes"]
    assert result["ips"][0]["gateway"] == ROUTER4
    delete(lan, config, pod)
    wait_for(lambda: address not in server.leased(), what="dnsmasq freeing the released lease")


def test_a_failure_after_the_lease_releases_it(lan, kea4, dhcp_agent, pod_ns):
    """The lease is granted, then the main plugin fails applying it (a classless route through a gateway
    that is not on-link: the kernel refuses it): nothing is left, on the server, on disk or in the pod."""
    server = kea4(valid_lifetime=600, routes121=[{"dst": "0.0.0.0/0", "gw": ROUTER4},
                                                 {"dst": "192.168.77.0/24", "gw": "10.99.0.9"}])
    pod = pod_ns()
    out = run_on_node("macvlan", "ADD", conf(lan.master), lan.host_ns, pod=pod, cid="c1", ifname="net1")
    assert not out.ok and out.cni_code is not None, out
    assert server.leases(), "no lease was granted: the failure came before IPAM"
    wait_for(lambda: server.leased() == {}, what="the lease released")
    assert dhcp_agent.records() == {}
    assert "net1" not in nsutil.links(pod)


# --------------------------------------------------------------------------
# Renewals, a killed agent, a stopped server

def test_renewed_at_t1_and_after_kill_9_of_the_agent_without_a_new_discover(lan, kea4, dhcp_agent, pod_ns):
    server = kea4(valid_lifetime=20, renew_timer=3, rebind_timer=15)
    pod = pod_ns()
    config = conf(lan.master)
    address = address_of(add(lan, config, pod))
    first = expiry_of(server, address)
    wait_for(lambda: (expiry_of(server, address) or 0) > first, timeout=30, what="a renewal at T1")
    assert dhcp_agent.metric("underlay_dhcp_renewals_total") >= 1
    seen = discovers(server)
    assert seen == 1

    dhcp_agent.kill_all()
    at_kill = expiry_of(server, address)
    dhcp_agent.agent.start()
    wait_for(lambda: (expiry_of(server, address) or 0) > at_kill, timeout=30,
             what="a renewal by the restarted agent")
    assert discovers(server) == seen, "the restarted agent asked for a new lease"
    assert nsutil.addrs(pod, "net1") == [f"{address}/24"]
    delete(lan, config, pod)
    wait_for(lambda: address not in server.leased(), what="the release")


def test_a_dhcpv6_lease_is_renewed_at_t1(lan, kea6, dhcp_agent, pod_ns):
    server = kea6(valid_lifetime=20, renew_timer=3, rebind_timer=15)
    pod = pod_ns()
    config = conf(lan.master, families=["ipv6"])
    address = address_of(add(lan, config, pod), 6)
    first = expiry_of(server, address)
    wait_for(lambda: (expiry_of(server, address) or 0) > first, timeout=30, what="a DHCPv6 renewal at T1")
    assert dhcp_agent.metric("underlay_dhcp_renewals_total") >= 1
    assert f"{address}/64" in nsutil.addrs(pod, "net1")
    delete(lan, config, pod)
    wait_for(lambda: address not in server.leased(), what="the release")


def test_server_gone_the_address_expires_and_comes_back_with_the_server(lan, kea4, dhcp_agent, pod_ns):
    server = kea4(valid_lifetime=8, renew_timer=2, rebind_timer=5)
    pod = pod_ns()
    config = conf(lan.master)
    address = address_of(add(lan, config, pod))
    server.stop()
    wait_for(lambda: nsutil.addrs(pod, "net1") == [], timeout=30, what="the expired address removed")
    assert dhcp_agent.metric("underlay_dhcp_expiries_total") >= 1
    assert "expired unrenewed" in dhcp_agent.log()
    server.start()
    wait_for(lambda: nsutil.addrs(pod, "net1") == [f"{address}/24"], timeout=90,
             what="the address granted again and put back")
    assert address in server.leased()
    assert dhcp_agent.metric("underlay_dhcp_reacquired_total") >= 1
    routes = nsutil.sh("ip", "-4", "route", "show", "default", ns=pod).stdout
    assert f"via {ROUTER4} dev net1" in routes
    delete(lan, config, pod)


def test_server_down_at_t1_back_after_t2_the_lease_is_rebound(lan, kea4, dhcp_agent, pod_ns):
    """Renewals (unicast) go unanswered; after T2 the agent rebinds (broadcast): the server back by
    then grants it, and the address never leaves the interface."""
    server = kea4(valid_lifetime=60, renew_timer=2, rebind_timer=5)
    pod = pod_ns()
    config = conf(lan.master)
    address = address_of(add(lan, config, pod))
    server.stop()
    (record,) = dhcp_agent.records().values()
    wait_for(lambda: time.time() > record["bound_at"] + record["t2"], timeout=30, what="T2")
    server.start()
    wait_for(lambda: (dhcp_agent.metric("underlay_dhcp_rebinds_total") or 0) >= 1, timeout=60,
             what="a rebind granted")
    assert (expiry_of(server, address) or 0) > record["bound_at"] + record["lease_time"]
    assert dhcp_agent.metric("underlay_dhcp_expiries_total") == 0
    assert nsutil.addrs(pod, "net1") == [f"{address}/24"]
    delete(lan, config, pod)


# --------------------------------------------------------------------------
# Healing, GC

def test_a_pod_netns_deleted_without_del_has_its_lease_released_by_healing(lan, kea4, dhcp_agent, pod_ns):
    server = kea4(valid_lifetime=600)
    pod = pod_ns()
    address = address_of(add(lan, conf(lan.master), pod))
    wait_for(lambda: dhcp_agent.metric("underlay_dhcp_leases") == 1, what="the agent holding the lease")
    nsutil.del_netns(pod)
    wait_for(lambda: address not in server.leased(), timeout=30, what="healing's DHCPRELEASE seen by the server")
    wait_for(lambda: dhcp_agent.records() == {}, what="the record forgotten")
    assert "healing: released" in dhcp_agent.log()


def test_del_after_the_runtime_removed_the_netns_still_releases(lan, kea4, unhealing_agent, pod_ns):
    """The netns path is gone when DEL comes: its worker cannot send the release, the agent (which holds
    the netns while it keeps the lease, and heals only at start here) sends it from there."""
    server = kea4(valid_lifetime=600)
    pod = pod_ns()
    config = conf(lan.master)
    address = address_of(add(lan, config, pod))
    wait_for(lambda: unhealing_agent.metric("underlay_dhcp_leases") == 1, what="the agent holding the lease")
    nsutil.del_netns(pod)
    delete(lan, config, pod)
    wait_for(lambda: address not in server.leased(), what="the release seen by the server")
    assert unhealing_agent.records() == {}
    assert "its DEL found the netns gone" in unhealing_agent.log()


def test_gc_releases_the_leases_of_attachments_not_listed(lan, kea4, dhcp_agent, pod_ns):
    server = kea4(valid_lifetime=600)
    config = conf(lan.master, version="1.1.0")
    pods = [pod_ns(), pod_ns()]
    kept, gone = (address_of(add(lan, config, pod, cid=f"c{i}")) for i, pod in enumerate(pods))
    status = run_on_node("macvlan", "STATUS", config, lan.host_ns)
    assert status.ok, status   # served by underlayd
    gc = dict(config, **{"cni.dev/valid-attachments": [{"containerID": "c0", "ifname": "net1"}]})
    out = run_on_node("macvlan", "GC", gc, lan.host_ns)
    assert out.ok, out
    wait_for(lambda: gone not in server.leased(), what="GC's release")
    assert kept in server.leased()
    assert [r["container_id"] for r in dhcp_agent.records().values()] == ["c0"]
    delete(lan, config, pods[0], cid="c0")


# --------------------------------------------------------------------------
# Many at once, other callers, no agent

def test_64_pods_at_once_get_distinct_leases(lan, kea4, dhcp_agent, pod_ns):
    server = kea4(valid_lifetime=600)
    config = conf(lan.master)
    pods = [pod_ns() for _ in range(64)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: add(lan, config, pods[i], cid=f"p{i}"), range(64)))
    addresses = [address_of(r) for r in results]
    assert len(set(addresses)) == 64
    assert set(addresses) <= set(server.leased())
    assert len(dhcp_agent.records()) == 64
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: delete(lan, config, pods[i], cid=f"p{i}"), range(64)))
    wait_for(lambda: not set(addresses) & set(server.leased()), what="every lease released")


def test_debians_go_macvlan_execs_our_dhcp_through_the_agent(lan, kea4, dhcp_agent, pod_ns, request):
    server = kea4(valid_lifetime=600)
    pod = pod_ns()
    config = dict(conf(lan.master), cniVersion="0.4.0")
    go = [os.path.join(REFERENCE_DIR, "macvlan")]
    path = built_bin_dir(request)
    out = run_on_node("macvlan", "ADD", config, lan.host_ns, pod=pod, cid="g1", ifname="net1", argv=go, path=path)
    assert out.ok, out
    address = address_of(out.json)
    assert address in server.leased() and nsutil.addrs(pod, "net1") == [f"{address}/24"]
    # the agent logs an invocation once its worker has answered, which may be after the caller exits
    wait_for(lambda: any(s[:2] == ("dhcp", "ADD") for s in dhcp_agent.agent.served()), what="our dhcp served")
    out = run_on_node("macvlan", "DEL", config, lan.host_ns, pod=pod, cid="g1", ifname="net1", argv=go, path=path)
    assert out.ok, out
    wait_for(lambda: address not in server.leased(), what="the release")


def test_no_server_answering_is_code_11_and_leaves_nothing(lan, dhcp_agent, pod_ns):
    pod = pod_ns()
    out = run_on_node("macvlan", "ADD", conf(lan.master, timeout=2), lan.host_ns, pod=pod, cid="c1", ifname="net1")
    assert out.cni_code == 11 and "ipam.timeout" in out.json["msg"], out
    assert "net1" not in nsutil.links(pod)
    assert dhcp_agent.records() == {}


@pytest.mark.kernel("ipvlan")
@pytest.mark.parametrize("server_name", ["kea4", "dnsmasq"])
def test_ipvlan_children_sharing_the_parents_mac_get_leases_of_their_own(request, server_name, lan, dhcp_agent,
                                                                        pod_ns):
    """ipvlan children share their parent's MAC: the server tells them apart by the client identifier,
    derived from each attachment. dnsmasq broadcasts its replies at L2 (ipvlan hands them to every
    child); Kea sends them to the parent's MAC and IP 255.255.255.255, which ipvlan gives the parent
    alone: the worker, in the caller's netns, reads them there (README "DHCP")."""
    server = request.getfixturevalue(server_name)()
    config = dict(conf(lan.master), type="ipvlan", mode="l2")
    pods = [pod_ns(), pod_ns()]
    results = [add(lan, config, pod, cid=f"iv{i}") for i, pod in enumerate(pods)]
    addresses = [address_of(r) for r in results]
    assert len(set(addresses)) == 2 and set(addresses) <= set(server.leased())
    held = [server.leased()[a] for a in addresses]
    assert held[0].hwaddr == held[1].hwaddr and held[0].client_id != held[1].client_id
    for i, pod in enumerate(pods):
        delete(lan, config, pod, cid=f"iv{i}")
    wait_for(lambda: not set(addresses) & set(server.leased()), what="both released")


@pytest.mark.kernel("ipvlan")
def test_ipvlan_with_kea_renewed_and_after_an_expiry_asked_back_by_an_agent_in_the_nodes_netns(lan, kea4, pod_ns,
                                                                                            tmp_path, monkeypatch,
                                                                                            request):
    """The agent in the netns of the ipvlan parent (a hostNetwork DaemonSet): renewals are answered to
    the child's address; once expired, the reboot's broadcast answer is read on the parent."""
    server = kea4(valid_lifetime=8, renew_timer=2, rebind_timer=5)
    agent = DhcpAgent(tmp_path, netns=lan.host_ns)
    try:
        serving(agent, monkeypatch, request)
        pod = pod_ns()
        config = dict(conf(lan.master), type="ipvlan", mode="l2")
        address = address_of(add(lan, config, pod))
        first = expiry_of(server, address)
        wait_for(lambda: (expiry_of(server, address) or 0) > first, timeout=30, what="a renewal at T1")
        server.stop()
        wait_for(lambda: nsutil.addrs(pod, "net1") == [], timeout=30, what="the expired address removed")
        assert "expired unrenewed" in agent.log()
        server.start()
        wait_for(lambda: nsutil.addrs(pod, "net1") == [f"{address}/24"], timeout=90,
                 what="the address granted again and put back")
        assert address in server.leased()
        delete(lan, config, pod)
        wait_for(lambda: address not in server.leased(), what="the release")
    finally:
        agent.agent.close()


def test_without_the_agent_add_fails_with_code_11_and_leaves_nothing(lan, kea4, pod_ns, monkeypatch, request):
    server = kea4(valid_lifetime=600)
    monkeypatch.setattr(plugins, "BIN_DIR", built_bin_dir(request))
    monkeypatch.setattr(plugins, "AGENT_SOCKET", None)
    pod = pod_ns()
    out = run_on_node("macvlan", "ADD", conf(lan.master), lan.host_ns, pod=pod, cid="c1", ifname="net1")
    assert out.cni_code == 11 and "underlayd" in out.json["msg"], out
    assert "net1" not in nsutil.links(pod)
    assert server.leased() == {}


# --------------------------------------------------------------------------
# DHCPv6 (Kea6), dual stack

def test_ipv6_alone_and_dual_stack(lan, kea4, kea6, dhcp_agent, pod_ns):
    server4, server6 = kea4(valid_lifetime=600), kea6(valid_lifetime=600)
    pod6, pod46 = pod_ns(), pod_ns()
    v6 = conf(lan.master, families=["ipv6"])
    result = add(lan, v6, pod6, cid="v6")
    address = address_of(result, 6)
    assert in_pool(address, POOL6) and result["ips"][0]["address"] == f"{address}/64"
    assert address in server6.leased()
    assert f"{address}/64" in nsutil.addrs(pod6, "net1")

    both = conf(lan.master, families=["ipv4", "ipv6"])
    result = add(lan, both, pod46, cid="v46")
    a4, a6 = address_of(result, 4), address_of(result, 6)
    assert a4 in server4.leased() and a6 in server6.leased()
    assert set(nsutil.addrs(pod46, "net1")) >= {f"{a4}/24", f"{a6}/64"}
    assert len(dhcp_agent.records()) == 3

    delete(lan, v6, pod6, cid="v6")
    delete(lan, both, pod46, cid="v46")
    wait_for(lambda: address not in server6.leased() and a6 not in server6.leased() and a4 not in server4.leased(),
             what="every lease released")
