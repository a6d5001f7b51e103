"""cluster-ipam's block store in etcd (ipam/stores/protocols.py BlockStore): blocks, claims, releases,
sticky holds, attachment records and node listings, as keys and transactions of etcd.

Keys under the prefix (default /underlay/ipam):

    ips/<ip>                                the lease (or a sticky hold) of one address, JSON:
                                            {network, containerID, ifname, node, namespace, pod,
                                             time, pool, block}; a hold: {sticky, network, namespace,
                                             pod, until, pool, block}
    pools/<subnet>/config                   {"blockSize": prefix}, fixed by the pool's first user
    pools/<subnet>/blocks/<block>           the block (ipam/blocks.py): owner, used and held offsets
    attachments/<network>/<cid>@<ifname>/<ip>   {"node": ..., "netns": ..., "block": ...}, written by
                                            the claim (older versions wrote "pending": true until the
                                            ADD completed): DEL, CHECK and GC read one prefix; "netns" (the ADD's
                                            CNI_NETNS, when absolute) lets the node's agent heal a missed
                                            DEL; records written before it have none and are never healed;
                                            "block" (pools/<subnet>/blocks/<block>, the lease's) lets DEL
                                            read the lease and its block at once; without it (older
                                            records) DEL reads them one after the other
    sticky/<network>/<namespace>/<pod>/<ip>     the hold again, found by the pod's name
    conflicts/<network>/<ip>                a conflict record (ips/<ip> holds it too, and its block
                                            counts it used): {conflict, network, node, mac, since,
                                            until, pool, block}; found by the network's ADD

An ADD reads the blocks its node owns (named by the node's hint, OWN_BLOCKS) and the rest of the
pool only once they are full. An ADD asking for no particular address, of a node whose OWN_BLOCKS
knows every block it owns (value and revision, as the node last wrote or read it: its ADDs and DELs
keep it under the node's lock), reads nothing first (start_cached): its first claim is guarded, as
every claim, by the block's revision and the address key, and by etcd holding no record of the
attachment nor conflict record of the network (compares over their prefixes). Refused on those, the
ADD starts again with the first read (CacheMissed); refused on the block, it claims again, as any.
A DEL of an address in a block OWN_BLOCKS knows releases without reading the lease (release_cached):
guarded by the address key's revision being its attachment record's creation revision (the claim's)
and the block's revision the cached one; refused, it reads and releases as any release.

An ADD marks itself on the node before its first claim (begin_add: a file ADDING/<cid>@<ifname>
under the network's dataDir, locked while the ADD runs) and removes the mark once every range set
has its address (`complete`), before it answers: one write to etcd per address, none to complete.
A mark found by an ADD of the same attachment (its lock free: that ADD's process is gone) is an
earlier ADD that never answered success (its claim's answer lost, etcd gone before the read-back and
the rollback; killed): the runtime's retry recognises the node's leases of the attachment as that
ADD's own, pending, and releases them, where a second ADD of an attachment that succeeded (no mark)
is refused as host-local refuses it. A mark held by a running ADD refuses the second (code 11). The
mark is never fsync'ed: only a power loss loses it, and with it every pod of the node (the leases
are then healed or collected; a retry of one of its ADDs would be refused, 101, until its DEL).

Address keys are global, not per pool: two networks whose subnets overlap can
never hand out one address twice. Every claim is ONE transaction: the address
key absent (or still the very hold being taken) and the block unchanged since it
was read (so still ours, or, when borrowing, still its owner's with the same
addresses taken), putting lease, attachment and block together. Every release
is one transaction conditioned on the lease being exactly the one read (so its
owner) and the block unchanged. No cluster-wide lock.
"""

import contextlib
import ipaddress
import json
import os

from cni import locks
from cni.errors import ERR_IO, ERR_TRY_AGAIN, CniError
from cni.files import NOFOLLOW, replace, replace_if_changed
from ipam import etcd
from ipam.blocks import Block
from ipam.stores import holds
from ipam.stores.block_leases import ADDING, MAX_RACES, BlockLeases, CacheMissed, Lease, block_size_refused, \
    contention, hold_doc, lease_doc, parse, released_cooling
from ipam.stores.lease_files import io_error, open_dir
from ipam.stores.lease_index import recordable_netns

# <dataDir>/<network>/: {subnet: {"blockSize": prefix, "blocks": {block: [revision, value]}}} of the blocks
# the node owned when it last looked, as it last wrote or read them (own_cache)
OWN_BLOCKS = "own-blocks.json"
CONFLICTS_SEEN = "!conflicts"   # in OWN_BLOCKS: the network had conflict records when last read


def mark_name(container_id, ifname):
    """The file name of an attachment's ADD mark under ADDING (containerIDs hold no "@")."""
    return f"{container_id}@{ifname or ''}"


def names_fd(dir_fd, name, fd):
    """Whether `name` in dir_fd still names the file open on fd (not removed, or removed and made again,
    since it was opened): a lock taken on a mark counts only then."""
    try:
        named = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return os.path.samestat(named, os.fstat(fd))


def maybe_applied(error):
    """A write whose answer was lost (ipam/etcd.py never resends one): etcd may have applied it."""
    return error.code == ERR_TRY_AGAIN and "may have been applied" in error.msg


