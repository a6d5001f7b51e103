"""What the raw frames we build share (ARP/ND probes in neighbours.py, the DHCP client's
Ethernet-level release): the Internet checksum and MAC addresses as bytes."""

import struct


def checksum(data):
    """The Internet checksum (RFC 1071) of IPv4 headers, UDP and ICMPv6."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac_bytes(mac):
    """'aa:bb:cc:dd:ee:ff' (or with '-') as 6 bytes."""
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))
