"""cni/net/netlink.py's own encoding and parsing against the real kernel.

The parsers read only the attributes the plugins use; here they are checked,
field by field, against pyroute2's full decode of the very bytes the kernel
sent (with and without the statistics IFLA_EXT_MASK leaves out). The encoders
are checked by what the kernel (and `ip -d -j`) then shows."""

import errno
import json
import os
import socket

import pytest

from cni.net import netlink, netns
from tests import netns as ns


@pytest.fixture(scope="module")
def pyroute2_classes():
    from pyroute2.netlink import nla
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    class macvlan_data(nla):
        prefix = "IFLA_"
        nla_map = (("IFLA_MACVLAN_UNSPEC", "none"), ("IFLA_MACVLAN_MODE", "uint32"),
                   ("IFLA_MACVLAN_FLAGS", "uint16"), ("IFLA_MACVLAN_MACADDR_MODE", "uint32"),
                   ("IFLA_MACVLAN_MACADDR", "l2addr"), ("IFLA_MACVLAN_MACADDR_DATA", "hex"),
                   ("IFLA_MACVLAN_MACADDR_COUNT", "uint32"), ("IFLA_MACVLAN_BC_QUEUE_LEN", "uint32"),
                   ("IFLA_MACVLAN_BC_QUEUE_LEN_USED", "uint32"), ("IFLA_MACVLAN_BC_CUTOFF", "int32"))

    saved = ifinfmsg.ifinfo.data_map.get("macvlan")
    ifinfmsg.ifinfo.data_map["macvlan"] = macvlan_data
    try:
        yield ifinfmsg, ifaddrmsg, rtmsg
    finally:
        if saved is None:
            ifinfmsg.ifinfo.data_map.pop("macvlan", None)
        else:
            ifinfmsg.ifinfo.data_map["macvlan"] = saved


@pytest.fixture
def node(host_ns):
    """The host netns with a veth pair, a macvlan child, addresses and routes of both families."""
    ns.add_parent(host_ns, "ulnv0", "ulnv1")
    for argv in (("ip", "link", "add", "link", "ulnv0", "name", "ulnmv", "mtu", "1400", "type", "macvlan",
                  "mode", "private", "bcqueuelen", "333"),
                 ("ip", "link", "set", "ulnmv", "up"),
                 ("ip", "addr", "add", "10.77.1.5/24", "dev", "ulnmv"),
                 ("ip", "addr", "add", "fd77::5/64", "dev", "ulnmv", "nodad"),
                 ("ip", "route", "add", "default", "via", "10.77.1.1", "dev", "ulnmv", "metric", "7"),
                 ("ip", "route", "add", "10.78.0.0/16", "dev", "ulnmv", "table", "300", "mtu", "1300"),
                 ("ip", "-6", "route", "add", "fd78::/48", "via", "fd77::1", "dev", "ulnmv")):
        ns.sh(*argv, ns=host_ns)
    return host_ns


def socket_in(name):
    fd = netns.open_netns(ns.netns_path(name))
    try:
        with netns.entered(fd):
            return netlink.Netlink()
    finally:
        os.close(fd)


def full(cls, message):
    msg = cls(bytes(message))
    msg.decode()
    return msg


def link_body(ext_mask):
    body = netlink.IFINFO.pack(0, 0, 0, 0, 0)
    return body + netlink.nla_u32(netlink.IFLA_EXT_MASK, ext_mask) if ext_mask is not None else body


@pytest.mark.parametrize("ext_mask", [None, netlink.RTEXT_FILTER_SKIP_STATS])
def test_link_parser_agrees_with_pyroute2(node, pyroute2_classes, ext_mask):
    ifinfmsg = pyroute2_classes[0]
    with socket_in(node) as nl:
        messages = nl.dump(netlink.RTM_GETLINK, link_body(ext_mask), "listing links")
    assert len(messages) == 4   # lo, the veth pair, the macvlan
    kinds = set()
    for message in messages:
        ours, theirs = netlink.Link(message), full(ifinfmsg, message)
        info = theirs.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        assert (ours.index, ours.flags, ours.name, ours.mtu, ours.mac, ours.parent_index,
                ours.parent_netnsid, ours.kind) == \
               (theirs["index"], theirs["flags"], theirs.get_attr("IFLA_IFNAME"), theirs.get_attr("IFLA_MTU"),
                theirs.get_attr("IFLA_ADDRESS"), theirs.get_attr("IFLA_LINK"), theirs.get_attr("IFLA_LINK_NETNSID"),
                kind)
        if kind in netlink.LINK_DATA:
            expected = {k: v for k, v in data["attrs"] if k in netlink.LINK_DATA[kind]}
            assert ours.data == expected and expected
        else:
            assert ours.data == {}
        kinds.add(kind)
    assert kinds == {None, "veth", "macvlan"}
    child = next(netlink.Link(m) for m in messages if netlink.Link(m).name == "ulnmv")
    assert child.data["IFLA_MACVLAN_MODE"] == netlink.MACVLAN_MODES["private"]
    assert child.data["IFLA_MACVLAN_BC_QUEUE_LEN"] == 333 and child.mtu == 1400


