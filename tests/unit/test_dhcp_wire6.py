"""DHCPv6 messages: Solicit/Request/Renew/Rebind/Release as sent, Advertise/Reply read into Lease
fields, refusals (status codes), malformed messages ignored."""

import ipaddress
import random
import struct

import pytest

from ipam.dhcp import wire6
from ipam.dhcp.wire6 import option

DUID = b"\x00\x04" + bytes(range(16))
SERVER = b"\x00\x01\x00\x01" + bytes(10)


def sent(data):
    return data[0], struct.unpack("!I", data[:4])[0] & 0xFFFFFF, dict(wire6.decode_options(data[4:]))


def iaaddr(address, preferred=300, valid=600, status=None):
    inner = option(wire6.STATUS_CODE, struct.pack("!H", status) + b"x") if status is not None else b""
    return option(wire6.IAADDR, ipaddress.IPv6Address(address).packed + struct.pack("!II", preferred, valid) + inner)


def reply(msg_type=wire6.REPLY, xid=0xabcdef, ia=None, extra=(), iaid=7, t1=100, t2=160):
    ia = [iaaddr("2001:db8::17")] if ia is None else ia
    opts = [option(wire6.SERVERID, SERVER), option(wire6.CLIENTID, DUID),
            option(wire6.IA_NA, struct.pack("!III", iaid, t1, t2) + b"".join(ia))] + list(extra)
    return wire6.message(msg_type, xid, opts)


def test_solicit():
    data = wire6.solicit(0x123456, DUID, 7, hostname="pod-1", request=(56,), send=((16, b"vendor"),), elapsed=150)
    msg_type, xid, opts = sent(data)
    assert (msg_type, xid) == (wire6.SOLICIT, 0x123456)
    assert opts[wire6.CLIENTID] == DUID and wire6.SERVERID not in opts
    assert opts[wire6.IA_NA] == struct.pack("!III", 7, 0, 0)
    assert opts[wire6.ORO] == struct.pack("!HHH", 23, 24, 56)
    assert opts[wire6.ELAPSED_TIME] == struct.pack("!H", 150)
    assert opts[wire6.CLIENT_FQDN] == b"\x00\x05pod-1"          # a partial name: no root label
    assert opts[16] == b"vendor"


def test_a_qualified_hostname_ends_with_the_root_label():
    assert dict(wire6.decode_options(wire6.fqdn("pod-1.lan")))[39] == b"\x00\x05pod-1\x03lan\x00"


def test_request_renew_rebind_release_carry_the_address():
    for data, kind, server in [
            (wire6.request(1, DUID, 7, SERVER, "2001:db8::17", hostname="h"), wire6.REQUEST, True),
            (wire6.renew(1, DUID, 7, SERVER, "2001:db8::17", hostname="h"), wire6.RENEW, True),
            (wire6.rebind(1, DUID, 7, "2001:db8::17", hostname="h"), wire6.REBIND, False),
            (wire6.release(1, DUID, 7, SERVER, "2001:db8::17"), wire6.RELEASE, True)]:
        msg_type, _, opts = sent(data)
        assert msg_type == kind and opts[wire6.CLIENTID] == DUID
        assert (opts.get(wire6.SERVERID) == SERVER) == server
        ia = opts[wire6.IA_NA]
        assert ia[:4] == struct.pack("!I", 7)
        assert dict(wire6.decode_options(ia[12:]))[wire6.IAADDR][:16] == ipaddress.IPv6Address("2001:db8::17").packed
        if kind != wire6.RELEASE:
            assert wire6.CLIENT_FQDN in opts


def test_a_reply_into_lease_fields():
    dns = option(23, ipaddress.IPv6Address("2001:db8::53").packed) + option(24, b"\x03lan\x00")
    r = wire6.parse(reply(extra=[dns]))
    assert (r.msg_type, r.xid, r.server_duid, r.client_duid) == (wire6.REPLY, 0xabcdef, SERVER, DUID)
    assert wire6.refusal(r, 7) is None
    assert wire6.lease_fields(r, 7, 64) == dict(
        address="2001:db8::17", prefixlen=64, server_id=SERVER.hex(), routers=[], routes=[],
        dns={"nameservers": ["2001:db8::53"], "search": ["lan"]}, lease_time=600, t1=100, t2=160)


def test_zero_timers_take_the_rfc_defaults():
    f = wire6.lease_fields(wire6.parse(reply(t1=0, t2=0)), 7, 64)
    assert (f["t1"], f["t2"]) == (300, 480)


def test_a_reply_without_our_ia_is_no_refusal_and_no_lease():
    r = wire6.parse(reply(iaid=8))
    assert wire6.refusal(r, 7) is None
    with pytest.raises(ValueError):
        wire6.lease_fields(r, 7, 64)


def test_preference():
    r = wire6.parse(reply(wire6.ADVERTISE, extra=[option(wire6.PREFERENCE, b"\xff")]))
    assert r.msg_type == wire6.ADVERTISE and r.preference == 255


@pytest.mark.parametrize("data,expected", [
    (reply(extra=[option(wire6.STATUS_CODE, struct.pack("!H", 2) + b"none left")]), (2, "none left")),
    (reply(ia=[option(wire6.STATUS_CODE, struct.pack("!H", 3) + b"no binding")]), (3, "no binding")),
    (reply(ia=[iaaddr("2001:db8::17", status=4)]), (2, "the IA_NA holds no address")),
    (reply(ia=[iaaddr("2001:db8::17", valid=0)]), (2, "the IA_NA holds no address")),
])
def test_refusals(data, expected):
    r = wire6.parse(data)
    assert wire6.refusal(r, 7) == expected
    assert wire6.describe(expected).startswith(("NoAddrsAvail", "NoBinding"))


@pytest.mark.parametrize("data", [
    b"", b"\x07\x00", wire6.solicit(1, DUID, 7),                     # a client's message
    reply()[:-3],                                                    # an option cut short
    wire6.message(wire6.REPLY, 1, [option(wire6.CLIENTID, DUID)]),   # no server DUID
])
def test_malformed_messages_are_ignored(data):
    assert wire6.parse(data) is None


@pytest.mark.parametrize("data", [
    reply(ia=[option(wire6.IAADDR, bytes(10))]),
    reply(extra=[option(23, bytes(15))]),
    reply(extra=[option(24, b"\x05ab")]),
])
def test_malformed_inner_options_are_value_errors(data):
    with pytest.raises(ValueError):
        wire6.lease_fields(wire6.parse(data), 7, 64)


def test_random_garbage_never_raises():
    rng = random.Random(8415)
    good = reply(extra=[option(23, bytes(16)), option(24, b"\x03lan\x00")])
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        r = wire6.parse(bytes(data[:rng.randint(0, len(data))]) if rng.random() < 0.3 else bytes(data))
        if r is not None:
            try:
                wire6.refusal(r, 7) or wire6.lease_fields(r, 7, 64)
            except ValueError:
                pass


def test_option_names():
    assert wire6.option_code("dns-servers") == 23 and wire6.option_code("24") == 24
    with pytest.raises(ValueError):
        wire6.option_code("nope")


def test_decline_is_release_shaped():
    msg_type, _, opts = sent(wire6.decline(1, DUID, 7, SERVER, "2001:db8::17"))
    assert msg_type == wire6.DECLINE and opts[wire6.SERVERID] == SERVER and opts[wire6.CLIENTID] == DUID
