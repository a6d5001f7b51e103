"""The DHCP client (ipam/dhcp/client.py) against real servers on a LAN (tests/lan.py): Kea4, Kea6
and dnsmasq in their own netns on the test's master; the client in a pod netns on a macvlan child
the test makes itself. What the servers' lease files say is the evidence."""

import os
import time

import pytest

from cni.net.netns import open_netns
from ipam.dhcp import client
from ipam.dhcp.client import Declined, Exchange, Identity, NoAnswer, Options
from tests import lan as lanmod
from tests import netns as nsutil
from tests.lan import DNS4, DNS6, DOMAIN, ROUTER4, dnsmasq, kea4, kea6, lan, wait_for  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root

HANG = 30   # acquire's bound: only rules out a hang


class Pod:
    def __init__(self, ns, ifname, mac, fd):
        self.ns, self.ifname, self.mac, self.fd = ns, ifname, mac, fd

    def identity(self, cid=b"attachment-1", iaid=1, hostname=None, mac=None):
        return Identity(mac or self.mac, cid, iaid, hostname)

    def configure(self, lease):
        nsutil.sh("ip", "addr", "add", f"{lease.address}/{lease.prefixlen}", "dev", self.ifname,
                  *(["nodad"] if lease.family == 6 else []), ns=self.ns)


@pytest.fixture
def pod(lan, pod_ns):
    """A macvlan child of the master in a fresh pod netns, up, no address (closed fds at teardown)."""
    made = []

    def make(mode="bridge"):
        ns = pod_ns()
        ifname = nsutil.unique("dwc")
        nsutil.sh("ip", "link", "add", ifname, "link", lan.master, "netns", ns, "type", "macvlan", "mode", mode,
                  ns=lan.host_ns)
        nsutil.sh("ip", "link", "set", ifname, "up", ns=ns)
        mac = nsutil.link_json(ns, ifname)["address"]
        pod = Pod(ns, ifname, mac, open_netns(nsutil.netns_path(ns)))
        made.append(pod)
        return pod

    try:
        yield make
    finally:
        for p in made:
            os.close(p.fd)


def a_second_passed(expires, lifetime):
    """True once a renewal would be stamped a later second than the grant (servers keep whole
    seconds from time(), a coarse clock that may lag time.time() by a few ms)."""
    return time.time() >= expires - lifetime + 1.1


def drive(exchange):
    """Run a non-blocking Exchange as the agent would (select on fileno until due)."""
    import select
    try:
        while True:
            now = time.monotonic()
            if not exchange.timer(now):
                return None
            ready, _, _ = select.select([exchange], [], [], max(0.0, exchange.due() - now))
            if ready:
                lease = exchange.readable()
                if lease is not None:
                    return lease
    finally:
        exchange.close()


ROUTES = [{"dst": "10.99.0.0/16", "gw": "10.88.0.254"}, {"dst": "0.0.0.0/0", "gw": "10.88.0.1"}]


def in_pool4(address):
    first, last = lanmod.POOL4
    return tuple(map(int, first.split("."))) <= tuple(map(int, address.split("."))) <= tuple(map(int, last.split(".")))


# --- DHCPv4 against Kea ---

def test_kea4_acquire_gives_the_servers_address_mask_router_dns_routes_and_records_the_hostname(kea4, pod):
    server = kea4(routes121=ROUTES)
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(hostname="pod-one"), Options(), HANG)
    assert in_pool4(lease.address) and lease.prefixlen == 24
    assert lease.routers == [ROUTER4] and lease.routes == ROUTES
    assert lease.dns == {"nameservers": [DNS4], "domain": DOMAIN}
    assert lease.server_id == lanmod.SERVER4 == lease.server_address
    assert (lease.lease_time, lease.mac, lease.ifname, lease.hostname) == (60, p.mac, p.ifname, "pod-one")
    held = server.leased()[lease.address]
    assert held.client_id == lease.client_id and held.hwaddr == p.mac
    assert held.hostname.split(".")[0] == "pod-one"
    assert lease.client_id.startswith("ff00000001" + "0004")   # RFC 4361: type 255, IAID 1, a DUID-UUID


def test_kea4_a_provided_client_identifier_is_sent_as_it_is(kea4, pod):
    server = kea4()
    p = pod()
    provided = b"\x01" + bytes.fromhex(p.mac.replace(":", ""))   # type 1 + MAC, as many clients send
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(), Options(send=((61, provided),)), HANG)
    assert lease.client_id == provided.hex() == server.leased()[lease.address].client_id


