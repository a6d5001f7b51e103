"""DHCPv4 messages: what the client sends (field by field), what it reads, and malformed replies
ignored (None), never a traceback."""

import ipaddress
import random
import struct

import pytest

from ipam.dhcp import wire4

MAC = "02:42:ac:11:00:02"
CID = wire4.client_id(7, b"\x00\x04" + bytes(range(16)))


def reply(msg_type, xid=0x1234, yiaddr="10.88.0.23", options=(), chaddr=MAC, sname=b"", file=b""):
    """A BOOTREPLY as a server writes it."""
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 2, 1, 6, 0, xid, 0, 0, bytes(4),
                         ipaddress.IPv4Address(yiaddr).packed, bytes(4), bytes(4),
                         bytes.fromhex(chaddr.replace(":", "")), sname, file)
    return header + wire4.MAGIC + wire4.encode_options([(53, bytes((msg_type,)))] + list(options)) + b"\xff"


def ack(**changes):
    options = [(1, bytes((255, 255, 255, 0))), (3, bytes((10, 88, 0, 1, 10, 88, 0, 2))),
               (6, bytes((10, 88, 0, 53))), (15, b"lan.example"), (51, struct.pack("!I", 600)),
               (54, bytes((10, 88, 0, 1)))]
    return reply(wire4.ACK, options=changes.pop("options", options), **changes)


def sent_options(data):
    opts = {}
    wire4.decode_options(data[240:], opts)
    return opts


def test_option_names_and_numbers():
    assert wire4.option_code("host-name") == 12
    assert wire4.option_code("classless-static-routes") == 121
    assert wire4.option_code("Subnet-Mask") == 1
    assert wire4.option_code("121") == 121
    assert wire4.option_code(42) == 42
    for bad in ("no-such-option", "0", "255", "", None, True, "１２", "١٢"):   # not ASCII digits: no option
        with pytest.raises(ValueError):
            wire4.option_code(bad)


def test_client_id_is_rfc4361():
    assert CID[:5] == b"\xff\x00\x00\x00\x07" and CID[5:7] == b"\x00\x04"


def test_discover():
    data = wire4.discover(0xdeadbeef, MAC, CID, hostname="pod-1", request=(42, 1), send=((60, b"underlay"),))
    op, htype, hlen, hops, xid, secs, flags = struct.unpack_from("!BBBBIHH", data)
    assert (op, htype, hlen, xid, flags) == (1, 1, 6, 0xdeadbeef, 0x8000)
    assert data[28:34] == bytes.fromhex("0242ac110002") and data[236:240] == wire4.MAGIC
    assert len(data) >= 300
    opts = sent_options(data)
    assert opts[53] == b"\x01" and opts[61] == CID and opts[12] == b"pod-1" and opts[60] == b"underlay"
    assert set(opts[55]) >= {1, 3, 6, 15, 51, 54, 58, 59, 119, 121, 42}
    assert list(data[240:243]) == [53, 1, 1]   # message type first


def test_discover_without_broadcast_flag_and_hostname():
    data = wire4.discover(1, MAC, CID, broadcast=False)
    assert struct.unpack_from("!H", data, 10)[0] == 0
    assert 12 not in sent_options(data)


def test_a_sent_option_does_not_override_our_own():
    opts = sent_options(wire4.discover(1, MAC, CID, hostname="a", send=((61, b"x"), (12, b"b"))))
    assert opts[61] == CID and opts[12] == b"a"


def test_a_long_option_is_split_and_joined_again():
    data = wire4.discover(1, MAC, CID, send=((77, bytes(600)),))
    assert sent_options(data)[77] == bytes(600)


