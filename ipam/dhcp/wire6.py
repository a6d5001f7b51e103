"""DHCPv6 messages (RFC 8415) for one IA_NA: Solicit, Request, Renew, Rebind, Release; Advertise and
Reply read back.

The client DUID is the caller's (client.duid: a DUID-UUID derived from the attachment's client id,
the same DUID option 61 carries in v4, RFC 4361). parse() returns None for anything that is not a
well-formed server message; malformed options inside one are a ValueError of lease_fields, never
another exception.
"""

import ipaddress
import struct
from typing import NamedTuple, Optional

from ipam.dhcp.lease import default_t1, default_t2
from ipam.dhcp.wire4 import domain_names

CLIENT_PORT, SERVER_PORT = 546, 547
ALL_SERVERS = "ff02::1:2"   # All_DHCP_Relay_Agents_and_Servers

(SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE, RECONFIGURE,
 INFORMATION_REQUEST) = range(1, 12)
MESSAGE_NAMES = {SOLICIT: "Solicit", ADVERTISE: "Advertise", REQUEST: "Request", RENEW: "Renew",
                 REBIND: "Rebind", REPLY: "Reply", RELEASE: "Release", DECLINE: "Decline"}

(CLIENTID, SERVERID, IA_NA, IAADDR, ORO, PREFERENCE, ELAPSED_TIME, STATUS_CODE, RAPID_COMMIT,
 DNS_SERVERS, DOMAIN_LIST, CLIENT_FQDN) = (1, 2, 3, 5, 6, 7, 8, 13, 14, 23, 24, 39)

SUCCESS, UNSPEC_FAIL, NO_ADDRS_AVAIL, NO_BINDING, NOT_ON_LINK, USE_MULTICAST = range(6)
STATUS_NAMES = {SUCCESS: "Success", UNSPEC_FAIL: "UnspecFail", NO_ADDRS_AVAIL: "NoAddrsAvail",
                NO_BINDING: "NoBinding", NOT_ON_LINK: "NotOnLink", USE_MULTICAST: "UseMulticast"}

DEFAULT_REQUEST = (DNS_SERVERS, DOMAIN_LIST)
INFINITY = 0xFFFFFFFF

# The config's `request` names for v6 (numbers as strings too, see option_code).
OPTION_CODES = {"dns-servers": 23, "domain-name-servers": 23, "domain-search": 24, "domain-list": 24,
                "client-fqdn": 39, "fqdn": 39, "ntp-server": 56, "sntp-servers": 31}


def option_code(name):
    if isinstance(name, str) and name.strip().lower() in OPTION_CODES:
        return OPTION_CODES[name.strip().lower()]
    if isinstance(name, str) and name.strip().isdigit() and 1 <= int(name) <= 0xFFFF:
        return int(name)
    if isinstance(name, int) and not isinstance(name, bool) and 1 <= name <= 0xFFFF:
        return name
    raise ValueError(f"unknown DHCPv6 option {name!r}")


# --- building ---

def option(code, value):
    return struct.pack("!HH", code, len(value)) + bytes(value)


def ia_na(iaid, addresses=(), t1=0, t2=0):
    """IA_NA holding IAADDRs (lifetimes 0: the server decides)."""
    inner = b"".join(option(IAADDR, ipaddress.IPv6Address(a).packed + bytes(8)) for a in addresses)
    return option(IA_NA, struct.pack("!III", iaid, t1, t2) + inner)


def fqdn(hostname):
    """Option 39 (RFC 4704): flags 0 (the client updates its own AAAA, if anyone does), the name in
    DNS wire form; a single label is sent as a partial name (no root label) for the server to qualify."""
    labels = [label.encode() for label in hostname.rstrip(".").split(".") if label]
    wire = b"".join(bytes((len(label),)) + label for label in labels)
    return option(CLIENT_FQDN, b"\x00" + wire + (b"\x00" if "." in hostname.rstrip(".") else b""))


def message(msg_type, xid, options):
    return struct.pack("!I", (msg_type << 24) | (xid & 0xFFFFFF)) + b"".join(options)


def _asking(duid, iaid, addresses, hostname, request, send, elapsed):
    wanted = list(DEFAULT_REQUEST) + [c for c in request if c not in DEFAULT_REQUEST]
    opts = [option(CLIENTID, duid), option(ELAPSED_TIME, struct.pack("!H", min(elapsed, 0xFFFF))),
            ia_na(iaid, addresses), option(ORO, b"".join(struct.pack("!H", c) for c in wanted))]
    if hostname:
        opts.append(fqdn(hostname))
    own = {CLIENTID, SERVERID, IA_NA, ORO, ELAPSED_TIME, CLIENT_FQDN if hostname else None}
    return opts + [option(code, value) for code, value in send if code not in own]


def solicit(xid, duid, iaid, hostname=None, request=(), send=(), elapsed=0):
    return message(SOLICIT, xid, _asking(duid, iaid, (), hostname, request, send, elapsed))


def request(xid, duid, iaid, server_duid, address, hostname=None, request=(), send=(), elapsed=0):
    return message(REQUEST, xid, [option(SERVERID, server_duid)] +
                   _asking(duid, iaid, [address], hostname, request, send, elapsed))


def renew(xid, duid, iaid, server_duid, address, hostname=None, request=(), send=(), elapsed=0):
    return message(RENEW, xid, [option(SERVERID, server_duid)] +
                   _asking(duid, iaid, [address], hostname, request, send, elapsed))


def rebind(xid, duid, iaid, address, hostname=None, request=(), send=(), elapsed=0):
    return message(REBIND, xid, _asking(duid, iaid, [address], hostname, request, send, elapsed))


