"""DHCP exchanges on sockets inside a pod netns.

acquire/release block (a worker serving one CNI invocation, bounded by its timeout); Exchange is
one renew, rebind or reboot that never blocks (underlayd's renewer polls its fileno and calls timer
at due()). Both are the same small state machine (_Conversation); acquire drives it with select.

Sockets: every socket is opened inside the pod netns (cni.net.netns.entered: setns there, socket(),
setns back; a socket keeps its netns) and bound to the interface (SO_BINDTODEVICE).
- v4 sends on a UDP socket bound to 0.0.0.0:68 (a datagram to 255.255.255.255 leaves from 0.0.0.0
  on an unconfigured interface). acquire *receives* on an AF_PACKET socket (SOCK_DGRAM, ETH_P_IP,
  a BPF filter for UDP to port 68): measured here, plain UDP does receive the broadcast replies on an
  interface without an address, but not once the pod netns has rp_filter=1 or 2 (no route back to
  the server yet), nor a reply unicast to the offered address (`broadcast: false`). The Exchange
  (the address is on the interface by then) receives on its UDP socket.
- ipvlan children share their parent's MAC, and ipvlan hands a frame that is not an L2 broadcast
  to the child owning its IP destination, else to the parent. Seen on the wire (tests/ns/
  test_dhcp_ipvlan.py): Kea4 2.2 on raw sockets sends the OFFER/ACK of a request with the broadcast
  flag to the request's source MAC (the parent's, whatever chaddr says: our MAC, zero or
  ff:ff:ff:ff:ff:ff) and IP 255.255.255.255, without the flag to the parent's MAC and the offered
  address: the parent gets it either way, never the child. dnsmasq broadcasts it at L2 (every child
  and the parent get it) and does not answer a zero or all-ones chaddr at all. Both answer a renew
  or rebind (ciaddr set) to ciaddr, the child's own address, which ipvlan delivers to the child.
  So acquire and a reboot on an ipvlan child read on a packet socket on the parent instead of the
  child (ipvlan_parent: when the parent is in the caller's netns, as it is for underlayd's worker,
  which enters the caller's netns, and for an agent in the node's netns); a renew or rebind keeps
  its UDP socket. A macvlan child (its own MAC) is unchanged. An agent in another netns than the
  parent falls back to the child's socket: its reboots are then answered by dnsmasq, not by Kea.
- v6 uses one UDP socket bound to the interface's link-local address, port 546, sending to
  ff02::1:2 port 547 (Renew included: RFC 8415 sends it multicast unless the server asked for
  unicast). acquire first waits, bounded by its timeout, for the link-local address to leave
  duplicate address detection (or to be optimistic).

Identity: the client DUID is a DUID-UUID (RFC 6355) derived from Identity.client_id, not a DUID-LL
from the MAC: ipvlan children share their parent's MAC, and two attachments must be two clients.
Their link-local addresses do not collide (the kernel gives each ipvlan child its own dev_id, which
goes into the EUI-64 interface identifier), and Kea6 answers each on its own: v6 needs nothing more.
The same DUID goes in v4's option 61 (type 255, IAID, DUID: RFC 4361), unless the config provides
option 61 itself (Options.send), which is then sent as it is.

release: v4 over UDP from the leased address when it is on the interface (waiting up to
RELEASE_FLUSH for the datagram to leave), else as a whole frame on a packet socket (from the
lease's MAC and address, broadcast at L2); v6 from the link-local address to ff02::1:2.
A renew counts only the granting server's answer; a rebind or reboot anyone's.

Retransmissions: 1 s, then doubling up to 60 s, each ±10 % (RFC 2131 starts at 4 s and RFC 8415's
Renew at 10 s: far too slow for a pod start or a lease of a few seconds). A renew gives up at T2,
a rebind at expiry, a reboot after REBOOT_WINDOW (even for an expired lease: it asks the address back).
"""

import dataclasses
import errno
import ipaddress
import os
import random
import select
import socket
import struct
import time
import uuid
from typing import NamedTuple, Optional