def test_stats_are_left_out_of_link_replies(node):
    with socket_in(node) as nl:
        lean = nl.dump(netlink.RTM_GETLINK, link_body(netlink.RTEXT_FILTER_SKIP_STATS), "listing links")
        whole = nl.dump(netlink.RTM_GETLINK, link_body(None), "listing links")
    assert sum(len(m) for m in lean) < sum(len(m) for m in whole)


def test_address_parser_agrees_with_pyroute2(node, pyroute2_classes):
    ifaddrmsg = pyroute2_classes[1]
    with socket_in(node) as nl:
        messages = nl.dump(netlink.RTM_GETADDR, netlink.IFADDR.pack(0, 0, 0, 0, 0), "listing addresses")
        index = nl.link("ulnmv").index
        listed = nl.addresses(index)
    assert len(messages) >= 3
    for message in messages:
        theirs = full(ifaddrmsg, message)
        flags = theirs.get_attr("IFA_FLAGS")
        assert netlink.parse_address(message) == (
            theirs["index"], theirs.get_attr("IFA_LOCAL") or theirs.get_attr("IFA_ADDRESS"), theirs["prefixlen"],
            theirs["flags"] if flags is None else flags)
    ours = {(a, p) for a, p, _ in listed}
    assert {("10.77.1.5", 24), ("fd77::5", 64)} <= ours
    assert all(flags & netlink.IFA_F_NODAD for a, _, flags in listed if a == "fd77::5")


def test_route_parser_agrees_with_pyroute2(node, pyroute2_classes):
    rtmsg = pyroute2_classes[2]
    seen = []
    with socket_in(node) as nl:
        for family in (socket.AF_INET, socket.AF_INET6):
            for message in nl.dump(netlink.RTM_GETROUTE, netlink.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0),
                                   "listing routes"):
                theirs = full(rtmsg, message)
                dst = theirs.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                route = netlink.parse_route(message)
                assert route == {"dst": f"{dst}/{theirs['dst_len']}", "gw": theirs.get_attr("RTA_GATEWAY"),
                                 "oif": theirs.get_attr("RTA_OIF"), "priority": theirs.get_attr("RTA_PRIORITY"),
                                 "table": theirs.get_attr("RTA_TABLE") or theirs["table"],
                                 "scope": theirs["scope"], "src": theirs.get_attr("RTA_PREFSRC"),
                                 "onlink": bool(theirs["flags"] & netlink.RTNH_F_ONLINK)}
                seen.append(route)
        index = nl.link("ulnmv").index
        assert nl.default_route_link() == index
    dsts = {(r["dst"], r["gw"], r["table"]) for r in seen}
    assert {("0.0.0.0/0", "10.77.1.1", 254), ("10.78.0.0/16", None, 300), ("fd78::/48", "fd77::1", 254)} <= dsts