def test_kea4_renew_extends_the_lease_in_the_servers_file(kea4, pod):
    server = kea4(valid_lifetime=40)
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(hostname="renewer"), Options(), HANG)
    p.configure(lease)
    before = server.leased()[lease.address].expires
    wait_for(lambda: a_second_passed(before, 40), what="a second of the lease to pass")   # a later expiry to see
    renewed = drive(Exchange(p.fd, lease, "renew", Options(), time.monotonic()))
    assert renewed is not None and renewed.address == lease.address and renewed.bound_at > lease.bound_at
    assert (renewed.hostname, renewed.client_id, renewed.ifname) == ("renewer", lease.client_id, lease.ifname)
    held = server.leased()[lease.address]
    assert held.expires > before and held.hostname.split(".")[0] == "renewer"   # the hostname sent again


def test_kea4_rebind_answers_when_the_unicast_renew_is_not(kea4, pod):
    import dataclasses
    server = kea4(valid_lifetime=12, renew_timer=1, rebind_timer=3)
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(), Options(), HANG)
    p.configure(lease)
    before = server.leased()[lease.address].expires
    # the server's unicast address unreachable: nobody answers the renew, which gives up at T2
    lost = dataclasses.replace(lease, server_address="10.88.0.250")
    assert drive(Exchange(p.fd, lost, "renew", Options(), time.monotonic())) is None
    rebound = drive(Exchange(p.fd, lost, "rebind", Options(), time.monotonic()))
    assert rebound is not None and rebound.address == lease.address and rebound.server_address == lanmod.SERVER4
    assert server.leased()[lease.address].expires > before


def test_kea4_reboot_after_a_server_restart(kea4, pod):
    server = kea4()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(), Options(), HANG)
    p.configure(lease)
    server.kill()
    server.start()
    again = drive(Exchange(p.fd, lease, "reboot", Options(), time.monotonic()))
    assert again is not None and again.address == lease.address
    assert lease.address in server.leased()


def test_kea4_reboot_asks_an_expired_lease_back(kea4, pod):
    import dataclasses
    server = kea4()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(), Options(), HANG)
    p.configure(lease)
    expired = dataclasses.replace(lease, bound_at=lease.bound_at - 2 * lease.lease_time)
    again = drive(Exchange(p.fd, expired, "reboot", Options(), time.monotonic()))
    assert again is not None and again.address == lease.address and again.expires_at() > time.time()
    assert lease.address in server.leased()


def test_kea4_release_frees_the_lease(kea4, pod):
    server = kea4()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(), Options(), HANG)
    p.configure(lease)
    assert lease.address in server.leased()
    client.release(p.fd, lease)
    wait_for(lambda: lease.address not in server.leased(), what="the lease freed in Kea's lease file")


def test_kea4_release_without_the_address_on_the_interface_goes_as_a_frame(kea4, pod):
    server = kea4()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(), Options(), HANG)
    assert lease.address in server.leased()
    client.release(p.fd, lease)   # the address never configured: UDP cannot send from it
    wait_for(lambda: lease.address not in server.leased(), what="the lease freed in Kea's lease file")


@pytest.mark.parametrize("family", [4, 6])
def test_release_through_the_master_once_the_pod_netns_is_gone(kea4, kea6, pod, lan, family):
    """Healing's case: nothing of the pod is left; the node's master sends the release."""
    server = kea4() if family == 4 else kea6()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, family, p.identity(), Options(), HANG)
    assert lease.address in server.leased()
    os.close(p.fd)
    p.fd = open_netns(nsutil.netns_path(lan.host_ns))   # closed by the fixture
    nsutil.del_netns(p.ns)
    if family == 6:
        wait_for(lambda: lanmod.usable_link_local(lan.host_ns, lan.master), what="the master's link-local")
    client.release(p.fd, lease, ifname=lan.master)
    wait_for(lambda: lease.address not in server.leased(), what="the lease freed in the server's lease file")


def test_release_on_a_missing_interface_is_a_dhcp_error(lan, pod):
    import dataclasses
    from tests.unit.test_dhcp_lease import a_lease
    p = pod()
    with pytest.raises(client.DhcpError, match="not sent"):
        client.release(p.fd, dataclasses.replace(a_lease(), ifname="nosuch"))