from cni.net.frames import checksum, mac_bytes
from cni.net.netns import NetnsError, entered
from ipam.dhcp import wire4, wire6
from ipam.dhcp.lease import Lease

FIRST_RETRANSMIT, MAX_RETRANSMIT = 1.0, 60.0
REBOOT_WINDOW = 10.0
RELEASE_FLUSH = 1.0   # how long release waits for its datagram to leave (the server's ARP answer)
_DUID_NAMESPACE = uuid.UUID("8c4f0a2e-19d1-4c55-9a57-7f3c3b8e1d19")   # underlay's; any fixed UUID


class Identity(NamedTuple):
    """Who asks: stable for the attachment."""
    mac: str
    client_id: bytes
    iaid: int
    hostname: Optional[str]


class Options(NamedTuple):
    """What the config asks for (codes of the family asked: v4 and v6 have their own numbers)."""
    request: tuple = ()         # extra option codes to ask for (parameter request list / ORO)
    send: tuple = ()            # extra (code, bytes) options to send ("provide" with value/fromArg, resolved)
    broadcast: bool = True      # BOOTP broadcast flag on DISCOVER/REQUEST (ipvlan shares the MAC)
    prefixlen6: int = 64


class DhcpError(Exception):
    """Base of the client's errors; .msg names what happened."""

    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg


class NoAnswer(DhcpError):
    """No server answered within the time."""


class Declined(DhcpError):
    """The server said no: a NAK, or a v6 status code (NoAddrsAvail, NoBinding, ...)."""


def duid(client_id) -> bytes:
    """The client DUID of an attachment: DUID-UUID (type 4) named by its client id."""
    return b"\x00\x04" + uuid.uuid5(_DUID_NAMESPACE, bytes(client_id).hex()).bytes


def attachment_identity(mac, container_id, network, ifname, hostname=None) -> Identity:
    """The Identity of one attachment (container, network, interface): its client id and IAID are
    a hash of those, stable across agent restarts and distinct between attachments sharing a MAC."""
    import hashlib
    digest = hashlib.sha256("\0".join((container_id, network, ifname)).encode()).digest()
    return Identity(mac, digest[:16], int.from_bytes(digest[16:20], "big"), hostname)


def acquire(netns_fd, ifname, family, identity, options, timeout) -> Lease:
    """A new lease on `ifname` in the netns `netns_fd` (the link is up): DISCOVER/OFFER/REQUEST/ACK,
    v6 Solicit/Advertise/Request/Reply, retransmitted with backoff. NoAnswer after `timeout` seconds
    (Declined when the only answers were refusals); DhcpError when no socket can be opened.
    The Lease's netns, container_id and network are left for the caller to fill in."""
    deadline = time.monotonic() + timeout
    if family == 4:
        conversation = _Acquire4(netns_fd, ifname, identity, options, deadline)
    elif family == 6:
        conversation = _Acquire6(netns_fd, ifname, identity, options, deadline)
    else:
        raise ValueError(f"family {family!r} is neither 4 nor 6")
    try:
        return _drive(conversation, f"no DHCPv{family} server answered on {ifname} within {timeout:g} s")
    finally:
        conversation.close()


def release(netns_fd, lease, ifname=None) -> None:
    """DHCPRELEASE (v6 Release) from the leased address to the server that granted it; sent once,
    best effort: no answer is awaited (v4: up to RELEASE_FLUSH for the datagram to leave, the
    server's address being resolved first). DhcpError when it could not be sent: the caller logs it
    and goes on.

    `ifname`: send on that interface of the netns instead of the lease's (healing, the pod netns
    gone: the master in the node's netns). v4 then sends, as it does when the address is no longer
    on the pod's interface, a whole frame on a packet socket: from the lease's MAC and address, to
    the server's address in a broadcast frame (no ARP: nothing of the pod is left to answer it).
    That path never waits: underlayd's loop may pass ifname=lease.ifname to release without the
    up to RELEASE_FLUSH seconds the UDP path spends when the server's address does not resolve."""
    try:
        if lease.family == 6:
            _release6(netns_fd, lease, ifname or lease.ifname)
        elif ifname is None and _release4(netns_fd, lease):
            pass
        else:
            _release4_frame(netns_fd, ifname or lease.ifname, lease)
    except (OSError, NetnsError) as e:
        raise DhcpError(f"DHCP release of {lease.address} on {ifname or lease.ifname} not sent: "
                        f"{getattr(e, 'strerror', None) or e}") from None


