"""DHCPv4 messages (RFC 2131, options RFC 2132): what the client sends, and the replies it reads.

Builders return the UDP payload. parse() returns a Reply or None: a packet that is not a
well-formed BOOTREPLY is ignored, never an exception (anyone on the LAN can send us anything).
Option 61 is the RFC 4361 form (type 255, IAID, DUID) so a v4 and a v6 lease of one
attachment name the same client, and two attachments sharing a MAC (ipvlan) stay apart.
"""

import ipaddress
import struct
from typing import NamedTuple, Optional

from ipam.dhcp.lease import default_t1, default_t2

SERVER_PORT, CLIENT_PORT = 67, 68
MAGIC = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
BROADCAST_FLAG = 0x8000
MIN_SIZE = 300          # BOOTP's minimum; some servers and relays drop shorter requests

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {DISCOVER: "DHCPDISCOVER", OFFER: "DHCPOFFER", REQUEST: "DHCPREQUEST", DECLINE: "DHCPDECLINE",
                 ACK: "DHCPACK", NAK: "DHCPNAK", RELEASE: "DHCPRELEASE", INFORM: "DHCPINFORM"}

(SUBNET_MASK, ROUTERS, DNS_SERVERS, HOST_NAME, DOMAIN_NAME, REQUESTED_IP, LEASE_TIME, OVERLOAD,
 MESSAGE_TYPE, SERVER_ID, PARAMETER_LIST, MESSAGE, MAX_SIZE, RENEWAL_TIME, REBINDING_TIME, CLIENT_ID,
 DOMAIN_SEARCH, CLASSLESS_ROUTES) = (1, 3, 6, 12, 15, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 61, 119, 121)
PAD, END = 0, 255

# What every request asks for; the config's `request` adds to it.
DEFAULT_REQUEST = (SUBNET_MASK, ROUTERS, DNS_SERVERS, DOMAIN_NAME, LEASE_TIME, SERVER_ID, RENEWAL_TIME,
                   REBINDING_TIME, DOMAIN_SEARCH, CLASSLESS_ROUTES)

# The option names the reference dhcp plugin's `request`/`provide` accept (and the usual RFC 2132
# spellings beside them), one table; a number as a string ("121") is accepted too (option_code).
OPTION_CODES = {
    "subnet-mask": 1, "time-offset": 2, "routers": 3, "router": 3, "time-servers": 4, "domain-name-servers": 6,
    "log-servers": 7, "host-name": 12, "boot-size": 13, "domain-name": 15, "root-path": 17,
    "ip-forwarding": 19, "default-ip-ttl": 23, "interface-mtu": 26, "broadcast-address": 28,
    "static-routes": 33, "nis-domain": 40, "nis-servers": 41, "ntp-servers": 42,
    "vendor-encapsulated-options": 43, "netbios-name-servers": 44, "requested-ip-address": 50,
    "dhcp-requested-address": 50, "dhcp-lease-time": 51, "dhcp-option-overload": 52,
    "dhcp-message-type": 53, "dhcp-server-identifier": 54, "dhcp-parameter-request-list": 55,
    "dhcp-message": 56, "dhcp-max-message-size": 57, "dhcp-renewal-time": 58, "dhcp-rebinding-time": 59,
    "vendor-class-identifier": 60, "dhcp-client-identifier": 61, "client-identifier": 61,
    "tftp-server-name": 66, "bootfile-name": 67, "user-class": 77, "fqdn": 81, "client-fqdn": 81,
    "domain-search": 119, "classless-static-routes": 121, "classless-route": 121,
}


def option_code(name):
    """The option code a config names ("host-name", "121"); ValueError naming it when unknown."""
    if isinstance(name, int) and not isinstance(name, bool):
        code = name
    elif isinstance(name, str) and name.strip().isascii() and name.strip().isdigit():   # int() takes "１２" too
        code = int(name)
    elif isinstance(name, str) and name.strip().lower() in OPTION_CODES:
        return OPTION_CODES[name.strip().lower()]
    else:
        raise ValueError(f"unknown DHCP option {name!r}")
    if not 1 <= code <= 254:
        raise ValueError(f"DHCP option {name!r} is not in 1..254")
    return code


def client_id(iaid, duid):
    """Option 61 as RFC 4361 writes it: type 255, the IAID (4 bytes), the DUID."""
    return b"\xff" + struct.pack("!I", iaid & 0xFFFFFFFF) + duid


# --- building ---

def encode_options(options):
    """(code, bytes) pairs as TLVs; a value over 255 bytes is split over several instances (RFC 3396)."""
    out = bytearray()
    for code, value in options:
        value = bytes(value)
        chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    return bytes(out)


