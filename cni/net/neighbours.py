"""The pod's neighbours on the LAN, asked and told with raw Ethernet frames.

- conflicts: who else has a candidate address (IPv4: RFC 5227 ARP probes, sender
  0.0.0.0; IPv6: duplicate address detection's neighbour solicitation from ::),
  sent before the address is configured; the answer names the MAC that holds it.
- unanswered_gateways: which gateways do not answer an ARP request / neighbour
  solicitation from the configured address.
- announce: a gratuitous ARP / unsolicited neighbour advertisement (override) per
  address, so neighbours that cached another MAC for it switch at once.

Ports are AF_PACKET sockets bound to one interface; a socket keeps the netns it
was opened in, so the caller opens it inside the right one (netns.entered) and
uses it from anywhere. Every wait is bounded: a question is sent TRIES times
spread over its time and the answers are read until then.
"""

import ipaddress
import select
import socket
import struct
import time

from cni.net.frames import checksum, mac_bytes

ETH_P_ARP, ETH_P_IP, ETH_P_IPV6 = 0x0806, 0x0800, 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
UNSPECIFIED6 = ipaddress.IPv6Address("::")
ZERO4 = ipaddress.IPv4Address("0.0.0.0")
ARP_REQUEST, ARP_REPLY = 1, 2
ND_NS, ND_NA = 135, 136
NA_OVERRIDE = 0x20000000
OPT_SOURCE_LLADDR, OPT_TARGET_LLADDR = 1, 2
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_ALLMULTI = 263, 1, 2
PACKET_OUTGOING = 4   # recvfrom's pkttype for a frame this host sent
TRIES = 3

ETH = struct.Struct("!6s6sH")
ARP = struct.Struct("!HHBBH6s4s6s4s")
IPV6 = struct.Struct("!IHBB16s16s")


class Port:
    """An interface's raw frames of one ethertype (ETH_P_ARP, ETH_P_IPV6), sent and heard."""

    def __init__(self, ifname, ethertype, mac):
        self.mac = mac_bytes(mac)
        self.ethertype = ethertype
        # protocol 0 until bind: no frame of another interface is queued in between
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
        try:
            self.sock.bind((ifname, ethertype))
            if ethertype == ETH_P_IPV6:
                # DAD's answers go to ff02::1, other hosts' probes to solicited-node groups not joined here;
                # the membership goes with the socket
                index = socket.if_nametoindex(ifname)
                self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                     struct.pack("iHH8s", index, PACKET_MR_ALLMULTI, 0, b""))
        except OSError:
            self.sock.close()
            raise

    def send(self, frame):
        self.sock.send(frame)

    def frames(self):
        """The frames waiting, other hosts' only (not this host's own, seen going out)."""
        while True:
            try:
                data, address = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            if address[2] != PACKET_OUTGOING:
                yield data

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_ports(ifname, mac, versions):
    """{ethertype: Port} on `ifname` for the IP versions given (4: ARP, 6: IPv6)."""
    ports = {}
    try:
        for version in sorted(set(versions)):
            ethertype = ETH_P_ARP if version == 4 else ETH_P_IPV6
            ports[ethertype] = Port(ifname, ethertype, mac)
    except OSError:
        close_ports(ports)
        raise
    return ports


def close_ports(ports):
    for port in ports.values():
        port.close()



def mac_text(raw):
    return ":".join(f"{b:02x}" for b in raw)


def padded(frame):
    return frame + b"\0" * (60 - len(frame))   # Ethernet's minimum frame (without FCS)


# -- ARP ---------------------------------------------------------------------------

def arp_frame(op, mac, sender_ip, target_ip, target_mac=b"\0" * 6, dst=BROADCAST):
    return padded(ETH.pack(dst, mac, ETH_P_ARP) +
                  ARP.pack(1, ETH_P_IP, 6, 4, op, mac, sender_ip.packed, target_mac, target_ip.packed))