def decline(netns_fd, lease) -> None:
    """DHCPDECLINE (v6 Decline): the granted address is in use by another host (a conflict probe
    answered); the server sets it aside. Sent once from the pod's interface (v4 from 0.0.0.0, the
    address never configured), best effort; DhcpError when it could not be sent."""
    try:
        with entered(netns_fd):
            if lease.family == 4:
                sock = _udp4(lease.ifname)
                data = wire4.decline(_xid(32), lease.mac, bytes.fromhex(lease.client_id), lease.address,
                                     lease.server_id)
                to = ("255.255.255.255", wire4.SERVER_PORT)
            else:
                sock = _udp6(lease.ifname, time.monotonic())
                data = wire6.decline(_xid(24), bytes.fromhex(lease.client_id), lease.iaid,
                                     bytes.fromhex(lease.server_id), lease.address)
                to = (wire6.ALL_SERVERS, wire6.SERVER_PORT, 0, socket.if_nametoindex(lease.ifname))
        try:
            sock.sendto(data, to)
        finally:
            sock.close()
    except (OSError, NetnsError) as e:
        raise DhcpError(f"DHCP decline of {lease.address} on {lease.ifname} not sent: "
                        f"{getattr(e, 'strerror', None) or e}") from None


class Exchange:
    """One renew / rebind / reboot (INIT-REBOOT: ask for the same address again; v6: a Rebind) in
    flight, non-blocking. The constructor opens its socket in the pod netns and sends the first
    message; DhcpError when it cannot (the interface gone). `now` is time.monotonic()."""

    KINDS = ("renew", "rebind", "reboot")

    def __init__(self, netns_fd, lease, kind, options, now):
        if kind not in self.KINDS:
            raise ValueError(f"exchange kind {kind!r} is not one of {self.KINDS}")
        self.lease, self.kind = lease, kind
        self._conversation = (_Refresh4 if lease.family == 4 else _Refresh6)(netns_fd, lease, kind, options, now)
        self._conversation.timer(now)

    def fileno(self) -> int:
        return self._conversation.fileno()

    def due(self) -> float:
        """time.monotonic() of the next retransmit or of giving up."""
        return self._conversation.due()

    def readable(self) -> Optional[Lease]:
        """The renewed Lease on a matching ACK/Reply; Declined on a NAK or refusal; None: not ours or not yet."""
        return self._conversation.readable()

    def timer(self, now) -> bool:
        """Retransmit if it is time; False once this attempt gives up (no answer)."""
        return self._conversation.timer(now)

    def close(self):
        self._conversation.close()


# --- the state machine both share ---

class _Conversation:
    """Sends `message()` at 1, 2, 4 ... s until `give_up`; `receive(data, source)` returns a Lease,
    raises Declined, or returns None (not ours / a step on the way)."""

    def __init__(self, give_up):
        self.give_up, self.attempt, self.next_send, self.started = give_up, 0, 0.0, time.monotonic()
        self.socks = []

    def fileno(self):
        return self.socks[-1].fileno()   # the receiving socket is opened last

    def due(self):
        return min(self.next_send, self.give_up)

    def timer(self, now):
        if now >= self.give_up:
            return False
        if now >= self.next_send:
            self.send_now(now)
        return True

    def send_now(self, now):
        try:
            self.send(self.message())
        except OSError:
            pass   # ENETUNREACH, ENOBUFS...: the next retransmit tries again
        self.next_send = now + min(FIRST_RETRANSMIT * 2 ** self.attempt, MAX_RETRANSMIT) * random.uniform(0.9, 1.1)
        self.attempt += 1

    def restart(self):
        """A new step (OFFER -> REQUEST): its first message goes now, backoff from the start."""
        self.attempt = 0
        self.send_now(time.monotonic())

    def readable(self):
        sock = self.socks[-1]
        while True:
            try:
                data, source = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return None
            result = self.receive(data, source)
            if result is not None:
                return result

    def close(self):
        for sock in self.socks:
            sock.close()
        self.socks = []


