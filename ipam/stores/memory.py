"""The stores kept in memory, for tests and simulations: a lease store (MemoryStore) and a block store
(MemoryBlockStore), of the protocols in ipam/stores/protocols.py.

MemoryStore behaves as the file store does, ifname included (the reference's fake
store ignores it and so differs from the real one). Several MemoryStores may share
one `Leases` backing, as several processes share a data directory; several
MemoryBlockStores one `Pools`, as several nodes share an etcd prefix.
"""

import contextlib
import json
import threading

from ipam.blocks import Block
from ipam.stores import holds
from ipam.stores.block_leases import ADDING, BlockLeases, Lease, block_size_refused, hold_doc, lease_doc, parse, \
    released_cooling
from ipam.stores.lease_index import recordable_netns


class Leases:
    """The shared state: {ip: (containerID, ifname or None)}, {set_index: ip}, conflict records
    {ip: holds.Conflict}, release times {ip: epoch seconds} and a lock."""

    def __init__(self, leases=None, last=None):
        self.leases = dict(leases or {})
        self.last = dict(last or {})
        self.conflicts = {}
        self.released = {}
        self.lock = threading.Lock()


class Held:
    """`with store:` holds the store's lock (None: there is nothing to hold) until it is closed."""

    lock = None
    locked = False

    def __enter__(self):
        if self.lock is not None:
            self.lock.acquire()
            self.locked = True
        return self

    def __exit__(self, exc_type=None, exc=None, tb=None):
        self.close()
        return False

    def close(self):
        if self.locked:
            self.locked = False
            self.lock.release()


class MemoryStore(Held):
    def __init__(self, backing=None, reuse_cooldown=0):
        self.backing = backing if backing is not None else Leases()
        self.leases = self.backing.leases
        self.last = self.backing.last
        self.lock = self.backing.lock
        self.reuse_cooldown = reuse_cooldown

    def reserve(self, ip, container_id, ifname, set_index=None):
        if ip in self.leases or ip in self.backing.conflicts:
            return False
        self.leases[ip] = (container_id, ifname)
        self.backing.released.pop(ip, None)
        if set_index is not None:
            self.last[set_index] = ip
        return True

    def last_reserved(self, set_index):
        return self.last.get(set_index)

    def release(self, ip, container_id, ifname):
        owner = self.leases.get(ip)
        if owner is not None and owner[0] == container_id and owner[1] in (ifname, None):
            del self.leases[ip]
            if self.reuse_cooldown:
                self.backing.released[ip] = holds.now()

    def ips_of(self, container_id, ifname):
        return [ip for ip, (cid, i) in self.leases.items() if cid == container_id and i in (ifname, None)]

    def attachments(self):
        found = {}
        for ip, owner in self.leases.items():
            found.setdefault(owner, []).append(ip)
        return found

    def owner(self, ip):
        return self.leases.get(ip)

    def leased(self):
        return set(self.leases) | set(self.backing.conflicts)

    def hold_conflict(self, ip, container_id, ifname, mac, seconds):
        owner = self.leases.get(ip)
        if owner is None or owner[0] != container_id or owner[1] not in (ifname, None):
            return False
        del self.leases[ip]
        since = holds.now()
        self.backing.conflicts[ip] = holds.Conflict(holds.check_mac(mac), since, since + seconds)
        return True

    def conflicts(self):
        return dict(self.backing.conflicts)

    def release_conflict(self, ip):
        return self.backing.conflicts.pop(ip, None) is not None

    def cooling(self):
        if not self.reuse_cooldown:
            return {}
        now = holds.now()
        return {ip: t + self.reuse_cooldown for ip, t in self.backing.released.items()
                if t + self.reuse_cooldown > now and ip not in self.leases}