def test_encoded_requests_make_what_they_say(node):
    """Links (veth with its peer, macvlan with data, MAC, MTU, txqueuelen), rename and up,
    addresses and routes with metrics, as `ip -d -j` then shows them."""
    with socket_in(node) as nl:
        nl.create_link("ulnp0", "veth", data={"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", "ulnp1")]}})
        parent = nl.link("ulnp0")
        nl.create_link("ulntmp", "macvlan", parent_index=parent.index, mtu=1280, mac="02:12:34:56:78:9a",
                       txqueuelen=77, data={"IFLA_MACVLAN_MODE": netlink.MACVLAN_MODES["vepa"],
                                            "IFLA_MACVLAN_BC_QUEUE_LEN": 555})
        child = nl.link("ulntmp")
        nl.set_link(child.index, name="ulnmv2")
        nl.set_link(child.index, up=True)
        nl.add_address(child.index, "10.79.0.9", 24)
        nl.add_address(child.index, "fd79::9", 64, netlink.IFA_F_NODAD)
        nl.add_route("10.80.0.0/16", child.index, gw="10.79.0.1", priority=5, mtu=1200, advmss=1100)
        nl.add_route("fd80::/32", child.index)
        with pytest.raises(netlink.NetlinkError) as e:
            nl.add_route("10.80.0.0/16", child.index, gw="10.79.0.1", priority=5, exclusive=True)
        assert e.value.errno == 17
        with pytest.raises(netlink.LinkNotFound):
            nl.link("ulnmissing")
        assert nl.find_link("ulntmp") is None
        back = nl.link(index=child.index)
    assert (back.name, back.mtu, back.mac, back.parent_index, back.kind, back.up) == \
        ("ulnmv2", 1280, "02:12:34:56:78:9a", parent.index, "macvlan", True)
    link = ns.link_json(node, "ulnmv2")
    assert link["linkinfo"]["info_data"]["mode"] == "vepa"
    assert link["linkinfo"]["info_data"].get("bcqueuelen") == 555
    assert link["txqlen"] == 77 and "ulnp1" in ns.links(node)
    addrs = json.loads(ns.sh("ip", "-j", "addr", "show", "dev", "ulnmv2", ns=node).stdout)[0]["addr_info"]
    v4 = next(a for a in addrs if a["local"] == "10.79.0.9")
    assert v4["prefixlen"] == 24 and v4["broadcast"] == "10.79.0.255"
    assert any(a["local"] == "fd79::9" and a["prefixlen"] == 64 for a in addrs)
    routes = json.loads(ns.sh("ip", "-j", "-d", "route", "show", "10.80.0.0/16", ns=node).stdout)
    assert routes[0]["gateway"] == "10.79.0.1" and routes[0]["metric"] == 5
    assert {k: v for m in routes[0]["metrics"] for k, v in m.items()} == {"mtu": 1200, "advmss": 1100}
    assert json.loads(ns.sh("ip", "-j", "-6", "route", "show", "fd80::/32", ns=node).stdout)[0]["dev"] == "ulnmv2"
    with socket_in(node) as nl:
        nl.delete_link(back.index)
        with pytest.raises(netlink.LinkNotFound):
            nl.delete_link(back.index)


def test_batched_changes_take_one_send_and_report_the_first_failure_in_order(node):
    """nl.batched(): the block's changes in one send, one ACK each; the kernel goes on past a
    failed one and the first failure, in the order requested, is raised."""
    with socket_in(node) as nl:
        nl.create_link("ulnb0", "veth", data={"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", "ulnb1")]}})
        link = nl.link("ulnb0")
        sends = []
        sock = nl.sock
        nl.sock = type("Counted", (), {"send": lambda self, data: (sends.append(data), sock.send(data))[1],
                                        "recv": lambda self, *a: sock.recv(*a)})()
        with nl.batched():
            nl.add_address(link.index, "10.81.0.9", 24)
            nl.set_link(link.index, up=True)
            nl.add_route("10.82.0.0/16", link.index, gw="10.81.0.1")
        assert len(sends) == 1
        with pytest.raises(netlink.NetlinkError) as e:
            with nl.batched():
                nl.add_address(link.index, "10.81.0.9", 24)        # EEXIST: the first failure
                nl.add_address(link.index, "10.83.0.9", 24)        # applied all the same
                nl.add_route("10.82.0.0/16", link.index, gw="10.81.0.1", exclusive=True)   # EEXIST too
        assert e.value.errno == 17 and "adding address 10.81.0.9/24" in str(e.value), e.value
        assert len(sends) == 2
        with nl.batched():
            pass   # nothing requested: nothing sent
        assert len(sends) == 2
        nl.sock = sock
        assert {a for a, _, _ in nl.addresses(link.index)} == {"10.81.0.9", "10.83.0.9"}
        assert nl.link(index=link.index).up
        assert nl.link(index=link.index).name == "ulnb0"   # the socket still answers in step
        nl.delete_link(link.index)


