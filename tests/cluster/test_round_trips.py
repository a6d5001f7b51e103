"""The etcd round trips and writes of one cluster-ipam ADD and DEL per case, counted on the wire
(tests/cluster/round_trips.py): deterministic counts, not timings. A change that adds a round trip
or a write to one of them fails here; one that removes some updates EXPECTED (and README's table)."""

from tests.cluster import round_trips
from tests.cluster.proxy import FaultProxy

# case: (round trips, of which writes). Before issue 21 item 3 they were: ADD 6/3, 5/2, 5/2, 5/2, 7/2;
# DEL 5/1 each (a reachability read before every lock, the pools read apart from the attachment).
# An ADD takes the node's lock only around its claims, after its first read, which is the question
# whether etcd answers: its first operation on a network (no lock file yet) asks nothing more.
# DEL reads the lease and its block in one transaction (the attachment record names the block);
# a sticky ADD reads the pod's holds (their index) in its first read. Its first read gets the node's own
# blocks only, not the whole pool (tests/cluster/test_own_blocks.py): as many round trips, smaller.
# An ADD of a node that knows its blocks (their values and revisions, as it last wrote or read them:
# OWN_BLOCKS) and asks for no particular address makes no first read: its claim is refused unless
# etcd holds no record of the attachment nor conflict record of the network (tests/cluster/test_cached_add.py).
# A DEL of an address in a block the node knows the same way reads only the attachment's records: its
# release is guarded by the address key's revision being the record's creation revision (the claim's)
# and the block's being the cached one (tests/cluster/test_cached_del.py); a borrowed address, or a
# sticky one (the hold is made of the lease's bytes), is read first as before.
# An ADD marks itself on the node (a file in its dataDir) instead of completing in etcd: no write after
# its claims (ADD 4/3, 2/2, 3/2, 3/2, 3/2 before; tests/cluster/test_add_mark.py).
EXPECTED = {
    "ADD, the pool's first address (its config written)": (3, 2),
    "ADD, an address in a block the node owns": (1, 1),
    "ADD, a node's first address (a free block claimed)": (2, 1),
    "ADD, an address borrowed from another node's block": (2, 1),
    "ADD, a sticky address taken back": (2, 1),
    "DEL, an address in a block the node owns": (2, 1),
    "DEL, a borrowed address": (3, 1),
    "DEL, sticky (the address held for the pod)": (3, 1),
}


def test_round_trips_and_writes_per_operation(cl):
    with FaultProxy(cl.etcd.endpoints[0]) as proxy:
        def conf(subnet, node, name, **ipam):
            return cl.conf(subnet, node=node, name=name, etcd=cl.etcd_conf(endpoints=[proxy.url]), **ipam)

        def run(command, config, cid, pod):
            return cl.run(command, config, cid, pod=pod).ok

        counts = round_trips.count(proxy, run, conf)
    print(round_trips.table(counts))
    assert {case: (row["round_trips"], row["writes"]) for case, row in counts.items()} == EXPECTED, \
        round_trips.table(counts)