def parse_arp(frame):
    """(op, sender MAC, sender IP, target IP) of an Ethernet/IPv4 ARP frame, else None."""
    if len(frame) < ETH.size + ARP.size or ETH.unpack_from(frame)[2] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = ARP.unpack_from(frame, ETH.size)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    return op, sha, ipaddress.IPv4Address(spa), ipaddress.IPv4Address(tpa)


# -- neighbour discovery -----------------------------------------------------------

def solicited_node(address):
    return ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + address.packed[13:])


def multicast_mac(address):
    return b"\x33\x33" + address.packed[12:]



def icmp6_frame(mac, src, dst, dst_mac, icmp):
    """An ICMPv6 message in IPv6 (hop limit 255, as neighbour discovery requires) in Ethernet."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    return padded(ETH.pack(dst_mac, mac, ETH_P_IPV6) + IPV6.pack(6 << 28, len(icmp), 58, 255, src.packed, dst.packed)
                  + icmp)


def ns_frame(mac, src, target):
    """A neighbour solicitation for `target` to its solicited-node group; from :: it is a DAD probe
    (RFC 4862: no source link-layer address option then)."""
    dst = solicited_node(target)
    icmp = struct.pack("!BBHI16s", ND_NS, 0, 0, 0, target.packed)
    if src != UNSPECIFIED6:
        icmp += struct.pack("!BB6s", OPT_SOURCE_LLADDR, 1, mac)
    return icmp6_frame(mac, src, dst, multicast_mac(dst), icmp)


def na_message(mac, address):
    """An unsolicited neighbour advertisement of `address` (ICMPv6, checksum 0): override set,
    not solicited, our link-layer address as target's."""
    return struct.pack("!BBHI16sBB6s", ND_NA, 0, 0, NA_OVERRIDE, address.packed, OPT_TARGET_LLADDR, 1, mac)


def na_frame(mac, address):
    """na_message from `address` to all nodes, as a frame."""
    return icmp6_frame(mac, address, ALL_NODES, multicast_mac(ALL_NODES), na_message(mac, address))


def parse_nd(frame):
    """(type, sender MAC, source IP, target) of a neighbour solicitation or advertisement, else None.
    The sender MAC is the link-layer address option's when there is one, else the frame's source."""
    start = ETH.size + IPV6.size
    if len(frame) < start + 24 or ETH.unpack_from(frame)[2] != ETH_P_IPV6:
        return None
    _, src_mac, _ = ETH.unpack_from(frame)
    _, length, next_header, hop_limit, src, _dst = IPV6.unpack_from(frame, ETH.size)
    kind = frame[start]
    if next_header != 58 or hop_limit != 255 or kind not in (ND_NS, ND_NA):
        return None
    target = ipaddress.IPv6Address(frame[start + 8:start + 24])
    end = min(len(frame), start + length)
    at = start + 24
    while at + 8 <= end and frame[at + 1]:
        if frame[at] in (OPT_SOURCE_LLADDR, OPT_TARGET_LLADDR):
            src_mac = frame[at + 2:at + 8]
        at += 8 * frame[at + 1]
    return kind, src_mac, ipaddress.IPv6Address(src), target


# -- questions ---------------------------------------------------------------------

def ask(questions, ports, wait, answer):
    """Send each question's frames TRIES times spread over `wait` seconds, reading `ports` until
    then (or until every question is answered). questions: {key: [(port, frame)]};
    answer(frame) -> (key, value) or None. Returns {key: value} of the answered ones."""
    answers = {}
    start = time.monotonic()
    deadline = start + wait
    sends = [start + wait * i / TRIES for i in range(TRIES)]
    while len(answers) < len(questions):
        now = time.monotonic()
        while sends and sends[0] <= now:
            sends.pop(0)
            for key, frames in questions.items():
                if key not in answers:
                    for port, frame in frames:
                        port.send(frame)
        if now >= deadline:
            break
        ready, _, _ = select.select(ports, [], [], min([deadline] + sends[:1]) - now)
        for port in ready:
            for frame in port.frames():
                got = answer(frame)
                if got is not None and got[0] in questions:
                    answers.setdefault(*got)
    return answers


