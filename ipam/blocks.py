"""Blocks of a cluster-wide pool: the grid nodes claim, and what each block holds.

A pool is one subnet (pools are keyed by subnet, never by network name). It is
cut into aligned blocks of `blockSize` (a prefix length; a subnet smaller than a
block is one block). A node claims whole blocks and allocates inside them; when
no block is free it borrows single addresses from other nodes' blocks (Calico's
block affinity). Each block's etcd value says who owns it and which of its
addresses are taken, so one range over the pool shows every free address
without reading a lease:

    {"node": "n1", "used": [offset, ...], "held": {"offset": until}, "cooling": {"offset": released}}

`used` are leases (and conflict records: taken until given back), `held` sticky
addresses kept for a pod until a wall-clock time (ipam/cluster.py), `cooling`
the release times of addresses released with reuseCooldown (free, but not
handed out before released + reuseCooldown; dropped once past it). "node": null is an orphan: its node was released by
the dead-node command while borrowers still held addresses in it; any node may
adopt it. A block with nothing used or held is deleted (returned to the pool).
"""

import json
import zlib

DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}


class Block:
    """One block's state as read from etcd (revision 0: no key, nobody owns it)."""

    __slots__ = ("first", "last", "key", "node", "used", "held", "revision", "cooling")

    def __init__(self, first, last, key, node=None, used=(), held=None, revision=0, cooling=None):
        self.first, self.last, self.key = first, last, key
        self.node = node
        self.used = set(used)
        self.held = dict(held or {})          # offset -> until (epoch seconds)
        self.revision = revision
        self.cooling = dict(cooling or {})    # offset -> released (epoch seconds)

    @classmethod
    def decode(cls, first, last, key, value, revision):
        try:
            doc = json.loads(value)
            node = doc.get("node")
            used = [int(o) for o in doc.get("used", ())]
            held = {int(o): float(t) for o, t in (doc.get("held") or {}).items()}
            cooling = {int(o): float(t) for o, t in (doc.get("cooling") or {}).items()}
        except (ValueError, TypeError, AttributeError):
            node, used, held, cooling = "?", range(last - first + 1), {}, {}   # unreadable: full, nobody's we know
        return cls(first, last, key, node if node is None or isinstance(node, str) else "?", used, held, revision,
                   cooling)

    def encode(self):
        doc = {"node": self.node, "used": sorted(self.used)}
        if self.held:
            doc["held"] = {str(o): t for o, t in sorted(self.held.items())}
        if self.cooling:
            doc["cooling"] = {str(o): t for o, t in sorted(self.cooling.items())}
        return json.dumps(doc, separators=(",", ":"))

    def cools(self, value, now, cooldown):
        """Released less than `cooldown` seconds before `now` (free, but not to be handed out yet)."""
        released = self.cooling.get(value - self.first)
        return released is not None and released + cooldown > now

    def prune_cooling(self, now, cooldown):
        """Forget the release times whose cool-down is over. With cooldown 0 (a writer that does not
        use it) they are left as they are, as every store leaves them."""
        if cooldown:
            self.cooling = {o: t for o, t in self.cooling.items() if t + cooldown > now}

    def taken(self, value, now):
        """Leased, or held for a pod until after `now`."""
        offset = value - self.first
        return offset in self.used or (offset in self.held and self.held[offset] > now)

    @property
    def empty(self):
        return not self.used and not self.held and not self.cooling

    def values(self):
        """Every used or held address, as ints."""
        return [self.first + o for o in self.used] + [self.first + o for o in self.held]


class Grid:
    """The blocks of one range (subnet, rangeStart..rangeEnd) for one block size."""

    def __init__(self, r, block_prefix):
        self.range = r
        self.prefix = max(block_prefix, r.subnet.prefixlen)
        self.host_bits = r.subnet.max_prefixlen - self.prefix
        self.size = 1 << self.host_bits

    def first_of(self, value):
        return value >> self.host_bits << self.host_bits

    def key(self, first):
        return f"{self.range.text(first)}/{self.prefix}"

    def block_count(self, prefix=None):
        """How many blocks (of this grid's size, or of `prefix`) rangeStart..rangeEnd touches."""
        host_bits = self.host_bits if prefix is None else self.range.subnet.max_prefixlen - prefix
        return ((self.range.end >> host_bits) - (self.range.start >> host_bits)) + 1

    def usable(self, first):
        """Some address of block `first` may be handed out (inside the range, not blocked)."""
        v = self.range.next_available(first)
        return v is not None and v <= first + self.size - 1

    def next_usable_block(self, first):
        """The first block at or after `first` with an address to hand out; None past the range."""
        v = self.range.next_available(first)
        return None if v is None else self.first_of(v)

    def blocks_from(self, node):
        """Block starts holding usable addresses, beginning at one picked from the node's name
        (so nodes claiming at once spread over the range), wrapping once; a whereabouts range's
        from its lowest (whereabouts hands out the lowest free address)."""
        r = self.range
        lo, hi = self.first_of(r.start), self.first_of(r.end)
        start = lo if r.whereabouts else lo + (zlib.crc32(node.encode()) % self.block_count() << self.host_bits)
        for begin, stop in ((start, hi), (lo, start - 1)):
            first = self.next_usable_block(begin)
            while first is not None and first <= stop:
                yield first
                first = self.next_usable_block(first + self.size)

    def free_in(self, block, now, after=None):
        """Addresses of `block` that may be handed out and are not taken, ascending; from `after`+1 if given."""
        r = self.range
        v = r.next_available(block.first if after is None else max(block.first, after + 1))
        last = block.first + self.size - 1
        while v is not None and v <= last:
            if not block.taken(v, now):
                yield v
            v = r.next_available(v + 1)
