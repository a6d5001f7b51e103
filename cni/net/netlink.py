"""Netlink for underlay: the one module that speaks rtnetlink.

The few messages the plugins need (links, addresses, routes, FIB rules,
permanent neighbours) are packed and
parsed here with struct on a plain NETLINK_ROUTE socket. pyroute2 did this
before, but its message classes cost ~18 ms to import on every exec and, warm,
built ~220 message objects for one ADD (whole link messages with their stats
and per-family settings decoded to read five fields). Now a request is the
bytes it needs, a reply is parsed for the attributes we read and nothing else,
and link queries ask the kernel to leave the statistics out (IFLA_EXT_MASK).
tests/ns/test_netlink_codec.py checks the parsers against pyroute2's
full decode of the same kernel bytes.

Kernel errors become NetlinkError with the errno; a missing link is
LinkNotFound, so "already gone" is easy to accept where the spec wants it.
"""

import _thread   # not threading: the cold path would pay its import
import errno
import os
import select
import socket
import struct

MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}
IPVLAN_FLAGS = {"bridge": 0, "private": 1, "vepa": 2}

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_NEWNSID, RTM_GETNSID = 88, 90
NETNSA_NSID, NETNSA_FD = 1, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x4, 0x8
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND, NLM_F_DUMP = 0x200, 0x400, 0x800, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFF_UP = 0x1
IFA_F_NODAD, IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x2, 0x4, 0x8, 0x40
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RTN_UNICAST = 1
RTNH_F_ONLINK = 4            # rtm_flags: the gateway is on the link, whatever its addresses
FR_ACT_TO_TBL = 1            # fib_rule_hdr action: look the route up in the rule's table
NUD_PERMANENT = 0x80
RTAX_MTU, RTAX_ADVMSS = 2, 8
RTEXT_FILTER_SKIP_STATS = 1 << 3

# attribute numbers (linux/if_link.h, if_addr.h, rtnetlink.h, veth.h)
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_TXQLEN, IFLA_IFALIAS = 1, 3, 4, 5, 13, 20
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 18, 28, 29, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 7, 8, 15
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = 1, 2, 6, 15
NDA_DST, NDA_LLADDR = 1, 2
NLA_TYPE_MASK = 0x3FFF   # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
RECV_SIZE = 1 << 16

HEADER = struct.Struct("=IHHII")        # nlmsghdr: length, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")       # ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")        # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")     # rtmsg: family, dst_len, src_len, tos, table, proto, scope, type, flags
RULEMSG = struct.Struct("=BBBBBBBBI")   # fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
NDMSG = struct.Struct("=BxxxiHBB")      # ndmsg: family, ifindex, state, flags, type
NLA = struct.Struct("=HH")
U32, U16, S32 = struct.Struct("=I"), struct.Struct("=H"), struct.Struct("=i")

# IFLA_INFO_DATA per link kind: attribute name -> (number, struct format). Integer
# attributes only; Link.data holds these, by name.
LINK_DATA = {
    "macvlan": {"IFLA_MACVLAN_MODE": (1, "I"), "IFLA_MACVLAN_FLAGS": (2, "H"),
                "IFLA_MACVLAN_MACADDR_MODE": (3, "I"), "IFLA_MACVLAN_MACADDR_COUNT": (6, "I"),
                "IFLA_MACVLAN_BC_QUEUE_LEN": (7, "I"), "IFLA_MACVLAN_BC_QUEUE_LEN_USED": (8, "I"),
                "IFLA_MACVLAN_BC_CUTOFF": (9, "i")},
    "ipvlan": {"IFLA_IPVLAN_MODE": (1, "H"), "IFLA_IPVLAN_FLAGS": (2, "H")},
    "vlan": {"IFLA_VLAN_ID": (1, "H")},
}
LINK_DATA_BY_NUMBER = {kind: {number: (name, struct.Struct("=" + fmt)) for name, (number, fmt) in table.items()}
                       for kind, table in LINK_DATA.items()}


def ack_errno(data, start):
    """The errno of the NLMSG_ERROR message at `start` in `data`: 0 for an ACK."""
    return -S32.unpack_from(data, start + HEADER.size)[0]


