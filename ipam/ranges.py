"""Address ranges of host-local, in canonical form.

Config is turned into RangeSets once, with every check done here, so the
allocator sees only clean data. Addresses are ints; what may never be handed
out (network, broadcast, gateway, aux and excluded addresses) is a sorted list
of merged, non-adjacent intervals, so nothing is ever expanded address by
address: a /8 with 100 000 exclusions costs a sort, not a loop.
"""

import bisect
import ipaddress

from cni.config import parse_cidr
from cni.errors import CniError, config_error


def parse_ip(text, field):
    if not isinstance(text, str):
        raise config_error(field, f"{text!r} is not an IP address string")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise config_error(field, f"{text!r} is not a valid IP address") from None


def parse_subnet(text, field):
    return parse_cidr(text, field)


# inet_pton parses an address in ~0.15 us where ipaddress takes ~1.5 us: what makes 100 000
# exclusions cost tens of ms instead of a second. It accepts exactly the strings ipaddress
# accepts (tests/hostile/test_huge.py) except IPv6 scope IDs, which go the slow way. Importing
# it costs ~0.2 ms, so only long lists turn it on.
FAST_PARSING_FROM = 64
_families = ()


def use_fast_parsing(entries):
    global _families, _inet_pton
    if len(entries) >= FAST_PARSING_FROM and not _families:
        from _socket import AF_INET, AF_INET6, inet_pton
        _families, _inet_pton = ((4, AF_INET), (6, AF_INET6)), inet_pton


def fast_value(text):
    """(version, int) of an address string, or None (not an address, or fast parsing is off)."""
    for version, family in _families:
        try:
            return version, int.from_bytes(_inet_pton(family, text), "big")
        except (OSError, ValueError):
            pass
    return None


def address_value(text, field):
    fast = fast_value(text)
    if fast is not None:
        return fast
    ip = parse_ip(text, field)
    return ip.version, int(ip)


def parse_exclusion(text, field, index=None, masked=None):
    """'10.0.0.5', '10.0.0.0/28' or '10.0.0.5-10.0.0.9' -> (version, first, last).
    With `index`, the field is `field[index]`, spelt out only when needed (100 000 entries).

    A CIDR with host bits set is taken as the network it names, as releases before the one
    CIDR rule (cni.config.parse_cidr) and whereabouts took it: refusing it now would stop the
    pods of a network that worked. With `masked`, (field, entry, network) of each is appended
    to it, to be warned of."""
    try:
        return exclusion_interval(text, field, index, masked)
    except CniError:
        if index is None:
            raise
        return exclusion_interval(text, f"{field}[{index}]", None, masked)   # raises again, naming the entry


def exclusion_interval(text, field, index, masked):
    if not isinstance(text, str):
        raise config_error(field, f"{text!r} is not an address, CIDR or first-last range")
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        version, first = address_value(first_text.strip(), field)
        last_version, last = address_value(last_text.strip(), field)
        if version != last_version:
            raise config_error(field, f"{text!r} mixes IPv4 and IPv6")
        if last < first:
            raise config_error(field, f"{text!r}: the last address comes before the first")
        return version, first, last
    if "/" in text:
        address, _, plen = text.partition("/")
        fast = fast_value(address) if plen.isascii() and plen.isdigit() and len(plen) <= 3 else None
        bits = {4: 32, 6: 128}.get(fast and fast[0])
        if fast is not None and int(plen) <= bits:
            host = (1 << (bits - int(plen))) - 1
            if not fast[1] & host:
                return fast[0], fast[1], fast[1] | host
        network = masked_cidr(text)
        if network is None:
            network = parse_cidr(text, field)   # the slow way, and every refusal from one rule
        elif masked is not None:
            masked.append((field if index is None else f"{field}[{index}]", text, network))
        return network.version, int(network.network_address), int(network.broadcast_address)
    version, value = address_value(text, field)
    return version, value, value