@pytest.mark.parametrize("family", [4, 6])
def test_decline_sets_the_address_aside(kea4, kea6, pod, family):
    server = kea4() if family == 4 else kea6()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, family, p.identity(), Options(), HANG)
    client.decline(p.fd, lease)
    wait_for(lambda: server.leased().get(lease.address, lanmod.ServerLease("", "", "", 0, "")).state == "1",
             what="the address declined in the server's lease file")


def test_kea4_same_mac_different_client_ids_get_distinct_leases(kea4, pod):
    """ipvlan's case: children share the parent's MAC; the client identifier tells them apart."""
    server = kea4()
    a, b = pod(), pod()
    la = client.acquire(a.fd, a.ifname, 4, a.identity(cid=b"first"), Options(), HANG)
    lb = client.acquire(b.fd, b.ifname, 4, b.identity(cid=b"second", mac=a.mac), Options(), HANG)
    assert la.address != lb.address and la.client_id != lb.client_id
    held = server.leased()
    assert held[la.address].client_id == la.client_id and held[lb.address].client_id == lb.client_id


def test_kea4_nak_is_declined(kea4, pod):
    import dataclasses
    kea4(authoritative=True)
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(), Options(), HANG)
    foreign = dataclasses.replace(lease, address="10.77.0.5")
    with pytest.raises(Declined, match="DHCPNAK"):
        drive(Exchange(p.fd, foreign, "reboot", Options(), time.monotonic()))


def test_server_down_is_no_answer_within_the_timeout(kea4, pod):
    kea4().stop()
    p = pod()
    with pytest.raises(NoAnswer, match=p.ifname):
        client.acquire(p.fd, p.ifname, 4, p.identity(), Options(), 2)


def test_a_macvlan_childs_replies_are_read_on_the_child_not_on_its_parent(lan, pod):
    """Only an ipvlan child (its parent's MAC) is read on its parent (tests/ns/test_dhcp_ipvlan.py)."""
    from cni.net.netns import entered
    p = pod()
    fd = open_netns(nsutil.netns_path(lan.host_ns))
    try:
        with entered(fd):
            assert client.ipvlan_parent(p.fd, p.ifname) is None
    finally:
        os.close(fd)


def test_acquire_on_a_missing_interface_is_a_dhcp_error(lan, pod):
    p = pod()
    with pytest.raises(client.DhcpError, match="nosuch"):
        client.acquire(p.fd, "nosuch", 4, p.identity(), Options(), 2)


def test_kea4_acquire_with_rp_filter_and_without_the_broadcast_flag(kea4, pod):
    """Why acquire receives on a packet socket: neither rp_filter nor a unicast reply stops it."""
    kea4()
    p = pod()
    for key in ("all", "default", p.ifname):
        nsutil.sh("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1", ns=p.ns)
    for broadcast in (True, False):
        lease = client.acquire(p.fd, p.ifname, 4, p.identity(cid=b"b%d" % broadcast), Options(broadcast=broadcast),
                               HANG)
        assert in_pool4(lease.address)


# --- DHCPv4 against dnsmasq ---

def test_dnsmasq_acquire_renew_release(dnsmasq, pod):
    server = dnsmasq(routes121=ROUTES)
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 4, p.identity(hostname="pod-dns"), Options(), HANG)
    assert in_pool4(lease.address) and lease.prefixlen == 24 and lease.lease_time == 120   # dnsmasq's minimum
    assert lease.routers == [ROUTER4] and lease.routes == ROUTES and lease.dns["nameservers"] == [DNS4]
    held = wait_for(lambda: server.leased().get(lease.address), what="dnsmasq's lease file")
    assert held.client_id == lease.client_id and held.hostname == "pod-dns"
    p.configure(lease)
    renewed = drive(Exchange(p.fd, lease, "renew", Options(), time.monotonic()))
    assert renewed is not None and renewed.address == lease.address
    client.release(p.fd, renewed)
    wait_for(lambda: lease.address not in server.leased(), what="the lease freed in dnsmasq's lease file")


# --- DHCPv6 against Kea ---

def in_pool6(address):
    import ipaddress
    first, last = (ipaddress.IPv6Address(a) for a in lanmod.POOL6)
    return first <= ipaddress.IPv6Address(address) <= last