class Pools:
    """A block store's shared state, as one etcd prefix holds it (ipam/stores/etcd.py's keys, kept as
    Python values): leases and holds by address (their JSON text), blocks by key, each pool's block
    size, attachment records, sticky holds by pod; plus each node's own files (last reserved, records)
    and lock per network."""

    def __init__(self):
        self.leases = {}         # ip -> the lease's or hold's JSON text
        self.blocks = {}         # block key ("pools/<subnet>/blocks/<block>") -> Block
        self.sizes = {}          # subnet -> block prefix, fixed by the pool's first user
        self.records = {}        # (network, containerID, ifname or "", ip) -> {"node", "pending"?, "netns"?}
        self.sticky = {}         # (network, namespace, pod, ip) -> the hold's JSON text
        self.conflicts = {}      # (network, ip) -> the conflict record's JSON text
        self.node_files = {}     # (network, node) -> {"last": {set_index: ip}, name: bytes}
        self.locks = {}          # (network, node) -> the node's lock of the network
        self.revision = 0
        self.mutex = threading.Lock()   # each claim, release and completion is one atomic step

    def put_block(self, block):
        """Store a copy of `block` (deleted when empty), its revision the new one."""
        self.revision += 1
        block.revision = self.revision
        if block.empty:
            self.blocks.pop(block.key, None)
            block.revision = 0
        else:
            self.blocks[block.key] = copy_block(block)


def copy_block(block):
    return Block(block.first, block.last, block.key, block.node, block.used, block.held, block.revision, block.cooling)


