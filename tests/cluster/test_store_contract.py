"""One contract for every lease store (ipam/stores/disk.py): the file store, the memory store, the etcd store.

Each case opens stores over one backing (a data directory, a Leases object, an
etcd prefix) one operation at a time, as successive plugin runs do.
"""

import uuid

import pytest

from ipam.stores.memory import Leases, MemoryStore
from ipam.stores.disk import DiskStore


def disk_stores(tmp_path, request):
    return lambda: DiskStore(str(tmp_path / "networks"), "net1")


def memory_stores(tmp_path, request):
    backing = Leases()
    return lambda: MemoryStore(backing)


def etcd_stores(tmp_path, request):
    """cluster-ipam's store on a real etcd member (one per module), a key prefix per test."""
    from ipam import ranges
    from ipam.blocks import Grid
    from ipam.stores.etcd import EtcdStore
    from ipam.stores.lease_files import LeaseFiles
    member = request.getfixturevalue("contract_etcd")
    prefix = f"/ucl-contract-{uuid.uuid4().hex[:8]}"
    sets = ranges.range_sets({"ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "fd00::/64"}]]})
    grids = [Grid(r, {4: 26, 6: 122}[r.version]) for s in sets for r in s.ranges]
    return lambda: EtcdStore(member.client(), prefix, "net1", "n1", grids,
                             LeaseFiles(str(tmp_path / "node"), "net1"))


STORES = {"disk": disk_stores, "memory": memory_stores, "etcd": etcd_stores}


@pytest.fixture(scope="module")
def contract_etcd():
    from tests.etcd import EtcdCluster
    with EtcdCluster(members=1) as cluster:
        yield cluster


@pytest.fixture(params=sorted(STORES))
def stores(request, tmp_path):
    """A function opening a new store over this test's backing."""
    return STORES[request.param](tmp_path, request)


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