class EtcdStore(BlockLeases):
    """One network's view, for one operation. `grids`: ipam/blocks.py Grids of the network's ranges.
    The lease store's reserve, release, owner and attachments are BlockLeases' (made of the block
    operations below)."""

    def __init__(self, client, prefix, network, node, grids=(), files=None, pod=None, sticky_seconds=None,
                 netns=None, reuse_cooldown=0, claims_only=False):
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
        self.partial = set()            # subnets of self.pools read only in part (the node's blocks: own_blocks)
        self.hint = None                # own_cache(), once read
        self.hint_conflicts = False     # OWN_BLOCKS says the network had conflict records when last read
        self.conflicts_read = None      # whether the first read found conflict records of the network
        self.asked = {}                 # subnet -> the block names of the hint read (pool_read), found or not
        self.prefetched = {}            # subnet -> (blocks, config, whole) read with pending_and_done, not yet used
        self.prefetched_conflicts = None  # the conflict records read with pending_and_done, not yet used
        self.prefetched_holds = None    # the pod's sticky holds read with pending_and_done, not yet used
        self.foreign = set()            # (version, value) taken outside any block we read (an overlapping pool)
        self.inflight = None            # the address of a claim etcd may have applied when its answer was lost
        self.reuse_cooldown = reuse_cooldown
        self.block_hints = {}           # ip -> its block's key, as its attachment record names it (ips_of)
        self.claimed_at = {}            # ip -> (its attachment record's key, its create revision: its claim's) (ips_of)
        self.blocks_read = {}           # block key -> KV or None, read with a lease to release (read)
        self.adding = None              # (ADDING's fd, name, the mark's fd) of the ADD's mark (begin_add)
        self.unfinished = False         # begin_add found the mark of an earlier ADD that never answered
        self.mark_owned = False         # begin_add made the mark: close() removes it if nothing was claimed
        self.may_have_claimed = False   # a claim of this ADD applied, or maybe (its answer lost): the mark stays
        self.claims_only = claims_only  # the node's lock only around claims (an ADD's `claiming`), not all along
        self.cached = False             # an ADD started from the node's cache of its blocks (start_cached)
        self.guard = None               # (containerID, ifname) whose records the next claim checks (start_cached)
        self.released_blocks = {}       # block key -> (revision, value or None: deleted) a release wrote

    # -- keys -----------------------------------------------------------------

    def k(self, *parts):
        return "/".join((self.prefix,) + parts)

    def k_ip(self, text):
        return self.k("ips", text)

    def k_attachment(self, cid, ifname, text=""):
        return self.k("attachments", self.network, f"{cid}@{ifname or ''}", text)

    def k_sticky(self, network, namespace, pod, text=""):
        return self.k("sticky", network, namespace, pod, text)

    def k_conflict(self, network, text=""):
        return self.k("conflicts", network, text)

    def subnet_and_block(self, block_key):
        """(subnet, block) of a pools/<subnet>/blocks/<block> key, as OWN_BLOCKS names them."""
        subnet, _, name = block_key[len(self.k("pools")) + 1:].partition("/blocks/")
        return subnet, name

    # -- the operation: etcd first, then the node's lock ---------------------------

    def __enter__(self):
        if self.files is not None and not self.claims_only:
            try:
                self.lock()
            except BaseException:
                self.close()
                raise
        return self

    def lock(self, asked=False):
        """Take the node's lock, etcd first: with etcd down, every operation of the node says so within
        requestTimeout, instead of queueing behind holders that each wait out theirs and answering "lock
        held" at lockTimeout. A free lock (its file there: a first operation creates nothing before etcd
        answered) is taken at once: nobody waits then, and the operation's own first read says as soon
        whether etcd answers (whoever comes meanwhile finds it held and asks etcd first). `asked`: the
        operation has just had an answer from etcd (its first read), which is that question. True if
        someone else held it."""
        if self.files.lock(wait=False):
            return False
        held = self.files.lock_fd is not None   # its file there: someone holds it (else a first operation)
        if not asked:
            self.reachable()
        try:
            self.files.lock()
        except CniError as locked:
            if locked.code == ERR_TRY_AGAIN:
                self.reachable(f"; meanwhile {locked.msg}")   # etcd gone since: the likely cause
            raise
        return held

    @contextlib.contextmanager
    def claiming(self):
        """The node's lock around an ADD's claims only (claims_only): its reads come before, after etcd
        answered them, and its completion after, so one node's concurrent ADDs queue for each other's
        claims, not for each other's whole ADD. Correctness never rests on the lock (every claim is
        guarded by its block's revision and its address key): it keeps the node's ADDs from racing
        each other on one block, and its last-reserved cache whole."""
        if self.files is None:
            yield
            return
        if self.lock(asked=not self.cached):
            # whoever held it claimed meanwhile, most likely in the very blocks read before: read them
            # again (a read; or the cache, which the holder kept) rather than learn it from a claim
            # refused (a write, through etcd's log)
            self.pools.clear()
            self.prefetched.clear()
            self.hint = None   # and the hint, which the holder may have rewritten
            if self.cached and not self.seed_from_cache():
                self.pools.clear()
        try:
            yield
            self.keep_own_hint()
        finally:
            locks.unlock(self.files.lock_fd)

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
        if self.adding is not None:
            adding_fd, name, fd = self.adding
            if self.mark_owned and not self.may_have_claimed:
                self.drop_mark()   # this ADD made it and claimed nothing (refused early, CacheMissed)
            for each in (fd, adding_fd):
                if each is not None:
                    os.close(each)
            self.adding = None
        if self.files is not None:
            if self.released_blocks and not self.claims_only:
                self.keep_released()   # under the lock this operation holds throughout (DEL, GC, healing)
            self.files.close()
            self.files = None
        self.client.close()

    def status(self):
        self.client.status()

    def limit_wait(self, seconds):
        self.client.request_timeout = min(self.client.request_timeout, seconds)

    def in_doubt(self):
        return self.inflight

    # -- the node's own files: last reserved, the network's record ------------------

    def last_reserved(self, set_index):
        return self.files.last_reserved(set_index) if self.files is not None else None

    def set_last_reserved(self, set_index, ip):
        if self.files is not None:
            self.files.set_last_reserved(set_index, ip)

    def keep_record(self, name, data):
        try:
            replace_if_changed(name, data, self.files.dir_fd)
        except OSError as e:
            raise CniError(ERR_IO, f"ipam.dataDir {self.files.path}/{name}: {e.strerror or e}") from None

    # -- attachment records ---------------------------------------------------

    def ips_of(self, container_id, ifname):
        """The attachment's addresses; the block each record names is kept (block_hints), so that a
        release reads the lease and its block in one transaction."""
        prefix = self.k_attachment(container_id, ifname)
        found = []
        for kv in self.client.range(prefix):
            ip = kv.key.decode()[len(prefix):]
            try:
                block = json.loads(kv.value).get("block")
            except (ValueError, AttributeError):
                block = None
            if isinstance(block, str) and block.startswith("pools/"):
                self.block_hints[ip] = self.k(block)
            self.claimed_at[ip] = (kv.key, kv.create_revision)
            found.append(ip)
        return found

    def release(self, ip, container_id, ifname, hold=True):
        """A DEL's release (ips_of read the attachment) from the node's cache of its blocks when it can
        (release_cached), else as every release: the lease and its block read, then released."""
        if not self.release_cached(ip, hold):
            super().release(ip, container_id, ifname, hold)

    def release_cached(self, ip, hold):
        """Release `ip` without reading its lease: one transaction guarded by the address key's revision
        being its attachment record's creation revision (a claim writes both in one transaction, and
        any later write of the address key, a release, a re-claim by anyone, a conflict record, moves
        its revision: so the lease is still the one this attachment's claim wrote) and by its block's
        revision being OWN_BLOCKS' (the block is then exactly the value cached). Only for the node's
        own blocks, and not with sticky (the hold is made of the lease's bytes, which only a read
        gives). True if released; False (nothing written, or a lost answer) and the caller releases
        as before."""
        (record, revision), block_key = self.claimed_at.pop(ip, (None, 0)), self.block_hints.get(ip)
        if not revision or block_key is None or self.files is None or (hold and self.sticky_seconds):
            return False
        subnet, name = self.subnet_and_block(block_key)
        cached = self.own_cache().get(subnet, {}).get("blocks", {}).get(name)
        try:
            net = ipaddress.ip_network(name)
            version, value = parse(ip)
        except ValueError:
            return False
        if cached is None or version != net.version or not net.network_address <= ipaddress.ip_address(ip) \
                <= net.broadcast_address:
            return False
        first = int(net.network_address)
        block = Block.decode(first, int(net.broadcast_address), block_key, cached[1], cached[0])
        offset = value - first
        block.used.discard(offset)
        block.held.pop(offset, None)
        released_cooling(block, offset, Lease(ip, "{}"), self.reuse_cooldown, holds.now())   # a lease as claimed
        ip_key = self.k_ip(ip)
        ops = [etcd.delete(ip_key), etcd.delete(block_key) if block.empty else etcd.put(block_key, block.encode()),
               etcd.delete(record)]
        try:
            result = self.client.txn([etcd.mod_revision_is(ip_key, revision),
                                      etcd.mod_revision_is(block_key, block.revision)], ops)
        except CniError as e:
            if not maybe_applied(e):
                raise
            return False   # applied or not, the read that follows tells: the lease gone, or still ours
        if not result.succeeded:
            return False
        self.released_blocks[block_key] = (result.revision, None if block.empty else block.encode())
        self.block_hints.pop(ip, None)
        return True

    def pending_and_done(self, container_id, ifname):
        """([ip], [ip]) of the attachment: leases of an ADD of this node that never completed, and the rest.
        Only an ADD asks, and it reads its conflict records, pools and (with sticky) the pod's holds
        next: they come in the same read (a read-only transaction: one round trip, one revision), kept
        for conflicts(), blocks() and holds_of()."""
        prefix = self.k_attachment(container_id, ifname)
        unread = list({str(g.range.subnet): g for g in self.grids if str(g.range.subnet) not in self.pools}.values())
        sticky = [etcd.get_prefix(self.k_sticky(self.network, *self.pod))] if self.sticky_seconds and self.pod else []
        pool_reads = [self.pool_read(g) for g in unread]
        result = self.client.txn([], [etcd.get_prefix(prefix), etcd.get_prefix(self.k_conflict(self.network))] +
                                 sticky + [op for ops, _ in pool_reads for op in ops])
        self.prefetched_conflicts = self.parse_conflicts(result.responses[1])
        self.conflicts_read = bool(result.responses[1])
        if sticky:
            self.prefetched_holds = self.parse_holds(*self.pod, result.responses[2])
        at = 2 + len(sticky)
        for grid, (ops, parse_read) in zip(unread, pool_reads):
            self.prefetched[str(grid.range.subnet)] = parse_read(result.responses[at:at + len(ops)])
            at += len(ops)
        pending, done = [], []
        for kv in result.responses[0]:
            try:
                doc = json.loads(kv.value)
            except ValueError:
                doc = None
            mine = isinstance(doc, dict) and doc.get("node") == self.node and \
                (self.unfinished or doc.get("pending") is True)   # the mark, or an older version's record
            (pending if mine else done).append(kv.key.decode()[len(prefix):])
        return pending, done

    def attachment_value(self, block_key=None):
        """An attachment record: node, netns, and the key of its lease's block below the prefix (a DEL
        reads the lease and the block together by it)."""
        doc = {"node": self.node}
        if self.netns:
            doc["netns"] = self.netns
        if block_key:
            doc["block"] = block_key[len(self.prefix) + 1:]
        return json.dumps(doc)

    def begin_add(self, container_id, ifname):
        """BlockStore.begin_add: the ADD's mark on the node, made (or found: unfinished) and locked for
        as long as this store is open; code 11 if an ADD of the same attachment holds it now."""
        if self.files is None:
            return
        name = mark_name(container_id, ifname)
        try:
            adding_fd = open_dir(ADDING, dir_fd=self.files.dir_fd)
        except OSError as e:
            raise self.mark_error(e) from None
        self.adding = (adding_fd, name, None)
        for _ in range(3):   # a mark removed (a GC, a DEL, an ADD answering) before we locked it: made again
            try:
                try:
                    fd, existed = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW | os.O_CLOEXEC,
                                          0o600, dir_fd=adding_fd), False
                except FileExistsError:
                    fd, existed = os.open(name, os.O_RDWR | NOFOLLOW | os.O_CLOEXEC, dir_fd=adding_fd), True
            except FileNotFoundError:   # removed between the two opens (an ADD of it that just answered)
                continue
            except OSError as e:
                raise self.mark_error(e, name) from None
            self.adding = (adding_fd, name, fd)
            if not locks.try_lock(fd):
                raise CniError(ERR_TRY_AGAIN, f"try again: another ADD of {container_id}/{ifname} is running "
                                              f"on this node")
            if names_fd(adding_fd, name, fd):
                self.unfinished, self.mark_owned = existed, not existed
                return
            self.adding = (adding_fd, name, None)
            os.close(fd)
        raise CniError(ERR_TRY_AGAIN, f"try again: another ADD of {container_id}/{ifname} ran meanwhile")

    def complete(self, container_id, ifname, texts):
        """The ADD succeeded: its mark removed before it answers (code 5 if it cannot be: a mark left
        would have a second ADD of the attachment take the pod's addresses as pending)."""
        if self.adding is not None:
            self.drop_mark()
            self.mark_owned = False   # gone: nothing left for close()

    def drop_mark(self):
        adding_fd, name, _ = self.adding
        self.unlink_mark(adding_fd, name)   # gone already: a DEL of the attachment meanwhile

    def end_attachment(self, container_id, ifname):
        """DEL, GC and healing, once the attachment's leases are released: an ADD's mark left behind removed."""
        with self.adding_dir() as adding_fd:
            if adding_fd is not None:
                self.unlink_mark(adding_fd, mark_name(container_id, ifname))

    def drop_marks(self, keeps):
        """GC: the marks ADDs of this node left (never answered) of attachments the runtime no longer has
        (`keeps(containerID, ifname)` false: leases or none), removed; one an ADD holds now is left."""
        with self.adding_dir() as adding_fd:
            for name in os.listdir(adding_fd) if adding_fd is not None else ():
                container_id, _, ifname = name.partition("@")
                if keeps(container_id, ifname or None):
                    continue
                try:
                    fd = os.open(name, os.O_RDWR | NOFOLLOW | os.O_CLOEXEC, dir_fd=adding_fd)
                except OSError:
                    continue   # gone meanwhile, or not a mark
                try:
                    if locks.try_lock(fd) and names_fd(adding_fd, name, fd):   # not one made again meanwhile
                        self.unlink_mark(adding_fd, name)
                finally:
                    os.close(fd)

    @contextlib.contextmanager
    def adding_dir(self):
        """The fd of ADDING in the network's dataDir, or None when there is none (no ADD left a mark)."""
        fd = None
        if self.files is not None:
            try:
                fd = os.open(ADDING, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | os.O_CLOEXEC, dir_fd=self.files.dir_fd)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self.mark_error(e) from None
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def unlink_mark(self, adding_fd, name):
        try:
            os.unlink(name, dir_fd=adding_fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self.mark_error(e, name) from None

    def mark_error(self, error, name=None):
        """Code 5 naming ADDING (or the mark `name` in it) in the network's dataDir."""
        return io_error(f"ipam.dataDir {self.files.path}/{ADDING}" + (f"/{name}" if name else ""), error)

    def forget(self, container_id, ifname, ip):
        self.client.delete(self.k_attachment(container_id, ifname, ip))

    def attachment_nodes(self):
        found = set()
        for kv in self.client.range(self.k("attachments") + "/"):
            try:
                found.add(json.loads(kv.value).get("node"))
            except (ValueError, AttributeError):
                continue
        return found

    # -- reads ----------------------------------------------------------------

    def read(self, ip):
        block_key = self.block_hints.pop(ip, None)
        if block_key is None:
            kv = self.client.get(self.k_ip(ip))
        else:   # a DEL's: the block its attachment record names, in the same read, for release_lease
            ip_kvs, block_kvs = self.client.txn([], [etcd.get(self.k_ip(ip)), etcd.get(block_key)]).responses
            kv = ip_kvs[0] if ip_kvs else None
            self.blocks_read[block_key] = block_kvs[0] if block_kvs else None
        return Lease(ip, kv.value) if kv is not None else None

    def pool_prefix(self, grid):
        return self.k("pools", str(grid.range.subnet)) + "/"

    def blocks(self, grid):
        """{first: Block} of the grid's pool, read once per operation and kept current by our txns."""
        return self.loaded(grid, whole=True)

    def own_blocks(self, grid):
        """[Block] of the grid's pool this node owns: read without the rest of the pool when the node
        keeps a hint of its blocks (OWN_BLOCKS), so an ADD's first read does not grow with the nodes."""
        return [block for block in self.loaded(grid, whole=False).values() if block.node == self.node]

    def loaded(self, grid, whole):
        """self.pools' {first: Block} of the grid's pool: all of it (`whole`), or at least the blocks
        the node's hint names (self.partial: the pools read only so far)."""
        subnet = str(grid.range.subnet)
        if subnet in self.pools and not (whole and subnet in self.partial):
            return self.pools[subnet]
        read = self.prefetched.pop(subnet, None)
        if read is None or whole and not read[2]:
            ops, parse_read = self.pool_read(grid, whole)
            read = parse_read(self.client.txn([], ops).responses)
        found, config, complete = read
        self.check_pool(grid, config)
        self.pools[subnet] = found
        if complete:
            self.partial.discard(subnet)
        else:
            self.partial.add(subnet)
        return found

    def pool_read(self, grid, whole=False):
        """([read op], parse(responses) -> ({first: Block}, config value or None, whole)) of the grid's
        pool: the blocks the node's hint names and the pool's config, or (`whole`, or no hint) all of it."""
        prefix = self.pool_prefix(grid)
        names = [] if whole else self.own_hint().get(str(grid.range.subnet), [])
        if not names:
            return [etcd.get_prefix(prefix)], lambda responses: (*self.parse_pool(grid, responses[0]), True)
        self.asked[str(grid.range.subnet)] = set(names)
        keys = [prefix + "config"] + [prefix + "blocks/" + name for name in names]
        return [etcd.get(key) for key in keys], lambda responses: (
            *self.parse_pool(grid, [kv for kvs in responses for kv in kvs]), False)

    def own_cache(self):
        """{subnet: {"blockSize": prefix, "blocks": {name: [revision, value] or None}}} of OWN_BLOCKS: the
        blocks this node owned when it last looked, with each one's value and revision as this node last
        wrote or read it (None: not known). A hint only: each block is read, or claimed in by a claim
        guarded by its revision, and used as the node's only if it still is. An older version's file ({subnet: [name]})
        names the blocks alone."""
        if self.hint is None:
            self.hint = {}
            if self.files is not None:
                try:
                    fd = os.open(OWN_BLOCKS, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.files.dir_fd)
                    try:
                        doc = json.loads(os.read(fd, 1 << 20))
                    finally:
                        os.close(fd)
                except (OSError, ValueError):
                    doc = None
                for subnet, entry in (doc.items() if isinstance(doc, dict) else ()):
                    if subnet == CONFLICTS_SEEN:
                        continue
                    if isinstance(entry, list):   # an older version's: names only
                        entry = {"blocks": dict.fromkeys(entry)}
                    blocks = entry.get("blocks") if isinstance(entry, dict) else None
                    if not isinstance(blocks, dict):
                        continue
                    known = {name: cached if isinstance(cached, list) and len(cached) == 2
                             and isinstance(cached[0], int) and cached[0] > 0 and isinstance(cached[1], str) else None
                             for name, cached in blocks.items() if isinstance(name, str) and "/" in name}
                    size = entry.get("blockSize")
                    self.hint[subnet] = {"blockSize": size if isinstance(size, int) else None, "blocks": known}
                self.hint_conflicts = isinstance(doc, dict) and doc.get(CONFLICTS_SEEN) is True
        return self.hint

    def own_hint(self):
        """{subnet: [block name]} of the blocks this node owned when it last looked (own_cache)."""
        return {subnet: sorted(entry["blocks"]) for subnet, entry in self.own_cache().items()}

    def keep_own_hint(self):
        """Write OWN_BLOCKS anew if the blocks read or claimed show the node owning others than it says, or
        its blocks at other revisions (under the node's lock: concurrent ADDs never write it at once)."""
        old = self.own_cache()
        cache = {subnet: {"blockSize": entry["blockSize"], "blocks": dict(entry["blocks"])}
                 for subnet, entry in old.items()}
        for grid in self.grids:
            subnet = str(grid.range.subnet)
            if subnet in self.pools:
                read = self.pools[subnet]
                own = {grid.key(b.first): [b.revision, b.encode()] if b.revision else None
                       for b in read.values() if b.node == self.node}
                if subnet in self.partial:   # what it did not read (a concurrent ADD's new block) stays
                    seen = self.asked.get(subnet, set()) | {grid.key(first) for first in read}
                    own.update((name, cached) for name, cached in old.get(subnet, {}).get("blocks", {}).items()
                               if name not in seen)
                # the pool's blockSize was checked against this grid's when its blocks were read
                cache[subnet] = {"blockSize": grid.prefix, "blocks": own}
        self.write_cache(cache, self.hint_conflicts if self.conflicts_read is None else self.conflicts_read)

    def keep_released(self):
        """The blocks this operation's releases rewrote (or deleted), as they are now, in OWN_BLOCKS where
        it names them (the node's own)."""
        cache = {subnet: {"blockSize": entry["blockSize"], "blocks": dict(entry["blocks"])}
                 for subnet, entry in self.own_cache().items()}
        for key, (revision, value) in self.released_blocks.items():
            subnet, name = self.subnet_and_block(key)
            blocks = cache.get(subnet, {}).get("blocks", {})
            if name in blocks:
                if value is None and revision:
                    del blocks[name]            # deleted: nobody's
                else:
                    blocks[name] = [revision, value] if revision and value is not None else None
        self.write_cache(cache, self.hint_conflicts)

    def write_cache(self, cache, conflicts):
        """OWN_BLOCKS anew if it changed; `conflicts`: the network had conflict records when last read (its
        ADDs then read first, as a cached one would be refused, until a read finds none)."""
        if (cache, conflicts) != (self.hint, self.hint_conflicts):
            doc = dict(cache, **{CONFLICTS_SEEN: True}) if conflicts else cache
            try:
                replace(OWN_BLOCKS, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), self.files.dir_fd)
                self.hint, self.hint_conflicts = cache, conflicts
            except OSError:
                pass   # a hint: without it the next ADD reads the node's blocks, or the whole pool

    def start_cached(self, container_id, ifname, name, data):
        """BlockStore.start_cached: the node's blocks as OWN_BLOCKS has them, when it knows every one of
        them in every pool of the ADD (their pools' blockSize checked), and the record `name` holds `data`.
        Only for an ADD that takes the node's lock for its claims (claims_only)."""
        if self.files is None or not self.claims_only or not self.seed_from_cache() or self.hint_conflicts:
            self.pools.clear()
            self.partial.clear()
            return False
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.files.dir_fd)
            try:
                same = os.read(fd, len(data) + 1) == data
            finally:
                os.close(fd)
        except OSError:
            same = False
        if not same:
            self.pools.clear()
            self.partial.clear()
            return False
        self.cached, self.guard = True, (container_id, ifname)
        return True

    def seed_from_cache(self):
        """self.pools from OWN_BLOCKS (read only in part: the node's blocks); False if it does not know
        them all."""
        cache = self.own_cache()
        seeded = {}
        for grid in self.grids:
            subnet = str(grid.range.subnet)
            entry = cache.get(subnet)
            if subnet in seeded:
                continue
            if entry is None or entry["blockSize"] != grid.prefix or not entry["blocks"] \
                    or None in entry["blocks"].values():
                return False
            found = {}
            for name, (revision, value) in entry["blocks"].items():
                try:
                    net = ipaddress.ip_network(name)
                except ValueError:
                    return False
                first = int(net.network_address)
                found[first] = Block.decode(first, int(net.broadcast_address), self.pool_prefix(grid) + "blocks/" + name,
                                            value, revision)
            seeded[subnet] = found
        for subnet, found in seeded.items():
            self.pools[subnet] = found
            self.partial.add(subnet)
            self.asked[subnet] = {name for name in cache[subnet]["blocks"]}
        return True

    def read_pool(self, grid):
        """({first: Block}, the pool's config value or None) as etcd has them; writes nothing."""
        return self.parse_pool(grid, self.client.range(self.pool_prefix(grid)))

    def parse_pool(self, grid, kvs):
        """({first: Block}, config value or None) of the pool's keys as read."""
        prefix = self.pool_prefix(grid)
        found, config = {}, None
        for kv in kvs:
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

    def pool_blocks(self, grid):
        return self.read_pool(grid)[0]

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
            raise block_size_refused(grid, size)

    def block(self, grid, first):
        blocks = self.loaded(grid, whole=False)
        if first not in blocks:
            key = self.pool_prefix(grid) + "blocks/" + grid.key(first)
            kv = self.client.get(key) if str(grid.range.subnet) in self.partial else None   # not read yet
            blocks[first] = Block.decode(first, first + grid.size - 1, key, kv.value, kv.mod_revision) \
                if kv is not None else Block(first, first + grid.size - 1, key)
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
        """[Lease] of the sticky holds kept for this pod on this network, as the pod's index has them
        (a hold's bytes are the same there and in its address key, written together; a claim of one
        is guarded by its address key holding exactly those bytes, so a stale index entry costs a
        refused claim, never an address taken twice)."""
        found, self.prefetched_holds = self.prefetched_holds, None
        if found is not None and (namespace, pod) == tuple(self.pod):
            return found
        return self.parse_holds(namespace, pod, self.client.range(self.k_sticky(self.network, namespace, pod)))

    def parse_holds(self, namespace, pod, kvs):
        prefix = self.k_sticky(self.network, namespace, pod)
        holds = []
        for kv in kvs:
            lease = Lease(kv.key.decode()[len(prefix):], kv.value)
            if lease.hold and lease.doc.get("namespace") == namespace and lease.doc.get("pod") == pod \
                    and lease.doc.get("network") == self.network:
                holds.append(lease)
        return holds

    def holds(self):
        prefix = self.k("sticky", self.network) + "/"
        leases = (self.read(kv.key.decode().rsplit("/", 1)[-1]) for kv in self.client.range(prefix, keys_only=True))
        return [lease for lease in leases if lease is not None]

    def conflicts(self):
        found, self.prefetched_conflicts = self.prefetched_conflicts, None
        return found if found is not None else self.parse_conflicts(self.client.range(self.k_conflict(self.network)))

    def parse_conflicts(self, kvs):
        prefix = self.k_conflict(self.network)
        found = {}
        for kv in kvs:
            conflict = Lease(kv.key.decode()[len(prefix):], kv.value)
            record = holds.conflict_from_doc(conflict.doc)
            if record is not None:
                found[conflict.ip] = record
        return found

    def all_leases(self):
        """[Lease] of every address key under the prefix (every network, every node)."""
        prefix = self.k("ips") + "/"
        return [Lease(kv.key.decode()[len(prefix):], kv.value) for kv in self.client.range(prefix)]

    def block_owners(self):
        """(owner, Block) of every readable block key, every pool (a Block of offsets: first and last 0)."""
        found = []
        for kv in self.client.range(self.k("pools") + "/"):
            if "/blocks/" in kv.key.decode():
                try:
                    owner = json.loads(kv.value).get("node")
                except (ValueError, AttributeError):
                    continue
                found.append((owner, Block.decode(0, 0, kv.key.decode(), kv.value, kv.mod_revision)))
        return found

    # -- writes ---------------------------------------------------------------

    def lease_value(self, grid, block, container_id, ifname):
        doc = lease_doc(self.network, self.node, self.pod, grid, block, container_id, ifname)
        return json.dumps(doc, separators=(",", ":"))

    def claim(self, grid, block, value, container_id, ifname, hold=None):
        """One transaction taking `value` in `block` (read at block.revision). True: ours; False: the
        address is taken; None: the block changed under us (re-read; try again)."""
        text = grid.range.text(value)
        ip_key = self.k_ip(text)
        offset = value - block.first
        new = Block(block.first, block.last, block.key, block.node or self.node,
                    block.used | {offset}, {o: t for o, t in block.held.items() if o != offset},
                    cooling={o: t for o, t in block.cooling.items() if o != offset})
        new.prune_cooling(holds.now(), self.reuse_cooldown)
        lease = self.lease_value(grid, block, container_id, ifname)
        success = [etcd.put(ip_key, lease),
                   etcd.put(self.k_attachment(container_id, ifname, text), self.attachment_value(block.key)),
                   etcd.put(block.key, new.encode())]
        if hold is not None and hold.hold:
            success.append(etcd.delete(self.k_sticky(hold.doc.get("network", ""), hold.doc.get("namespace", ""),
                                                     hold.doc.get("pod", ""), text)))
        compares = [etcd.absent(ip_key) if hold is None else etcd.value_is(ip_key, hold.raw),
                    etcd.absent(block.key) if block.revision == 0 else etcd.mod_revision_is(block.key, block.revision)]
        failure = [etcd.get(ip_key), etcd.get(block.key)]
        if self.guard is not None:   # what the first read would have found: none, else the ADD reads it
            attachment, conflicts = self.k_attachment(*self.guard), self.k_conflict(self.network)
            compares += [etcd.none_under(attachment), etcd.none_under(conflicts)]
            failure += [etcd.get_prefix(attachment, keys_only=True), etcd.get_prefix(conflicts, keys_only=True)]
        self.inflight = text
        claimed_before, self.may_have_claimed = self.may_have_claimed, True
        try:
            result = self.client.txn(compares, success, failure)
            succeeded, revision = result.succeeded, result.revision
            if not succeeded:
                ip_kvs, block_kvs, *records = result.responses
                if any(records):
                    self.inflight, self.may_have_claimed = None, claimed_before
                    raise CacheMissed()
        except CniError as e:
            if not maybe_applied(e):
                self.may_have_claimed = claimed_before   # never sent, or refused: nothing applied
                raise
            # the member went away mid-answer: read the outcome from whichever member answers now
            current = self.client.txn([], [etcd.get(ip_key), etcd.get(block.key)])
            ip_kvs, block_kvs = current.responses
            succeeded = bool(ip_kvs) and ip_kvs[0].value == lease.encode()
            revision = None
        self.inflight = None
        if succeeded:
            self.guard = None
            if revision is None:
                self.refresh(block, block_kvs)   # as it is now, our address in it
            else:
                block.node, block.used, block.held, block.revision = new.node, new.used, new.held, revision
                block.cooling = new.cooling   # as written: the node's cache keeps it
            return True
        self.may_have_claimed = claimed_before   # refused: none of it applied
        self.refresh(block, block_kvs)
        return self.refused(grid, block, value, container_id, ifname, hold, ip_kvs[0].value if ip_kvs else None)

    def refresh(self, block, kvs):
        if kvs:
            fresh = Block.decode(block.first, block.last, block.key, kvs[0].value, kvs[0].mod_revision)
            block.node, block.used, block.held, block.revision = fresh.node, fresh.used, fresh.held, fresh.revision
            block.cooling = fresh.cooling
        else:
            block.node, block.used, block.held, block.revision, block.cooling = None, set(), {}, 0, {}

    def make_conflict(self, lease, doc):
        """One transaction: the lease read as `lease` becomes the conflict record `doc` (its block unchanged:
        the address stays used); its attachment record goes. False if the lease changed meanwhile."""
        raw = json.dumps(doc, separators=(",", ":"))
        ip_key = self.k_ip(lease.ip)
        ops = [etcd.put(ip_key, raw), etcd.put(self.k_conflict(self.network, lease.ip), raw),
               etcd.delete(self.k_attachment(lease.doc.get("containerID"), lease.doc.get("ifname"), lease.ip))]
        try:
            return self.client.txn([etcd.value_is(ip_key, lease.raw)], ops).succeeded
        except CniError as e:
            if not maybe_applied(e):
                raise
            kv = self.client.get(ip_key)      # applied if the address holds our record now
            return kv is not None and kv.value == raw.encode()

    def release_lease(self, lease, sticky_seconds):
        """Drop one lease read as `lease` (a hold instead with sticky_seconds and a known pod); one transaction."""
        doc = lease.doc
        ip_key = self.k_ip(lease.ip)
        version, value = parse(lease.ip)
        block_key = self.k("pools", str(doc.get("pool")), "blocks", str(doc.get("block")))
        try:
            first = int(ipaddress.ip_network(str(doc.get("block"))).network_address)
            last = int(ipaddress.ip_network(str(doc.get("block"))).broadcast_address)
        except ValueError:
            first = last = None
        namespace, pod = doc.get("namespace"), doc.get("pod")
        hold = None if lease.conflict else hold_doc(doc, sticky_seconds, self.node)
        for _ in range(MAX_RACES):
            if first is None:
                block_kv = None
            elif block_key in self.blocks_read:   # read with the lease (read): as the lease was read
                block_kv = self.blocks_read.pop(block_key)
            else:
                block_kv = self.client.get(block_key)
            ops = []
            compares = [etcd.value_is(ip_key, lease.raw)]
            if block_kv is not None:
                block = Block.decode(first, last, block_key, block_kv.value, block_kv.mod_revision)
                offset = value - first
                block.used.discard(offset)
                block.held.pop(offset, None)
                released_cooling(block, offset, lease, self.reuse_cooldown, holds.now())
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
                if lease.conflict:
                    ops.append(etcd.delete(self.k_conflict(str(doc.get("network")), lease.ip)))
            if not lease.hold and not lease.conflict:
                ops.append(etcd.delete(self.k("attachments", str(doc.get("network")),
                                              f"{doc.get('containerID')}@{doc.get('ifname') or ''}", lease.ip)))
            try:
                result = self.client.txn(compares, ops, [etcd.get(ip_key)])
                succeeded, current = result.succeeded, (result.responses or [None])[0]
                revision = result.revision
            except CniError as e:
                if not maybe_applied(e):
                    raise
                kv = self.client.get(ip_key)       # applied if the lease we read is gone
                succeeded, current = kv is None or kv.value != lease.raw, [kv] if kv is not None else []
                revision = 0                       # the block's revision unknown
            if succeeded:
                if block_kv is not None:
                    self.released_blocks[block_key] = (revision, None if block.empty else block.encode())
                self.pools.pop(str(doc.get("pool")), None)   # re-read when needed again
                self.prefetched.pop(str(doc.get("pool")), None)
                self.prefetched_holds = None                  # a sticky pod's lease is its hold now
                return True
            if not current or current[0].value != lease.raw:
                return False        # released, or re-leased, by someone else meanwhile
        raise contention(lease.ip)

    def orphan(self, block):
        """One transaction: `block` (as read) nobody's, or deleted if nothing is left in it."""
        block.node = None
        op = etcd.delete(block.key) if block.empty else etcd.put(block.key, block.encode())
        return self.client.txn([etcd.mod_revision_is(block.key, block.revision)], [op]).succeeded