def messages(data):
    """(offset, length, type, seq) of each message in a datagram, up to a malformed header."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield offset, length, kind, seq
        offset += (length + 3) & ~3


class NetlinkError(Exception):
    def __init__(self, code, what):
        super().__init__(f"{what}: {os.strerror(code)}")
        self.errno = code
        self.what = what


class LinkNotFound(NetlinkError):
    def __init__(self, what):
        super().__init__(errno.ENODEV, what)


# -- attributes ------------------------------------------------------------------

def nla(kind, payload):
    """One attribute, padded to 4 bytes."""
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (-length & 3)


def nla_u32(kind, value):
    return nla(kind, U32.pack(value))


def nla_str(kind, text):
    return nla(kind, text.encode() + b"\0")


def nla_ip(kind, address):
    return nla(kind, socket.inet_pton(family_of(address), address))


def nla_mac(kind, mac):
    return nla(kind, bytes(int(part, 16) for part in mac.split(":")))


def parse_attrs(data, offset=0, end=None):
    """{attribute number: payload} of the attributes in data[offset:end] (the last of a repeated one wins)."""
    end = len(data) if end is None else end
    attrs = {}
    while offset + NLA.size <= end:
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size:
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + NLA.size:offset + length]
        offset += (length + 3) & ~3
    return attrs


def asciiz(payload):
    return bytes(payload).split(b"\0", 1)[0].decode(errors="replace")


def mac_text(payload):
    return ":".join(f"{b:02x}" for b in payload)


def ip_text(payload):
    return socket.inet_ntop(socket.AF_INET6 if len(payload) == 16 else socket.AF_INET, bytes(payload))


def u32_of(attrs, kind):
    payload = attrs.get(kind)
    return None if payload is None else U32.unpack_from(payload)[0]


# -- what we read back -------------------------------------------------------------

class Link:
    """What we read back about a link: parsed from an RTM_NEWLINK message, attributes past
    the nlmsghdr and ifinfomsg. `data` holds the kind's integer IFLA_INFO_DATA by name."""

    def __init__(self, message):
        _family, self.type, self.index, self.flags, _change = IFINFO.unpack_from(message, HEADER.size)  # type: ARPHRD_*
        attrs = parse_attrs(message, HEADER.size + IFINFO.size)
        name = attrs.get(IFLA_IFNAME)
        self.name = None if name is None else asciiz(name)
        self.mtu = u32_of(attrs, IFLA_MTU)
        mac = attrs.get(IFLA_ADDRESS)
        self.mac = None if mac is None else mac_text(mac)
        self.parent_index = u32_of(attrs, IFLA_LINK)
        alias = attrs.get(IFLA_IFALIAS)
        self.alias = None if alias is None else asciiz(alias)
        netnsid = attrs.get(IFLA_LINK_NETNSID)
        self.parent_netnsid = None if netnsid is None else S32.unpack_from(netnsid)[0]
        self.kind = None
        self.data = {}
        info = attrs.get(IFLA_LINKINFO)
        if info is not None:
            info = parse_attrs(info)
            if IFLA_INFO_KIND in info:
                self.kind = asciiz(info[IFLA_INFO_KIND])
            table = LINK_DATA_BY_NUMBER.get(self.kind)
            if table and IFLA_INFO_DATA in info:
                for number, payload in parse_attrs(info[IFLA_INFO_DATA]).items():
                    if number in table and len(payload) >= table[number][1].size:
                        name, fmt = table[number]
                        self.data[name] = fmt.unpack_from(payload)[0]

    @property
    def up(self):
        return bool(self.flags & IFF_UP)


def parse_address(message):
    """(index, address, prefixlen, flags) of an RTM_NEWADDR message; flags from IFA_FLAGS when present."""
    _family, prefixlen, flags, _scope, index = IFADDR.unpack_from(message, HEADER.size)
    attrs = parse_attrs(message, HEADER.size + IFADDR.size)
    payload = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    extended = u32_of(attrs, IFA_FLAGS)
    return index, None if payload is None else ip_text(payload), prefixlen, flags if extended is None else extended