def _drive(conversation, no_answer):
    """Run a conversation to its end, blocking: the Lease, or its Declined, or NoAnswer."""
    while True:
        now = time.monotonic()
        if not conversation.timer(now):
            raise getattr(conversation, "refused", None) or NoAnswer(no_answer)
        ready, _, _ = select.select([conversation], [], [], max(0.0, conversation.due() - now))
        if ready:
            lease = conversation.readable()
            if lease is not None:
                return lease


def _mono(wall):
    """A wall-clock time (lease times) as time.monotonic()."""
    return time.monotonic() + (wall - time.time())


def _give_up(lease, kind, now):
    """When a renewal attempt ends: a renew at T2, a rebind at expiry, a reboot REBOOT_WINDOW from
    now (expired or not: it asks for the address back, it does not use it)."""
    if kind == "reboot":
        return now + REBOOT_WINDOW
    return _mono(lease.rebind_at() if kind == "renew" else lease.expires_at())


def _xid(bits):
    return random.getrandbits(bits)



# --- sockets ---

def _udp4(ifname):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        sock.bind(("0.0.0.0", wire4.CLIENT_PORT))
    except OSError:
        sock.close()
        raise
    return sock


ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
# Classic BPF on the IP header (SOCK_DGRAM packet sockets start there): UDP, not a fragment,
# destination port 68. Everything else on the LAN stays in the kernel.
_BPF_DHCP4_CLIENT = [
    (0x30, 0, 0, 9),        # ldb [9]            protocol
    (0x15, 0, 6, 17),       # jeq UDP, else drop
    (0x28, 0, 0, 6),        # ldh [6]            flags + fragment offset
    (0x45, 4, 0, 0x1FFF),   # jset offset: drop
    (0xB1, 0, 0, 0),        # ldx 4*([0]&0xf)    header length
    (0x48, 0, 0, 2),        # ldh [x+2]          UDP destination port
    (0x15, 0, 1, 68),       # jeq 68, else drop
    (0x06, 0, 0, 0xFFFF),   # accept
    (0x06, 0, 0, 0),        # drop
]


def _attach_filter(sock, program):
    import ctypes
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _packet4(ifname):
    # Protocol 0 until bind: the socket sees nothing before its filter is on, and binding a socket
    # that was not yet hooked skips the kernel's synchronize_net() (milliseconds on a busy node).
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
    try:
        _attach_filter(sock, _BPF_DHCP4_CLIENT)
        sock.bind((ifname, ETH_P_IP))
    except OSError:
        sock.close()
        raise
    return sock


def ipvlan_parent(netns_fd, ifname):
    """The name, in the caller's netns, of the parent of `ifname` (in the netns `netns_fd`) when
    `ifname` is an ipvlan child whose parent lives in the caller's netns; else None (a macvlan or
    any other link, or a parent elsewhere: an agent not in the node's netns). The kernel names the
    parent's netns by an id local to the pod's netns (IFLA_LINK_NETNSID); ours is asked for there."""
    from cni.net import netlink
    try:
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with entered(netns_fd):
                nl = netlink.Netlink()
            with nl:
                link = nl.find_link(ifname)
                if link is None or link.kind != "ipvlan" or not link.parent_index or link.parent_netnsid is None:
                    return None
                if nl.netnsid(here) != link.parent_netnsid:
                    return None
        finally:
            os.close(here)
        return socket.if_indextoname(link.parent_index)
    except (OSError, NetnsError, netlink.NetlinkError):
        return None


