"""Allocation policy of host-local, over any store with the DiskStore lease methods.

Round-robin from the address after `last_reserved_ip.N`, wrapping, skipping what
the range blocks (network, broadcast, gateway, aux, excluded); a requested
address is honoured or refused with the rule that refused it.
"""

import ipaddress

from cni.contract import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_NO_ADDRESS, CniError

# Candidates tried by creating their lease file before we list the directory
# once and skip known leases without a syscall each (a nearly full range).
PROBES_BEFORE_LISTING = 32


class Requested:
    """An address a caller asked for, and where it came from (for error messages)."""

    def __init__(self, ip, source):
        self.ip = ip
        self.value = int(ip)
        self.source = source

    @property
    def error_code(self):
        return ERR_INVALID_ENV if self.source.startswith("CNI_ARGS") else ERR_INVALID_CONFIG


def allocate(range_set, store, container_id, ifname, requested=None):
    """Reserve one address of range_set; return (Range, int)."""
    if requested is not None:
        return reserve_requested(range_set, store, container_id, ifname, requested)
    last = store.last_reserved(range_set.index)
    try:
        last_value = int(ipaddress.ip_address(last)) if last else None
    except ValueError:
        last_value = None  # a torn or foreign last_reserved_ip: start from the beginning
    leased = None
    probes = 0
    for r, value in range_set.candidates(last_value):
        text = r.text(value)
        if leased is not None and text in leased:
            continue
        if store.reserve(text, container_id, ifname):
            store.set_last_reserved(range_set.index, text)
            return r, value
        probes += 1
        if leased is None and probes >= PROBES_BEFORE_LISTING:
            leased = store.lease_names()
    raise exhausted(range_set, store)


def reserve_requested(range_set, store, container_id, ifname, requested):
    r = range_set.range_of(requested.value)
    if r is None:
        raise CniError(requested.error_code,
                       f"{requested.source}: requested IP {requested.ip} is outside the ranges of range set "
                       f"{range_set.index} ({range_set.describe()})")
    why = r.why_refused(requested.value)
    if why:
        raise CniError(requested.error_code, f"{requested.source}: requested IP {requested.ip} cannot be "
                                             f"handed out: {why}")
    text = r.text(requested.value)
    if not store.reserve(text, container_id, ifname):
        owner = store.owner(text)
        holder = f" to container {owner[0]}" if owner else ""
        raise CniError(ERR_NO_ADDRESS, f"{requested.source}: requested IP {requested.ip} is already "
                                       f"allocated{holder}")
    store.set_last_reserved(range_set.index, text)
    return r, requested.value


def exhausted(range_set, store):
    leased = store.lease_names()
    total = usable = excluded = aux = in_use = 0
    for r in range_set.ranges:
        t, u, e, a = r.counts()
        total, usable, excluded, aux = total + t, usable + u, excluded + e, aux + a
        in_use += sum(1 for name in leased if _in(r, name))
    return CniError(ERR_NO_ADDRESS,
                    f"no free address in range set {range_set.index} ({range_set.describe()}): "
                    f"{total} addresses, {excluded} excluded, {aux} aux, "
                    f"{total - usable - excluded - aux} reserved (network, broadcast, gateway), {in_use} in use")


def _in(r, name):
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.version == r.version and r.in_range(int(ip))