def parse_route(message):
    """The route of an RTM_NEWROUTE message as routes() gives it."""
    family, dst_len, _src, _tos, table, _proto, scope, _type, flags = RTMSG.unpack_from(message, HEADER.size)
    attrs = parse_attrs(message, HEADER.size + RTMSG.size)
    dst = attrs.get(RTA_DST)
    gw = attrs.get(RTA_GATEWAY)
    prefsrc = attrs.get(RTA_PREFSRC)
    return {
        "dst": f"{ip_text(dst) if dst is not None else ('::' if family == socket.AF_INET6 else '0.0.0.0')}"
               f"/{dst_len}",
        "gw": None if gw is None else ip_text(gw),
        "oif": u32_of(attrs, RTA_OIF),
        "priority": u32_of(attrs, RTA_PRIORITY),
        "table": u32_of(attrs, RTA_TABLE) or table,
        "scope": scope,
        "src": None if prefsrc is None else ip_text(prefsrc),
        "onlink": bool(flags & RTNH_F_ONLINK),
    }


def parse_rule(message):
    """A FIB rule of an RTM_NEWRULE message as rules() gives it: {family, src, dst, table, priority}."""
    family, dst_len, src_len, _tos, table, _r1, _r2, action, _flags = RULEMSG.unpack_from(message, HEADER.size)
    attrs = parse_attrs(message, HEADER.size + RULEMSG.size)
    src, dst = attrs.get(FRA_SRC), attrs.get(FRA_DST)
    return {
        "family": family,
        "src": None if src is None else f"{ip_text(src)}/{src_len}",
        "dst": None if dst is None else f"{ip_text(dst)}/{dst_len}",
        "table": u32_of(attrs, FRA_TABLE) or table,
        "priority": u32_of(attrs, FRA_PRIORITY),
        "action": action,
    }


def as_reply(msg_type, body):
    """`body` (a fixed header and its attributes) in a message as the kernel sends one: a spare's
    warm-up parses the messages it packed (cni/plugins/child_link.py rehearse)."""
    return memoryview(HEADER.pack(HEADER.size + len(body), msg_type, 0, 0, 0) + body)


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def link_data(kind, data):
    """IFLA_INFO_DATA payload from {attribute name: value}."""
    if kind == "veth":   # {"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", name), ("IFLA_NET_NS_FD", fd)]}}
        peer = dict(data["VETH_INFO_PEER"]["attrs"])
        attrs = nla_str(IFLA_IFNAME, peer["IFLA_IFNAME"])
        if peer.get("IFLA_NET_NS_FD") is not None:   # the peer is born in that netns: no move afterwards
            attrs += nla_u32(IFLA_NET_NS_FD, peer["IFLA_NET_NS_FD"])
        return nla(VETH_INFO_PEER, IFINFO.pack(0, 0, 0, 0, 0) + attrs)
    table = LINK_DATA.get(kind, {})
    out = b""
    for name, value in data.items():
        if name not in table:
            raise ValueError(f"no encoding for {kind} attribute {name}")
        number, fmt = table[name]
        out += nla(number, struct.pack("=" + fmt, value))
    return out


