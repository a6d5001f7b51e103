"""Allocation policy of host-local, over any lease store (ipam/stores/protocols.py LeaseStore).

Round-robin from the address after `last_reserved_ip.N`, wrapping, skipping what
the range blocks (network, broadcast, gateway, aux, excluded); a requested
address is honoured or refused with the rule that refused it.
"""

import ipaddress

from cni.errors import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_NO_ADDRESS, CniError

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
        last_ip = ipaddress.ip_address(last) if last else None
    except ValueError:
        last_ip = None  # a torn or foreign last_reserved_ip: start from the beginning
    leased = None
    probes = 0
    for r, value in range_set.candidates(last_ip):
        text = r.text(value)
        if leased is not None and text in leased:
            continue
        if store.reserve(text, container_id, ifname, range_set.index):
            return r, value
        probes += 1
        if leased is None and probes >= PROBES_BEFORE_LISTING:
            leased = store.leased()
    raise exhausted(range_set, store)


def reserve_requested(range_set, store, container_id, ifname, requested):
    """As Docker's --ip: anywhere in the range's subnet, also outside rangeStart..rangeEnd,
    unless it is the network, broadcast, gateway, an aux or excluded address, or taken."""
    r = range_set.range_of(requested.ip) or range_set.subnet_range_of(requested.ip)
    if r is None:
        raise CniError(requested.error_code,
                       f"{requested.source}: requested IP {requested.ip} is outside the subnets of range set "
                       f"{range_set.index} ({range_set.describe()})")
    why = r.why_refused(requested.value)
    if why:
        raise CniError(requested.error_code, f"{requested.source}: requested IP {requested.ip} cannot be "
                                             f"handed out: {why}")
    text = r.text(requested.value)
    # one outside rangeStart..rangeEnd must not move round-robin out of it
    set_index = range_set.index if r.in_range(requested.value) else None
    if not store.reserve(text, container_id, ifname, set_index):
        owner = store.owner(text)
        holder = f" to container {owner[0]}" if owner else ""
        raise CniError(ERR_NO_ADDRESS, f"{requested.source}: requested IP {requested.ip} is already "
                                       f"allocated{holder}")
    return r, requested.value


def exhausted(range_set, store):
    t = tally(range_set, store.leased())
    return CniError(ERR_NO_ADDRESS,
                    f"no free address in range set {range_set.index} ({range_set.describe()}): "
                    f"{t['addresses']} addresses, {t['excluded']} excluded, {t['aux']} aux, "
                    f"{t['reserved']} reserved (network, broadcast, gateway), {t['in use']} in use")


def tally(range_set, leased):
    """How the addresses of a range set are spent; 'free' is what ADD could still hand out."""
    values = []
    for name in leased:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            continue  # not a lease: some other file in the directory
        if ip.version == range_set.version:
            values.append(int(ip))
    t = dict.fromkeys(("addresses", "usable", "excluded", "aux", "in use"), 0)
    for r in range_set.ranges:
        total, usable, excluded, aux = r.counts()
        t["addresses"] += total
        t["usable"] += usable
        t["excluded"] += excluded
        t["aux"] += aux
        t["in use"] += sum(1 for v in values if r.may_hand_out(v))
    t["reserved"] = t["addresses"] - t["usable"] - t["excluded"] - t["aux"]
    t["free"] = t["usable"] - t["in use"]
    return t