def masked_cidr(text):
    """The network of a CIDR whose only fault is host bits set ('10.97.0.100/27' -> 10.97.0.96/27), else None."""
    try:
        ipaddress.ip_network(text, strict=True)
        return None
    except ValueError:
        pass
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def merge(intervals):
    """Sort and merge overlapping or adjacent (first, last) intervals."""
    merged = []
    append = merged.append
    lo = hi = None
    for first, last in sorted(intervals):
        if hi is not None and first <= hi + 1:
            if last > hi:
                hi = last
        else:
            if hi is not None:
                append((lo, hi))
            lo, hi = first, last
    if hi is not None:
        append((lo, hi))
    return merged


def add_points(merged, points):
    """merged intervals plus a few single addresses, still merged: a bisect per point,
    not another pass over 100 000 intervals."""
    out = list(merged)
    for p in sorted(set(points)):
        i = bisect.bisect_right(out, (p, float("inf")))   # intervals starting at or before p
        lo, hi = p, p
        if i > 0 and out[i - 1][1] >= p - 1:               # touches the one before
            i -= 1
            lo, hi = out[i][0], max(out[i][1], p)
            del out[i]
        if i < len(out) and out[i][0] <= hi + 1:            # touches the one after
            hi = max(hi, out[i][1])
            del out[i]
        out.insert(i, (lo, hi))
    return out


def count_within(intervals, first, last):
    """How many addresses of merged `intervals` lie in [first, last]."""
    if intervals and intervals[0][0] >= first and intervals[-1][1] <= last:   # the usual case: all inside
        return sum(hi - lo for lo, hi in intervals) + len(intervals)
    total = 0
    for lo, hi in intervals:
        lo, hi = max(lo, first), min(hi, last)
        if lo <= hi:
            total += hi - lo + 1
    return total


def to_text(version, value):
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


# A range spec's key that JSON cannot write: the range was made from whereabouts' keys (ipam/cluster.py)
# and takes whereabouts' rules (Range.whereabouts).
WHEREABOUTS = ("whereabouts",)


def count_multiples_of_256(first, last):
    return last // 256 - (first - 1) // 256 if first <= last else 0


class Range:
    """One {subnet, rangeStart, rangeEnd, gateway} with what it must never hand out.

    A whereabouts range keeps whereabouts' rules: its subnet's first and last addresses are never
    handed out in IPv6 either, an IPv4 address ending in .0 never (its README: old equipment takes
    them for invalid), its gateway is only what the config says (any address: reported, and kept
    from pods when it lies in the range), and nodes claim its blocks lowest first, so addresses go
    out in ascending order from the range's first, as whereabouts hands them out."""

    def __init__(self, subnet, start, end, gateway, exclusions, field, whereabouts=False):
        self.subnet = subnet
        self.whereabouts = whereabouts
        self.skip_zero = whereabouts and subnet.version == 4
        self.version = subnet.version
        self.start = start
        self.end = end
        self.gateway = gateway
        self.field = field
        self.exclusions = exclusions      # [(first, last, ("ipam.exclude", 2, "10.0.0.8/29"))], clipped to the subnet
        self.excluded = merge((lo, hi) for lo, hi, _ in exclusions)
        self.aux = {}                     # int -> aux name, filled by range_sets
        self.network = int(subnet.network_address)
        self.last = int(subnet.broadcast_address)
        self.broadcast = self.last if self.version == 4 or whereabouts else None
        self.blocked = []                 # merged: excluded + aux + network/broadcast/gateway

    def finish(self):
        special = [a for a in (self.network, self.broadcast, self.gateway) if a is not None and self.in_subnet(a)]
        self.blocked = add_points(self.excluded, special + list(self.aux))
        self._blocked_starts = [lo for lo, _ in self.blocked]

    def in_subnet(self, value):
        return self.network <= value <= self.last

    def in_range(self, value):
        return self.start <= value <= self.end

    def _blocking(self, value):
        """The merged blocked interval holding value, or None."""
        i = bisect.bisect_right(self._blocked_starts, value) - 1
        if i >= 0 and self.blocked[i][1] >= value:
            return self.blocked[i]
        if self.skip_zero and not value & 0xff:
            return value, value
        return None

    def may_hand_out(self, value):
        return self.in_range(value) and self._blocking(value) is None

    def next_available(self, value):
        """The first address >= value in this range that may be handed out, or None."""
        value = max(value, self.start)
        while value <= self.end:
            blocked = self._blocking(value)
            if blocked is None:
                return value
            value = blocked[1] + 1   # merged intervals: one jump clears it
        return None

    def why_refused(self, value):
        """Why `value` may not be given to a pod, or None if it may."""
        if value == self.network:
            return "it is the network address"
        if value == self.broadcast:
            return "it is the broadcast address"
        if value == self.gateway:
            return "it is the gateway"
        if value in self.aux:
            return f"it is aux address {self.aux[value]!r}"
        if self.skip_zero and not value & 0xff:
            return "it ends in .0, which a whereabouts range never hands out"
        for lo, hi, (field, i, entry) in self.exclusions:  # only requested addresses come here: a scan is fine
            if lo <= value <= hi:
                return f"it is excluded by {field}[{i}] ({entry})"
        return None

    def _unblocked_zeros(self):
        """How many .0 addresses of rangeStart..rangeEnd skip_zero keeps from pods beyond `blocked`."""
        if not self.skip_zero:
            return 0
        zeros = count_multiples_of_256(self.start, self.end)
        for lo, hi in self.blocked:
            zeros -= count_multiples_of_256(max(lo, self.start), min(hi, self.end))
        return zeros

    def text(self, value):
        return to_text(self.version, value)

    def describe(self):
        return f"{self.subnet} {self.text(self.start)}-{self.text(self.end)}"

    def counts(self):
        """(addresses, usable before leases, excluded, aux) within rangeStart..rangeEnd."""
        total = self.end - self.start + 1
        usable = total - count_within(self.blocked, self.start, self.end) - self._unblocked_zeros()
        excluded = count_within(self.excluded, self.start, self.end)
        aux = sum(1 for a in self.aux if self.in_range(a) and not count_within(self.excluded, a, a))
        return total, usable, excluded, aux