def packet(msg_type, xid, mac, options, ciaddr="0.0.0.0", broadcast=False):
    """A BOOTREQUEST: the header, magic cookie, message type first, `options`, END, padded."""
    chaddr = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", BOOTREQUEST, 1, len(chaddr), 0, xid, 0,
                         BROADCAST_FLAG if broadcast else 0, ipaddress.IPv4Address(ciaddr).packed,
                         bytes(4), bytes(4), bytes(4), chaddr, b"", b"")
    body = header + MAGIC + encode_options([(MESSAGE_TYPE, bytes((msg_type,)))] + list(options)) + bytes((END,))
    return body + bytes(max(0, MIN_SIZE - len(body)))


def _asking(cid, hostname, request, send):
    """The options every DISCOVER/REQUEST carries: client id, hostname, parameter list, extras."""
    wanted = list(DEFAULT_REQUEST) + [c for c in request if c not in DEFAULT_REQUEST]
    opts = [(CLIENT_ID, cid), (MAX_SIZE, struct.pack("!H", 1500))]
    if hostname:
        opts.append((HOST_NAME, hostname.encode()))
    opts.append((PARAMETER_LIST, bytes(wanted)))
    own = {CLIENT_ID, HOST_NAME if hostname else None, PARAMETER_LIST, MESSAGE_TYPE}
    return opts + [(code, value) for code, value in send if code not in own]


def _ip(address):
    return ipaddress.IPv4Address(address).packed


def discover(xid, mac, cid, hostname=None, request=(), send=(), broadcast=True):
    return packet(DISCOVER, xid, mac, _asking(cid, hostname, request, send), broadcast=broadcast)


def request_selecting(xid, mac, cid, offered, server_id, hostname=None, request=(), send=(), broadcast=True):
    """REQUEST answering an OFFER: requested address and the chosen server's identifier."""
    opts = [(REQUESTED_IP, _ip(offered)), (SERVER_ID, _ip(server_id))] + _asking(cid, hostname, request, send)
    return packet(REQUEST, xid, mac, opts, broadcast=broadcast)


def request_reboot(xid, mac, cid, address, hostname=None, request=(), send=(), broadcast=True):
    """INIT-REBOOT: the same address again, no server identifier, ciaddr zero."""
    opts = [(REQUESTED_IP, _ip(address))] + _asking(cid, hostname, request, send)
    return packet(REQUEST, xid, mac, opts, broadcast=broadcast)


def request_renewing(xid, mac, cid, address, hostname=None, request=(), send=()):
    """RENEWING (unicast to the server) or REBINDING (broadcast): ciaddr set, no 50, no 54."""
    return packet(REQUEST, xid, mac, _asking(cid, hostname, request, send), ciaddr=address)


request_rebinding = request_renewing   # the same message; only where it is sent differs


def release(xid, mac, cid, address, server_id):
    return packet(RELEASE, xid, mac, [(SERVER_ID, _ip(server_id)), (CLIENT_ID, cid)], ciaddr=address)


def decline(xid, mac, cid, address, server_id):
    return packet(DECLINE, xid, mac, [(REQUESTED_IP, _ip(address)), (SERVER_ID, _ip(server_id)),
                                      (CLIENT_ID, cid)])


# --- parsing ---

class Reply(NamedTuple):
    msg_type: int
    xid: int
    yiaddr: str
    siaddr: str
    chaddr: bytes
    options: dict       # code -> bytes (instances of one code concatenated, RFC 3396)

    @property
    def server_id(self) -> Optional[str]:
        value = self.options.get(SERVER_ID)
        return str(ipaddress.IPv4Address(value)) if value and len(value) == 4 else None

    @property
    def message(self) -> str:
        return self.options.get(MESSAGE, b"").decode("utf-8", "replace")

    def client_id(self) -> Optional[bytes]:
        return self.options.get(CLIENT_ID)


def decode_options(data, into):
    """TLVs up to END into `into` (code -> bytes, concatenated); ValueError when one runs past the end."""
    i = 0
    while i < len(data):
        code = data[i]
        if code == END:
            return
        if code == PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            raise ValueError("option runs past the end")
        into[code] = into.get(code, b"") + data[i + 2:i + 2 + data[i + 1]]
        i += 2 + data[i + 1]


def parse(data) -> Optional[Reply]:
    """The BOOTREPLY in `data`, or None when it is not a well-formed DHCP reply."""
    try:
        if len(data) < 240 or data[236:240] != MAGIC:
            return None
        op, htype, hlen, _, xid = struct.unpack_from("!BBBBI", data, 0)
        if op != BOOTREPLY or hlen > 16:
            return None
        options = {}
        decode_options(data[240:], options)
        overload = options.get(OVERLOAD, b"\x00")[:1]
        if overload and overload[0] & 1:
            decode_options(data[108:236], options)
        if overload and overload[0] & 2:
            decode_options(data[44:108], options)
        msg_type = options.get(MESSAGE_TYPE, b"")
        if len(msg_type) != 1:
            return None
        return Reply(msg_type[0], xid, str(ipaddress.IPv4Address(data[16:20])),
                     str(ipaddress.IPv4Address(data[20:24])), bytes(data[28:28 + hlen]), options)
    except (ValueError, struct.error, IndexError):
        return None