def test_kea6_acquire_renew_rebind_release(kea6, pod):
    import dataclasses
    server = kea6(valid_lifetime=30)
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 6, p.identity(hostname="pod-six", iaid=3), Options(), HANG)
    assert in_pool6(lease.address) and lease.prefixlen == 64 and lease.iaid == 3
    assert lease.dns == {"nameservers": [DNS6], "search": [DOMAIN]}
    assert lease.server_id == lanmod.Kea6.SERVER_DUID and lease.server_address.startswith("fe80::")
    assert lease.lease_time == 30 and lease.client_id == client.duid(b"attachment-1").hex()
    held = server.leased()[lease.address]
    assert held.client_id == lease.client_id and held.iaid == 3 and held.hostname.split(".")[0] == "pod-six"
    p.configure(lease)

    before = held.expires
    wait_for(lambda: a_second_passed(before, 30), what="a second of the lease to pass")
    renewed = drive(Exchange(p.fd, lease, "renew", Options(), time.monotonic()))
    assert renewed is not None and renewed.address == lease.address
    assert server.leased()[lease.address].expires > before

    # a renew to a server that is not there (another server DUID) goes unanswered; rebind is answered
    stranger = dataclasses.replace(renewed, server_id="0002000000010102", t1=0,
                                   t2=int(time.time() - renewed.bound_at) + 2)   # renew gives up in ~2 s
    assert drive(Exchange(p.fd, stranger, "renew", Options(), time.monotonic())) is None
    rebound = drive(Exchange(p.fd, stranger, "rebind", Options(), time.monotonic()))
    assert rebound is not None and rebound.server_id == lanmod.Kea6.SERVER_DUID

    client.release(p.fd, rebound)
    wait_for(lambda: lease.address not in server.leased(), what="the lease freed in Kea6's lease file")


def test_kea6_reboot_after_a_server_restart(kea6, pod):
    server = kea6()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, 6, p.identity(), Options(), HANG)
    p.configure(lease)
    server.kill()
    server.start()
    again = drive(Exchange(p.fd, lease, "reboot", Options(), time.monotonic()))
    assert again is not None and again.address == lease.address


def test_kea6_same_mac_different_client_ids_get_distinct_leases(kea6, pod):
    server = kea6()
    a, b = pod(), pod()
    la = client.acquire(a.fd, a.ifname, 6, a.identity(cid=b"first"), Options(), HANG)
    lb = client.acquire(b.fd, b.ifname, 6, b.identity(cid=b"second", mac=a.mac), Options(), HANG)
    assert la.address != lb.address
    held = server.leased()
    assert held[la.address].client_id == la.client_id and held[lb.address].client_id == lb.client_id


def test_kea6_no_address_left_is_declined(kea6, pod):
    kea6(pool=("2001:db8:88::100", "2001:db8:88::100"))
    a, b = pod(), pod()
    client.acquire(a.fd, a.ifname, 6, a.identity(cid=b"first"), Options(), HANG)
    with pytest.raises(Declined, match="NoAddrsAvail"):
        client.acquire(b.fd, b.ifname, 6, b.identity(cid=b"second"), Options(), 3)


def test_dhcpv6_server_down_is_no_answer(kea6, pod):
    kea6().stop()
    p = pod()
    with pytest.raises(NoAnswer):
        client.acquire(p.fd, p.ifname, 6, p.identity(), Options(), 2)


# --- a rogue on the LAN: malformed answers to every request, beside the real server ---