class RangeSet:
    """A list of disjoint ranges of one family; each ADD takes one address from it."""

    def __init__(self, index, ranges):
        self.index = index
        self.ranges = ranges
        self.version = ranges[0].version

    def range_of(self, ip):
        """The range whose rangeStart..rangeEnd holds ip (an ipaddress object), or None."""
        return next((r for r in self._family(ip) if r.in_range(int(ip))), None)

    def subnet_range_of(self, ip):
        """The range whose subnet holds ip (an ipaddress object), or None."""
        return next((r for r in self._family(ip) if r.in_subnet(int(ip))), None)

    def _family(self, ip):
        # as integers, 10.1.0.5 and ::a01:5 are equal: compare within one family only
        return self.ranges if ip is not None and ip.version == self.version else ()

    def candidates(self, last_reserved):
        """Addresses in round-robin order starting after `last_reserved` (an ipaddress object or None)."""
        ranges = self.ranges
        first = 0
        begin = ranges[0].start
        held_by = self.range_of(last_reserved)
        if held_by is not None:
            first, begin = ranges.index(held_by), int(last_reserved) + 1
        order = ranges[first:] + ranges[:first]
        for n, r in enumerate(order):
            value = r.next_available(begin if n == 0 else r.start)
            while value is not None:
                yield r, value
                value = r.next_available(value + 1)
        # wrap around: the first range up to where we began
        r = order[0]
        value = r.next_available(r.start)
        while value is not None and value < begin:
            yield r, value
            value = r.next_available(value + 1)

    def describe(self):
        return ", ".join(r.describe() for r in self.ranges)


