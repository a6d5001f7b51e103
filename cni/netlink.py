"""Netlink for underlay: the only module that uses pyroute2.

pyroute2 encodes and decodes the rtnetlink messages; the socket is a plain
NETLINK_ROUTE socket. `import pyroute2` pulls in every subsystem (~120 ms on
each exec), so its package __init__ is bypassed: a bare package module takes
its place and only the message classes are imported (~15 ms).

Kernel errors become NetlinkError with the errno; a missing link is
LinkNotFound, so "already gone" is easy to accept where the spec wants it.
"""

import errno
import os
import socket
import struct
import sys
import types


def _import_message_classes():
    if "pyroute2" not in sys.modules:
        import importlib.util
        spec = importlib.util.find_spec("pyroute2")
        package = types.ModuleType("pyroute2")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        sys.modules["pyroute2"] = package
    from pyroute2.netlink import nla
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg
    return nla, ifinfmsg, ifaddrmsg, rtmsg


nla, ifinfmsg, ifaddrmsg, rtmsg = _import_message_classes()


class macvlan_data(nla):
    """IFLA_INFO_DATA of macvlan, with the attributes pyroute2 lacks (bcqueuelen)."""
    prefix = "IFLA_"
    nla_map = (
        ("IFLA_MACVLAN_UNSPEC", "none"),
        ("IFLA_MACVLAN_MODE", "uint32"),
        ("IFLA_MACVLAN_FLAGS", "uint16"),
        ("IFLA_MACVLAN_MACADDR_MODE", "uint32"),
        ("IFLA_MACVLAN_MACADDR", "l2addr"),
        ("IFLA_MACVLAN_MACADDR_DATA", "hex"),
        ("IFLA_MACVLAN_MACADDR_COUNT", "uint32"),
        ("IFLA_MACVLAN_BC_QUEUE_LEN", "uint32"),
        ("IFLA_MACVLAN_BC_QUEUE_LEN_USED", "uint32"),
        ("IFLA_MACVLAN_BC_CUTOFF", "int32"),
    )


class ipvlan_data(nla):
    """IFLA_INFO_DATA of ipvlan, with IFLA_IPVLAN_FLAGS (bridge/private/vepa)."""
    prefix = "IFLA_"
    nla_map = (
        ("IFLA_IPVLAN_UNSPEC", "none"),
        ("IFLA_IPVLAN_MODE", "uint16"),
        ("IFLA_IPVLAN_FLAGS", "uint16"),
    )


class vlan_data(nla):
    prefix = "IFLA_"
    nla_map = (
        ("IFLA_VLAN_UNSPEC", "none"),
        ("IFLA_VLAN_ID", "uint16"),
    )


ifinfmsg.ifinfo.data_map.update(macvlan=macvlan_data, ipvlan=ipvlan_data, vlan=vlan_data)

MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}
IPVLAN_FLAGS = {"bridge": 0, "private": 1, "vepa": 2}

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x800, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFF_UP = 0x1
IFA_F_NODAD, IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x2, 0x4, 0x8, 0x40
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RTN_UNICAST = 1
RTAX_MTU, RTAX_ADVMSS = 2, 8


class NetlinkError(Exception):
    def __init__(self, code, what):
        super().__init__(f"{what}: {os.strerror(code)}")
        self.errno = code
        self.what = what


class LinkNotFound(NetlinkError):
    def __init__(self, what):
        super().__init__(errno.ENODEV, what)


