"""One contract per store protocol (ipam/stores/protocols.py), run against every store that implements it.

The lease contract: the file store, the memory store, the etcd store and the memory block store (a block
store is a lease store too). The block contract: the memory and the etcd block stores. Each case opens
stores over one backing (a data directory, a Leases or Pools object, an etcd prefix) one operation at a
time, as successive plugin runs do; the etcd cases run on a real etcd member (tests/etcd.py).
Last, every store implements its protocols: every member, with a signature that takes every call the
protocol allows.
"""

import inspect
import ipaddress
import time
import uuid
from typing import Protocol

import pytest

from cni.errors import CniError
from ipam import allocator, cluster, ranges
from ipam.blocks import Grid
from ipam.stores import holds
from ipam.stores.disk import DiskStore
from ipam.stores.etcd import EtcdStore
from ipam.stores.lease_files import LeaseFiles
from ipam.stores.memory import Leases, MemoryBlockStore, MemoryStore, Pools
from ipam.stores.protocols import BlockStore, LeaseStore

RANGES = {"ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "fd00::/64"}]]}


def grids_of(ipam, sizes=None):
    sizes = sizes or {4: 26, 6: 122}
    return [Grid(r, sizes[r.version]) for s in ranges.range_sets(ipam) for r in s.ranges]


def disk_stores(tmp_path, request):
    return lambda **kw: DiskStore(str(tmp_path / "networks"), "net1", **kw)


def memory_stores(tmp_path, request):
    backing = Leases()
    return lambda **kw: MemoryStore(backing, **kw)


def block_stores(kind):
    """A lease-store opener over the block stores' opener: node n1, network net1, RANGES."""
    def opener(tmp_path, request):
        make = BLOCK_STORES[kind](tmp_path, request)
        return lambda **kw: make("n1", grids=grids_of(RANGES), **kw)
    return opener


def memory_block_stores(tmp_path, request):
    backing = Pools()
    return lambda node, network="net1", **kw: MemoryBlockStore(backing, network, node, **kw)


def etcd_block_stores(tmp_path, request):
    """cluster-ipam's store on a real etcd member (one per module), a key prefix per test; each node
    its own data directory (the node's lock, last reserved, records)."""
    member = request.getfixturevalue("contract_etcd")
    prefix = f"/ucl-contract-{uuid.uuid4().hex[:8]}"

    def make(node, network="net1", lock=True, **kw):
        files = LeaseFiles(str(tmp_path / node), network) if lock else None
        return EtcdStore(member.client(), prefix, network, node, files=files, **kw)
    return make


LEASE_STORES = {"disk": disk_stores, "memory": memory_stores, "etcd": block_stores("etcd"),
                "memory-blocks": block_stores("memory")}
BLOCK_STORES = {"memory": memory_block_stores, "etcd": etcd_block_stores}


@pytest.fixture(scope="module")
def contract_etcd():
    from tests.etcd import EtcdCluster
    with EtcdCluster(members=1) as cluster:
        yield cluster


@pytest.fixture(params=sorted(LEASE_STORES))
def stores(request, tmp_path):
    """A function opening a new lease store over this test's backing (reuse_cooldown=... passed on)."""
    return LEASE_STORES[request.param](tmp_path, request)


class Clock:
    """ipam/stores/holds.py's clock, moved by the test."""

    def __init__(self):
        self.t = 1_800_000_000.0

    def __call__(self):
        return self.t

    def move(self, seconds):
        self.t += seconds


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(holds, "now", c)
    return c


@pytest.fixture(params=sorted(BLOCK_STORES))
def block_store(request, tmp_path):
    """A function opening a new block store over this test's backing: (node, network="net1", grids=(),
    pod=None, sticky_seconds=None, netns=None, lock=True)."""
    return BLOCK_STORES[request.param](tmp_path, request)


# --------------------------------------------------------------------------
# The lease contract

def test_reserve_is_exclusive(stores):
    with stores() as store:
        assert store.reserve("10.1.0.2", "c1", "eth0")
        assert not store.reserve("10.1.0.2", "c2", "eth0")
        assert not store.reserve("10.1.0.2", "c1", "eth0")
        assert store.owner("10.1.0.2") == ("c1", "eth0")
    with stores() as store:
        assert not store.reserve("10.1.0.2", "c3", "eth0")   # held across runs
        assert store.owner("10.1.0.2") == ("c1", "eth0")
        assert store.owner("10.1.0.3") is None


def test_last_reserved_follows_reserve_with_a_set_index(stores):
    with stores() as store:
        assert store.last_reserved(0) is None
        assert store.reserve("10.1.0.5", "c1", "eth0", 0)
        assert store.reserve("fd00::5", "c1", "eth0", 1)
        assert store.reserve("10.1.0.9", "c2", "eth0")          # no set index: the hint stays
        assert not store.reserve("10.1.0.9", "c3", "eth0", 0)   # a failed reserve moves nothing
    with stores() as store:
        assert store.last_reserved(0) == "10.1.0.5"
        assert store.last_reserved(1) == "fd00::5"


def test_ips_of_and_attachments(stores):
    with stores() as store:
        assert store.reserve("10.1.0.2", "c1", "eth0", 0)
        assert store.reserve("fd00::2", "c1", "eth0", 1)
        assert store.reserve("10.1.0.3", "c1", "net1", 0)
        assert store.reserve("10.1.0.4", "c2", "eth0", 0)
        assert sorted(store.ips_of("c1", "eth0")) == ["10.1.0.2", "fd00::2"]   # visible before the end
    with stores() as store:
        assert sorted(store.ips_of("c1", "eth0")) == ["10.1.0.2", "fd00::2"]
        assert store.ips_of("c1", "net1") == ["10.1.0.3"]
        assert store.ips_of("c3", "eth0") == []
        found = {owner: sorted(ips) for owner, ips in store.attachments().items()}
        assert found == {("c1", "eth0"): ["10.1.0.2", "fd00::2"], ("c1", "net1"): ["10.1.0.3"],
                         ("c2", "eth0"): ["10.1.0.4"]}
        assert store.leased() == {"10.1.0.2", "fd00::2", "10.1.0.3", "10.1.0.4"}


def test_release_only_by_the_owner(stores):
    with stores() as store:
        assert store.reserve("10.1.0.2", "c1", "eth0")
        assert store.reserve("10.1.0.3", "c1", "eth0")
    with stores() as store:
        store.release("10.1.0.2", "c2", "eth0")      # another container
        store.release("10.1.0.2", "c1", "eth1")      # another interface of it
        store.release("10.1.0.9", "c1", "eth0")      # nothing there
        assert store.owner("10.1.0.2") == ("c1", "eth0")
        store.release("10.1.0.2", "c1", "eth0")
        assert store.ips_of("c1", "eth0") == ["10.1.0.3"]
    with stores() as store:
        assert store.owner("10.1.0.2") is None
        assert store.ips_of("c1", "eth0") == ["10.1.0.3"]
        assert store.reserve("10.1.0.2", "c2", "eth0")     # free again
        store.release("10.1.0.3", "c1", "eth0")
    with stores() as store:
        assert store.attachments() == {("c2", "eth0"): ["10.1.0.2"]}
        assert store.leased() == {"10.1.0.2"}


def test_reserve_and_release_in_one_run(stores):
    # ADD's rollback: what was reserved and released again leaves nothing behind
    with stores() as store:
        assert store.reserve("10.1.0.2", "c1", "eth0", 0)
        store.release("10.1.0.2", "c1", "eth0")
        assert store.ips_of("c1", "eth0") == []
    with stores() as store:
        assert store.attachments() == {} and store.leased() == set()


def test_a_store_closed_without_leaving_the_block_cleanly_keeps_what_it_reserved(stores):
    # a run that fails half way: the lease it took is real (GC or DEL releases it), never half a lease
    with pytest.raises(RuntimeError):
        with stores() as store:
            assert store.reserve("10.1.0.2", "c1", "eth0")
            raise RuntimeError("killed")
    with stores() as store:
        assert store.owner("10.1.0.2") == ("c1", "eth0")
        assert store.ips_of("c1", "eth0") == ["10.1.0.2"]
        assert not store.reserve("10.1.0.2", "c2", "eth0")


# --------------------------------------------------------------------------
# Conflict holds and reuse cool-down (the lease contract)

MAC = "02:AA:BB:CC:DD:01"


def test_a_conflict_hold_takes_the_address_from_its_attachment_and_keeps_it(stores, clock):
    with stores() as store:
        assert store.reserve("10.1.0.2", "c1", "eth0", 0) and store.reserve("fd00::2", "c1", "eth0", 1)
        assert store.reserve("10.1.0.3", "c2", "eth0", 0)
        assert not store.hold_conflict("10.1.0.2", "c2", "eth0", MAC, 60)     # not c2's
        assert not store.hold_conflict("10.1.0.9", "c1", "eth0", MAC, 60)     # nobody's
        assert store.conflicts() == {}
        assert store.hold_conflict("10.1.0.2", "c1", "eth0", MAC, 60)
        assert store.owner("10.1.0.2") is None and store.ips_of("c1", "eth0") == ["fd00::2"]
        assert not store.reserve("10.1.0.2", "c3", "eth0")
    t = clock.t
    with stores() as store:
        assert store.conflicts() == {"10.1.0.2": holds.Conflict(MAC.lower(), t, t + 60)}
        assert "10.1.0.2" in store.leased() and store.owner("10.1.0.2") is None
        assert store.attachments() == {("c1", "eth0"): ["fd00::2"], ("c2", "eth0"): ["10.1.0.3"]}
        store.release("10.1.0.2", "c1", "eth0")                 # DEL of the attachment: not its lease
        store.release("fd00::2", "c1", "eth0")
        assert not store.hold_conflict("10.1.0.2", "c1", "eth0", MAC, 60)   # a record is no lease
    clock.move(61)
    with stores() as store:
        [conflict] = store.conflicts().values()
        assert not conflict.held(clock.t)                     # due: given back by whoever asks, not by itself
        assert not store.reserve("10.1.0.2", "c3", "eth0")
        assert store.attachments() == {("c2", "eth0"): ["10.1.0.3"]}
        assert store.release_conflict("10.1.0.2") and not store.release_conflict("10.1.0.2")
        assert not store.release_conflict("10.1.0.3")           # a lease is no conflict record
        assert store.conflicts() == {} and store.leased() == {"10.1.0.3"}
    with stores() as store:
        assert store.reserve("10.1.0.2", "c3", "eth0") and store.owner("10.1.0.2") == ("c3", "eth0")


def test_a_run_cut_short_after_a_conflict_hold_leaves_the_record_whole(stores, clock):
    # killed before the block ends (host-local: before the index is committed): never half a record
    with pytest.raises(RuntimeError):
        with stores(reuse_cooldown=60) as store:
            assert store.reserve("10.1.0.2", "c1", "eth0") and store.reserve("10.1.0.3", "c1", "eth1")
            assert store.hold_conflict("10.1.0.2", "c1", "eth0", MAC, 60)
            store.release("10.1.0.3", "c1", "eth1")
            raise RuntimeError("killed")
    with stores(reuse_cooldown=60) as store:
        assert list(store.conflicts()) == ["10.1.0.2"] and store.owner("10.1.0.2") is None
        assert store.ips_of("c1", "eth0") == [] and store.attachments() == {}
        assert not store.reserve("10.1.0.2", "c2", "eth0")


def test_released_addresses_cool_for_reuse_cooldown(stores, clock):
    with stores(reuse_cooldown=30) as store:
        assert store.cooling() == {}
        for i, ip in enumerate(("10.1.0.2", "10.1.0.3", "fd00::2")):
            assert store.reserve(ip, f"c{i}", "eth0")
        store.release("10.1.0.2", "c0", "eth0")
        store.release("10.1.0.3", "c9", "eth0")              # not c9's: nothing released, nothing cools
        assert store.cooling() == {"10.1.0.2": clock.t + 30}
    released = clock.t
    clock.move(10)
    with stores(reuse_cooldown=30) as store:
        store.release("fd00::2", "c2", "eth0")
        assert store.cooling() == {"10.1.0.2": released + 30, "fd00::2": clock.t + 30}
        assert "10.1.0.2" not in store.leased()                 # free: a requested address takes it
        assert store.reserve("10.1.0.2", "c5", "eth0") and store.owner("10.1.0.2") == ("c5", "eth0")
    with stores(reuse_cooldown=30) as store:
        assert list(store.cooling()) == ["fd00::2"]             # leased again: no longer cooling
        assert store.cooling() == {"fd00::2": clock.t + 30}
    clock.move(30)
    with stores(reuse_cooldown=30) as store:
        assert store.cooling() == {}
        store.release("10.1.0.2", "c5", "eth0")
        assert store.cooling() == {"10.1.0.2": clock.t + 30}
    with stores() as store:                                     # reuseCooldown 0: nothing cools, nothing recorded
        assert store.cooling() == {}
        assert store.reserve("10.1.0.4", "c6", "eth0")
        store.release("10.1.0.4", "c6", "eth0")
    with stores(reuse_cooldown=30) as store:
        assert list(store.cooling()) == ["10.1.0.2"]


def test_a_conflict_given_back_is_free_at_once_and_never_cools(stores, clock):
    with stores(reuse_cooldown=300) as store:
        assert store.reserve("10.1.0.2", "c1", "eth0")
        assert store.hold_conflict("10.1.0.2", "c1", "eth0", MAC, 60)
        assert store.cooling() == {}                            # no release of a lease
    with stores(reuse_cooldown=300) as store:
        assert store.release_conflict("10.1.0.2")
        assert store.cooling() == {}
        assert store.reserve("10.1.0.2", "c2", "eth0")


SMALL_SET = {"ranges": [[{"subnet": "10.1.0.0/29"}]]}         # .2-.6 handed out (.1 the gateway)


def test_host_local_allocation_skips_held_and_cooling_addresses(stores, clock):
    [s] = ranges.range_sets(SMALL_SET)
    given = []
    with stores(reuse_cooldown=60) as store:
        for i in range(5):
            r, v = allocator.allocate(s, store, f"c{i}", "eth0")
            given.append(r.text(v))
        assert given == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
        assert store.hold_conflict("10.1.0.3", "c1", "eth0", MAC, 3600)
        store.release("10.1.0.4", "c2", "eth0")
        with pytest.raises(CniError) as e:
            allocator.allocate(s, store, "c9", "eth0")
    assert e.value.code == 101
    assert "1 held as conflicts" in e.value.msg and "1 released less than ipam.reuseCooldown ago" in e.value.msg
    assert f"the first comes back at {allocator.when(clock.t + 60)} (in 60 s)" in e.value.msg
    clock.move(60)
    with stores(reuse_cooldown=60) as store:
        r, v = allocator.allocate(s, store, "c9", "eth0")
        assert r.text(v) == "10.1.0.4"                          # cooled down; the conflict is still held
        with pytest.raises(CniError) as e:
            allocator.allocate(s, store, "c10", "eth0")
        assert "held as conflicts" in e.value.msg and "reuseCooldown" not in e.value.msg


# --------------------------------------------------------------------------
# The block contract

SMALL = {"ranges": [[{"subnet": "10.2.0.0/28"}]]}    # 14 usable addresses


def small_grid(prefix=30):
    [grid] = grids_of(SMALL, {4: prefix})            # blocks of 4 (/30) unless told
    return grid


def value(text):
    return int(ipaddress.ip_address(text))


def test_a_claim_takes_the_address_in_its_block_for_the_node(block_store):
    grid = small_grid()
    with block_store("n1", grids=[grid]) as store:
        block = store.block(grid, value("10.2.0.4"))
        assert block.node is None and not store.taken(grid, block, value("10.2.0.5"), time.time())
        assert store.claim(grid, block, value("10.2.0.5"), "c1", "eth0") is True
        assert block.node == "n1" and block.used == {1} and block.revision
        assert store.taken(grid, block, value("10.2.0.5"), time.time())
        assert store.in_doubt() is None
    with block_store("n2", grids=[grid]) as store:
        assert store.read("10.2.0.5").owner() == ("c1", "eth0")
        assert store.read("10.2.0.5").doc["node"] == "n1"
        [(first, seen)] = store.blocks(grid).items()
        assert (first, seen.node, seen.used) == (value("10.2.0.4"), "n1", {1})
        assert store.pool_blocks(grid)[first].used == {1}
        assert store.owner("10.2.0.5") == ("c1", "eth0") and store.leased() == {"10.2.0.5"}
        assert not store.claim(grid, store.block(grid, first), value("10.2.0.5"), "c2", "eth0")   # taken


def test_a_claim_on_a_block_changed_since_it_was_read_is_refused_and_refreshes_it(block_store):
    grid = small_grid()
    with block_store("n1", grids=[grid], lock=False) as one, block_store("n2", grids=[grid], lock=False) as two:
        stale = one.block(grid, value("10.2.0.8"))
        assert two.claim(grid, two.block(grid, value("10.2.0.8")), value("10.2.0.9"), "c2", "eth0")
        assert one.claim(grid, stale, value("10.2.0.10"), "c1", "eth0") is None
        assert (stale.node, stale.used) == ("n2", {1})                      # as it is now
        assert one.claim(grid, stale, value("10.2.0.10"), "c1", "eth0") is True   # borrowed
        assert stale.node == "n2" and stale.used == {1, 2}
        assert one.read("10.2.0.10").doc["node"] == "n1"


def test_the_pool_block_size_is_its_first_users(block_store):
    with block_store("n1", grids=[small_grid(29)]) as store:
        assert store.pool_blocks(small_grid(30)) == {}               # a read fixes nothing
        assert store.blocks(small_grid(29)) == {}
    with block_store("n1", grids=[small_grid(30)]) as store:
        with pytest.raises(CniError) as e:
            store.blocks(small_grid(30))
    assert e.value.code == 7 and "is cut into /29 blocks by its first user" in e.value.msg


def test_an_attachment_is_pending_while_its_adds_mark_stays(block_store):
    """begin_add marks the ADD on its node; an ADD that never completed leaves its mark, by which the
    next ADD of the attachment on that node finds its claims pending; complete removes it; an ADD that
    claimed nothing (refused as a second ADD) removes the mark it made as it closes."""
    grid = small_grid()
    with block_store("n1", grids=[grid], netns="/run/netns/p1") as store:
        store.begin_add("c1", "eth0")
        assert store.pending_and_done("c1", "eth0") == ([], [])
        assert store.reserve("10.2.0.1", "c1", "eth0", 0) and store.reserve("10.2.0.2", "c1", "eth0")
    with block_store("n1", grids=[grid]) as store:                  # the ADD never completed
        store.begin_add("c1", "eth0")
        assert store.pending_and_done("c1", "eth0") == (["10.2.0.1", "10.2.0.2"], [])
        store.complete("c1", "eth0", ["10.2.0.1", "10.2.0.2"])
        assert store.last_reserved(0) == "10.2.0.1"
    for _ in range(2):
        with block_store("n1", grids=[grid]) as store:              # a second ADD: claims nothing
            store.begin_add("c1", "eth0")
            assert store.pending_and_done("c1", "eth0") == ([], ["10.2.0.1", "10.2.0.2"])
    with block_store("n2", grids=[grid]) as store:
        assert store.pending_and_done("c1", "eth0") == ([], ["10.2.0.1", "10.2.0.2"])   # another node's
        assert store.reserve("10.2.0.3", "c2", "eth0")
        assert store.attachment_records() == {("c1", "eth0"): ("n1", "/run/netns/p1", ["10.2.0.1", "10.2.0.2"]),
                                              ("c2", "eth0"): ("n2", None, ["10.2.0.3"])}
        assert store.attachments() == {("c1", "eth0"): ["10.2.0.1", "10.2.0.2"], ("c2", "eth0"): ["10.2.0.3"]}
    with block_store("n3", network="net2") as store:
        assert store.attachment_records() == {} and store.attachment_nodes() >= {"n1", "n2"}
        store.forget("c1", "eth0", "10.2.0.1")                      # net2 has no such record: nothing
    with block_store("n1", grids=[grid]) as store:
        store.forget("c1", "eth0", "10.2.0.1")                      # the record only: the lease stays
        assert store.ips_of("c1", "eth0") == ["10.2.0.2"] and store.owner("10.2.0.1") == ("c1", "eth0")


def test_a_released_pods_address_is_held_for_it_and_taken_back(block_store):
    grid = small_grid()
    pod = ("ns1", "p1")
    with block_store("n1", grids=[grid], pod=pod, sticky_seconds=300) as store:
        assert store.reserve("10.2.0.5", "c1", "eth0")
        store.release("10.2.0.5", "c1", "eth0")
        [hold] = store.holds_of(*pod)
        assert hold.hold and (hold.ip, hold.doc["node"], hold.doc["pod"]) == ("10.2.0.5", "n1", "p1")
        assert [x.ip for x in store.holds()] == ["10.2.0.5"] and store.owner("10.2.0.5") is None
        assert store.ips_of("c1", "eth0") == [] and store.leased() == {"10.2.0.5"}
        block = store.block(grid, value("10.2.0.4"))
        assert store.taken(grid, block, value("10.2.0.5"), time.time())
        assert not store.reserve("10.2.0.5", "c9", "eth0")          # held for the pod
        assert store.claim(grid, block, value("10.2.0.5"), "c2", "eth0", hold) is True
        assert store.owner("10.2.0.5") == ("c2", "eth0") and store.holds_of(*pod) == []
        store.release("10.2.0.5", "c2", "eth0", hold=False)         # an address never handed out
        assert store.read("10.2.0.5") is None and store.leased() == set()


def test_release_lease_holds_for_the_given_time_and_drops_a_hold(block_store):
    grid = small_grid()
    with block_store("n1", grids=[grid], pod=("ns1", "p1")) as store:
        assert store.reserve("10.2.0.6", "c1", "eth0")
        lease = store.read("10.2.0.6")
        assert store.release_lease(lease, 60) is True
        assert store.release_lease(lease, None) is False            # not the lease any more
        hold = store.read("10.2.0.6")
        assert hold.hold and not hold.expired(time.time()) and hold.expired(time.time() + 61)
        assert store.release_lease(hold, None) is True
        assert store.read("10.2.0.6") is None and store.holds() == [] and store.pool_blocks(grid) == {}


def test_a_gone_node_gives_up_its_blocks(block_store):
    grid = small_grid()
    with block_store("n1", grids=[grid]) as store:
        assert store.reserve("10.2.0.1", "c1", "eth0")
        assert store.claim(grid, store.block(grid, value("10.2.0.4")), value("10.2.0.5"), "c1", "eth1")
    with block_store("n2", grids=[grid]) as store:
        assert store.claim(grid, store.block(grid, value("10.2.0.4")), value("10.2.0.6"), "c2", "eth0")  # borrowed
        assert sorted(owner for owner, _ in store.block_owners()) == ["n1", "n1"]
        assert {x.ip for x in store.all_leases()} == {"10.2.0.1", "10.2.0.5", "10.2.0.6"}
    with block_store("admin", lock=False) as store:
        for lease in store.all_leases():
            if lease.doc.get("node") == "n1":
                assert store.release_lease(lease, None)
        blocks = [block for owner, block in store.block_owners() if owner == "n1"]
        assert len(blocks) == 1 and blocks[0].used == {2}             # the borrower's address is left
        assert store.orphan(blocks[0]) and not store.orphan(blocks[0])    # once: it changed by then
        assert [owner for owner, _ in store.block_owners()] == [None]
        assert store.attachment_nodes() == {"n2"}
    with block_store("n3", grids=[grid]) as store:
        orphaned = store.block(grid, value("10.2.0.4"))
        assert orphaned.node is None and orphaned.used == {2}
        assert store.claim(grid, orphaned, value("10.2.0.7"), "c3", "eth0") and orphaned.node == "n3"   # adopted


def test_the_node_keeps_its_record_of_the_network(block_store):
    with block_store("n1") as store:
        store.keep_record("network.json", b"{}")
        store.keep_record("network.json", b'{"a": 1}')
        store.status()
        store.limit_wait(0.5)


def test_cluster_ipam_allocates_over_every_block_store(block_store):
    """The policy over the store: every address handed out once, by both nodes, then code 101."""
    [s] = ranges.range_sets(SMALL)               # 13 addresses: 10.2.0.1 is the gateway
    grid = small_grid()
    taken = []
    for node, count in (("n1", 7), ("n2", 6)):
        for i in range(count):
            with block_store(node, grids=[grid]) as store:
                r, v = cluster.allocate(s, [grid], store, f"{node}-{i}", "eth0")
                taken.append(r.text(v))
    assert len(set(taken)) == 13
    with block_store("n1", grids=[grid]) as store:
        owners = {owner for owner, _ in store.block_owners()}
        assert owners == {"n1", "n2"}
        with pytest.raises(CniError) as e:
            cluster.allocate(s, [grid], store, "c-last", "eth0")
    assert e.value.code == 101 and "13 in use" in e.value.msg


def test_cluster_ipam_skips_cooling_addresses_but_a_sticky_pod_takes_its_own_back(block_store, clock):
    [s] = ranges.range_sets(SMALL)
    grid = small_grid()
    given = []
    for i in range(13):                                          # every address of the range handed out
        with block_store("n1", grids=[grid], pod=("ns", f"p{i}"), reuse_cooldown=600) as store:
            r, v = cluster.allocate(s, [grid], store, f"c{i}", "eth0")
            store.complete(f"c{i}", "eth0", [r.text(v)])
            given.append(r.text(v))
    with block_store("n1", grids=[grid], sticky_seconds=100, reuse_cooldown=600) as store:
        store.release(given[0], "c0", "eth0")                    # p0's and p2's: holds for 100 s, cooling from now
        store.release(given[2], "c2", "eth0")
    with block_store("n1", grids=[grid], reuse_cooldown=600) as store:
        store.release(given[1], "c1", "eth0")                    # free, cooling
        assert store.cooling() == {given[1]: clock.t + 600}      # the holds' addresses are held, not cooling
        with pytest.raises(CniError) as e:
            cluster.allocate(s, [grid], store, "new", "eth0")
    assert e.value.code == 101 and "1 released less than ipam.reuseCooldown ago" in e.value.msg
    with block_store("n1", grids=[grid], pod=("ns", "p0"), sticky_seconds=100, reuse_cooldown=600) as store:
        r, v = cluster.allocate(s, [grid], store, "c0-back", "eth0", holds=store.holds_of("ns", "p0"))
        assert r.text(v) == given[0]                             # the same pod: its own address, cooling or not
    clock.move(101)                                              # p2's hold is over; its address still cools
    with block_store("n1", grids=[grid], reuse_cooldown=600) as store:
        assert sorted(store.cooling()) == sorted(given[1:3])
        with pytest.raises(CniError) as e:
            cluster.allocate(s, [grid], store, "new", "eth0")
    assert "2 released less than ipam.reuseCooldown ago" in e.value.msg
    clock.move(500)
    with block_store("n1", grids=[grid], reuse_cooldown=600) as store:
        assert store.cooling() == {}
        r, v = cluster.allocate(s, [grid], store, "new", "eth0")
        assert r.text(v) in given[1:3]


# --------------------------------------------------------------------------
# Every store implements its protocols

def members(protocol):
    """{name: function or None (a data attribute)} that `protocol` and the protocols it extends declare."""
    found = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        found.update(dict.fromkeys(getattr(cls, "__annotations__", {})))
        found.update({name: fn for name, fn in vars(cls).items() if inspect.isfunction(fn)
                      and (not name.startswith("__") or name in ("__enter__", "__exit__"))})
    return found


def takes_every_call(declared, implemented):
    """Why `implemented` cannot stand in for `declared`, or None: every parameter the protocol
    names, at its position, with a default where it has one; any other parameter optional."""
    want = list(inspect.signature(declared).parameters.values())
    have = list(inspect.signature(implemented).parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in have):
        return None
    for i, p in enumerate(want):
        if i >= len(have) or have[i].name != p.name or have[i].kind != p.kind:
            return f"parameter {i} must be {p.name!r}: {inspect.signature(implemented)}"
        if p.default is not p.empty and have[i].default is p.empty:
            return f"{p.name!r} must have a default: {inspect.signature(implemented)}"
    extra = [p.name for p in have[len(want):] if p.default is p.empty]
    return f"{', '.join(extra)} must have defaults: {inspect.signature(implemented)}" if extra else None


def gaps(store, protocol):
    """What `store` (an instance) lacks of `protocol`: [problem], empty when it implements it."""
    problems = []
    for name, declared in sorted(members(protocol).items()):
        if not hasattr(store, name):
            problems.append(f"{type(store).__name__}.{name} is missing")
        elif declared is not None:
            why = takes_every_call(declared, getattr(type(store), name))
            if why:
                problems.append(f"{type(store).__name__}.{name}: {why}")
    return problems


def instances(tmp_path):
    """One store of each kind, never opened (no etcd needed: the client is not called)."""
    return {"disk": DiskStore(str(tmp_path), "net1"), "memory": MemoryStore(),
            "memory-blocks": MemoryBlockStore(Pools(), "net1", "n1"), "etcd": EtcdStore(None, "/p", "net1", "n1")}


@pytest.mark.parametrize("kind, protocol", [("disk", LeaseStore), ("memory", LeaseStore), ("etcd", LeaseStore),
                                            ("memory-blocks", LeaseStore), ("etcd", BlockStore),
                                            ("memory-blocks", BlockStore)])
def test_every_store_implements_its_protocol(tmp_path, kind, protocol):
    stores = instances(tmp_path)
    try:
        assert gaps(stores[kind], protocol) == []
    finally:
        stores["disk"].close()


def test_the_protocol_check_finds_a_missing_member_and_a_narrower_signature():
    class Wider(LeaseStore, Protocol):
        def compact(self): ...

        def reserve(self, ip, container_id, ifname, set_index=None, sticky=False): ...

    class Narrow:
        def release(self, ip, container_id): ...

    problems = gaps(MemoryStore(), Wider)
    assert problems == ["MemoryStore.compact is missing",
                        "MemoryStore.reserve: parameter 5 must be 'sticky': "
                        "(self, ip, container_id, ifname, set_index=None)"]
    assert gaps(MemoryBlockStore(Pools(), "n", "n"), BlockStore) == []
    assert "MemoryStore.grids is missing" in gaps(MemoryStore(), BlockStore)      # a data member
    assert takes_every_call(LeaseStore.release, Narrow.release).startswith("parameter 3 must be 'ifname'")


def test_cluster_ipams_policy_uses_only_the_block_store_protocol():
    """ipam/cluster.py names no store member the protocol does not declare (no reach into a store's insides)."""
    import ast
    tree = ast.parse(open(cluster.__file__).read())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "store"}
    assert used and used <= set(members(BlockStore)), sorted(used - set(members(BlockStore)))
