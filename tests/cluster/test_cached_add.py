"""An ADD of a node that knows its blocks (OWN_BLOCKS in its dataDir: each block's value and revision as
the node last wrote or read it) makes no first read: its claim is guarded by the block's revision and
the address key as every claim is, and by etcd holding no record of the attachment and no conflict
record of the network, which is all the first read would have found to act on. Anything else, and
the ADD starts again with the first read. Counted and read on the wire (tests/cluster/proxy.py)."""

import json
import os

import pytest

from tests.cluster.conftest import addresses, error
from tests.cluster.proxy import FaultProxy, decoded_key, is_claim, is_write

SUBNET = "10.44.0.0/24"


@pytest.fixture
def wired(make_cl):
    """(Cluster on one member, FaultProxy in front of it, config of node n1 through the proxy)."""
    cl = make_cl(1)
    with FaultProxy(cl.etcd.endpoints[0]) as proxy:
        yield cl, proxy, cl.conf(SUBNET, blockSize=28, etcd=cl.etcd_conf(endpoints=[proxy.url], requestTimeout=2,
                                                                         dialTimeout=0.5))


def requests_of(proxy, run):
    del proxy.requests[:]
    out = run()
    return out, [("w" if is_write(path, body) else "r", json.loads(body)) for path, body in proxy.requests]


def range_compares(txn):
    """The key prefixes a txn requires to be empty (compares over a range)."""
    return {decoded_key(c["key"]) for c in txn.get("compare", []) if "range_end" in c}


def test_a_known_block_is_claimed_without_a_read_guarded_by_the_attachments_and_conflicts(wired):
    cl, proxy, conf = wired
    first = addresses(cl.add(conf, "c0"))[0]                # the node's first: reads, claims a block
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c1"))
    second = addresses(out)[0]
    assert [kind for kind, _ in sent] == ["w"]               # the claim alone (the ADD's mark is the node's)
    claim = sent[0][1]
    assert range_compares(claim) == {f"{cl.prefix}/attachments/net1/c1@eth0/", f"{cl.prefix}/conflicts/net1/"}
    assert second != first and set(cl.leases()) == {first, second}
    assert cl.marks() == []


def test_a_second_add_of_an_attachment_is_refused_as_before(wired):
    cl, proxy, conf = wired
    [ip] = addresses(cl.add(conf, "c1"))
    assert addresses(cl.add(conf, "c2"))
    error(cl.add(conf, "c1"), 101, "duplicate allocation is not allowed")   # its record: the read, the rule
    assert [v["containerID"] for k, v in cl.leases().items() if k == ip] == ["c1"]
    assert sorted(v["containerID"] for v in cl.leases().values()) == ["c1", "c2"]


def test_a_retried_add_whose_claim_was_left_pending_releases_it(wired):
    cl, proxy, conf = wired
    addresses(cl.add(conf, "c0"))                           # the node knows its block now
    proxy.lose_answer(is_claim, then_refuse=True)           # applied, answer lost, etcd gone: left pending
    error(cl.add(conf, "c1"), 11, "no endpoint answered")
    assert cl.marks() == ["c1@eth0"]                         # the ADD's mark stays: it never answered success
    proxy.refuse = False
    [left] = [k for k, v in cl.leases().items() if v["containerID"] == "c1"]
    out = cl.add(conf, "c1")
    assert out.ok, out
    assert sorted(k for k, v in cl.leases().items() if v["containerID"] == "c1") == addresses(out)
    assert cl.keys("attachments/net1/c1@eth0/") and all(
        "pending" not in v for v in cl.keys("attachments/net1/c1@eth0/").values())
    assert cl.marks() == []
    error(cl.add(conf, "c1"), 101, "duplicate allocation is not allowed")   # answered: a second ADD now
    assert cl.delete(conf, "c1").ok and cl.delete(conf, "c0").ok


def test_a_conflict_record_of_the_network_sends_the_add_to_its_first_read(wired):
    cl, proxy, conf = wired
    addresses(cl.add(conf, "c0"))
    cl.client.put(f"{cl.prefix}/conflicts/net1/10.44.0.200", json.dumps({"conflict": True, "network": "net1"}))
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c1"))
    assert addresses(out)
    # the guarded claim refused (nothing written), then the ADD as before: its first read, the claim again
    assert [kind for kind, _ in sent][:2] == ["w", "r"] and range_compares(sent[0][1])
    assert not any(range_compares(txn) for _, txn in sent[1:])
    # the node remembers it: while the network has conflict records its ADDs read first, as before
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c2"))
    assert addresses(out) and [kind for kind, _ in sent] == ["r", "w"]
    cl.client.delete(f"{cl.prefix}/conflicts/net1/10.44.0.200")
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c3"))   # reads, finds none
    assert addresses(out) and [kind for kind, _ in sent] == ["r", "w"]
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c4"))
    assert addresses(out) and [kind for kind, _ in sent] == ["w"]


def test_blocks_changed_behind_the_nodes_back_cost_a_refused_claim_never_an_address_twice(wired):
    cl, proxy, conf = wired
    taken = set(addresses(cl.add(conf, "c0")))
    path = os.path.join(cl.data_dir("n1"), "net1", "own-blocks.json")
    with open(path) as f:
        stale = f.read()                                     # the cache as it is now
    taken |= set(addresses(cl.add(conf, "c1")))
    with open(path, "w") as f:
        f.write(stale)                                       # the block one claim older than etcd's
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c2"))
    [ip] = addresses(out)
    assert ip not in taken and len(cl.leases()) == 3
    assert [kind for kind, _ in sent] == ["w", "w"]          # refused (the block's revision), then claimed


def test_del_keeps_the_nodes_cache_so_the_next_add_claims_at_once(wired):
    cl, proxy, conf = wired
    addresses(cl.add(conf, "c0"))
    addresses(cl.add(conf, "c1"))
    assert cl.delete(conf, "c1").ok                           # the block rewritten by the DEL
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c2"))
    assert addresses(out) and [kind for kind, _ in sent] == ["w"]
    assert cl.delete(conf, "c2").ok and cl.delete(conf, "c0").ok
    assert [k for k in cl.keys() if "/blocks/" in k] == []   # the empty block went back to the pool
    out, sent = requests_of(proxy, lambda: cl.add(conf, "c3"))   # its cache names a block gone:
    assert addresses(out)                                    # read, and a block claimed again