def test_request_selecting_reboot_renewing_release():
    sel = wire4.request_selecting(5, MAC, CID, "10.88.0.23", "10.88.0.1", hostname="h")
    opts = sent_options(sel)
    assert opts[53] == b"\x03" and opts[50] == bytes((10, 88, 0, 23)) and opts[54] == bytes((10, 88, 0, 1))
    assert sel[12:16] == bytes(4) and opts[12] == b"h"

    reboot = sent_options(wire4.request_reboot(5, MAC, CID, "10.88.0.23"))
    assert reboot[50] == bytes((10, 88, 0, 23)) and 54 not in reboot

    renew = wire4.request_renewing(5, MAC, CID, "10.88.0.23", hostname="h")
    opts = sent_options(renew)
    assert renew[12:16] == bytes((10, 88, 0, 23)) and 50 not in opts and 54 not in opts and opts[12] == b"h"
    assert struct.unpack_from("!H", renew, 10)[0] == 0

    rel = wire4.release(9, MAC, CID, "10.88.0.23", "10.88.0.1")
    opts = sent_options(rel)
    assert opts[53] == b"\x07" and opts[54] == bytes((10, 88, 0, 1)) and opts[61] == CID
    assert rel[12:16] == bytes((10, 88, 0, 23))


def test_parse_an_ack_into_lease_fields():
    r = wire4.parse(ack())
    assert (r.msg_type, r.xid, r.yiaddr, r.chaddr, r.server_id) == (wire4.ACK, 0x1234, "10.88.0.23",
                                                                     bytes.fromhex("0242ac110002"), "10.88.0.1")
    f = wire4.lease_fields(r)
    assert f == dict(address="10.88.0.23", prefixlen=24, server_id="10.88.0.1", server_address="10.88.0.1",
                     routers=["10.88.0.1", "10.88.0.2"], routes=[],
                     dns={"nameservers": ["10.88.0.53"], "domain": "lan.example"},
                     lease_time=600, t1=300, t2=525)


def test_timers_routes_and_search_domains():
    search = b"\x03lan\x07example\x00\x03dev\xc0\x04"   # lan.example, dev.example (a pointer)
    routes = wire4.encode_classless_routes([{"dst": "10.99.0.0/16", "gw": "10.88.0.254"},
                                            {"dst": "0.0.0.0/0", "gw": "10.88.0.1"},
                                            {"dst": "192.168.7.0/24"}])
    options = [(1, bytes((255, 255, 0, 0))), (51, struct.pack("!I", 100)), (54, bytes((10, 88, 0, 1))),
               (58, struct.pack("!I", 20)), (59, struct.pack("!I", 70)), (119, search), (121, routes)]
    f = wire4.lease_fields(wire4.parse(ack(options=options)))
    assert (f["prefixlen"], f["t1"], f["t2"]) == (16, 20, 70)
    assert f["dns"] == {"search": ["lan.example", "dev.example"]}
    assert f["routes"] == [{"dst": "10.99.0.0/16", "gw": "10.88.0.254"}, {"dst": "0.0.0.0/0", "gw": "10.88.0.1"},
                           {"dst": "192.168.7.0/24"}]


def test_timers_beyond_the_lease_fall_back_to_the_defaults():
    options = [(51, struct.pack("!I", 100)), (54, bytes((10, 88, 0, 1))), (58, struct.pack("!I", 90)),
               (59, struct.pack("!I", 200))]
    f = wire4.lease_fields(wire4.parse(ack(options=options)))
    assert (f["t1"], f["t2"]) == (50, 87)


def test_options_in_the_overloaded_file_field():
    file = wire4.encode_options([(3, bytes((10, 88, 0, 9)))]) + b"\xff"
    options = [(52, b"\x01"), (51, struct.pack("!I", 60)), (54, bytes((10, 88, 0, 1)))]
    r = wire4.parse(reply(wire4.ACK, options=options, file=file))
    assert wire4.lease_fields(r)["routers"] == ["10.88.0.9"]


def test_a_nak_and_its_message():
    r = wire4.parse(reply(wire4.NAK, options=[(54, bytes((10, 88, 0, 1))), (56, b"wrong subnet")]))
    assert r.msg_type == wire4.NAK and r.message == "wrong subnet"