class MemoryBlockStore(Held, BlockLeases):
    """The block store (ipam/stores/protocols.py BlockStore) in memory: cluster-ipam's policy over it
    behaves as over etcd, without etcd (its tests; simulations). Stores over one Pools share leases as
    nodes share an etcd prefix; `lock` takes the node's lock of the network, as the etcd store's files."""

    def __init__(self, backing, network, node, grids=(), pod=None, sticky_seconds=None, netns=None, lock=True,
                 reuse_cooldown=0):
        self.backing = backing
        self.reuse_cooldown = reuse_cooldown
        self.network, self.node, self.grids = network, node, list(grids)
        self.pod, self.sticky_seconds = pod, sticky_seconds
        self.netns = recordable_netns(netns)
        self.files = backing.node_files.setdefault((network, node), {"last": {}})
        self.lock = backing.locks.setdefault((network, node), threading.Lock()) if lock else None
        self.pools = {}          # subnet -> {first: Block} as last read
        self.foreign = set()
        self.mark = None         # the ADD's own mark, (containerID, ifname) in the node's files' ADDING (begin_add)
        self.unfinished = False
        self.may_have_claimed = False

    def close(self):
        if self.mark is not None and not self.unfinished and not self.may_have_claimed:
            self.files[ADDING].discard(self.mark)   # made by this ADD, which claimed nothing
        self.mark = None
        super().close()

    def status(self):
        pass    # memory always answers

    def limit_wait(self, seconds):
        pass    # nothing here waits

    def in_doubt(self):
        return None   # no answer is ever lost

    def claiming(self):
        return contextlib.nullcontext()   # the node's lock is held for the whole operation here

    # -- the node's own files ---------------------------------------------------

    def last_reserved(self, set_index):
        return self.files["last"].get(set_index)

    def set_last_reserved(self, set_index, ip):
        self.files["last"][set_index] = ip

    def keep_record(self, name, data):
        self.files[name] = data

    # -- attachment records ---------------------------------------------------

    def records_of(self, container_id, ifname):
        """[(ip, record)] of the attachment, by address as etcd lists its keys."""
        key = (self.network, container_id, ifname or "")
        return sorted((k[3], doc) for k, doc in self.backing.records.items() if k[:3] == key)

    def ips_of(self, container_id, ifname):
        return [ip for ip, _ in self.records_of(container_id, ifname)]

    def start_cached(self, container_id, ifname, name, data):
        return False   # no cache: every ADD reads first

    def begin_add(self, container_id, ifname):
        """As the etcd store's: the node's mark of the ADD (a set in its files here; the whole operation
        holds the node's lock, so none is ever held by another ADD)."""
        marks = self.files.setdefault(ADDING, set())
        self.mark = (container_id, ifname or "")
        self.unfinished = self.mark in marks
        marks.add(self.mark)

    def pending_and_done(self, container_id, ifname):
        pending, done = [], []
        for ip, doc in self.records_of(container_id, ifname):
            mine = doc.get("node") == self.node and (self.unfinished or doc.get("pending") is True)
            (pending if mine else done).append(ip)
        return pending, done

    def record(self):
        doc = {"node": self.node}
        if self.netns:
            doc["netns"] = self.netns
        return doc

    def complete(self, container_id, ifname, texts):
        if self.mark is not None:
            self.files[ADDING].discard(self.mark)
            self.mark = None

    def end_attachment(self, container_id, ifname):
        self.files.get(ADDING, set()).discard((container_id, ifname or ""))

    def drop_marks(self, keeps):
        marks = self.files.get(ADDING, set())
        marks -= {(cid, ifname) for cid, ifname in marks if not keeps(cid, ifname or None)}

    def attachment_records(self):
        found = {}
        for (network, cid, ifname, ip), doc in sorted(self.backing.records.items()):
            if network == self.network:
                found.setdefault((cid, ifname or None), []).append((ip, doc))
        return {owner: (docs[0][1].get("node"), netns_of(docs), [ip for ip, _ in docs])
                for owner, docs in found.items()}

    def attachment_nodes(self):
        return {doc.get("node") for doc in self.backing.records.values()}

    def forget(self, container_id, ifname, ip):
        self.backing.records.pop((self.network, container_id, ifname or "", ip), None)

    # -- blocks ---------------------------------------------------------------

    def block_key(self, grid, first):
        return f"pools/{grid.range.subnet}/blocks/{grid.key(first)}"

    def pool_blocks(self, grid):
        prefix = f"pools/{grid.range.subnet}/blocks/"
        return {b.first: copy_block(b) for key, b in self.backing.blocks.items() if key.startswith(prefix)}

    def blocks(self, grid):
        subnet = str(grid.range.subnet)
        if subnet not in self.pools:
            size = self.backing.sizes.setdefault(subnet, grid.prefix)
            if size != grid.prefix:
                raise block_size_refused(grid, size)
            self.pools[subnet] = self.pool_blocks(grid)
        return self.pools[subnet]

    def own_blocks(self, grid):
        return [b for b in self.blocks(grid).values() if b.node == self.node]

    def block(self, grid, first):
        blocks = self.blocks(grid)
        if first not in blocks:
            blocks[first] = Block(first, first + grid.size - 1, self.block_key(grid, first))
        return blocks[first]

    def block_owners(self):
        return [(b.node, copy_block(b)) for b in self.backing.blocks.values()]

    def orphan(self, block):
        with self.backing.mutex:
            now = self.backing.blocks.get(block.key)
            if (now.revision if now is not None else 0) != block.revision:
                return False
            block.node = None
            self.backing.put_block(copy_block(block))   # `block` stays as read, as etcd's answer leaves it
            return True

    # -- leases and holds -----------------------------------------------------

    def read(self, ip):
        raw = self.backing.leases.get(ip)
        return Lease(ip, raw) if raw is not None else None

    def all_leases(self):
        return [Lease(ip, raw) for ip, raw in self.backing.leases.items()]

    def holds(self):
        ips = [ip for (network, _, _, ip) in self.backing.sticky if network == self.network]
        return [lease for lease in map(self.read, ips) if lease is not None]

    def holds_of(self, namespace, pod):
        ips = [k[3] for k in self.backing.sticky if k[:3] == (self.network, namespace, pod)]
        return [lease for lease in map(self.read, ips) if lease is not None and lease.hold
                and lease.doc.get("namespace") == namespace and lease.doc.get("pod") == pod
                and lease.doc.get("network") == self.network]

    def claim(self, grid, block, value, container_id, ifname, hold=None):
        text = grid.range.text(value)
        b = self.backing
        with b.mutex:
            now = b.blocks.get(block.key)
            current = b.leases.get(text)
            if current != (None if hold is None else hold.raw) or (now.revision if now else 0) != block.revision:
                fresh = now or Block(block.first, block.last, block.key)
                block.node, block.used, block.held, block.revision, block.cooling = \
                    fresh.node, set(fresh.used), dict(fresh.held), fresh.revision, dict(fresh.cooling)
                refused = True
            else:
                block.node = block.node or self.node
                block.used.add(value - block.first)
                block.held.pop(value - block.first, None)
                block.cooling.pop(value - block.first, None)
                block.prune_cooling(holds.now(), self.reuse_cooldown)
                b.put_block(block)
                b.leases[text] = json.dumps(lease_doc(self.network, self.node, self.pod, grid, block, container_id,
                                                      ifname), separators=(",", ":"))
                b.records[(self.network, container_id, ifname or "", text)] = self.record()
                self.may_have_claimed = True
                if hold is not None and hold.hold:
                    b.sticky.pop((hold.doc.get("network", ""), hold.doc.get("namespace", ""),
                                  hold.doc.get("pod", ""), text), None)
                refused = False
        if refused:
            return self.refused(grid, block, value, container_id, ifname, hold, current)
        return True

    def conflicts(self):
        found = {}
        for (network, ip), raw in self.backing.conflicts.items():
            record = holds.conflict_from_doc(Lease(ip, raw).doc) if network == self.network else None
            if record is not None:
                found[ip] = record
        return found

    def make_conflict(self, lease, doc):
        b, raw = self.backing, json.dumps(doc, separators=(",", ":"))
        with b.mutex:
            if b.leases.get(lease.ip) != lease.raw:
                return False
            b.leases[lease.ip] = b.conflicts[(self.network, lease.ip)] = raw
            b.records.pop((self.network, str(lease.doc.get("containerID")), lease.doc.get("ifname") or "",
                           lease.ip), None)
        return True

    def release_lease(self, lease, sticky_seconds):
        doc, b = lease.doc, self.backing
        hold = None if lease.conflict else hold_doc(doc, sticky_seconds, self.node)
        with b.mutex:
            if b.leases.get(lease.ip) != lease.raw:
                return False     # released, or re-leased, by someone else meanwhile
            block = b.blocks.get(f"pools/{doc.get('pool')}/blocks/{doc.get('block')}")
            if block is not None:
                block = copy_block(block)
                offset = parse(lease.ip)[1] - block.first
                block.used.discard(offset)
                block.held.pop(offset, None)
                released_cooling(block, offset, lease, self.reuse_cooldown, holds.now())
                if hold is not None:
                    block.held[offset] = hold["until"]
                b.put_block(block)
            if hold is not None:
                b.leases[lease.ip] = json.dumps(hold, separators=(",", ":"))
                b.sticky[(hold["network"], doc.get("namespace"), doc.get("pod"), lease.ip)] = b.leases[lease.ip]
            else:
                del b.leases[lease.ip]
                if lease.hold:
                    b.sticky.pop((str(doc.get("network")), str(doc.get("namespace")), str(doc.get("pod")),
                                  lease.ip), None)
                b.conflicts.pop((str(doc.get("network")), lease.ip), None)
            if not lease.hold and not lease.conflict:
                b.records.pop((str(doc.get("network")), str(doc.get("containerID")), doc.get("ifname") or "",
                               lease.ip), None)
        self.pools.pop(str(doc.get("pool")), None)   # re-read when needed again
        return True


def netns_of(docs):
    """The one netns the attachment's records name, else None (none, or they disagree)."""
    seen = {recordable_netns(doc.get("netns")) for _, doc in docs}
    return seen.pop() if len(seen) == 1 else None
