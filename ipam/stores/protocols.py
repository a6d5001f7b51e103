"""The store interfaces: a lease store (host-local's, and what the allocator and IPAM verbs work over) and
a block store (what cluster-ipam's policy in ipam/cluster.py works over).

A module of its own, imported by no plugin run: the stores implement these by their methods alone (a
Protocol is structural), so the plugin path never pays for `typing`. tests/cluster/test_store_contract.py
holds every store to its protocol, members and signatures, and to its behaviour.

Addresses are strings as ipaddress prints them; an ifname is a string or None (an old lease, id only).
"""

from typing import Protocol


class LeaseStore(Protocol):
    """Leases of one network, modelled on the reference plugin's 7-method Store (backend/store.go), plus
    the two reads host-local's error messages and STATUS need (owner, leased).

    Implementations: DiskStore (ipam/stores/disk.py, host-local's files), MemoryStore
    (ipam/stores/memory.py), and every BlockStore (below)."""

    def __enter__(self):
        """Lock: one writer per network (and make the state trustworthy)."""

    def __exit__(self, exc_type=None, exc=None, tb=None):
        """Leaving the block cleanly makes what was done durable, then unlocks."""

    def close(self):
        """Release what the store holds without committing."""

    def reserve(self, ip, container_id, ifname, set_index=None) -> bool:
        """Claim ip if nobody holds it; with set_index it becomes the range set's last reserved
        address (round-robin resumes after it)."""

    def last_reserved(self, set_index):
        """The range set's last reserved address, or None."""

    def release(self, ip, container_id, ifname):
        """Drop the lease of ip if that attachment holds it (an old lease with no ifname matches any)."""

    def ips_of(self, container_id, ifname) -> list:
        """[ip, ...] leased to the attachment, old id-only leases included."""

    def attachments(self) -> dict:
        """{(containerID, ifname or None): [ip, ...]} of every lease."""

    def owner(self, ip):
        """(containerID, ifname or None) holding ip, or None."""

    def leased(self) -> set:
        """Every address taken: leased, or held (a conflict record; a block store's sticky holds)."""

    # -- conflict holds and reuse cool-down (ipam/stores/holds.py) -------------

    reuse_cooldown: float   # seconds a released address cools before it is handed out again (0: never)

    def hold_conflict(self, ip, container_id, ifname, mac, seconds) -> bool:
        """The attachment's lease of ip becomes a conflict record: held with the answering `mac` from
        now for `seconds`, no longer the attachment's (ips_of, attachments, owner, release and DEL
        never see it), refused to every reserve until released. False (nothing changed) if the
        attachment holds no lease of ip."""

    def conflicts(self) -> dict:
        """{ip: holds.Conflict} of this network's conflict records, those past their time included."""

    def release_conflict(self, ip) -> bool:
        """Give the conflict record of ip back: the address is free at once (it does not cool).
        False if ip has none."""

    def cooling(self) -> dict:
        """{ip: when it may be handed out again} of the addresses released less than reuse_cooldown
        seconds ago (by the clock of ipam/stores/holds.py), not leased since. With reuse_cooldown 0:
        {} (releases are not recorded). A cooling address is still free to reserve: the allocator
        skips it, a requested address takes it (and ends its cooling)."""