def test_veth_into_another_netns_rules_neighbours_aliases_and_onlink_routes(node, pod_ns):
    """What cluster-access asks of the kernel, as `ip -j` then shows it, and read back by our parsers."""
    pod = pod_ns()
    pod_fd = netns.open_netns(ns.netns_path(pod))
    try:
        with socket_in(node) as nl:
            nl.create_link("ulnca", "veth", data={"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", "veth0"),
                                                                               ("IFLA_NET_NS_FD", pod_fd)]}})
            end = nl.link("ulnca")
            nl.set_link(end.index, alias="underlay cluster-access n c eth0", up=True)
            assert nl.link("ulnca").alias == "underlay cluster-access n c eth0"
            nl.add_neighbour(end.index, "10.81.0.7", "02:00:00:00:00:07")
            nl.add_neighbour(end.index, "fd81::7", "02:00:00:00:00:07")
            assert nl.neighbours(end.index) == {"10.81.0.7": "02:00:00:00:00:07", "fd81::7": "02:00:00:00:00:07"}
            nl.add_route("10.82.0.0/16", end.index, gw="169.254.1.1", onlink=True, src="10.77.1.5")
            nl.add_route("fd82::/64", end.index, gw="fe80::1", table=0x55000001)
            nl.add_rule("10.81.0.7/32", 0x55000001, 1000)
            nl.add_rule("fd81::7/128", 0x55000001, 1000)
            with pytest.raises(netlink.NetlinkError) as e:
                nl.add_rule("fd81::7/128", 0x55000001, 1000)
            assert e.value.errno == 17
            routes = {r["dst"]: r for r in nl.routes() if r["oif"] == end.index}
            rules = [r for r in nl.rules() if r["table"] == 0x55000001]
        assert nsutil_links(pod) == ["lo", "veth0"]
        assert routes["10.82.0.0/16"]["onlink"] and routes["10.82.0.0/16"]["src"] == "10.77.1.5"
        assert routes["fd82::/64"]["table"] == 0x55000001 and routes["fd82::/64"]["gw"] == "fe80::1"
        shown = json.loads(ns.sh("ip", "-j", "rule", "show", ns=node).stdout) + \
            json.loads(ns.sh("ip", "-6", "-j", "rule", "show", ns=node).stdout)
        assert sorted((r["src"], r["priority"]) for r in shown if r.get("table") == str(0x55000001)) == \
            [("10.81.0.7", 1000), ("fd81::7", 1000)]
        assert sorted((r["src"], r["priority"]) for r in rules) == [("10.81.0.7/32", 1000), ("fd81::7/128", 1000)]
        with socket_in(node) as nl:
            for rule in rules:
                nl.delete_rule(rule)
                nl.delete_rule(rule)   # already gone: no error
            nl.delete_route("fd82::/64", end.index, table=0x55000001)
            assert not [r for r in nl.rules() if r["table"] == 0x55000001]
            assert not [r for r in nl.routes() if r["table"] == 0x55000001]
            nl.delete_link(end.index)
        assert nsutil_links(pod) == ["lo"]
    finally:
        os.close(pod_fd)


def nsutil_links(name):
    return sorted(ns.links(name))


def test_netnsid_names_the_netns_a_links_peer_lives_in(node, pod_ns):
    """The id a pod netns gives the node's netns is what IFLA_LINK_NETNSID of the pod's end of a veth
    says (the DHCP client finds an ipvlan child's parent so); a netns it gives no id to is None."""
    pod, stranger = pod_ns(), pod_ns()
    fds = [netns.open_netns(ns.netns_path(name)) for name in (node, stranger)]
    try:
        ns.sh("ip", "link", "add", "ulnid", "type", "veth", "peer", "name", "eth0", "netns", pod, ns=node)
        with socket_in(pod) as nl:
            end = nl.link("eth0")
            assert end.parent_netnsid is not None
            assert nl.netnsid(fds[0]) == end.parent_netnsid
            assert nl.netnsid(fds[1]) is None
    finally:
        for fd in fds:
            os.close(fd)


def test_a_dump_of_many_datagrams_is_read_whole(node, tmp_path):
    """Replies are read 64 KiB at a time: a dump the kernel splits in many datagrams (each at most
    ~32 KiB) comes back whole."""
    batch = tmp_path / "routes"
    batch.write_text("".join(f"route add 10.79.{i // 256}.{i % 256}/32 dev ulnmv table 301\n" for i in range(2000)))
    ns.sh("ip", "-batch", str(batch), ns=node)
    with socket_in(node) as nl:
        routes = [r for r in nl.routes(socket.AF_INET) if r["table"] == 301]
    assert len(routes) == 2000


def test_a_datagram_larger_than_the_buffer_is_an_error_never_parsed_cut_short():
    nl = netlink.Netlink.unsent()
    nl.sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        peer.send(b"\0" * (netlink.RECV_SIZE + 1))
        with pytest.raises(netlink.NetlinkError) as error:
            nl._recv()
        assert error.value.errno == errno.EMSGSIZE
        peer.send(b"\1" * 100)
        assert nl._recv() == b"\1" * 100
    finally:
        nl.sock.close()
        peer.close()
