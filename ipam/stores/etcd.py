"""cluster-ipam's lease store in etcd: the ipam/stores/disk.py protocol plus blocks, holds and node listings.

Keys under the prefix (default /underlay/ipam):

    ips/<ip>                                the lease (or a sticky hold) of one address, JSON:
                                            {network, containerID, ifname, node, namespace, pod,
                                             time, pool, block}; a hold: {sticky, network, namespace,
                                             pod, until, pool, block}
    pools/<subnet>/config                   {"blockSize": prefix}, fixed by the pool's first user
    pools/<subnet>/blocks/<block>           the block (ipam/blocks.py): owner, used and held offsets
    attachments/<network>/<cid>@<ifname>/<ip>   {"node": ..., "pending": true, "netns": ...} from the
                                            claim until its ADD completes, then {"node": ..., "netns":
                                            ...}: DEL, CHECK and GC read one prefix; "netns" (the ADD's
                                            CNI_NETNS, when absolute) lets the node's agent heal a missed
                                            DEL; records written before it have none and are never healed
    sticky/<network>/<namespace>/<pod>/<ip>     the hold again, found by the pod's name

A claim marks its attachment record pending; the ADD clears the mark (one more
transaction, `complete`) once every range set has its address. A lease still
pending belongs to an ADD that never answered success (its claim's answer lost,
etcd gone before the read-back and the rollback): the runtime's retry of that
ADD recognises it as its own and releases it, where a second ADD of an
attachment that succeeded is refused as host-local refuses it.

Address keys are global, not per pool: two networks whose subnets overlap can
never hand out one address twice. Every claim is ONE transaction: the address
key absent (or still the very hold being taken) and the block unchanged since it
was read (so still ours, or, when borrowing, still its owner's with the same
addresses taken), putting lease, attachment and block together. Every release
is one transaction conditioned on the lease being exactly the one read (so its
owner) and the block unchanged. No cluster-wide lock.
"""

import ipaddress
import json
import time

from cni.errors import ERR_INVALID_CONFIG, ERR_TRY_AGAIN, CniError
from ipam import etcd
from ipam.blocks import Block
from ipam.stores.lease_index import recordable_netns

# Claims and releases retried after losing a race on the block (others allocate in it too).
MAX_RACES = 200
# A write repeated after etcd lost it (its answer lost, the outcome read back: not applied).
LOST_WRITES = 3


def maybe_applied(error):
    """A write whose answer was lost (ipam/etcd.py never resends one): etcd may have applied it."""
    return error.code == ERR_TRY_AGAIN and "may have been applied" in error.msg


def now_text(now):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


class Lease:
    """One address key read from etcd."""

    def __init__(self, ip, raw):
        self.ip = ip
        self.raw = raw
        try:
            self.doc = json.loads(raw)
            if not isinstance(self.doc, dict):
                raise ValueError
        except ValueError:
            self.doc = {}

    @property
    def hold(self):
        return bool(self.doc.get("sticky"))

    def owner(self):
        return None if self.hold else (self.doc.get("containerID"), self.doc.get("ifname"))

    def expired(self, now):
        until = self.doc.get("until")
        return self.hold and isinstance(until, (int, float)) and until <= now


