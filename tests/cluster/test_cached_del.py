"""A DEL of an address in a block the node knows (OWN_BLOCKS: the block's value and revision as the node
last wrote or read it) reads only its attachment's records, then releases in one transaction guarded by
the address key's revision being the record's creation revision (the claim wrote both in one
transaction: any later write of the address, a release or a re-claim by anyone, moves it) and by the
block's revision being the cached one. Refused, it releases as before: the lease and its block read,
the release guarded by the lease's bytes. Counted and read on the wire (tests/cluster/proxy.py)."""

import json
import os
import threading

import pytest

from ipam import etcd
from tests.cluster.conftest import addresses
from tests.cluster.proxy import FaultProxy, decoded_key, is_release, is_write

SUBNET = "10.45.0.0/24"


@pytest.fixture
def wired(make_cl):
    """(Cluster on one member, FaultProxy in front of it, config maker of a node through the proxy)."""
    cl = make_cl(1)
    with FaultProxy(cl.etcd.endpoints[0]) as proxy:
        def conf(**ipam):
            return cl.conf(SUBNET, blockSize=28, etcd=cl.etcd_conf(endpoints=[proxy.url], requestTimeout=2,
                                                                     dialTimeout=0.5), **ipam)
        yield cl, proxy, conf


def requests_of(proxy, run):
    del proxy.requests[:]
    out = run()
    return out, [("w" if is_write(path, body) else "r", json.loads(body)) for path, body in proxy.requests]


def offsets(cl):
    """The used offsets of the pool's one block, None if there is none (every test's addresses lie in one)."""
    blocks = [v for k, v in cl.keys(f"pools/{SUBNET}/blocks/").items()]
    assert len(blocks) <= 1
    return sorted(blocks[0]["used"]) if blocks else None


def offset(cl, ip):
    """The offset of `ip` in its block, as the lease names the block."""
    block = cl.leases()[ip]["block"]
    return int(ip.rsplit(".", 1)[1]) - int(block.split("/")[0].rsplit(".", 1)[1])


def test_a_del_in_a_known_block_reads_its_records_then_releases_guarded_by_the_claims_revision(wired):
    cl, proxy, conf = wired
    conf = conf()
    keep = addresses(cl.add(conf, "c0"))[0]
    [ip] = addresses(cl.add(conf, "c1"))
    [record] = cl.client.range(f"{cl.prefix}/attachments/net1/c1@eth0/")
    block, used = json.loads(record.value)["block"], offset(cl, keep)
    out, sent = requests_of(proxy, lambda: cl.delete(conf, "c1"))
    assert out.ok, out
    assert [kind for kind, _ in sent] == ["r", "w"]          # the records, the release (was: r, r, w)
    compares = {decoded_key(c["key"]): c for c in sent[1][1]["compare"]}
    assert compares[f"{cl.prefix}/ips/{ip}"]["mod_revision"] == str(record.create_revision)
    assert compares[f"{cl.prefix}/{block}"]["target"] == "MOD"
    assert list(cl.leases()) == [keep] and not cl.keys("attachments/net1/c1@eth0/")
    assert offsets(cl) == [used]
    out, sent = requests_of(proxy, lambda: cl.delete(conf, "c1"))   # again: nothing to release, success
    assert out.ok and [kind for kind, _ in sent] == ["r"]
    out, sent = requests_of(proxy, lambda: cl.delete(conf, "c0"))   # the cache kept by the DEL before
    assert out.ok and [kind for kind, _ in sent] == ["r", "w"]
    assert cl.leases() == {} and offsets(cl) is None          # the empty block back to the pool


def test_a_stale_cache_costs_a_refused_release_never_another_address(wired):
    cl, proxy, conf = wired
    conf = conf()
    [first] = addresses(cl.add(conf, "c0"))
    path = os.path.join(cl.data_dir("n1"), "net1", "own-blocks.json")
    with open(path) as f:
        stale = f.read()                                     # the block holding c0's address alone
    [second] = addresses(cl.add(conf, "c1"))
    used = offset(cl, second)
    with open(path, "w") as f:
        f.write(stale)                                       # released from it, the block would be empty
    out, sent = requests_of(proxy, lambda: cl.delete(conf, "c0"))
    assert out.ok, out
    assert [kind for kind, _ in sent] == ["r", "w", "r", "w"]   # refused (the block's revision), then as before
    assert list(cl.leases()) == [second] and offsets(cl) == [used]
    assert addresses(cl.add(conf, "c2")) and cl.delete(conf, "c1").ok and cl.delete(conf, "c2").ok
    assert cl.leases() == {} and offsets(cl) is None


def test_an_address_handed_to_another_container_meanwhile_is_never_released(wired):
    cl, proxy, conf = wired
    conf = conf()
    [ip] = addresses(cl.add(conf, "a"))
    used, block = offset(cl, ip), f"pools/{SUBNET}/blocks/{cl.leases()[ip]['block']}"
    proxy.hold(is_release)                                   # DEL a: its records read, its release held
    del proxy.requests[:]
    outcome = {}
    deleting = threading.Thread(target=lambda: outcome.update(out=cl.delete(conf, "a")))
    deleting.start()
    try:
        assert proxy.held.wait(30)
        # meanwhile a's lease is released (its record with it) and the address claimed by b: the block
        # as it was (the address used), only the address key and the records written
        lease = dict(cl.leases()[ip], containerID="b")
        record = {"node": "n1", "block": block}
        assert cl.client.txn([], [etcd.delete(f"{cl.prefix}/attachments/net1/a@eth0/{ip}"),
                                  etcd.put(f"{cl.prefix}/ips/{ip}", json.dumps(lease)),
                                  etcd.put(f"{cl.prefix}/attachments/net1/b@eth0/{ip}", json.dumps(record))]).succeeded
    finally:
        proxy.release()
        deleting.join(30)
    assert outcome["out"].ok, outcome["out"]
    # its release refused (the address key written since a's claim), then the lease read: b's, left alone
    assert ["w" if is_write(*r) else "r" for r in proxy.requests] == ["r", "w", "r"]
    assert cl.leases()[ip]["containerID"] == "b" and cl.keys(f"attachments/net1/b@eth0/{ip}")
    assert offsets(cl) == [used]                             # still used: b's


def test_a_sticky_del_reads_the_lease_and_holds_the_address_for_the_pod(wired):
    cl, proxy, conf = wired
    conf = conf(sticky=True)
    pod = ("ns", "db-0")
    [ip] = addresses(cl.add(conf, "c1", pod=pod))
    out, sent = requests_of(proxy, lambda: cl.delete(conf, "c1", pod=pod))
    assert out.ok, out
    assert [kind for kind, _ in sent] == ["r", "r", "w"]      # the hold is made of the lease's bytes: read
    assert cl.leases()[ip]["sticky"] is True and cl.keys(f"sticky/net1/ns/db-0/{ip}")
    assert addresses(cl.add(conf, "c2", pod=pod)) == [ip]
