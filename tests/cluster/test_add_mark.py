"""An ADD's mark on its node (ipam/stores/etcd.py begin_add: <dataDir>/<network>/adding/<cid>@<ifname>,
locked while the ADD runs, removed before it answers success) is what tells the runtime's retry of an
ADD that never answered (its leases pending: released, allocated afresh) from a second ADD of an
attachment that succeeded (refused, 101), where an etcd write after the claims used to say it. Each case
against a real etcd member, the plugin exec'd as a runtime execs it."""

import fcntl
import io
import json
import os
import sys

from cni import dispatch, registry
from ipam import cluster
from ipam.stores import etcd as etcd_store
from tests.cluster.conftest import addresses, error
from tests.plugins import plugin_env, run_plugin

SUBNET = "10.45.0.0/24"
KILLPOINT = [sys.executable, "-m", "tests.reliability.killpoint", registry.module_of("cluster-ipam")]


def mark_path(cl, cid, node="n1", network="net1"):
    return os.path.join(cl.data_dir(node), network, "adding", f"{cid}@eth0")


def test_a_second_add_refused_leaves_no_mark_and_the_next_is_refused_too(cl):
    """The safety the mark must keep: an ADD refused before it claimed (101, read first, or its cached
    claim refused on the attachment's records) removes the mark it made, so a third ADD of a live pod's
    attachment is refused as the second was, never taken for a retry that releases the pod's address."""
    conf = cl.conf(SUBNET)
    [ip] = addresses(cl.add(conf, "c1"))
    assert cl.marks() == []
    for _ in range(3):
        error(cl.add(conf, "c1"), 101, "duplicate allocation is not allowed")
        assert cl.marks() == []
    assert {k: v["containerID"] for k, v in cl.leases().items()} == {ip: "c1"}
    assert cl.delete(conf, "c1").ok and cl.leases() == {}


def test_an_add_of_an_attachment_whose_add_runs_now_is_code_11_and_claims_nothing(cl):
    """The mark locked (here by the test, as a running ADD holds it): a second ADD of the same attachment
    answers code 11 and leaves the running one's mark; once that one is gone (its lock free, its mark
    left), the retry takes the mark as an unfinished ADD's and succeeds, and removes it."""
    conf = cl.conf(SUBNET)
    addresses(cl.add(conf, "c0"))
    path = mark_path(cl, "c1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        error(cl.add(conf, "c1"), 11, "another ADD of c1/eth0 is running on this node")
        assert os.path.exists(path)
        assert [v["containerID"] for v in cl.leases().values()] == ["c0"]
    finally:
        os.close(fd)
    out = cl.add(conf, "c1")
    assert out.ok, out
    assert cl.marks() == [] and sorted(v["containerID"] for v in cl.leases().values()) == ["c0", "c1"]
    assert cl.delete(conf, "c1").ok and cl.delete(conf, "c0").ok and cl.leases() == {}


def test_an_add_killed_after_its_claim_is_retried_and_its_lease_released(cl):
    """SIGKILL after the claim was applied, before the mark's removal (killpoint cluster:before-complete):
    the lease stays in etcd with the mark beside it; the runtime's retry releases it and allocates afresh,
    the mark gone once it answers; its DEL leaves nothing."""
    conf = cl.conf(SUBNET)
    addresses(cl.add(conf, "c0"))   # the node knows its block: the cached path, one write
    killed = run_plugin("cluster-ipam", "ADD", conf, argv=KILLPOINT, container_id="c1", netns="/run/netns/x",
                        extra={"UNDERLAY_KILL_AT": "cluster:before-complete"})
    assert killed.code == -9, killed
    [left] = [k for k, v in cl.leases().items() if v["containerID"] == "c1"]
    assert cl.marks() == ["c1@eth0"]
    out = cl.add(conf, "c1", netns="/run/netns/x")
    assert out.ok, out
    assert sorted(k for k, v in cl.leases().items() if v["containerID"] == "c1") == addresses(out)
    assert cl.marks() == []
    assert cl.delete(conf, "c1").ok and cl.delete(conf, "c0").ok
    assert cl.leases() == {} and cl.marks() == []
    assert left   # (the same address may be taken again: it was released first)


def test_del_and_gc_remove_a_mark_left_behind(cl):
    """A failed ADD's mark (the runtime sends DEL after it; or GC collects the attachment) goes with its
    leases, and GC removes the marks of attachments it does not list, but for one an ADD holds now:
    nothing stays in the node's dataDir for an attachment that is gone."""
    conf = cl.conf(SUBNET)
    for cid in ("c1", "c2"):
        killed = run_plugin("cluster-ipam", "ADD", conf, argv=KILLPOINT, container_id=cid, netns="/run/netns/x",
                            extra={"UNDERLAY_KILL_AT": "cluster:before-complete"})
        assert killed.code == -9, killed
    assert cl.marks() == ["c1@eth0", "c2@eth0"]
    assert cl.delete(conf, "c1").ok
    assert cl.marks() == ["c2@eth0"]
    # marks with nothing in etcd (a failed ADD rolled back whole): one of an attachment the runtime
    # lists, one it does not, one an ADD holds now (here the test)
    for cid in ("c3", "c4", "c5"):
        open(mark_path(cl, cid), "w").close()
    held = os.open(mark_path(cl, "c5"), os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        gc = dict(conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "c4", "ifname": "eth0"}]})
        out = cl.run("GC", gc, cid="")
        assert out.ok, out
    finally:
        os.close(held)
    assert cl.marks() == ["c4@eth0", "c5@eth0"] and cl.leases() == {}