def udp_payload(packet):
    """The payload of an IPv4/UDP datagram to port 68 (an AF_PACKET read), or None."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if ihl < 20 or total > len(packet) or len(packet) < ihl + 8:
        return None
    dport, size = struct.unpack_from("!HH", packet, ihl + 2)
    if dport != wire4.CLIENT_PORT or size < 8 or ihl + size > total:
        return None
    return packet[ihl + 8:ihl + size]


def _open(netns_fd, opener, what):
    """opener() inside the pod netns; DhcpError naming `what` when refused."""
    try:
        with entered(netns_fd):
            return opener()
    except (OSError, NetnsError) as e:
        raise DhcpError(f"cannot open the DHCP socket {what}: {getattr(e, 'strerror', None) or e}") from None


# --- DHCPv4 ---

class _Acquire4(_Conversation):
    def __init__(self, netns_fd, ifname, identity, options, deadline):
        super().__init__(deadline)
        self.ifname, self.identity, self.options = ifname, identity, options
        # a client identifier the config provides (option 61) goes as it is; else RFC 4361's
        self.cid = dict(options.send).get(wire4.CLIENT_ID) or wire4.client_id(identity.iaid, duid(identity.client_id))
        self.chaddr, self.xid, self.offer = mac_bytes(identity.mac), _xid(32), None
        parent = _parent_socket(netns_fd, ifname)   # the receiving socket of an ipvlan child
        try:
            self.socks = _open(netns_fd, lambda: self._sockets(ifname, parent), f"on {ifname}")
        except DhcpError:
            if parent is not None:
                parent.close()
            raise

    @staticmethod
    def _sockets(ifname, parent):
        send = _udp4(ifname)
        try:
            return [send, parent or _packet4(ifname)]
        except OSError:
            send.close()
            raise

    def send(self, data):
        self.socks[0].sendto(data, ("255.255.255.255", wire4.SERVER_PORT))

    def message(self):
        i, o = self.identity, self.options
        if self.offer is None:
            return wire4.discover(self.xid, i.mac, self.cid, i.hostname, o.request, o.send, o.broadcast)
        return wire4.request_selecting(self.xid, i.mac, self.cid, self.offer.yiaddr, self.offer.server_id,
                                       i.hostname, o.request, o.send, o.broadcast)

    def receive(self, data, source):
        payload = udp_payload(data)
        reply = wire4.parse(payload) if payload is not None else None
        if not _ours4(reply, self.xid, self.chaddr, self.cid):
            return None
        if self.offer is None:
            if reply.msg_type == wire4.OFFER and reply.server_id and reply.yiaddr != "0.0.0.0":
                self.offer = reply
                self.restart()
            return None
        if reply.server_id != self.offer.server_id:
            return None
        if reply.msg_type == wire4.NAK:
            raise Declined(f"DHCPNAK from {reply.server_id} for {self.offer.yiaddr}"
                           + (f": {reply.message}" if reply.message else ""))
        if reply.msg_type != wire4.ACK:
            return None
        return _lease4(reply, self.identity.mac, self.cid, self.identity.iaid, self.ifname, self.identity.hostname)


def _parent_socket(netns_fd, ifname):
    """A packet socket on the parent of an ipvlan child, when the parent is in our netns: where its
    broadcast replies are read (the module docstring says why). None for anything else."""
    parent = ipvlan_parent(netns_fd, ifname)
    if parent is None:
        return None
    try:
        return _packet4(parent)
    except OSError as e:
        raise DhcpError(f"cannot open the DHCP socket on {parent}, the parent of {ifname}: {e.strerror}") from None


def _ours4(reply, xid, chaddr, cid):
    """A reply to our transaction: xid, hardware address, and our client id when it is echoed (RFC 6842)."""
    return (reply is not None and reply.xid == xid and reply.chaddr[:len(chaddr)] == chaddr
            and reply.client_id() in (None, cid))


def _lease4(reply, mac, cid, iaid, ifname, hostname):
    try:
        fields = wire4.lease_fields(reply)
    except ValueError:
        return None   # an ACK we cannot use: as if unanswered (a retransmit may bring a good one)
    return Lease(family=4, bound_at=time.time(), client_id=cid.hex(), iaid=iaid, mac=mac, ifname=ifname,
                 netns="", hostname=hostname, **fields)


class _Refresh4(_Conversation):
    def __init__(self, netns_fd, lease, kind, options, now):
        give_up = _give_up(lease, kind, now)
        super().__init__(give_up)
        self.lease, self.kind, self.options = lease, kind, options
        self.cid, self.chaddr, self.xid = bytes.fromhex(lease.client_id), mac_bytes(lease.mac), _xid(32)
        # a reboot's replies are broadcast (those of a renew or rebind go to ciaddr, the child's own)
        parent = _parent_socket(netns_fd, lease.ifname) if kind == "reboot" else None
        try:
            self.socks = [_open(netns_fd, lambda: _udp4(lease.ifname), f"on {lease.ifname}")]
        except DhcpError:
            if parent is not None:
                parent.close()
            raise
        self.framed = parent is not None
        if parent is not None:
            self.socks.append(parent)   # the receiving socket

    def send(self, data):
        to = self.lease.server_address if self.kind == "renew" else "255.255.255.255"
        self.socks[0].sendto(data, (to, wire4.SERVER_PORT))

    def message(self):
        lease, o = self.lease, self.options
        if self.kind == "reboot":
            return wire4.request_reboot(self.xid, lease.mac, self.cid, lease.address, lease.hostname,
                                        o.request, o.send, o.broadcast)
        return wire4.request_renewing(self.xid, lease.mac, self.cid, lease.address, lease.hostname, o.request, o.send)

    def receive(self, data, source):
        if self.framed:
            data = udp_payload(data)
        reply = wire4.parse(data) if data is not None else None
        if not _ours4(reply, self.xid, self.chaddr, self.cid):
            return None
        if self.kind == "renew" and reply.server_id not in (None, self.lease.server_id):
            return None   # a renew is unicast to the server that granted the lease; anyone answers a rebind
        if reply.msg_type == wire4.NAK:
            raise Declined(f"DHCPNAK from {reply.server_id or source[0]} for {self.lease.address} ({self.kind})"
                           + (f": {reply.message}" if reply.message else ""))
        if reply.msg_type != wire4.ACK:
            return None
        fresh = _lease4(reply, self.lease.mac, self.cid, self.lease.iaid, self.lease.ifname, self.lease.hostname)
        if fresh is None:
            return None
        if fresh.address != self.lease.address:
            raise Declined(f"the {self.kind} of {self.lease.address} was answered with {fresh.address}")
        return dataclasses.replace(self.lease, **{f: getattr(fresh, f) for f in _GRANTED})


# what an answer to a renewal replaces in the lease (whose attachment it is stays)
_GRANTED = ("prefixlen", "server_id", "server_address", "routers", "routes", "dns", "lease_time", "t1", "t2",
            "bound_at")


def _release4(netns_fd, lease):
    """Sent over UDP from the leased address: True; False when that address is not on the interface."""
    cid = bytes.fromhex(lease.client_id)
    data = wire4.release(_xid(32), lease.mac, cid, lease.address, lease.server_id)
    with entered(netns_fd):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, lease.ifname.encode())
        try:
            sock.bind((lease.address, wire4.CLIENT_PORT))   # from the leased address: servers ignore 0.0.0.0
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return False
            raise
        sock.sendto(data, (lease.server_address, wire4.SERVER_PORT))
        _wait_sent(sock, time.monotonic() + RELEASE_FLUSH)
        return True
    finally:
        sock.close()



def release_frame(lease, xid):
    """The DHCPRELEASE as an Ethernet frame: lease MAC and address -> broadcast MAC, server address."""
    payload = wire4.release(xid, lease.mac, bytes.fromhex(lease.client_id), lease.address, lease.server_id)
    src, dst = (ipaddress.IPv4Address(a).packed for a in (lease.address, lease.server_address))
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", wire4.CLIENT_PORT, wire4.SERVER_PORT, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, xid & 0xFFFF, 0, 64, 17, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return b"\xff" * 6 + mac_bytes(lease.mac) + struct.pack("!H", ETH_P_IP) + header + udp


def _release4_frame(netns_fd, ifname, lease):
    with entered(netns_fd):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        sock.bind((ifname, 0))
        sock.send(release_frame(lease, _xid(32)))
    finally:
        sock.close()


def _wait_sent(sock, deadline):
    """Until the datagram has left (SIOCOUTQ: bytes still charged to the socket, e.g. waiting in the
    neighbour queue for the server's ARP answer), so a DEL that removes the link next does not drop it."""
    import fcntl
    while time.monotonic() < deadline:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x5411, b"\0\0\0\0"))[0]   # SIOCOUTQ
        if queued == 0:
            return
        time.sleep(0.005)