class BlockStore(LeaseStore, Protocol):
    """One network's view of a cluster-wide pool cut into blocks (ipam/blocks.py), for one operation of
    one node: the lease store (its reserve claims in blocks, its release may leave a sticky hold) plus
    what cluster-ipam's policy does with blocks, holds, attachment records and nodes.

    A claim and a release are each one atomic step against the shared state (read state may be stale:
    `claim` says so and refreshes the block). Leases and holds are read as ipam/blocks.py Lease.
    Implementations: EtcdStore (ipam/stores/etcd.py), MemoryBlockStore (ipam/stores/memory.py)."""

    network: str
    node: str
    grids: list        # ipam/blocks.py Grid of the network's ranges

    # -- blocks ---------------------------------------------------------------

    def blocks(self, grid) -> dict:
        """{first: Block} of the grid's pool, read once per operation and kept current by our claims;
        the pool's block size is fixed by its first user (another is refused, code 7)."""

    def own_blocks(self, grid) -> list:
        """[Block] of the grid's pool this node owns, as blocks() has them once read (a store may read
        just these, and the rest of the pool only when blocks() is asked)."""

    def block(self, grid, first):
        """The Block at `first` (a new, unowned one if nobody has it)."""

    def pool_blocks(self, grid) -> dict:
        """{first: Block} of the grid's pool as it is now; writes nothing."""

    def taken(self, grid, block, value, now) -> bool:
        """`value` (an int of grid's range) is leased or held in `block`, or taken outside every block
        this store read (by an overlapping pool)."""

    def claim(self, grid, block, value, container_id, ifname, hold=None):
        """Take `value` in `block` (as read) for the attachment (pending while its ADD's mark is there);
        `hold`: the Lease of the pod's sticky hold being taken back. True: ours; False: taken;
        None: the block changed (it is refreshed: try again)."""

    def set_last_reserved(self, set_index, ip):
        """Round-robin of the range set resumes after ip (this node's own hint)."""

    def claiming(self):
        """A context manager: the node's lock while an ADD chooses and claims (a store opened to take
        it only then), else nothing more than the lock the operation holds already."""

    def in_doubt(self):
        """The address of a claim whose answer was lost (it may have been applied), or None."""

    def limit_wait(self, seconds):
        """From now on wait at most `seconds` for each request (a failed ADD's rollback)."""

    def status(self):
        """The backing answers; a CniError if not."""

    # -- attachments ----------------------------------------------------------

    def start_cached(self, container_id, ifname, name, data) -> bool:
        """Start an ADD of the attachment from what the node knows of its blocks, without the first read
        (pending_and_done, keep_record, the conflict records): True if it did, when the node's record
        `name` holds `data` already. Its first claim is then refused unless etcd holds no record of the
        attachment and no conflict record of the network (block_leases.CacheMissed: the ADD starts
        again, reading first)."""

    def begin_add(self, container_id, ifname):
        """Before an ADD's first claim: the ADD's mark on the node, kept while it runs (code 11 if an ADD
        of the same attachment runs now). Found left by an earlier ADD of the attachment (its process
        gone): that ADD never answered success, and this node's claims of the attachment are pending."""

    def pending_and_done(self, container_id, ifname) -> tuple:
        """([ip], [ip]) of the attachment: claims of this node pending (begin_add found an earlier ADD's
        mark), and the rest."""

    def complete(self, container_id, ifname, texts):
        """The ADD succeeded: its claims of `texts` are no longer pending (its mark removed; an error if
        that cannot be done, and the ADD fails)."""

    def end_attachment(self, container_id, ifname):
        """DEL, GC or healing released the attachment: a mark an ADD of it left is removed."""

    def drop_marks(self, keeps):
        """GC: the marks ADDs left of attachments `keeps(containerID, ifname)` says the runtime no longer
        has (their leases released or never taken) are removed, but for one an ADD holds now."""

    def attachment_records(self) -> dict:
        """{(containerID, ifname or None): (node, netns or None, [ip, ...])} of this network."""

    def attachment_nodes(self) -> set:
        """The nodes named by attachment records of every network."""

    def keep_record(self, name, data):
        """Keep `data` as file `name` in the node's directory of this network (under its lock),
        written only when it changed."""

    # -- leases and holds -----------------------------------------------------

    def release(self, ip, container_id, ifname, hold=True):
        """As LeaseStore's; with hold=False never leave a sticky hold (an address never handed out)."""

    def read(self, ip):
        """The Lease (or hold) of ip, any network; None if free."""

    def all_leases(self) -> list:
        """[Lease] of every address, every network and node."""

    def holds_of(self, namespace, pod) -> list:
        """[Lease] of the sticky holds this network keeps for the pod."""

    def holds(self) -> list:
        """[Lease] of every address this network keeps a sticky hold of, as read now (a hold
        taken back since reads as a lease)."""

    def release_lease(self, lease, sticky_seconds) -> bool:
        """Drop the lease read as `lease` (a hold for sticky_seconds instead, when it is a known
        pod's lease and sticky_seconds is not None), or the hold or conflict record read as `lease`.
        A lease released cools (reuse_cooldown) from now, also into a hold; a conflict record does
        not. False if someone else released or re-leased it."""

    def make_conflict(self, lease, doc) -> bool:
        """Turn the lease read as `lease` into the conflict record `doc` (block_leases.conflict_doc),
        in one step, its attachment record dropped. False if the lease changed since it was read."""

    # -- nodes ----------------------------------------------------------------

    def block_owners(self) -> list:
        """[(owner, Block)] of every readable block, every pool; owner as recorded."""

    def orphan(self, block) -> bool:
        """Give up `block` (as read): nobody's, or deleted when nothing is left in it; False if it
        changed since it was read."""