def in_process(verb, conf, cid="c1"):
    """cluster-ipam run in this process (so that a test's monkeypatch reaches it): (exit code, stdout)."""
    out, err = io.StringIO(), io.StringIO()
    env = plugin_env(verb, container_id=cid, netns="/run/netns/x")
    code = dispatch.run(registry.EXECUTABLES["cluster-ipam"], cluster.VERBS, env=env,
                        stdin=json.dumps(conf).encode(), stdout=out, stderr=err)
    return code, out.getvalue()


def locked_elsewhere(path):
    """Whether some open of `path` (another process's, or another open in this one) holds its flock."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_a_mark_removed_before_its_add_locked_it_is_made_again(cl, monkeypatch):
    """A GC (or DEL) may remove a mark between the ADD's open of it and its lock: the ADD makes it again,
    so its mark is there and locked all the while it claims (killed then, its retry would find it, not
    be refused as a second ADD). Removed at every try: code 11, nothing claimed, nothing left."""
    conf = cl.conf(SUBNET)
    addresses(cl.add(conf, "c0"))
    real_lock, races, races_wanted = etcd_store.locks.try_lock, [], [1]

    def try_lock(fd):
        if len(races) < races_wanted[0]:
            races.append(fd)
            os.unlink(os.readlink(f"/proc/self/fd/{fd}"))   # as a GC that took the lock first and removed it
        return real_lock(fd)

    real_complete, at_complete = etcd_store.EtcdStore.complete, []

    def complete(self, container_id, *args):
        path = mark_path(cl, container_id)
        at_complete.append(os.path.exists(path) and locked_elsewhere(path))
        return real_complete(self, container_id, *args)

    monkeypatch.setattr(etcd_store.locks, "try_lock", try_lock)
    monkeypatch.setattr(etcd_store.EtcdStore, "complete", complete)
    code, out = in_process("ADD", conf, "c1")
    assert code == 0, out
    assert len(races) == 1 and at_complete == [True]
    assert cl.marks() == [] and sorted(v["containerID"] for v in cl.leases().values()) == ["c0", "c1"]

    races.clear()
    races_wanted[0] = 3
    code, out = in_process("ADD", conf, "c2")
    assert code != 0 and '"code": 11' in out and "another ADD of c2/eth0 ran meanwhile" in out, out
    assert len(races) == 3 and cl.marks() == []
    assert sorted(v["containerID"] for v in cl.leases().values()) == ["c0", "c1"]
    assert cl.delete(conf, "c1").ok and cl.delete(conf, "c0").ok and cl.leases() == {}


def test_gc_leaves_a_mark_made_again_after_it_opened_the_old_one(cl, monkeypatch):
    """GC opens a mark left behind, and before it locks it, the mark is removed and an ADD of the same
    attachment makes it again and holds it: GC's lock is on the old file, and the name is not its to
    remove."""
    conf = cl.conf(SUBNET)
    path = mark_path(cl, "c3")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()   # a failed ADD's, of an attachment the runtime does not list: GC's to remove
    real_lock, held = etcd_store.locks.try_lock, []

    def try_lock(fd):
        if not held:
            os.unlink(path)
            held.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            fcntl.flock(held[0], fcntl.LOCK_EX)   # the new ADD's
        return real_lock(fd)

    monkeypatch.setattr(etcd_store.locks, "try_lock", try_lock)
    gc = dict(conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    try:
        code, out = in_process("GC", gc, cid="")
        assert code == 0, out
        assert held and os.path.exists(path) and os.stat(path).st_ino == os.fstat(held[0]).st_ino
    finally:
        for fd in held:
            os.close(fd)
    monkeypatch.undo()
    code, out = in_process("GC", gc, cid="")   # the ADD gone (its lock free): now GC's to remove
    assert code == 0, out
    assert cl.marks() == []


def test_a_mark_that_cannot_be_removed_fails_the_add_and_gives_its_lease_back(cl, monkeypatch):
    """A mark left after an ADD answered success would have a second ADD of the attachment take the pod's
    address for a retry's and release it: the ADD fails (code 5 naming the file) and rolls back instead."""
    conf = cl.conf(SUBNET)
    real_unlink = os.unlink

    def unlink(path, *args, **kw):
        if str(path).endswith("@eth0"):
            raise OSError(5, "Input/output error")
        return real_unlink(path, *args, **kw)

    monkeypatch.setattr(etcd_store.os, "unlink", unlink)
    code, out = in_process("ADD", conf, "c1")
    assert code != 0, out
    assert '"code": 5' in out and "adding/c1@eth0" in out, out
    assert cl.leases() == {}
