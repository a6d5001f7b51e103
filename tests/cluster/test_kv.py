"""ipam.etcd against a real one-member etcd: get/put/delete/range/txn semantics."""

import pytest

from cni.errors import ERR_IO
from cni.errors import CniError
from ipam import etcd

pytestmark = pytest.mark.etcd


@pytest.fixture
def client(etcd_cluster):
    with etcd_cluster(members=1).client() as c:
        yield c


def test_put_get_delete(client):
    assert client.get("uet/a") is None
    rev = client.put("uet/a", "one")
    kv = client.get(b"uet/a")
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"uet/a", b"one", rev, rev, 1)
    rev2 = client.put("uet/a", b"two")
    kv = client.get("uet/a")
    assert rev2 > rev and (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", rev, rev2, 2)
    assert client.delete("uet/a") == 1
    assert client.get("uet/a") is None
    assert client.delete("uet/a") == 0


def test_binary_and_empty_values(client):
    client.put(b"uet/\x00\xff", b"\x00\x01\xfe")
    client.put("uet/empty", "")
    assert client.get(b"uet/\x00\xff").value == b"\x00\x01\xfe"
    assert client.get("uet/empty").value == b""


def test_range_is_the_prefix_sorted(client):
    for key in ("uet/b/2", "uet/b/10", "uet/b/1", "uet/a", "uet/b", "uet/c/1", "uet/b0"):
        client.put(key, key.upper())
    kvs = client.range("uet/b/")
    assert [kv.key for kv in kvs] == [b"uet/b/1", b"uet/b/10", b"uet/b/2"]
    assert [kv.value for kv in kvs] == [b"UET/B/1", b"UET/B/10", b"UET/B/2"]
    keys_only = client.range("uet/b/", keys_only=True)
    assert [kv.key for kv in keys_only] == [b"uet/b/1", b"uet/b/10", b"uet/b/2"]
    assert all(kv.value == b"" and kv.mod_revision > 0 for kv in keys_only)
    assert client.range("uet/none/") == []
    assert len(client.range("")) == 7


def test_range_prefix_ending_in_ff(client):
    client.put(b"uet\xff", "x")
    client.put(b"uet\xff\xff1", "y")
    client.put(b"uew", "z")
    assert [kv.key for kv in client.range(b"uet\xff")] == [b"uet\xff", b"uet\xff\xff1"]


def test_absent_create_succeeds_once(client):
    claim = lambda owner: client.txn([etcd.absent("uet/ip/10.0.0.5")], [etcd.put("uet/ip/10.0.0.5", owner)],  # noqa: E731
                                     [etcd.get("uet/ip/10.0.0.5")])
    first = claim("pod-a")
    assert first.succeeded and first.responses == [None] and first.revision > 0
    second = claim("pod-b")
    assert not second.succeeded
    [[kv]] = second.responses
    assert kv.value == b"pod-a" and kv.mod_revision == first.revision
    assert second.revision == first.revision
    assert client.get("uet/ip/10.0.0.5").value == b"pod-a"


def test_value_is(client):
    client.put("uet/block", "node-1")
    ok = client.txn([etcd.value_is("uet/block", "node-1")], [etcd.put("uet/x", "1")])
    assert ok.succeeded and client.get("uet/x").value == b"1"
    no = client.txn([etcd.value_is("uet/block", "node-2")], [etcd.put("uet/x", "2")], [etcd.get("uet/block")])
    assert not no.succeeded and no.responses[0][0].value == b"node-1"
    assert client.get("uet/x").value == b"1"
    assert not client.txn([etcd.value_is("uet/nothing", "")], [etcd.put("uet/y", "1")]).succeeded


def test_mod_revision_is(client):
    rev = client.put("uet/m", "v1")
    assert not client.txn([etcd.mod_revision_is("uet/m", rev - 1)], [etcd.put("uet/m", "lost")]).succeeded
    won = client.txn([etcd.mod_revision_is("uet/m", rev)], [etcd.put("uet/m", "v2")])
    assert won.succeeded and client.get("uet/m").mod_revision == won.revision
    # the old revision no longer matches: a second writer that read v1 loses
    assert not client.txn([etcd.mod_revision_is("uet/m", rev)], [etcd.put("uet/m", "v3")]).succeeded
    assert client.get("uet/m").value == b"v2"
    # mod_revision 0 is "absent"
    assert client.txn([etcd.mod_revision_is("uet/new", 0)], [etcd.put("uet/new", "1")]).succeeded


def test_txn_all_compares_must_hold_and_ops_run_in_order(client):
    client.put("uet/block", "node-1")
    result = client.txn([etcd.absent("uet/ip/1"), etcd.value_is("uet/block", "node-1")],
                        [etcd.put("uet/ip/1", "pod"), etcd.get_prefix("uet/ip/"), etcd.delete("uet/block"),
                         etcd.get("uet/block")])
    assert result.succeeded
    assert result.responses[0] is None and result.responses[2] is None
    assert [kv.key for kv in result.responses[1]] == [b"uet/ip/1"]
    assert result.responses[3] == []
    # one compare fails: nothing of success runs
    client.put("uet/block", "node-2")
    result = client.txn([etcd.absent("uet/ip/2"), etcd.value_is("uet/block", "node-1")], [etcd.put("uet/ip/2", "pod")])
    assert not result.succeeded and result.responses == [] and client.get("uet/ip/2") is None


def test_delete_prefix_op(client):
    for key in ("uet/p/1", "uet/p/2", "uet/q"):
        client.put(key, "v")
    assert client.txn([], [etcd.delete_prefix("uet/p/")]).succeeded
    assert [kv.key for kv in client.range("uet/")] == [b"uet/q"]


def test_status(client):
    status = client.status()
    assert status["version"].startswith("3.4.") and status["endpoint"] == client.endpoints[0].url
    assert status["leader"] == status["header"]["member_id"]


def test_etcd_refusal_is_code_5_naming_the_endpoint(client):
    ops = [etcd.put(f"uet/many/{i}", "v") for i in range(200)]      # etcd allows 128 ops per txn
    with pytest.raises(CniError) as e:
        client.txn([], ops)
    assert e.value.code == ERR_IO
    assert client.endpoints[0].url in e.value.msg and "too many operations" in e.value.msg
