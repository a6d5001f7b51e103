"""The DHCP client on ipvlan children (in the VM: this kernel has no ipvlan), against real servers.

ipvlan children share their parent's MAC. Kea4 on raw sockets sends a reply to a request with the
broadcast flag to the request's source MAC (the parent's) and IP 255.255.255.255: ipvlan finds no
child owning that IP and gives the frame to the parent. dnsmasq broadcasts it at L2, which ipvlan
hands to every child and to the parent. The client is called from the node's netns (where the
master is), as underlayd's worker is (it enters the caller's netns): the client reads an ipvlan
child's broadcast replies on the parent."""

import contextlib
import os
import time

import pytest

from cni.net.netns import entered, open_netns
from ipam.dhcp import client
from ipam.dhcp.client import Exchange, Identity, Options
from tests import netns as nsutil
from tests.lan import dnsmasq, kea4, kea6, lan  # noqa: F401 (fixtures)
from tests.ns.test_dhcp_client import HANG, Pod, drive, in_pool4, in_pool6

pytestmark = [pytest.mark.root, pytest.mark.kernel("ipvlan")]


@pytest.fixture
def ipvlan_pods(lan, pod_ns):
    """make(n): n ipvlan (l2) children of the master, each in a fresh pod netns, up, no address."""
    made = []

    def make(n):
        pods = []
        for _ in range(n):
            ns = pod_ns()
            ifname = nsutil.unique("dvc")
            nsutil.sh("ip", "link", "add", ifname, "link", lan.master, "netns", ns, "type", "ipvlan", "mode", "l2",
                      ns=lan.host_ns)
            nsutil.sh("ip", "link", "set", ifname, "up", ns=ns)
            mac = nsutil.link_json(ns, ifname)["address"]
            pods.append(Pod(ns, ifname, mac, open_netns(nsutil.netns_path(ns))))
        made.extend(pods)
        return pods

    try:
        yield make
    finally:
        for p in made:
            os.close(p.fd)


@contextlib.contextmanager
def on_node(lan):
    """In the node's netns, where the master is: where underlayd's worker runs the client."""
    fd = open_netns(nsutil.netns_path(lan.host_ns))
    try:
        with entered(fd):
            yield
    finally:
        os.close(fd)


def identity(pod, i):
    return Identity(pod.mac, f"attachment-{i}".encode(), i + 1, None)


@pytest.mark.parametrize("server_name", ["kea4", "dnsmasq"])
def test_ipvlan_children_get_leases_of_their_own_and_renew_rebind_reboot_them(request, server_name, lan,
                                                                              ipvlan_pods):
    server = request.getfixturevalue(server_name)()
    pods = ipvlan_pods(2)
    assert pods[0].mac == pods[1].mac
    assert client.ipvlan_parent(pods[0].fd, pods[0].ifname) is None   # here the master is elsewhere
    with on_node(lan):
        assert client.ipvlan_parent(pods[0].fd, pods[0].ifname) == lan.master
        leases = [client.acquire(p.fd, p.ifname, 4, identity(p, i), Options(), HANG) for i, p in enumerate(pods)]
    addresses = [lease.address for lease in leases]
    assert len(set(addresses)) == 2 and all(in_pool4(a) for a in addresses)
    held = [server.leased()[a] for a in addresses]
    assert held[0].hwaddr == held[1].hwaddr == pods[0].mac and held[0].client_id != held[1].client_id
    for p, lease in zip(pods, leases):
        p.configure(lease)

    pod, lease = pods[0], leases[0]
    with on_node(lan):
        # renew (unicast) and rebind (broadcast): both answered to ciaddr, the child's own address
        for kind in ("renew", "rebind"):
            again = drive(Exchange(pod.fd, lease, kind, Options(), time.monotonic()))
            assert again is not None and again.address == lease.address, kind
        # a reboot once the address is off the interface (the agent's way back after an expiry):
        # answered by broadcast, as the acquire was
        nsutil.sh("ip", "addr", "del", f"{lease.address}/{lease.prefixlen}", "dev", pod.ifname, ns=pod.ns)
        again = drive(Exchange(pod.fd, lease, "reboot", Options(), time.monotonic()))
        assert again is not None and again.address == lease.address
    assert lease.address in server.leased()


def test_ipvlan_children_get_dhcpv6_leases_of_their_own(kea6, lan, ipvlan_pods):
    server = kea6()
    pods = ipvlan_pods(2)
    # the same MAC, yet link-local addresses of their own: the kernel puts each child's dev_id in it
    local = []
    for p in pods:
        with entered(p.fd):
            local.append(client.link_local(p.ifname))
    assert None not in local and local[0][0] != local[1][0]
    with on_node(lan):
        leases = [client.acquire(p.fd, p.ifname, 6, identity(p, i), Options(), HANG) for i, p in enumerate(pods)]
    addresses = [lease.address for lease in leases]
    assert len(set(addresses)) == 2 and all(in_pool6(a) for a in addresses)
    held = [server.leased()[a] for a in addresses]
    assert held[0].client_id != held[1].client_id
    pods[0].configure(leases[0])
    with on_node(lan):
        for kind in ("renew", "rebind"):
            again = drive(Exchange(pods[0].fd, leases[0], kind, Options(), time.monotonic()))
            assert again is not None and again.address == leases[0].address, kind
