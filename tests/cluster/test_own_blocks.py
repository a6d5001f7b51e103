"""An ADD reads only what it needs of the pool: the node's own blocks (named by its hint, OWN_BLOCKS
in its dataDir), and the rest of the pool only once they are full, so its first read does not grow
with the number of nodes. Read on the wire (tests/cluster/proxy.py): the keys each request reads."""

import ipaddress
import json
import os

from tests.cluster.proxy import FaultProxy, decoded_key

SUBNET = "10.46.0.0/26"   # four /28 blocks


def reads(requests):
    """(key, is a range over a prefix) of every read of the requests, in order."""
    found = []
    for path, body in requests:
        doc = json.loads(body) if path == "/v3/kv/txn" else {"success": [{"request_range": json.loads(body)}]} \
            if path == "/v3/kv/range" else {}
        for op in doc.get("success", []):
            if "request_range" in op:
                found.append((decoded_key(op["request_range"]["key"]), "range_end" in op["request_range"]))
    return found


def names_only(cl, node, network="net1"):
    """The node's OWN_BLOCKS as an older version wrote it ({subnet: [block]}, no values): its next
    ADD reads the blocks named (tests/cluster/test_cached_add.py: an ADD that knows them reads nothing)."""
    path = os.path.join(cl.data_dir(node), network, "own-blocks.json")
    with open(path) as f:
        doc = json.load(f)
    with open(path, "w") as f:
        json.dump({subnet: sorted(entry["blocks"]) for subnet, entry in doc.items()}, f)


def block_of(out):
    return ipaddress.ip_network(f"{out.json['ips'][0]['address'].split('/')[0]}/28", strict=False)


def test_an_add_reads_its_own_blocks_and_the_pool_only_when_they_are_full(cl):
    with FaultProxy(cl.etcd.endpoints[0]) as proxy:
        def conf(node):
            return cl.conf(SUBNET, node=node, blockSize=28, etcd=cl.etcd_conf(endpoints=[proxy.url]))

        first = block_of(cl.add(conf("n1"), "c0"))
        for i, node in enumerate(("n2", "n3")):             # other nodes own blocks of the pool
            assert cl.add(conf(node), f"o{i}").ok
        pool = f"{cl.prefix}/pools/{SUBNET}/"

        del proxy.requests[:]
        names_only(cl, "n1")
        out = cl.add(conf("n1"), "c1")
        assert block_of(out) == first
        read = reads(proxy.requests)
        assert (pool, True) not in read, read                # not the whole pool
        assert {key for key, _ in read if key.startswith(pool + "blocks/")} == {f"{pool}blocks/{first}"}, read

        cid = 2
        while block_of(out) == first:                        # its block full: the whole pool read, a
            del proxy.requests[:]                            # free block claimed
            out = cl.add(conf("n1"), f"c{cid}")
            assert out.ok, out.stdout
            cid += 1
        assert (pool, True) in reads(proxy.requests)
        second = block_of(out)

        del proxy.requests[:]                                # its hint names both blocks now
        names_only(cl, "n1")
        assert block_of(cl.add(conf("n1"), f"c{cid}")) == second
        read = reads(proxy.requests)
        assert (pool, True) not in read, read
        assert {key for key, _ in read if key.startswith(pool + "blocks/")} == \
            {f"{pool}blocks/{first}", f"{pool}blocks/{second}"}, read