def addresses(value):
    """A list of IPv4 addresses (options 3, 6); ValueError when the length is not a multiple of 4."""
    if len(value) % 4:
        raise ValueError("address list length is not a multiple of 4")
    return [str(ipaddress.IPv4Address(value[i:i + 4])) for i in range(0, len(value), 4)]


def classless_routes(value):
    """Option 121 (RFC 3442): [{"dst": "a.b.c.d/n", "gw": "..."}]; a gateway 0.0.0.0 means on-link,
    given without "gw". ValueError when malformed."""
    routes, i = [], 0
    while i < len(value):
        width = value[i]
        if width > 32:
            raise ValueError(f"classless route prefix /{width}")
        size = (width + 7) // 8
        if i + 1 + size + 4 > len(value):
            raise ValueError("classless route runs past the end")
        dst = ipaddress.IPv4Address(value[i + 1:i + 1 + size] + bytes(4 - size))
        gw = ipaddress.IPv4Address(value[i + 1 + size:i + 5 + size])
        route = {"dst": str(ipaddress.IPv4Network(f"{dst}/{width}", strict=False))}
        if int(gw):
            route["gw"] = str(gw)
        routes.append(route)
        i += 5 + size
    return routes


def encode_classless_routes(routes):
    """The inverse of classless_routes (for tests and fake servers)."""
    out = bytearray()
    for route in routes:
        net = ipaddress.IPv4Network(route["dst"])
        out += bytes((net.prefixlen,)) + net.network_address.packed[:(net.prefixlen + 7) // 8]
        out += ipaddress.IPv4Address(route.get("gw", "0.0.0.0")).packed
    return bytes(out)


def domain_names(value):
    """RFC 1035 names with compression pointers (option 119, RFC 3397); ValueError when malformed."""
    names, i = [], 0
    while i < len(value):
        labels, j, jumps, end = [], i, 0, None
        while True:
            if j >= len(value):
                raise ValueError("domain name runs past the end")
            size = value[j]
            if size & 0xC0 == 0xC0:
                if j + 1 >= len(value) or jumps > 64:
                    raise ValueError("bad compression pointer")
                end = j + 2 if end is None else end
                j, jumps = ((size & 0x3F) << 8) | value[j + 1], jumps + 1
                continue
            if size & 0xC0:
                raise ValueError("bad label")
            if size == 0:
                end = j + 1 if end is None else end
                break
            labels.append(value[j + 1:j + 1 + size].decode("ascii", "replace"))
            j += 1 + size
        names.append(".".join(labels))
        i = end
    return names


def text(value):
    return value.split(b"\x00", 1)[0].decode("utf-8", "replace")


def lease_fields(reply) -> dict:
    """What an ACK grants, as Lease fields (address ... t2); ValueError when the ACK lacks what a lease
    needs (a lease time, a server identifier) or carries a malformed option."""
    opts = reply.options
    if reply.server_id is None:
        raise ValueError("the ACK has no server identifier (option 54)")
    if len(opts.get(LEASE_TIME, b"")) != 4:
        raise ValueError("the ACK has no lease time (option 51)")
    lease_time = struct.unpack("!I", opts[LEASE_TIME])[0]
    address = ipaddress.IPv4Address(reply.yiaddr)
    if SUBNET_MASK in opts:
        prefixlen = ipaddress.IPv4Network(f"0.0.0.0/{ipaddress.IPv4Address(opts[SUBNET_MASK])}").prefixlen
    else:   # no mask given: the address's class (RFC 1122 3.3.1.1's assumption)
        prefixlen = 8 if int(address) >> 31 == 0 else 16 if int(address) >> 30 == 2 else 24
    dns = {}
    if opts.get(DNS_SERVERS):
        dns["nameservers"] = addresses(opts[DNS_SERVERS])
    if opts.get(DOMAIN_NAME):
        dns["domain"] = text(opts[DOMAIN_NAME])
    if opts.get(DOMAIN_SEARCH):
        dns["search"] = domain_names(opts[DOMAIN_SEARCH])
    t1 = struct.unpack("!I", opts[RENEWAL_TIME])[0] if len(opts.get(RENEWAL_TIME, b"")) == 4 else None
    t2 = struct.unpack("!I", opts[REBINDING_TIME])[0] if len(opts.get(REBINDING_TIME, b"")) == 4 else None
    t2 = t2 if t2 is not None and t2 <= lease_time else default_t2(lease_time)
    t1 = t1 if t1 is not None and t1 <= t2 else min(default_t1(lease_time), t2)
    return dict(address=str(address), prefixlen=prefixlen, server_id=reply.server_id, server_address=reply.server_id,
                routers=addresses(opts.get(ROUTERS, b"")),
                routes=classless_routes(opts[CLASSLESS_ROUTES]) if opts.get(CLASSLESS_ROUTES) else [],
                dns=dns, lease_time=lease_time, t1=t1, t2=t2)