def release(xid, duid, iaid, server_duid, address, msg_type=RELEASE):
    return message(msg_type, xid, [option(CLIENTID, duid), option(SERVERID, server_duid),
                                   option(ELAPSED_TIME, b"\x00\x00"), ia_na(iaid, [address])])


def decline(xid, duid, iaid, server_duid, address):
    """The address is in use by someone else (RFC 8415 18.2.8): Release's shape."""
    return release(xid, duid, iaid, server_duid, address, msg_type=DECLINE)


# --- parsing ---

def decode_options(data):
    """[(code, bytes)] in order; ValueError when one runs past the end."""
    out, i = [], 0
    while i < len(data):
        if i + 4 > len(data):
            raise ValueError("option header runs past the end")
        code, size = struct.unpack_from("!HH", data, i)
        if i + 4 + size > len(data):
            raise ValueError(f"option {code} runs past the end")
        out.append((code, bytes(data[i + 4:i + 4 + size])))
        i += 4 + size
    return out


class Reply(NamedTuple):
    msg_type: int
    xid: int
    options: list       # [(code, bytes)] in order (IA_NA may repeat)

    def first(self, code) -> Optional[bytes]:
        return next((v for c, v in self.options if c == code), None)

    @property
    def server_duid(self) -> Optional[bytes]:
        return self.first(SERVERID)

    @property
    def client_duid(self) -> Optional[bytes]:
        return self.first(CLIENTID)

    @property
    def preference(self) -> int:
        value = self.first(PREFERENCE)
        return value[0] if value and len(value) == 1 else 0


def parse(data) -> Optional[Reply]:
    """An Advertise or Reply with a server DUID, or None."""
    try:
        if len(data) < 4 or data[0] not in (ADVERTISE, REPLY):
            return None
        reply = Reply(data[0], struct.unpack("!I", data[:4])[0] & 0xFFFFFF, decode_options(data[4:]))
        return reply if reply.server_duid else None
    except (ValueError, struct.error):
        return None


def status(value):
    """(code, message) of a status code option's value; ValueError when short."""
    if value is None:
        return SUCCESS, ""
    if len(value) < 2:
        raise ValueError("status code option shorter than 2 bytes")
    return struct.unpack("!H", value[:2])[0], value[2:].decode("utf-8", "replace")


class IA(NamedTuple):
    t1: int
    t2: int
    addresses: list     # [(address, preferred, valid)] with a success status
    status: tuple       # (code, message)


def find_ia(reply, iaid) -> Optional[IA]:
    """Our IA_NA in the reply (None when absent); ValueError when malformed."""
    for code, value in reply.options:
        if code != IA_NA:
            continue
        if len(value) < 12:
            raise ValueError("IA_NA shorter than 12 bytes")
        their_iaid, t1, t2 = struct.unpack("!III", value[:12])
        if their_iaid != iaid:
            continue
        addresses, ia_status = [], (SUCCESS, "")
        for inner_code, inner in decode_options(value[12:]):
            if inner_code == STATUS_CODE:
                ia_status = status(inner)
            elif inner_code == IAADDR:
                if len(inner) < 24:
                    raise ValueError("IAADDR shorter than 24 bytes")
                preferred, valid = struct.unpack("!II", inner[16:24])
                addr_status = status(next((v for c, v in decode_options(inner[24:]) if c == STATUS_CODE), None))
                if addr_status[0] == SUCCESS and valid:
                    addresses.append((str(ipaddress.IPv6Address(inner[:16])), preferred, valid))
        return IA(t1, t2, addresses, ia_status)
    return None


def refusal(reply, iaid) -> Optional[tuple]:
    """(status code, message) when the server says no for our IA (top level or in the IA, or our
    IA_NA without an address), else None. ValueError when malformed."""
    top = status(reply.first(STATUS_CODE))
    if top[0] != SUCCESS:
        return top
    ia = find_ia(reply, iaid)
    if ia is None:   # not an answer about our IA (RFC 8415 18.2.10.1: asked again later), not a no
        return None
    if ia.status[0] != SUCCESS:
        return ia.status
    if not ia.addresses:
        return NO_ADDRS_AVAIL, "the IA_NA holds no address"
    return None


def describe(code_message):
    code, msg = code_message
    return f"{STATUS_NAMES.get(code, f'status {code}')}" + (f": {msg}" if msg else "")


def lease_fields(reply, iaid, prefixlen) -> dict:
    """What a Reply (or Advertise) grants for our IA_NA, as Lease fields; ValueError when it grants
    nothing or is malformed (refusal() says which status first)."""
    ia = find_ia(reply, iaid)
    if ia is None or not ia.addresses:
        raise ValueError("the reply has no address for our IA_NA")
    address, _, valid = ia.addresses[0]
    t2 = ia.t2 if 0 < ia.t2 <= valid else default_t2(valid, family=6)
    t1 = ia.t1 if 0 < ia.t1 <= t2 else min(default_t1(valid), t2)
    dns = {}
    servers = reply.first(DNS_SERVERS)
    if servers:
        if len(servers) % 16:
            raise ValueError("DNS servers option length is not a multiple of 16")
        dns["nameservers"] = [str(ipaddress.IPv6Address(servers[i:i + 16])) for i in range(0, len(servers), 16)]
    search = reply.first(DOMAIN_LIST)
    if search:
        dns["search"] = domain_names(search)
    return dict(address=address, prefixlen=prefixlen, server_id=reply.server_duid.hex(), routers=[],
                routes=[], dns=dns, lease_time=valid, t1=t1, t2=t2)