@pytest.mark.parametrize("data", [
    b"", b"\x02" * 100, ack()[:239],
    ack().replace(wire4.MAGIC, b"\x00\x00\x00\x00"),
    b"\x01" + ack()[1:],                                   # a BOOTREQUEST (another client's)
    ack()[:240] + b"\x35\x05\x05",                         # message type runs past the end
    ack()[:240] + b"\x33\x04\x00\x00",                     # no message type
    ack()[:240] + b"\x35\x02\x05\x05\xff",                 # message type of two bytes
    ack()[:2] + b"\x40" + ack()[3:],                       # hlen 64
])
def test_malformed_packets_are_ignored(data):
    assert wire4.parse(data) is None


@pytest.mark.parametrize("options,error", [
    ([(51, struct.pack("!I", 60))], "server identifier"),
    ([(54, bytes((10, 88, 0, 1)))], "lease time"),
    ([(51, b"\x00"), (54, bytes((10, 88, 0, 1)))], "lease time"),
    ([(51, struct.pack("!I", 60)), (54, bytes((10, 88, 0, 1))), (3, b"\x01\x02\x03")], "multiple of 4"),
    ([(51, struct.pack("!I", 60)), (54, bytes((10, 88, 0, 1))), (121, b"\x21\x00")], "prefix"),
    ([(51, struct.pack("!I", 60)), (54, bytes((10, 88, 0, 1))), (121, b"\x18\x0a\x00")], "past the end"),
    ([(51, struct.pack("!I", 60)), (54, bytes((10, 88, 0, 1))), (119, b"\x03ab")], "past the end"),
    ([(51, struct.pack("!I", 60)), (54, bytes((10, 88, 0, 1))), (119, b"\xc0\x00")], "pointer"),
    ([(51, struct.pack("!I", 60)), (54, bytes((10, 88, 0, 1))), (1, b"\xff\x00\xff\x00")], "netmask"),
])
def test_an_ack_lacking_what_a_lease_needs_is_a_value_error(options, error):
    with pytest.raises(ValueError, match=error):
        wire4.lease_fields(wire4.parse(ack(options=options)))


def test_random_garbage_never_raises():
    rng = random.Random(19)
    good = ack()
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randint(0, len(data))]) if rng.random() < 0.3 else bytes(data)
        r = wire4.parse(data)
        if r is not None:
            try:
                wire4.lease_fields(r)
            except ValueError:
                pass


def test_the_release_frame_of_healing():
    """client.release_frame: Ethernet to broadcast, IPv4 and UDP checksums right, the RELEASE inside."""
    from cni.net.frames import checksum
    from ipam.dhcp.client import release_frame, udp_payload
    from tests.unit.test_dhcp_lease import a_lease
    lease = a_lease(client_id=CID.hex())
    frame = release_frame(lease, 0x1234)
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("020000000001") and frame[12:14] == b"\x08\x00"
    ip = frame[14:]
    assert checksum(ip[:20]) == 0
    assert ip[12:16] == bytes((10, 88, 0, 23)) and ip[16:20] == bytes((10, 88, 0, 1))
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(ip) - 20)
    assert checksum(pseudo + ip[20:]) == 0
    assert struct.unpack_from("!HH", ip, 20) == (68, 67)
    payload = ip[28:]
    opts = sent_options(payload)
    assert opts[53] == b"\x07" and opts[61] == CID and payload[12:16] == bytes((10, 88, 0, 23))
    assert udp_payload(ip[:22] + b"\x00\x44" + ip[24:]) == payload   # the same datagram, as if to port 68


def test_garbage_frames_on_the_packet_socket_are_ignored():
    """What acquire's packet socket may read: anything; udp_payload + parse never raise."""
    from ipam.dhcp.client import udp_payload
    rng = random.Random(2131)
    payload = ack()
    good = (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, bytes(4), bytes(4))
            + struct.pack("!HHHH", 67, 68, 8 + len(payload), 0) + payload)
    assert wire4.parse(udp_payload(good)).msg_type == wire4.ACK
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(min(len(data), 60))] = rng.randrange(256)
        data = bytes(data[:rng.randint(0, len(data))]) if rng.random() < 0.3 else bytes(data)
        inner = udp_payload(data)
        if inner is not None:
            wire4.parse(inner)