# --- DHCPv6 ---

IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x04, 0x08, 0x40


def link_local(ifname):
    """(address, flags) of `ifname`'s link-local address in the current netns, or None."""
    try:
        with open("/proc/thread-self/net/if_inet6") as f:   # the thread's netns (setns is per thread)
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] == ifname and int(fields[3], 16) == 0x20:
            return str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))), int(fields[4], 16)
    return None


def _udp6(ifname, deadline):
    """A socket on the interface's link-local address, port 546, once that address is usable
    (DAD done, or optimistic), polling until `deadline`. OSError(EADDRNOTAVAIL) when it never is."""
    while True:
        found = link_local(ifname)
        if found and found[1] & IFA_F_DADFAILED:
            raise OSError(errno.EADDRNOTAVAIL, f"the link-local address {found[0]} failed duplicate address detection")
        if found and (not found[1] & IFA_F_TENTATIVE or found[1] & IFA_F_OPTIMISTIC):
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
                sock.bind((found[0], wire6.CLIENT_PORT, 0, socket.if_nametoindex(ifname)))
                return sock
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRNOTAVAIL:
                    raise
        if time.monotonic() >= deadline:
            raise OSError(errno.EADDRNOTAVAIL, "no usable link-local address (duplicate address detection "
                                               "not done)")
        time.sleep(0.02)