class Netlink:
    """A NETLINK_ROUTE socket; it stays in the netns it was opened in."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self.queued = None   # inside batched(): the changes to send when the block ends

    @classmethod
    def unsent(cls):
        """One with no socket: its changes are packed and queued as inside batched(), never sent (a
        spare's warm-up, cni/plugins/child_link.py rehearse)."""
        nl = cls.__new__(cls)
        nl.sock, nl.seq, nl.queued = None, 0, []
        return nl

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport ------------------------------------------------------------

    def _message(self, msg_type, flags, body):
        """(seq, bytes) of one request under the next sequence number: nlmsghdr + body (the fixed
        header and its attributes)."""
        self.seq += 1
        return self.seq, HEADER.pack(HEADER.size + len(body), msg_type, NLM_F_REQUEST | flags, self.seq, 0) + body

    def _send(self, msg_type, flags, body):
        seq, message = self._message(msg_type, flags, body)
        self.sock.send(message)
        return seq

    def _recv(self):
        """One datagram. 64 KiB: a 1 MiB buffer was a fresh mmap, mremap and munmap per read (larger
        than malloc's mmap threshold). The kernel's datagrams are at most ~32 KiB (a dump's skb; one
        link, address or route is far less); a larger one is an error, never parsed cut short."""
        data = self.sock.recv(RECV_SIZE, socket.MSG_TRUNC)   # MSG_TRUNC: the datagram's whole length
        if len(data) > RECV_SIZE:
            raise NetlinkError(errno.EMSGSIZE, f"a netlink reply of {len(data)} bytes")
        return data

    def _replies(self, seq, what):
        """Yield the raw reply messages to `seq` until ACK or DONE; raise on a kernel error."""
        while True:
            data = self._recv()
            for start, length, kind, rseq in messages(data):
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = ack_errno(data, start)
                    if code:
                        raise NetlinkError(code, what)
                    return
                if kind == NLMSG_DONE:
                    return
                yield memoryview(data)[start:start + length]

    def request(self, msg_type, flags, body, what):
        """Send a change; wait for its ACK (inside batched(): queued, sent as the block ends)."""
        if self.queued is not None:
            self.queued.append((msg_type, flags | NLM_F_ACK, body, what))
            return
        seq = self._send(msg_type, flags | NLM_F_ACK, body)
        for _ in self._replies(seq, what):
            pass

    def batched(self):
        """`with nl.batched():` the changes requested in the block go to the kernel in one send as
        it ends, and their ACKs come back in one read loop: one round trip for them all. The kernel
        applies them in order and goes on past a failed one; the first failure in that order is
        raised, so a caller undoes the whole step as it would have after the one that failed."""
        return _Batch(self)

    def _pack(self, queued):
        """(the bytes of the queued changes, {seq: what})."""
        data, whats = b"", {}
        for msg_type, flags, body, what in queued:
            seq, message = self._message(msg_type, flags, body)
            data += message
            whats[seq] = what
        return data, whats

    def _send_batch(self, queued):
        data, whats = self._pack(queued)
        self.sock.send(data)
        failures = {}
        while whats:   # one ACK or error per message
            data = self._recv()
            for start, _length, kind, rseq in messages(data):
                if kind == NLMSG_ERROR and rseq in whats:
                    what = whats.pop(rseq)
                    code = ack_errno(data, start)
                    if code:
                        failures[rseq] = NetlinkError(code, what)
        if failures:
            raise failures[min(failures)]

    def dump(self, msg_type, body, what):
        seq = self._send(msg_type, NLM_F_DUMP, body)
        return list(self._replies(seq, what))

    # -- links ----------------------------------------------------------------

    def link(self, name=None, index=None):
        """The link by name or index; LinkNotFound if there is none."""
        body = IFINFO.pack(0, 0, index or 0, 0, 0) + nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        if name is not None:
            body += nla_str(IFLA_IFNAME, name)
        what = f"link {name if name is not None else index}"
        try:
            # a plain GET gets one reply, or an error
            seq = self._send(RTM_GETLINK, 0, body)
            reply = next(self._replies(seq, what), None)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                raise LinkNotFound(what) from None
            raise
        if reply is None:
            raise LinkNotFound(what)
        return Link(reply)

    def find_link(self, name):
        try:
            return self.link(name)
        except LinkNotFound:
            return None

    def netnsid(self, netns_fd):
        """The id this netns gives the netns `netns_fd` (what IFLA_LINK_NETNSID of a link whose
        parent lives there says), or None when it gives none."""
        seq = self._send(RTM_GETNSID, 0, b"\0\0\0\0" + nla_u32(NETNSA_FD, netns_fd))
        for reply in self._replies(seq, "the id of a netns"):
            nsid = parse_attrs(reply, HEADER.size + 4).get(NETNSA_NSID)
            if nsid is not None and S32.unpack_from(nsid)[0] >= 0:
                return S32.unpack_from(nsid)[0]
            return None
        return None

    def links(self):
        body = IFINFO.pack(0, 0, 0, 0, 0) + nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        return [Link(m) for m in self.dump(RTM_GETLINK, body, "listing links")]

    def create_link(self, name, kind, parent_index=None, netns_fd=None, mtu=None, mac=None,
                    data=None, txqueuelen=None):
        attrs = nla_str(IFLA_IFNAME, name)
        if parent_index:
            attrs += nla_u32(IFLA_LINK, parent_index)
        if netns_fd is not None:
            attrs += nla_u32(IFLA_NET_NS_FD, netns_fd)
        if mtu:
            attrs += nla_u32(IFLA_MTU, mtu)
        if mac:
            attrs += nla_mac(IFLA_ADDRESS, mac)
        if txqueuelen is not None:
            attrs += nla_u32(IFLA_TXQLEN, txqueuelen)
        info = nla_str(IFLA_INFO_KIND, kind)
        if data:
            info += nla(IFLA_INFO_DATA, link_data(kind, data))
        attrs += nla(IFLA_LINKINFO, info)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, IFINFO.pack(0, 0, 0, 0, 0) + attrs,
                     f"creating {kind} link {name}")

    def set_link(self, index, name=None, up=None, mtu=None, mac=None, alias=None):
        attrs = b""
        if name is not None:
            attrs += nla_str(IFLA_IFNAME, name)
        if alias is not None:
            attrs += nla_str(IFLA_IFALIAS, alias)
        if mtu:
            attrs += nla_u32(IFLA_MTU, mtu)
        if mac:
            attrs += nla_mac(IFLA_ADDRESS, mac)
        flags, change = (IFF_UP if up else 0, IFF_UP) if up is not None else (0, 0)
        self.request(RTM_NEWLINK, 0, IFINFO.pack(0, 0, index, flags, change) + attrs, f"changing link {name or index}")

    def delete_link(self, index, what=None):
        """Remove a link; return once the kernel has unlisted it, not once its DELLINK returns.

        Under RTNL the kernel unlists the link, runs the unregister notifiers (its addresses,
        routes and neighbours go, its name is free) and echoes RTM_DELLINK to us (NLM_F_ECHO:
        Debian 12's 6.1 does, and 6.18). Then, RTNL released, the deleting task itself waits for
        the last references to the device (netdev_run_todo: RCU barriers, ~15-30 ms) before the
        ACK: work nothing can see and nothing can interrupt, SIGKILL included. So the request is
        sent from a thread and this returns at the echo. A process's exit waits for that thread's
        send to return. An error comes as the ACK, as before; a kernel that does not echo gives
        only the ACK, waited for as before."""
        name = what or str(index)
        body = IFINFO.pack(0, 0, index, 0, 0)
        try:
            if self.queued is not None:
                self.request(RTM_DELLINK, 0, body, f"deleting link {name}")
            else:
                self._until_unlisted(index, body, f"deleting link {name}")
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                raise LinkNotFound(name) from None
            raise

    def _until_unlisted(self, index, body, what):
        """DELLINK of `index` sent from a thread (on a descriptor of its own); wait for its echo or its
        ACK, whichever comes first, or for the thread's send to fail."""
        seq, message = self._message(RTM_DELLINK, NLM_F_ACK | NLM_F_ECHO, body)
        sending = Sending(self.sock.dup(), message)
        try:
            while True:
                select.select([self.sock, sending.ended], [], [])
                if sending.error is not None:
                    raise NetlinkError(sending.error.errno or errno.EIO, what)
                data = self._recv()   # once the send has returned, its ACK is there (queued before)
                for start, _length, kind, rseq in messages(data):
                    if rseq != seq:
                        continue
                    if kind == RTM_DELLINK and IFINFO.unpack_from(data, start + HEADER.size)[2] == index:
                        return   # the echo: unlisted
                    if kind == NLMSG_ERROR:
                        code = ack_errno(data, start)
                        if code:
                            raise NetlinkError(code, what)
                        return
        finally:
            os.close(sending.ended)

    # -- addresses -------------------------------------------------------------

    def add_address(self, index, address, prefixlen, flags=0):
        family = family_of(address)
        attrs = nla_ip(IFA_LOCAL, address) + nla_ip(IFA_ADDRESS, address) + nla_u32(IFA_FLAGS, flags)
        if family == socket.AF_INET:
            attrs += nla_ip(IFA_BROADCAST, broadcast(address, prefixlen))
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, IFADDR.pack(family, prefixlen, 0, 0, index) + attrs,
                     f"adding address {address}/{prefixlen}")

    def delete_address(self, index, address, prefixlen):
        """Remove an address; one already gone is no error."""
        attrs = nla_ip(IFA_LOCAL, address) + nla_ip(IFA_ADDRESS, address)
        try:
            self.request(RTM_DELADDR, 0, IFADDR.pack(family_of(address), prefixlen, 0, 0, index) + attrs,
                         f"removing address {address}/{prefixlen}")
        except NetlinkError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise

    def global_addresses(self):
        """[address] of scope global on every link: the namespace's own addresses (no loopback, no link-local)."""
        out = []
        for m in self.dump(RTM_GETADDR, IFADDR.pack(0, 0, 0, 0, 0), "listing addresses"):
            _family, _plen, _flags, scope, _index = IFADDR.unpack_from(m, HEADER.size)
            address = parse_address(m)[1]
            if scope == RT_SCOPE_UNIVERSE and address is not None:
                out.append(address)
        return out

    def addresses(self, index):
        """[(address, prefixlen, flags)] of a link."""
        out = []
        for m in self.dump(RTM_GETADDR, IFADDR.pack(0, 0, 0, 0, 0), "listing addresses"):
            link, address, prefixlen, flags = parse_address(m)
            if link == index:
                out.append((address, prefixlen, flags))
        return out

    # -- routes ----------------------------------------------------------------

    def add_route(self, dst, index, gw=None, priority=None, table=None, scope=None, mtu=None, advmss=None,
                  exclusive=False, src=None, onlink=False):
        """Add a route; dst is 'a.b.c.d/n' or 'x::/n'. exclusive: EEXIST if any route to dst exists.
        src: the source address the node uses on it (RTA_PREFSRC). onlink: the gateway is
        reached on the link whatever its addresses (a link-local next hop on a link without one)."""
        address, _, plen = dst.partition("/")
        family = family_of(address)
        header = RTMSG.pack(family, int(plen), 0, 0, table if table is not None and table < 256 else RT_TABLE_MAIN,
                            RTPROT_BOOT, scope if scope is not None else (RT_SCOPE_UNIVERSE if gw else RT_SCOPE_LINK),
                            RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
        attrs = nla_u32(RTA_OIF, index)
        if int(plen):
            attrs += nla_ip(RTA_DST, address)
        if gw:
            attrs += nla_ip(RTA_GATEWAY, gw)
        if src:
            attrs += nla_ip(RTA_PREFSRC, src)
        if priority is not None:
            attrs += nla_u32(RTA_PRIORITY, priority)
        if table is not None:
            attrs += nla_u32(RTA_TABLE, table)
        metrics = b""
        if mtu:
            metrics += nla_u32(RTAX_MTU, mtu)
        if advmss:
            metrics += nla_u32(RTAX_ADVMSS, advmss)
        if metrics:
            attrs += nla(RTA_METRICS, metrics)
        # APPEND, as the reference's RouteAddEcmp: a secondary network may add a default
        # route next to the primary one; an identical route is still EEXIST
        self.request(RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_EXCL if exclusive else NLM_F_APPEND), header + attrs,
                     f"adding route {dst} via {gw or 'link'}")

    def delete_route(self, dst, index, table=RT_TABLE_MAIN):
        """Remove the route to dst out of link `index` (main table by default); one already gone is no error."""
        address, _, plen = dst.partition("/")
        # scope NOWHERE matches any scope: IPv4 would otherwise match it exactly
        header = RTMSG.pack(family_of(address), int(plen), 0, 0, table if table < 256 else 0, 0,
                            RT_SCOPE_NOWHERE, 0, 0)
        attrs = nla_u32(RTA_OIF, index) + (nla_ip(RTA_DST, address) if int(plen) else b"")
        if table >= 256:
            attrs += nla_u32(RTA_TABLE, table)
        try:
            self.request(RTM_DELROUTE, 0, header + attrs, f"removing route {dst}")
        except NetlinkError as e:
            if e.errno not in (errno.ESRCH, errno.ENODEV, errno.ENOENT):
                raise

    def routes(self, family=None):
        """[{dst, gw, oif, priority, table, scope}] of every table, dst as 'addr/len'."""
        return self.dump_families(RTM_GETROUTE, RTMSG, parse_route, family, "listing routes")

    # -- FIB rules -------------------------------------------------------------

    def add_rule(self, src, table, priority):
        """`from <src> lookup <table>` at `priority`; src is 'a.b.c.d/n' or 'x::/n'. EEXIST if the same rule exists."""
        address, _, plen = src.partition("/")
        family = family_of(address)
        header = RULEMSG.pack(family, 0, int(plen), 0, table if table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0)
        attrs = nla_ip(FRA_SRC, address) + nla_u32(FRA_PRIORITY, priority) + nla_u32(FRA_TABLE, table)
        self.request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, header + attrs, f"adding rule from {src} lookup {table}")

    def delete_rule(self, rule):
        """Remove a rule as rules() gives it; one already gone is no error."""
        src_len = int(rule["src"].partition("/")[2]) if rule["src"] else 0
        header = RULEMSG.pack(rule["family"], 0, src_len, 0, rule["table"] if rule["table"] < 256 else 0, 0, 0,
                              rule["action"], 0)
        attrs = nla_u32(FRA_TABLE, rule["table"])
        if rule["src"]:
            attrs += nla_ip(FRA_SRC, rule["src"].partition("/")[0])
        if rule["priority"] is not None:
            attrs += nla_u32(FRA_PRIORITY, rule["priority"])
        try:
            self.request(RTM_DELRULE, 0, header + attrs, f"removing rule from {rule['src']} lookup {rule['table']}")
        except NetlinkError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH):
                raise

    def rules(self, family=None):
        """[{family, src, dst, table, priority, action}] of both families (or one)."""
        return self.dump_families(RTM_GETRULE, RULEMSG, parse_rule, family, "listing rules")

    def dump_families(self, kind, header, parse, family, what):
        """A dump of routes or rules (their headers: the family, then 8 fields), of one family or both."""
        out = []
        for fam in ([family] if family else [socket.AF_INET, socket.AF_INET6]):
            out.extend(parse(m) for m in self.dump(kind, header.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0), what))
        return out

    # -- neighbours ------------------------------------------------------------

    def add_neighbour(self, index, address, mac):
        """A permanent neighbour entry: `address` is at `mac` on link `index`, no ARP or NDP asked."""
        header = NDMSG.pack(family_of(address), index, NUD_PERMANENT, 0, 0)
        attrs = nla_ip(NDA_DST, address) + nla_mac(NDA_LLADDR, mac)
        self.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL, header + attrs, f"adding neighbour {address}")

    def neighbours(self, index):
        """{address: mac} of the permanent neighbour entries of link `index`."""
        out = {}
        for fam in (socket.AF_INET, socket.AF_INET6):
            for m in self.dump(RTM_GETNEIGH, NDMSG.pack(fam, 0, 0, 0, 0), "listing neighbours"):
                family, link, state, _flags, _type = NDMSG.unpack_from(m, HEADER.size)
                attrs = parse_attrs(m, HEADER.size + NDMSG.size)
                if link == index and state & NUD_PERMANENT and NDA_DST in attrs and NDA_LLADDR in attrs:
                    out[ip_text(attrs[NDA_DST])] = mac_text(attrs[NDA_LLADDR])
        return out

    def default_route_link(self):
        """Index of the interface of the first default route (IPv4, then IPv6), or None."""
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in self.routes(fam):
                if r["dst"].endswith("/0") and r["table"] == RT_TABLE_MAIN and r["oif"]:
                    return r["oif"]
        return None


