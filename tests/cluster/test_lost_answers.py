"""A write whose answer is lost (a member killed mid-request): cluster-ipam reads the outcome and goes on."""

import os
import uuid

import pytest

from cni.errors import ERR_TRY_AGAIN, CniError
from ipam import ranges
from ipam.blocks import Grid
from ipam.stores.etcd import EtcdStore
from ipam.stores.lease_files import LeaseFiles


class LosingClient:
    """A real client whose next write transactions lose their answer, applied (`apply`) or not."""

    def __init__(self, client, lose):
        self.client, self.lose = client, list(lose)

    def __getattr__(self, name):
        return getattr(self.client, name)

    def txn(self, compares, success, failure=()):
        writes = any("request_range" not in op for op in list(success) + list(failure))
        if writes and self.lose:
            apply = self.lose.pop(0)
            if apply:
                self.client.txn(compares, success, failure)
            raise CniError(ERR_TRY_AGAIN, "etcd: http://x broke off during a write; it may have been applied")
        return self.client.txn(compares, success, failure)


@pytest.fixture
def store_of(etcd_member, tmp_path):
    prefix = f"/ucl-lost-{uuid.uuid4().hex[:8]}"
    [s] = ranges.range_sets({"ranges": [[{"subnet": "10.90.0.0/24"}]]})
    made = []

    def make(lose=()):
        store = EtcdStore(LosingClient(etcd_member.client(), lose), prefix, "net1", "n1",
                          [Grid(s.ranges[0], 26)], LeaseFiles(str(tmp_path), "net1"))
        made.append(store)
        return store
    make.data_dir = str(tmp_path)
    yield make
    for store in made:
        store.close()


@pytest.mark.parametrize("lose", [[True], [False], [False, True], [True, True]])
def test_claim_and_release_survive_a_lost_answer(store_of, lose):
    # the pool's config write is the first write; the claim the next
    with store_of(lose) as store:
        assert store.reserve("10.90.0.5", "c1", "eth0")
        assert store.in_doubt() is None
    with store_of() as store:
        assert store.owner("10.90.0.5") == ("c1", "eth0")
        assert store.ips_of("c1", "eth0") == ["10.90.0.5"]
        assert store.leased() == {"10.90.0.5"}
    with store_of([True]) as store:
        store.release("10.90.0.5", "c1", "eth0")
    with store_of() as store:
        assert store.owner("10.90.0.5") is None and store.ips_of("c1", "eth0") == []
        assert store.leased() == set()


def test_a_claim_whose_answer_was_lost_keeps_its_adds_mark(store_of):
    """A claim etcd applied though its answer was lost (read back: ours): the ADD's mark stays if the ADD
    goes no further (the next ADD of the attachment finds the claim pending), and goes once it completes."""
    with store_of([True]) as store:
        store.begin_add("c1", "eth0")
        assert store.reserve("10.90.0.6", "c1", "eth0")
        assert store.in_doubt() is None
    with store_of() as store:
        store.begin_add("c1", "eth0")
        assert store.pending_and_done("c1", "eth0") == (["10.90.0.6"], [])
        store.complete("c1", "eth0", ["10.90.0.6"])
    with store_of() as store:
        store.begin_add("c1", "eth0")
        assert store.pending_and_done("c1", "eth0") == ([], ["10.90.0.6"])
        store.release("10.90.0.6", "c1", "eth0")
        store.end_attachment("c1", "eth0")
    assert os.listdir(os.path.join(store_of.data_dir, "net1", "adding")) == []