class _V6(_Conversation):
    def send(self, data):
        self.socks[0].sendto(data, (wire6.ALL_SERVERS, wire6.SERVER_PORT, 0, self.ifindex))

    def elapsed(self):
        return int((time.monotonic() - self.started) * 100)

    def ours(self, data):
        reply = wire6.parse(data)
        if reply is None or reply.xid != self.xid or reply.client_duid != self.duid:
            return None
        return reply

    def granted(self, reply, source, base):
        """The Lease a Reply grants (from `base`'s attachment fields), Declined when it refuses, None
        when it is malformed."""
        try:
            refused = wire6.refusal(reply, base["iaid"])
            if refused:
                raise Declined(f"DHCPv6 {wire6.MESSAGE_NAMES.get(reply.msg_type)} refused "
                               f"{base.get('address') or 'an address'}: {wire6.describe(refused)}")
            fields = wire6.lease_fields(reply, base["iaid"], base["prefixlen"])
        except ValueError:
            return None
        fields["server_address"] = source[0].split("%")[0]
        fields["bound_at"] = time.time()
        return {**base, **fields}


class _Acquire6(_V6):
    def __init__(self, netns_fd, ifname, identity, options, deadline):
        super().__init__(deadline)
        self.ifname, self.identity, self.options = ifname, identity, options
        self.duid, self.xid, self.advertise, self.refused = duid(identity.client_id), _xid(24), None, None

        def opener():
            self.ifindex = socket.if_nametoindex(ifname)
            return [_udp6(ifname, deadline)]
        self.socks = _open(netns_fd, opener, f"on {ifname}")

    def message(self):
        i, o = self.identity, self.options
        if self.advertise is None:
            return wire6.solicit(self.xid, self.duid, i.iaid, i.hostname, o.request, o.send, self.elapsed())
        address = wire6.find_ia(self.advertise, i.iaid).addresses[0][0]
        return wire6.request(self.xid, self.duid, i.iaid, self.advertise.server_duid, address, i.hostname,
                             o.request, o.send, self.elapsed())

    def receive(self, data, source):
        reply = self.ours(data)
        if reply is None:
            return None
        i = self.identity
        base = dict(family=6, client_id=self.duid.hex(), iaid=i.iaid, mac=i.mac, ifname=self.ifname, netns="",
                    hostname=i.hostname, prefixlen=self.options.prefixlen6)
        if self.advertise is None:
            if reply.msg_type != wire6.ADVERTISE:
                return None
            try:
                refused = wire6.refusal(reply, i.iaid)
            except ValueError:
                return None
            if refused:   # RFC 8415 18.2.9: such an Advertise is not taken; said if nothing better comes
                self.refused = Declined(f"DHCPv6 server {reply.server_duid.hex()} has no address for us: "
                                        f"{wire6.describe(refused)}")
                return None
            self.advertise = reply   # the first usable one: waiting for a better preference costs a second
            self.xid = _xid(24)
            self.restart()
            return None
        if reply.msg_type != wire6.REPLY or reply.server_duid != self.advertise.server_duid:
            return None
        fields = self.granted(reply, source, base)
        return Lease(**fields) if fields else None


