"""Allocation policy of host-local, over any lease store (ipam/stores/protocols.py LeaseStore).

Round-robin from the address after `last_reserved_ip.N`, wrapping, skipping what
the range blocks (network, broadcast, gateway, aux, excluded); a requested
address is honoured or refused with the rule that refused it.
"""

import ipaddress
import time

from cni.errors import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_NO_ADDRESS, CniError
from ipam.stores import holds

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
    cooling = store.cooling()   # released too recently (reuseCooldown): skipped, never reserved
    for r, value in range_set.candidates(last_ip):
        text = r.text(value)
        if leased is not None and text in leased or text in cooling:
            continue
        if store.reserve(text, container_id, ifname, range_set.index):
            return r, value
        probes += 1
        if leased is None and probes >= PROBES_BEFORE_LISTING:
            leased = store.leased()
    raise exhausted(range_set, store, cooling)


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
        conflict = None if owner else store.conflicts().get(text)
        if conflict is not None:
            raise CniError(ERR_NO_ADDRESS, f"{requested.source}: requested IP {requested.ip} is held as a "
                                           f"conflict: {conflict.mac} answered for it at {when(conflict.since)}; "
                                           f"given back at {when(conflict.until)} (or by `underlay`, see README)")
        holder = f" to container {owner[0]}" if owner else ""
        raise CniError(ERR_NO_ADDRESS, f"{requested.source}: requested IP {requested.ip} is already "
                                       f"allocated{holder}")
    return r, requested.value


def when(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t != float("inf") else "never"


def exhausted(range_set, store, cooling=()):
    """Code 101 for a range set with nothing left to hand out, saying how its addresses are spent;
    `cooling` ({ip: when it comes back}): free ones held back by reuseCooldown."""
    conflicts = store.conflicts()
    t = tally(range_set, store.leased(), conflicts, cooling)
    msg = (f"no free address in range set {range_set.index} ({range_set.describe()}): "
           f"{t['addresses']} addresses, {t['excluded']} excluded, {t['aux']} aux, "
           f"{t['reserved']} reserved (network, broadcast, gateway), {t['in use']} in use")
    if t["conflict"]:
        msg += f", {t['conflict']} held as conflicts (conflictDetection)"
    if t["cooling"]:
        back = min(until for ip, until in cooling.items() if in_set(range_set, ip))
        msg += (f", {t['cooling']} released less than ipam.reuseCooldown ago: the first comes back at "
                f"{when(back)} (in {max(0.0, back - holds.now()):.0f} s)")
    return CniError(ERR_NO_ADDRESS, msg)


def in_set(range_set, text):
    ip = ipaddress.ip_address(text)
    return ip.version == range_set.version and any(r.may_hand_out(int(ip)) for r in range_set.ranges)


def tally(range_set, leased, conflicts=(), cooling=()):
    """How the addresses of a range set are spent; 'free' is what ADD could still hand out.
    `leased` may include the conflict records; those of `conflicts` count as 'conflict', not 'in use';
    `cooling` (free, but held back by reuseCooldown) count as 'cooling' and not as free."""
    def values(names):
        found = set()
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue  # not a lease: some other file in the directory
            if ip.version == range_set.version:
                found.add(int(ip))
        return found
    held, cools = values(conflicts), values(cooling)   # a cooling address is leased by nobody (an expired hold)
    kinds = {"in use": values(leased) - held - cools, "conflict": held, "cooling": cools - held}
    t = dict.fromkeys(("addresses", "usable", "excluded", "aux", *kinds), 0)
    for r in range_set.ranges:
        total, usable, excluded, aux = r.counts()
        t["addresses"] += total
        t["usable"] += usable
        t["excluded"] += excluded
        t["aux"] += aux
        for kind, found in kinds.items():
            t[kind] += sum(1 for v in found if r.may_hand_out(v))
    t["reserved"] = t["addresses"] - t["usable"] - t["excluded"] - t["aux"]
    t["free"] = t["usable"] - t["in use"] - t["conflict"] - t["cooling"]
    return t