def canonical_range(spec, field, top_exclusions, masked=None):
    if not isinstance(spec, dict):
        raise config_error(field, "must be an object with a subnet")
    if "subnet" not in spec:
        raise config_error(f"{field}.subnet", "is required")
    subnet = parse_subnet(spec["subnet"], f"{field}.subnet")
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise config_error(f"{field}.subnet", f"{subnet} is too small to allocate from "
                                              f"(at most /{subnet.max_prefixlen - 2})")
    last_in_subnet = int(subnet.broadcast_address)
    network = int(subnet.network_address)

    def address(key, default):
        if spec.get(key) in (None, ""):
            return default
        ip = parse_ip(spec[key], f"{field}.{key}")
        if ip.version != subnet.version or not network <= int(ip) <= last_in_subnet:
            raise config_error(f"{field}.{key}", f"{ip} is outside subnet {subnet}")
        return int(ip)

    whereabouts = spec.get(WHEREABOUTS, False)
    if whereabouts:
        gateway = whereabouts_gateway(spec.get("gateway"), subnet)
    else:
        gateway = address("gateway", network + 1)
    start = address("rangeStart", network + 1)
    end = address("rangeEnd", last_in_subnet - 1 if subnet.version == 4 or whereabouts else last_in_subnet)
    if start > end:
        raise config_error(f"{field}.rangeStart", f"{to_text(subnet.version, start)} comes after "
                                                  f"rangeEnd {to_text(subnet.version, end)}")
    exclusions = []
    exclude = spec.get("exclude") or []
    if not isinstance(exclude, list):
        raise config_error(f"{field}.exclude", "must be a list")
    label = f"{field}.exclude"   # rule names are spelt out only when one refuses an address
    use_fast_parsing(exclude)
    append = exclusions.append
    for i, entry in enumerate(exclude):
        version, lo, hi = parse_exclusion(entry, label, i, masked)
        if version != subnet.version or hi < network or lo > last_in_subnet:
            raise config_error(f"{label}[{i}]", f"{entry!r} lies outside subnet {subnet}")
        append((lo if lo > network else network, hi if hi < last_in_subnet else last_in_subnet, (label, i, entry)))
    # top-level ones may lie in another subnet: only the part in this one counts here
    exclusions += [(max(lo, network), min(hi, last_in_subnet), ("ipam.exclude", i, entry))
                   for version, lo, hi, i, entry in top_exclusions
                   if version == subnet.version and hi >= network and lo <= last_in_subnet]
    return Range(subnet, start, end, gateway, exclusions, field, whereabouts)


def whereabouts_gateway(text, subnet):
    """whereabouts' `gateway`: none unless given, and then any address of the range's family (it
    only reports it; its own etcd example names 192.168.2.1 for 192.168.2.224/28)."""
    if text in (None, ""):
        return None
    ip = parse_ip(text, "ipam.gateway")
    if ip.version != subnet.version:
        raise config_error("ipam.gateway", f"{ip} is not of the family of ipam.range ({subnet})")
    return int(ip)


def parse_top_exclusions(ipam, masked=None):
    exclude = ipam.get("exclude") or []
    if not isinstance(exclude, list):
        raise config_error("ipam.exclude", "must be a list")
    use_fast_parsing(exclude)
    return [parse_exclusion(entry, "ipam.exclude", i, masked) + (i, entry) for i, entry in enumerate(exclude)]


def overlap(a, b):
    return a.version == b.version and a.start <= b.end and b.start <= a.end


def check_overlaps(sets):
    """No two ranges of a network may overlap, in one set or across sets. A sweep over the
    ranges sorted by start (n log n: 60 000 range sets took minutes pairwise); of the
    overlaps it meets, the one whose later range comes first in the config is reported."""
    found = None
    for version in (4, 6):
        ranges = sorted(((r.start, (s.index, j), r) for s in sets for j, r in enumerate(s.ranges)
                         if r.version == version), key=lambda item: (item[0], item[1]))
        reach = None   # (end, position, range) of the range reaching furthest so far
        for start, position, r in ranges:
            if reach is not None and start <= reach[0]:
                later, earlier = max((position, r), (reach[1], reach[2]), key=lambda x: x[0]), \
                    min((position, r), (reach[1], reach[2]), key=lambda x: x[0])
                if found is None or (later[0], earlier[0]) < (found[0][0], found[1][0]):
                    found = (later, earlier)
            if reach is None or r.end > reach[0]:
                reach = (r.end, position, r)
    if found is not None:
        ((set_index, _), r), ((other_set, _), other) = found
        if set_index == other_set:
            raise config_error(r.field, f"{r.describe()} overlaps {other.field} {other.describe()}")
        raise config_error(r.field, f"{r.describe()} overlaps range set {other_set} "
                                    f"({other.field} {other.describe()})")