class _Refresh6(_V6):
    """Renew (to the server that granted the lease), Rebind (any server); a reboot is a Rebind: it
    confirms the address with lifetimes, which Confirm would not."""

    def __init__(self, netns_fd, lease, kind, options, now):
        give_up = _give_up(lease, kind, now)
        super().__init__(give_up)
        self.lease, self.kind, self.options = lease, kind, options
        self.duid, self.xid, self.ifname = bytes.fromhex(lease.client_id), _xid(24), lease.ifname

        def opener():
            self.ifindex = socket.if_nametoindex(lease.ifname)
            return [_udp6(lease.ifname, time.monotonic())]
        self.socks = _open(netns_fd, opener, f"on {lease.ifname}")

    def message(self):
        lease, o = self.lease, self.options
        if self.kind == "renew":
            return wire6.renew(self.xid, self.duid, lease.iaid, bytes.fromhex(lease.server_id), lease.address,
                               lease.hostname, o.request, o.send, self.elapsed())
        return wire6.rebind(self.xid, self.duid, lease.iaid, lease.address, lease.hostname, o.request, o.send,
                            self.elapsed())

    def receive(self, data, source):
        reply = self.ours(data)
        if reply is None or reply.msg_type != wire6.REPLY:
            return None
        if self.kind == "renew" and reply.server_duid.hex() != self.lease.server_id:
            return None   # a Renew is for the server that granted the lease; anyone answers a Rebind
        fields = self.granted(reply, source, self.lease.to_json())
        if fields is None:
            return None
        if fields["address"] != self.lease.address:
            raise Declined(f"the {self.kind} of {self.lease.address} was answered with {fields['address']}")
        return dataclasses.replace(self.lease, **{f: fields[f] for f in _GRANTED if f != "prefixlen"})


def _release6(netns_fd, lease, ifname):
    data = wire6.release(_xid(24), bytes.fromhex(lease.client_id), lease.iaid, bytes.fromhex(lease.server_id),
                         lease.address)
    with entered(netns_fd):
        ifindex, sock = socket.if_nametoindex(ifname), _udp6(ifname, time.monotonic())
    try:
        sock.sendto(data, (wire6.ALL_SERVERS, wire6.SERVER_PORT, 0, ifindex))
    finally:
        sock.close()