def conflicts(send, hear, addresses, wait):
    """{address: MAC that holds it} for the candidate addresses (ip_address objects) another
    host answers for, or probes for itself, within `wait` seconds. send: {ethertype: Port};
    hear: the Ports answers may come in on (for ipvlan the master's too)."""
    questions = {}
    for address in addresses:
        if address.version == 4:
            port = send[ETH_P_ARP]
            questions[address] = [(port, arp_frame(ARP_REQUEST, port.mac, ZERO4, address))]
        else:
            port = send[ETH_P_IPV6]
            questions[address] = [(port, ns_frame(port.mac, UNSPECIFIED6, address))]
    ours = {port.mac for port in send.values()}

    def answer(frame):
        arp = parse_arp(frame)
        if arp is not None:
            op, sha, spa, tpa = arp
            if spa in questions:                                      # it uses the address: a reply, an announcement
                return spa, mac_text(sha)
            if op == ARP_REQUEST and spa == ZERO4 and sha not in ours:   # another host probing for it too
                return tpa, mac_text(sha)
            return None
        nd = parse_nd(frame)
        if nd is not None:
            kind, sha, src, target = nd
            if kind == ND_NA or (src == UNSPECIFIED6 and sha not in ours):
                return target, mac_text(sha)
        return None

    return ask(questions, hear, wait, answer)


def unanswered_gateways(send, hear, pairs, wait):
    """The gateways that did not answer (ARP reply / neighbour advertisement) within `wait`
    seconds. pairs: [(our address, its gateway)] as ip_address objects; send and hear as for conflicts."""
    questions = {}
    for ours, gateway in pairs:
        if gateway.version == 4:
            port = send[ETH_P_ARP]
            frame = arp_frame(ARP_REQUEST, port.mac, ours, gateway)
        else:
            port = send[ETH_P_IPV6]
            frame = ns_frame(port.mac, ours, gateway)
        questions.setdefault(gateway, []).append((port, frame))

    def answer(frame):
        arp = parse_arp(frame)
        if arp is not None:
            op, sha, spa, _tpa = arp
            return (spa, mac_text(sha)) if op == ARP_REPLY else None
        nd = parse_nd(frame)
        if nd is not None and nd[0] == ND_NA:
            return nd[3], mac_text(nd[1])
        return None

    answered = ask(questions, hear, wait, answer)
    return [gateway for gateway in questions if gateway not in answered]


def announce(send, addresses):
    """A gratuitous ARP (a request with sender = target = the address, to all) per IPv4 address
    and an unsolicited neighbour advertisement (override) per IPv6 address, on packet Ports."""
    for address in addresses:
        if address.version == 4:
            port = send[ETH_P_ARP]
            port.send(arp_frame(ARP_REQUEST, port.mac, address, address))
        else:
            port = send[ETH_P_IPV6]
            port.send(na_frame(port.mac, address))


def advertise(ifindex, mac, addresses):
    """An unsolicited neighbour advertisement per IPv6 address (configured on interface `ifindex`),
    from that address to all nodes, through the IPv6 stack: a raw ICMPv6 socket, which the kernel closes at
    once where a packet socket's close waits for an RCU grace period (~10 ms on a busy node).
    Open in the interface's netns."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_ICMPV6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)   # neighbour discovery's
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        raw = mac_bytes(mac)
        for address in addresses:
            # from the address itself, as the kernel's own; the kernel fills in the checksum
            source = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, address.packed + struct.pack("@I", ifindex))]
            sock.sendmsg([na_message(raw, address)], source, 0, (str(ALL_NODES), 0, 0, ifindex))