class Rogue:
    """Answers every client message it sees on the LAN with malformed replies carrying the right
    transaction id (what parses far enough to be tried, but must be ignored) and refusals from a
    server that is not the client's, from a thread."""

    def __init__(self, lan, family):
        import socket
        import threading
        from cni.net.netns import entered
        self.family, self.sent, self.stop = family, 0, threading.Event()
        proto = 0x0800 if family == 4 else 0x86DD
        fd = open_netns(nsutil.netns_path(lan.ns))
        try:
            with entered(fd):
                self.sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
                self.sniff.bind((lan.ifname, proto))
                self.out = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
                self.out.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, lan.ifname.encode())
                self.out.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                self.ifindex = socket.if_nametoindex(lan.ifname)
        finally:
            os.close(fd)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import select
        while not self.stop.is_set():
            if not select.select([self.sniff], [], [], 0.1)[0]:
                continue
            packet = self.sniff.recv(4096)
            try:
                self.answer(packet)
            except OSError:
                pass

    def answer(self, packet):
        import ipaddress
        import struct
        from ipam.dhcp import wire6
        from tests.unit.test_dhcp_wire4 import reply
        if self.family == 4:
            ihl = (packet[0] & 0x0F) * 4
            if packet[9] != 17 or struct.unpack_from("!H", packet, ihl + 2)[0] != 67:
                return
            request = packet[ihl + 8:]
            xid, mac = struct.unpack_from("!I", request, 4)[0], request[28:34].hex(":")
            ok = [(51, struct.pack("!I", 60))]
            garbage = [request[:100], reply(2, xid=xid, chaddr=mac)[:239],
                       reply(2, xid=xid, chaddr=mac, options=ok),                          # an OFFER with no server id
                       reply(2, xid=xid, chaddr=mac, yiaddr="0.0.0.0", options=ok + [(54, bytes(4))]),
                       reply(5, xid=xid, chaddr=mac, options=[(54, bytes((10, 88, 0, 66)))]),   # an ACK from nobody asked
                       reply(2, xid=xid, chaddr=mac)[:240] + b"\x35\x01\x02\x36\x09\x0a",       # runs past the end
                       reply(6, xid=xid, chaddr=mac, options=[(61, b"someone else")]),
                       reply(6, xid=xid, chaddr=mac, options=[(54, bytes((10, 88, 0, 66)))])]   # a stranger's NAK
            to = ("255.255.255.255", 68)
        else:
            if packet[6] != 17 or struct.unpack_from("!H", packet, 42)[0] != 547:
                return
            request, source = packet[48:], str(ipaddress.IPv6Address(packet[8:24]))
            xid = struct.unpack("!I", request[:4])[0] & 0xFFFFFF
            cid = dict(wire6.decode_options(request[4:])).get(wire6.CLIENTID, b"")
            sid = wire6.option(wire6.SERVERID, b"\x00\x02rogue")
            ident = [wire6.option(wire6.CLIENTID, cid), sid]
            garbage = [request[:3], wire6.message(wire6.ADVERTISE, xid, [wire6.option(wire6.CLIENTID, cid)]),
                       wire6.message(wire6.ADVERTISE, xid, ident + [wire6.option(wire6.IA_NA, b"\x00\x01")]),
                       wire6.message(wire6.ADVERTISE, xid, ident + [wire6.option(wire6.STATUS_CODE, b"\x00\x02")]),
                       wire6.message(wire6.REPLY, xid, ident + [wire6.ia_na(0, ["2001:db8:88::66"])]),
                       wire6.message(wire6.ADVERTISE, xid, ident)[:-2],
                       wire6.message(wire6.REPLY, xid, ident + [wire6.option(wire6.STATUS_CODE, b"\x00\x03")])]
            to = (source, 546, 0, self.ifindex)
        for data in garbage:
            self.out.sendto(data, to)
            self.sent += 1

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sniff.close()
        self.out.close()


@pytest.mark.parametrize("family", [4, 6])
def test_malformed_answers_beside_the_real_server_are_ignored(kea4, kea6, lan, pod, family):
    server = kea4() if family == 4 else kea6()
    p = pod()
    rogue = Rogue(lan, family)
    try:
        lease = client.acquire(p.fd, p.ifname, family, p.identity(), Options(), HANG)
        p.configure(lease)
        renewed = drive(Exchange(p.fd, lease, "renew", Options(), time.monotonic()))
        # its thread may answer after the real server did (a busy machine): its answers must come all the same
        wait_for(lambda: rogue.sent > 0, what="the rogue's answers")
    finally:
        rogue.close()
    assert lease.address in server.leased() and lease.server_id != "10.88.0.66"
    assert renewed is not None and renewed.address == lease.address


@pytest.mark.parametrize("family", [4, 6])
def test_a_strangers_refusal_of_a_renew_is_ignored(kea4, kea6, lan, pod, family):
    """A renew is for the server that granted the lease: with that server gone, another's NAK (v6: a
    NoBinding Reply) is not the end of the lease; the renew just goes unanswered until T2."""
    import dataclasses
    server = kea4() if family == 4 else kea6()
    p = pod()
    lease = client.acquire(p.fd, p.ifname, family, p.identity(), Options(), HANG)
    p.configure(lease)
    server.kill()
    soon = dataclasses.replace(lease, t1=0, t2=int(time.time() - lease.bound_at) + 2)   # renew gives up in ~2 s
    rogue = Rogue(lan, family)
    try:
        assert drive(Exchange(p.fd, soon, "renew", Options(), time.monotonic())) is None
        wait_for(lambda: rogue.sent > 0, what="the rogue's answers")
    finally:
        rogue.close()