MAX_RANGE_SETS = 64   # as the schemas say
MAX_RANGES = 4096


def host_shim_aux(config):
    """The aux entries of a network's hostShim (cni/net/shim.py): one address, or one per family,
    never given to a pod."""
    shim = config.get("hostShim")
    addresses = shim.get("address") if isinstance(shim, dict) else []
    return [("hostShim.address", "hostShim", a) for a in (addresses if isinstance(addresses, list) else [addresses])]


def range_sets(ipam, runtime_ranges=None, extra_aux=(), warnings=None):
    """The canonical RangeSets of an `ipam` section (plus runtimeConfig.ipRanges first).

    extra_aux: more (field, name, address) aux entries, e.g. the hostShim's address.
    warnings: a list (a request's) to append what is accepted but should be written otherwise."""
    masked = []
    top_exclusions = parse_top_exclusions(ipam, masked)
    specs = []  # (field, list of range dicts)
    if runtime_ranges:
        if not isinstance(runtime_ranges, list):
            raise config_error("runtimeConfig.ipRanges", "must be a list of range sets")
        specs += [(f"runtimeConfig.ipRanges[{i}]", s) for i, s in enumerate(runtime_ranges)]
    if ipam.get("subnet"):
        legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
        specs.append(("ipam", [legacy]))
    ranges = ipam.get("ranges") or []
    if not isinstance(ranges, list):
        raise config_error("ipam.ranges", "must be a list of range sets")
    specs += [(f"ipam.ranges[{i}]", s) for i, s in enumerate(ranges)]
    if not specs:
        raise config_error("ipam.ranges", "no IP ranges specified")
    total = sum(len(spec) if isinstance(spec, list) else 1 for _, spec in specs)
    if total > MAX_RANGES:
        raise config_error("ipam.ranges", f"{total} ranges; at most {MAX_RANGES} are supported")
    if len(specs) > MAX_RANGE_SETS:
        # each set gives every pod one address (a lease file, an address on the interface)
        raise config_error("ipam.ranges", f"{len(specs)} range sets; at most {MAX_RANGE_SETS} are supported "
                                          "(each gives every pod an address: dual stack needs 2)")

    sets = []
    for index, (field, spec) in enumerate(specs):
        if not isinstance(spec, list) or not spec:
            raise config_error(field, "a range set must be a non-empty list of ranges")
        members = []
        for j, r in enumerate(spec):
            rfield = "ipam" if field == "ipam" else f"{field}[{j}]"
            members.append(canonical_range(r, rfield, top_exclusions, masked))
        for r in members:
            if r.version != members[0].version:
                raise config_error(r.field, f"{r.subnet} mixes address families within one range set")
        sets.append(RangeSet(index, members))
    check_overlaps(sets)

    spans = [(r.version, r.network, r.last) for s in sets for r in s.ranges]
    for version, lo, hi, i, _ in top_exclusions:
        if not any(v == version and first <= hi and lo <= last for v, first, last in spans):
            raise config_error(f"ipam.exclude[{i}]", f"{to_text(version, lo)} lies outside every subnet "
                                                     "of this network")

    aux = ipam.get("auxAddresses") or {}
    if not isinstance(aux, dict):
        raise config_error("ipam.auxAddresses", "must be an object mapping names to addresses")
    entries = [(f"ipam.auxAddresses.{name}", name, text) for name, text in aux.items()] + list(extra_aux)
    for field, name, text in entries:
        ip = parse_ip(text, field)
        holders = [r for s in sets for r in s.ranges if r.version == ip.version and r.in_subnet(int(ip))]
        if not holders:
            raise config_error(field, f"{ip} lies outside every subnet of this network")
        for r in holders:
            r.aux[int(ip)] = name
    for s in sets:
        for r in s.ranges:
            r.finish()
    if warnings is not None:
        warnings += [f"{field}: {entry} has host bits set; excluded as {network}, the network it names "
                     f"(write {network} to say so)" for field, entry, network in masked]
    return sets
