"""The frames cni/net/neighbours.py sends, field by field (RFC 826/5227, RFC 4861/4862).
That the kernel accepts them (checksums, hop limit) is tests/ns/test_lan.py's: a LAN
namespace answers the probes and takes the announcements."""

import ipaddress
import struct

from cni.net import neighbours as nb

MAC = nb.mac_bytes("02:00:00:00:00:01")
A4 = ipaddress.ip_address("10.40.0.7")
A6 = ipaddress.ip_address("fd40::7")


def test_an_arp_probe_has_sender_address_zero_and_asks_for_the_candidate():
    frame = nb.arp_frame(nb.ARP_REQUEST, MAC, nb.ZERO4, A4)
    assert len(frame) == 60 and frame[:6] == nb.BROADCAST and frame[6:12] == MAC
    assert nb.parse_arp(frame) == (nb.ARP_REQUEST, MAC, nb.ZERO4, A4)
    assert frame[32:38] == b"\0" * 6   # target hardware address: unknown


def test_a_gratuitous_arp_names_the_address_as_sender_and_target():
    assert nb.parse_arp(nb.arp_frame(nb.ARP_REQUEST, MAC, A4, A4)) == (nb.ARP_REQUEST, MAC, A4, A4)


def test_a_dad_probe_goes_to_the_solicited_node_group_without_a_link_layer_option():
    frame = nb.ns_frame(MAC, nb.UNSPECIFIED6, A6)
    dst = ipaddress.ip_address("ff02::1:ff00:7")
    assert frame[:6] == bytes.fromhex("3333ff000007")
    version, length, next_header, hop_limit, src, to = nb.IPV6.unpack_from(frame, 14)
    assert (version >> 28, next_header, hop_limit, src, to) == (6, 58, 255, bytes(16), dst.packed)
    assert length == 24   # RFC 4862 5.4.2: no source link-layer address option from ::
    assert nb.parse_nd(frame) == (nb.ND_NS, MAC, nb.UNSPECIFIED6, A6)


def test_a_gateway_solicitation_carries_our_link_layer_address():
    gateway = ipaddress.ip_address("fd40::1")
    frame = nb.ns_frame(MAC, A6, gateway)
    assert nb.IPV6.unpack_from(frame, 14)[1] == 32 and frame[14 + 40 + 24:14 + 40 + 32] == b"\x01\x01" + MAC
    assert nb.parse_nd(frame) == (nb.ND_NS, MAC, A6, gateway)


def test_an_unsolicited_advertisement_overrides_and_goes_to_all_nodes():
    frame = nb.na_frame(MAC, A6)
    assert frame[:6] == bytes.fromhex("333300000001")
    flags, = struct.unpack_from("!I", frame, 14 + 40 + 4)
    assert flags == nb.NA_OVERRIDE   # not solicited, not a router
    assert nb.parse_nd(frame) == (nb.ND_NA, MAC, A6, A6)


def test_icmpv6_checksum_sums_to_zero_with_the_pseudo_header():
    frame = nb.na_frame(MAC, A6)
    icmp = frame[54:54 + nb.IPV6.unpack_from(frame, 14)[1]]
    pseudo = A6.packed + nb.ALL_NODES.packed + struct.pack("!I3xB", len(icmp), 58)
    assert nb.checksum(pseudo + icmp) == 0


def test_frames_that_are_not_arp_or_neighbour_discovery_are_ignored():
    assert nb.parse_arp(b"\0" * 60) is None and nb.parse_nd(b"\0" * 100) is None
    ping = bytearray(nb.na_frame(MAC, A6))
    ping[54] = 128   # an echo request
    assert nb.parse_nd(bytes(ping)) is None