_sending = []   # a lock per Sending whose send may not have returned: wait_sent()


class Sending:
    """`message` sent on `sock` (closed after it) by a thread of its own, so that the caller can go
    on while the kernel works in the send. `ended` (a pipe's end, the caller's to close) turns
    readable once the send has returned; `error` is its OSError, if any."""

    def __init__(self, sock, message):
        self.error = None
        self.ended, done = os.pipe2(os.O_CLOEXEC)
        self.sent = _thread.allocate_lock()
        self.sent.acquire()
        _sending.append(self.sent)
        try:
            _thread.start_new_thread(self._send, (sock, message, done))
        except BaseException:
            self._send(sock, message, done)   # no thread to be had: sent here, waited for

    def _send(self, sock, message, done):
        try:
            sock.send(message)
        except OSError as e:
            self.error = e
        finally:
            sock.close()
            try:
                os.write(done, b"!")   # a byte, not EOF: a child forked meanwhile may hold `done` too
            except OSError:
                pass   # EPIPE: the caller had its answer and stopped waiting
            os.close(done)
            self.sent.release()


def wait_sent():
    """Wait until the send of every Sending has returned (the kernel done with each link deleted):
    a process that goes on and forks (underlayd after its warm-up, cni/agent/preload.py) leaves no
    thread and no descriptor of theirs to its children. A process that exits needs not: its exit
    waits for them."""
    while _sending:
        _sending.pop().acquire()


class _Batch:
    def __init__(self, nl):
        self.nl = nl

    def __enter__(self):
        self.nl.queued = []
        return self.nl

    def __exit__(self, exc_type, exc, tb):
        queued, self.nl.queued = self.nl.queued, None
        if exc_type is None and queued:
            self.nl._send_batch(queued)
        return False


def broadcast(address, prefixlen):
    value = struct.unpack("!I", socket.inet_aton(address))[0]
    host_bits = (1 << (32 - prefixlen)) - 1
    return socket.inet_ntoa(struct.pack("!I", value | host_bits))