class Link:
    """What we read back about a link."""

    def __init__(self, msg):
        self.index = msg["index"]
        self.flags = msg["flags"]
        self.type = msg["ifi_type"]   # ARPHRD_*
        self.name = msg.get_attr("IFLA_IFNAME")
        self.mtu = msg.get_attr("IFLA_MTU")
        self.mac = msg.get_attr("IFLA_ADDRESS")
        self.parent_index = msg.get_attr("IFLA_LINK")
        self.parent_netnsid = msg.get_attr("IFLA_LINK_NETNSID")
        info = msg.get_attr("IFLA_LINKINFO")
        self.kind = info.get_attr("IFLA_INFO_KIND") if info else None
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        self.data = dict(data["attrs"]) if data is not None and hasattr(data, "get_attr") else {}

    @property
    def up(self):
        return bool(self.flags & IFF_UP)


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class Netlink:
    """A NETLINK_ROUTE socket; it stays in the netns it was opened in."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport ------------------------------------------------------------

    def _send(self, msg, msg_type, flags):
        self.seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        return self.seq

    def _replies(self, seq, cls, what):
        """Yield decoded replies to `seq` until ACK or DONE; raise on a kernel error."""
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset < len(data):
                length, kind, _flags, rseq, _pid = struct.unpack_from("=IHHII", data, offset)
                chunk = data[offset:offset + length]
                offset += length
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", chunk, 16)[0]
                    if code:
                        raise NetlinkError(code, what)
                    return
                if kind == NLMSG_DONE:
                    return
                msg = cls(chunk)
                msg.decode()
                yield msg

    def request(self, msg, msg_type, flags, what):
        """Send a change; wait for its ACK."""
        seq = self._send(msg, msg_type, flags | NLM_F_ACK)
        for _ in self._replies(seq, type(msg), what):
            pass

    def dump(self, msg, msg_type, what):
        seq = self._send(msg, msg_type, NLM_F_DUMP)
        return list(self._replies(seq, type(msg), what))

    # -- links ----------------------------------------------------------------

    def link(self, name=None, index=None):
        """The link by name or index; LinkNotFound if there is none."""
        msg = ifinfmsg()
        msg["index"] = index or 0
        if name is not None:
            msg["attrs"] = [("IFLA_IFNAME", name)]
        what = f"link {name if name is not None else index}"
        try:
            # a plain GET gets one reply; with ACK requested, an ACK follows it
            seq = self._send(msg, RTM_GETLINK, NLM_F_ACK)
            replies = list(self._replies(seq, ifinfmsg, what))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                raise LinkNotFound(what) from None
            raise
        return Link(replies[0])

    def find_link(self, name):
        try:
            return self.link(name)
        except LinkNotFound:
            return None

    def links(self):
        return [Link(m) for m in self.dump(ifinfmsg(), RTM_GETLINK, "listing links")]

    def create_link(self, name, kind, parent_index=None, netns_fd=None, mtu=None, mac=None,
                    data=None, txqueuelen=None):
        msg = ifinfmsg()
        attrs = [("IFLA_IFNAME", name)]
        if parent_index:
            attrs.append(("IFLA_LINK", parent_index))
        if netns_fd is not None:
            attrs.append(("IFLA_NET_NS_FD", netns_fd))
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        if mac:
            attrs.append(("IFLA_ADDRESS", mac))
        if txqueuelen is not None:
            attrs.append(("IFLA_TXQLEN", txqueuelen))
        info = [("IFLA_INFO_KIND", kind)]
        if data:
            info.append(("IFLA_INFO_DATA", {"attrs": list(data.items())}))
        attrs.append(("IFLA_LINKINFO", {"attrs": info}))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, f"creating {kind} link {name}")

    def set_link(self, index, name=None, up=None, mtu=None, mac=None):
        msg = ifinfmsg()
        msg["index"] = index
        attrs = []
        if name is not None:
            attrs.append(("IFLA_IFNAME", name))
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        if mac:
            attrs.append(("IFLA_ADDRESS", mac))
        msg["attrs"] = attrs
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        self.request(msg, RTM_NEWLINK, 0, f"changing link {name or index}")

    def delete_link(self, index, what=None):
        msg = ifinfmsg()
        msg["index"] = index
        try:
            self.request(msg, RTM_DELLINK, 0, f"deleting link {what or index}")
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                raise LinkNotFound(what or str(index)) from None
            raise

    # -- addresses -------------------------------------------------------------

    def add_address(self, index, address, prefixlen, flags=0):
        msg = ifaddrmsg()
        msg["family"] = family_of(address)
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address), ("IFA_FLAGS", flags)]
        if msg["family"] == socket.AF_INET:
            msg["attrs"].append(("IFA_BROADCAST", broadcast(address, prefixlen)))
        self.request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, f"adding address {address}/{prefixlen}")

    def delete_address(self, index, address, prefixlen):
        """Remove an address; one already gone is no error."""
        msg = ifaddrmsg()
        msg["family"] = family_of(address)
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        try:
            self.request(msg, RTM_DELADDR, 0, f"removing address {address}/{prefixlen}")
        except NetlinkError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise

    def addresses(self, index):
        """[(address, prefixlen, flags)] of a link."""
        out = []
        for m in self.dump(ifaddrmsg(), RTM_GETADDR, "listing addresses"):
            if m["index"] != index:
                continue
            address = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
            flags = m.get_attr("IFA_FLAGS")
            out.append((address, m["prefixlen"], m["flags"] if flags is None else flags))
        return out

    # -- routes ----------------------------------------------------------------

    def add_route(self, dst, index, gw=None, priority=None, table=None, scope=None, mtu=None, advmss=None,
                  exclusive=False, src=None):
        """Add a route; dst is 'a.b.c.d/n' or 'x::/n'. exclusive: EEXIST if any route to dst exists."""
        address, _, plen = dst.partition("/")
        msg = rtmsg()
        msg["family"] = family_of(address)
        msg["dst_len"] = int(plen)
        msg["table"] = table if table is not None and table < 256 else RT_TABLE_MAIN
        msg["proto"] = RTPROT_BOOT
        msg["type"] = RTN_UNICAST
        msg["scope"] = scope if scope is not None else (RT_SCOPE_UNIVERSE if gw else RT_SCOPE_LINK)
        attrs = [("RTA_OIF", index)]
        if int(plen):
            attrs.append(("RTA_DST", address))
        if gw:
            attrs.append(("RTA_GATEWAY", gw))
        if src:
            attrs.append(("RTA_PREFSRC", src))
        if priority is not None:
            attrs.append(("RTA_PRIORITY", priority))
        if table is not None:
            attrs.append(("RTA_TABLE", table))
        metrics = []
        if mtu:
            metrics.append(("RTAX_MTU", mtu))
        if advmss:
            metrics.append(("RTAX_ADVMSS", advmss))
        if metrics:
            attrs.append(("RTA_METRICS", {"attrs": metrics}))
        msg["attrs"] = attrs
        # APPEND, as the reference's RouteAddEcmp: a secondary network may add a default
        # route next to the primary one; an identical route is still EEXIST
        self.request(msg, RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_EXCL if exclusive else NLM_F_APPEND),
                     f"adding route {dst} via {gw or 'link'}")

    def delete_route(self, dst, index):
        """Remove the main-table route to dst out of link `index`; one already gone is no error."""
        address, _, plen = dst.partition("/")
        msg = rtmsg()
        msg["family"] = family_of(address)
        msg["dst_len"] = int(plen)
        msg["table"] = RT_TABLE_MAIN
        msg["scope"] = RT_SCOPE_NOWHERE  # any scope: IPv4 matches it exactly otherwise
        msg["attrs"] = [("RTA_OIF", index)] + ([("RTA_DST", address)] if int(plen) else [])
        try:
            self.request(msg, RTM_DELROUTE, 0, f"removing route {dst}")
        except NetlinkError as e:
            if e.errno not in (errno.ESRCH, errno.ENODEV, errno.ENOENT):
                raise

    def routes(self, family=None):
        """[{dst, gw, oif, priority, table, scope}] of every table, dst as 'addr/len'."""
        out = []
        for fam in ([family] if family else [socket.AF_INET, socket.AF_INET6]):
            msg = rtmsg()
            msg["family"] = fam
            for m in self.dump(msg, RTM_GETROUTE, "listing routes"):
                dst = m.get_attr("RTA_DST")
                if dst is None:
                    dst = "0.0.0.0" if fam == socket.AF_INET else "::"
                out.append({
                    "dst": f"{dst}/{m['dst_len']}",
                    "gw": m.get_attr("RTA_GATEWAY"),
                    "oif": m.get_attr("RTA_OIF"),
                    "priority": m.get_attr("RTA_PRIORITY"),
                    "table": m.get_attr("RTA_TABLE") or m["table"],
                    "scope": m["scope"],
                })
        return out

    def default_route_link(self):
        """Index of the interface of the first default route (IPv4, then IPv6), or None."""
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in self.routes(fam):
                if r["dst"].endswith("/0") and r["table"] == RT_TABLE_MAIN and r["oif"]:
                    return r["oif"]
        return None


def broadcast(address, prefixlen):
    value = struct.unpack("!I", socket.inet_aton(address))[0]
    host_bits = (1 << (32 - prefixlen)) - 1
    return socket.inet_ntoa(struct.pack("!I", value | host_bits))