class EtcdStore:
    """One network's view, for one operation. `grids`: ipam/blocks.py Grids of the network's ranges."""

    def __init__(self, client, prefix, network, node, grids=(), files=None, pod=None, sticky_seconds=None,
                 netns=None):
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.network = network
        self.node = node
        self.grids = list(grids)
        self.files = files              # ipam/stores/lease_files.py: the node-local lock and last-reserved cache
        self.pod = pod                  # (namespace, name) from K8S_POD_*, or None
        self.sticky_seconds = sticky_seconds
        self.netns = recordable_netns(netns)   # the pod's, recorded in its attachment records (healing)
        self.pools = {}                 # subnet -> {first: Block} as last read
        self.foreign = set()            # (version, value) taken outside any block we read (an overlapping pool)
        self.inflight = None            # the address of a claim etcd may have applied when its answer was lost

    # -- keys -----------------------------------------------------------------

    def k(self, *parts):
        return "/".join((self.prefix,) + parts)

    def k_ip(self, text):
        return self.k("ips", text)

    def k_attachment(self, cid, ifname, text=""):
        return self.k("attachments", self.network, f"{cid}@{ifname or ''}", text)

    def k_sticky(self, network, namespace, pod, text=""):
        return self.k("sticky", network, namespace, pod, text)

    # -- the protocol ---------------------------------------------------------

    def __enter__(self):
        if self.files is not None:
            try:
                # etcd before the node's lock: with etcd down, every operation of the node says so
                # within requestTimeout, instead of queueing behind holders that each wait out theirs
                # and answering "lock held" at lockTimeout.
                self.reachable()
                try:
                    self.files.lock()
                except CniError as locked:
                    if locked.code == ERR_TRY_AGAIN:
                        self.reachable(f"; meanwhile {locked.msg}")   # etcd gone since: the likely cause
                    raise
            except BaseException:
                self.close()
                raise
        return self

    def reachable(self, meanwhile=""):
        """One linearizable read (of a key that never exists): etcd answers, or its code-11 error is raised."""
        try:
            self.client.get(self.k("attachments", self.network))
        except CniError as e:
            raise CniError(e.code, e.msg, f"{e.details}{meanwhile}") from None

    def __exit__(self, exc_type=None, exc=None, tb=None):
        self.close()
        return False

    def close(self):
        if self.files is not None:
            self.files.close()
            self.files = None
        self.client.close()

    def reserve(self, ip, container_id, ifname, set_index=None):
        version, value = self.parse(ip)
        grid = self.grid_of(version, value)
        if grid is None:
            raise CniError(ERR_INVALID_CONFIG, f"{ip} is in no range of network {self.network}")
        for _ in range(MAX_RACES):
            block = self.block(grid, grid.first_of(value))
            if block.taken(value, time.time()) or (version, value) in self.foreign:
                return False
            outcome = self.claim(grid, block, value, container_id, ifname)
            if outcome is not None:
                if outcome and set_index is not None and self.files is not None:
                    self.files.set_last_reserved(set_index, ip)
                return outcome
        raise self.contention(ip)

    def last_reserved(self, set_index):
        return self.files.last_reserved(set_index) if self.files is not None else None

    def release(self, ip, container_id, ifname):
        lease = self.read(ip)
        if lease is None or lease.hold or lease.doc.get("network") != self.network:
            self.client.delete(self.k_attachment(container_id, ifname, ip))   # a stale index entry, if any
            return
        cid, lease_ifname = lease.owner()
        if cid != container_id or lease_ifname not in (ifname, None):
            return
        self.release_lease(lease)

    def ips_of(self, container_id, ifname):
        prefix = self.k_attachment(container_id, ifname)
        return [kv.key.decode()[len(prefix):] for kv in self.client.range(prefix, keys_only=True)]

    def pending_and_done(self, container_id, ifname):
        """([ip], [ip]) of the attachment: leases of an ADD of this node that never completed, and the rest."""
        prefix = self.k_attachment(container_id, ifname)
        pending, done = [], []
        for kv in self.client.range(prefix):
            try:
                doc = json.loads(kv.value)
            except ValueError:
                doc = None
            mine = isinstance(doc, dict) and doc.get("pending") is True and doc.get("node") == self.node
            (pending if mine else done).append(kv.key.decode()[len(prefix):])
        return pending, done

    def attachment_value(self, pending):
        doc = {"node": self.node, "pending": True} if pending else {"node": self.node}
        if self.netns:
            doc["netns"] = self.netns
        return json.dumps(doc)

    def complete(self, container_id, ifname, texts):
        """The ADD succeeded: clear the pending mark of its leases, in one transaction; code 11 if etcd
        could not say it did (the ADD then fails, and its retry finds the leases still pending)."""
        if not texts:
            return
        keys = [self.k_attachment(container_id, ifname, text) for text in texts]
        pending, done = self.attachment_value(True), self.attachment_value(False)
        for _ in range(LOST_WRITES):
            try:
                if self.client.txn([etcd.value_is(key, pending) for key in keys],
                                   [etcd.put(key, done) for key in keys]).succeeded:
                    return
                break
            except CniError as e:
                if not maybe_applied(e):
                    raise
                current = [kvs[0].value if kvs else None
                           for kvs in self.client.txn([], [etcd.get(key) for key in keys]).responses]
                if all(value == done.encode() for value in current):
                    return
                if not all(value == pending.encode() for value in current):
                    break
                # still pending: etcd did not apply it (lost with a dead leader, say); the txn again
        else:
            raise CniError(ERR_TRY_AGAIN, f"try again later: etcd did not apply the completion of "
                                          f"{container_id}/{ifname} after {LOST_WRITES} tries")
        raise CniError(ERR_TRY_AGAIN, f"try again later: the leases {', '.join(texts)} of {container_id}/{ifname} "
                                      "changed before the ADD completed")

    def attachments(self):
        return {owner: ips for owner, (_, _, ips) in self.attachment_records().items()}

    def owner(self, ip):
        lease = self.read(ip)
        return lease.owner() if lease is not None else None

    def leased(self):
        found = set()
        for grid in self.grids:
            for block in self.blocks(grid).values():
                found.update(grid.range.text(v) for v in block.values())
        return found | {str(ipaddress.IPv4Address(v) if ver == 4 else ipaddress.IPv6Address(v))
                        for ver, v in self.foreign}

    # -- reads ----------------------------------------------------------------

    @staticmethod
    def parse(text):
        ip = ipaddress.ip_address(text)
        return ip.version, int(ip)

    def grid_of(self, version, value):
        return next((g for g in self.grids if g.range.version == version and g.range.in_subnet(value)), None)

    def read(self, text):
        kv = self.client.get(self.k_ip(text))
        return Lease(text, kv.value) if kv is not None else None

    def pool_prefix(self, grid):
        return self.k("pools", str(grid.range.subnet)) + "/"

    def blocks(self, grid):
        """{first: Block} of the grid's pool, read once per operation and kept current by our txns."""
        subnet = str(grid.range.subnet)
        if subnet not in self.pools:
            found, config = self.read_pool(grid)
            self.check_pool(grid, config)
            self.pools[subnet] = found
        return self.pools[subnet]

    def read_pool(self, grid):
        """({first: Block}, the pool's config value or None) as etcd has them; writes nothing."""
        prefix = self.pool_prefix(grid)
        found, config = {}, None
        for kv in self.client.range(prefix):
            name = kv.key.decode()[len(prefix):]
            if name == "config":
                config = kv.value
            elif name.startswith("blocks/"):
                try:
                    net = ipaddress.ip_network(name[len("blocks/"):])
                except ValueError:
                    continue
                first = int(net.network_address)
                found[first] = Block.decode(first, int(net.broadcast_address), kv.key.decode(), kv.value,
                                            kv.mod_revision)
        return found, config

    def check_pool(self, grid, config):
        """The pool's block size is fixed by its first user; a network asking for another is refused."""
        if config is None:
            mine = json.dumps({"blockSize": grid.prefix})
            key = self.pool_prefix(grid) + "config"
            try:
                result = self.client.txn([etcd.absent(key)], [etcd.put(key, mine)], [etcd.get(key)])
                if result.succeeded:
                    return
                config = result.responses[0][0].value if result.responses and result.responses[0] else None
            except CniError as e:
                if not maybe_applied(e):
                    raise
                kv = self.client.get(key)      # ours or another's: read what the pool has now
                config = kv.value if kv is not None else mine
        try:
            size = json.loads(config)["blockSize"]
        except (ValueError, TypeError, KeyError):
            return   # unreadable: our own size will do; addresses are guarded by their keys regardless
        if size != grid.prefix:
            raise CniError(ERR_INVALID_CONFIG, f"ipam.blockSize: pool {grid.range.subnet} is cut into /{size} "
                                               f"blocks by its first user; this network asks for /{grid.prefix}")

    def block(self, grid, first):
        blocks = self.blocks(grid)
        if first not in blocks:
            blocks[first] = Block(first, first + grid.size - 1, self.pool_prefix(grid) + "blocks/" + grid.key(first))
        return blocks[first]

    def attachment_records(self):
        """{(containerID, ifname): (node, netns, [ip, ...])} of this network; netns None when its records
        name none (written before netns was recorded, or by an ADD given no absolute CNI_NETNS) or
        disagree: a netns that cannot be judged."""
        prefix = self.k("attachments", self.network) + "/"
        found, netns_seen = {}, {}
        for kv in self.client.range(prefix):
            name, _, ip = kv.key.decode()[len(prefix):].partition("/")
            cid, _, ifname = name.partition("@")
            try:
                doc = json.loads(kv.value)
                node, netns = doc.get("node"), recordable_netns(doc.get("netns"))
            except (ValueError, AttributeError):
                node = netns = None
            owner = (cid, ifname or None)
            found.setdefault(owner, (node, []))[1].append(ip)
            netns_seen.setdefault(owner, set()).add(netns)
        return {owner: (node, next(iter(netns_seen[owner])) if len(netns_seen[owner]) == 1 else None, ips)
                for owner, (node, ips) in found.items()}

    def holds_of(self, namespace, pod):
        """[Lease] of the sticky holds kept for this pod on this network."""
        prefix = self.k_sticky(self.network, namespace, pod)
        holds = []
        for kv in self.client.range(prefix):
            lease = self.read(kv.key.decode()[len(prefix):])
            if lease is not None and lease.hold and lease.doc.get("namespace") == namespace \
                    and lease.doc.get("pod") == pod and lease.doc.get("network") == self.network:
                holds.append(lease)
        return holds

    def all_leases(self):
        """[Lease] of every address key under the prefix (every network, every node)."""
        prefix = self.k("ips") + "/"
        return [Lease(kv.key.decode()[len(prefix):], kv.value) for kv in self.client.range(prefix)]

    # -- writes ---------------------------------------------------------------

    def lease_value(self, grid, block, container_id, ifname):
        namespace, pod = self.pod or (None, None)
        doc = {"network": self.network, "containerID": container_id, "ifname": ifname, "node": self.node,
               "namespace": namespace, "pod": pod, "time": now_text(time.time()),
               "pool": str(grid.range.subnet), "block": grid.key(block.first)}
        return json.dumps(doc, separators=(",", ":"))

    def claim(self, grid, block, value, container_id, ifname, hold=None):
        """One transaction taking `value` in `block` (read at block.revision). True: ours; False: the
        address is taken; None: the block changed under us (re-read; try again)."""
        text = grid.range.text(value)
        ip_key = self.k_ip(text)
        offset = value - block.first
        new = Block(block.first, block.last, block.key, block.node or self.node,
                    block.used | {offset}, {o: t for o, t in block.held.items() if o != offset})
        lease = self.lease_value(grid, block, container_id, ifname)
        success = [etcd.put(ip_key, lease),
                   etcd.put(self.k_attachment(container_id, ifname, text), self.attachment_value(True)),
                   etcd.put(block.key, new.encode())]
        if hold is not None:
            success.append(etcd.delete(self.k_sticky(hold.doc.get("network", ""), hold.doc.get("namespace", ""),
                                                     hold.doc.get("pod", ""), text)))
        compares = [etcd.absent(ip_key) if hold is None else etcd.value_is(ip_key, hold.raw),
                    etcd.absent(block.key) if block.revision == 0 else etcd.mod_revision_is(block.key, block.revision)]
        self.inflight = text
        try:
            result = self.client.txn(compares, success, [etcd.get(ip_key), etcd.get(block.key)])
            succeeded, revision = result.succeeded, result.revision
            if not succeeded:
                ip_kvs, block_kvs = result.responses
        except CniError as e:
            if not maybe_applied(e):
                raise
            # the member went away mid-answer: read the outcome from whichever member answers now
            current = self.client.txn([], [etcd.get(ip_key), etcd.get(block.key)])
            ip_kvs, block_kvs = current.responses
            succeeded = bool(ip_kvs) and ip_kvs[0].value == lease.encode()
            revision = None
        self.inflight = None
        if succeeded:
            if revision is None:
                self.refresh(block, block_kvs)   # as it is now, our address in it
            else:
                block.node, block.used, block.held, block.revision = new.node, new.used, new.held, revision
            return True
        self.refresh(block, block_kvs)
        if ip_kvs:
            taken = Lease(text, ip_kvs[0].value)
            if hold is None and taken.expired(time.time()) and block.revision:
                return self.claim(grid, block, value, container_id, ifname, taken)   # an expired hold: take it
            if hold is not None and taken.raw != hold.raw:
                return False
            if not block.taken(value, time.time()):
                self.foreign.add((grid.range.version, value))   # held through a pool we did not read
                return False
            return False if hold is None else None
        return None

    def refresh(self, block, kvs):
        if kvs:
            fresh = Block.decode(block.first, block.last, block.key, kvs[0].value, kvs[0].mod_revision)
            block.node, block.used, block.held, block.revision = fresh.node, fresh.used, fresh.held, fresh.revision
        else:
            block.node, block.used, block.held, block.revision = None, set(), {}, 0

    def release_lease(self, lease, keep_hold=True):
        """Drop one lease read as `lease` (a hold instead with sticky and a known pod); one transaction."""
        doc = lease.doc
        ip_key = self.k_ip(lease.ip)
        version, value = self.parse(lease.ip)
        block_key = self.k("pools", str(doc.get("pool")), "blocks", str(doc.get("block")))
        try:
            first = int(ipaddress.ip_network(str(doc.get("block"))).network_address)
            last = int(ipaddress.ip_network(str(doc.get("block"))).broadcast_address)
        except ValueError:
            first = last = None
        namespace, pod = doc.get("namespace"), doc.get("pod")
        hold = None
        if keep_hold and self.sticky_seconds and not lease.hold and isinstance(namespace, str) and namespace \
                and isinstance(pod, str) and pod:
            # the hold is the pod's node's, as its lease was: also when release-node, run on another
            # node, makes it
            hold = {"sticky": True, "network": doc.get("network"), "namespace": namespace, "pod": pod,
                    "until": round(time.time() + self.sticky_seconds, 3), "pool": doc.get("pool"),
                    "block": doc.get("block"), "node": doc.get("node") or self.node,
                    "released": now_text(time.time())}
        for _ in range(MAX_RACES):
            block_kv = self.client.get(block_key) if first is not None else None
            ops = []
            compares = [etcd.value_is(ip_key, lease.raw)]
            if block_kv is not None:
                block = Block.decode(first, last, block_key, block_kv.value, block_kv.mod_revision)
                offset = value - first
                block.used.discard(offset)
                block.held.pop(offset, None)
                if hold is not None:
                    block.held[offset] = hold["until"]
                compares.append(etcd.mod_revision_is(block_key, block.revision))
                ops.append(etcd.delete(block_key) if block.empty else etcd.put(block_key, block.encode()))
            if hold is not None:
                raw = json.dumps(hold, separators=(",", ":"))
                ops += [etcd.put(ip_key, raw), etcd.put(self.k_sticky(hold["network"], namespace, pod, lease.ip), raw)]
            else:
                ops.append(etcd.delete(ip_key))
                if lease.hold:
                    ops.append(etcd.delete(self.k_sticky(str(doc.get("network")), str(namespace), str(pod), lease.ip)))
            if not lease.hold:
                ops.append(etcd.delete(self.k("attachments", str(doc.get("network")),
                                              f"{doc.get('containerID')}@{doc.get('ifname') or ''}", lease.ip)))
            try:
                result = self.client.txn(compares, ops, [etcd.get(ip_key)])
                succeeded, current = result.succeeded, (result.responses or [None])[0]
            except CniError as e:
                if not maybe_applied(e):
                    raise
                kv = self.client.get(ip_key)       # applied if the lease we read is gone
                succeeded, current = kv is None or kv.value != lease.raw, [kv] if kv is not None else []
            if succeeded:
                self.pools.pop(str(doc.get("pool")), None)   # re-read when needed again
                return True
            if not current or current[0].value != lease.raw:
                return False        # released, or re-leased, by someone else meanwhile
        raise self.contention(lease.ip)

    def contention(self, ip):
        return CniError(ERR_TRY_AGAIN, f"try again later: the block of {ip} kept changing under "
                                       f"{MAX_RACES} attempts")
