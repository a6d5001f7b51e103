"""Healing: leases of pods that died with a reboot (reference #252 keeps them
forever), of pods whose DEL never came (Multus), and a torn index."""

import os
import uuid

import pytest

from ipam.stores.disk import INDEX_DIR, STAMP
from tests.reliability.node import Audit, assert_killed
from tests.plugins import run_plugin

pytestmark = pytest.mark.root


def simulate_reboot(node, network):
    """Rewrite the boot ID the store was stamped under, as if the node had rebooted since."""
    path = os.path.join(node.net_dir(network), INDEX_DIR, STAMP)
    with open(path) as f:
        fmt, mtime, _ = f.read().split()
    with open(path, "w") as f:
        f.write(f"{fmt} {mtime} {uuid.uuid4()}")


def write_lease(node, network, ip, content):
    """A lease as the reference plugin writes it: no netns recorded anywhere."""
    with open(os.path.join(node.net_dir(network), ip), "wb") as f:
        f.write(content)


def owners(node, network="rel"):
    return {ip: tuple(c.decode().split("\r\n")) for ip, c in node.lease_files(network).items()}


def test_reboot_reclaims_the_leases_of_pods_whose_netns_is_gone(node):
    conf = node.conf()
    alive, dead1, dead2, later = node.add_pods(4)
    for cid, pod in (("alive", alive), ("dead1", dead1), ("dead2", dead2)):
        assert node.run("ADD", conf, cid, pod).ok
    write_lease(node, "rel", "10.77.3.200", b"reference-ctr\r\neth0")
    node.remove_pod(dead1)
    node.remove_pod(dead2)
    assert node.run("STATUS", conf).ok
    # no reboot, no healing: a netns path we cannot see is no proof of a dead pod
    assert {o[0] for o in owners(node).values()} == {"alive", "dead1", "dead2", "reference-ctr"}

    simulate_reboot(node, "rel")
    assert node.run("ADD", conf, "later", later).ok
    assert {o[0] for o in owners(node).values()} == {"alive", "later", "reference-ctr"}
    # the lease with no recorded netns is GC's: the runtime knows it is not live
    assert node.gc(conf, {("alive", "eth0"), ("later", "eth0")}).ok
    Audit(node, ["rel"], {("rel", "alive", "eth0"): alive, ("rel", "later", "eth0"): later}).assert_clean()


def test_reboot_after_a_crash_heals_too(node):
    """The directory changed behind the index (a killed ADD) and the boot ID changed: both handled."""
    conf = node.conf()
    alive, dead, killed = node.add_pods(3)
    assert node.run("ADD", conf, "alive", alive).ok and node.run("ADD", conf, "dead", dead).ok
    assert_killed(node.run("ADD", conf, "killed", killed, kill_at="add:after-lease"))
    simulate_reboot(node, "rel")
    node.remove_pod(dead)
    node.remove_pod(killed)
    assert node.run("STATUS", conf).ok
    # the killed ADD recorded no netns (its index entry never got written): kept for GC
    assert {o[0] for o in owners(node).values()} == {"alive", "killed"}
    assert node.gc(conf, {("alive", "eth0")}).ok
    Audit(node, ["rel"], {("rel", "alive", "eth0"): alive}).assert_clean()


def test_healing_killed_half_way_is_finished_by_the_next_call(node):
    conf = node.conf()
    pods = node.add_pods(4)
    for i, pod in enumerate(pods):
        assert node.run("ADD", conf, f"c{i}", pod).ok
    for pod in pods[1:]:
        node.remove_pod(pod)
    simulate_reboot(node, "rel")
    assert_killed(node.run("STATUS", conf, kill_at="heal"))
    assert len(owners(node)) == 3          # one released, two to go
    assert node.run("STATUS", conf).ok
    assert [o[0] for o in owners(node).values()] == ["c0"]
    Audit(node, ["rel"], {("rel", "c0", "eth0"): pods[0]}).assert_clean()


def test_second_call_after_a_reboot_does_not_heal_again(node):
    """Healing runs once per boot: a netns removed after it is GC's business, not a reboot's."""
    conf = node.conf()
    a, b = node.add_pods(2)
    assert node.run("ADD", conf, "a", a).ok and node.run("ADD", conf, "b", b).ok
    simulate_reboot(node, "rel")
    assert node.run("STATUS", conf).ok
    node.remove_pod(b)
    assert node.run("STATUS", conf).ok
    assert {o[0] for o in owners(node).values()} == {"a", "b"}


def test_gc_reclaims_the_leases_whose_del_never_came(node):
    """Multus sometimes never sends DEL: GC with the attachments really live heals it, per network."""
    nets = [node.conf("rela", "10.77.0.0/24"), node.conf("relb", "10.78.0.0/24")]
    pods = node.add_pods(6)
    for i, pod in enumerate(pods):
        for conf, ifname in zip(nets, ("eth0", "net1")):
            assert node.run("ADD", conf, f"p{i}", pod, ifname).ok
    live, forgotten = pods[:3], pods[3:]
    for pod in forgotten:
        node.remove_pod(pod)              # the pod is gone; no DEL was sent
    expected = {}
    for conf, ifname in zip(nets, ("eth0", "net1")):
        valid = {(f"p{i}", ifname) for i in range(3)}
        assert node.gc(conf, valid).ok
        expected.update({(conf["name"], cid, ifname): pods[int(cid[1:])] for cid, ifname in valid})
    audit = Audit(node, ["rela", "relb"], expected)
    audit.assert_clean()
    assert len(audit.leases) == 6


# -- a torn index: the stamp still matches, an index file does not parse ------------------

GONE = "/run/netns/underlay-no-such-netns"   # what every pod's netns is after a reboot


def host_local(command, conf, cid="c1", ifname="eth0", netns=GONE):
    return run_plugin("host-local", command, conf, container_id=cid, ifname=ifname, netns=netns)


@pytest.fixture
def store(tmp_path):
    """Three leases through host-local, their netns paths gone (a healing that should not
    happen would show); returns (conf, index dir)."""
    conf = {"cniVersion": "1.1.0", "name": "torn", "type": "macvlan",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.9.0.0/24"}]]}}
    for cid in ("c1", "c2", "c3"):
        assert host_local("ADD", conf, cid).ok
    return conf, tmp_path / "torn" / INDEX_DIR


def leases(conf):
    path = os.path.join(conf["ipam"]["dataDir"], "torn")
    return sorted(n for n in os.listdir(path) if n[0].isdigit())


@pytest.mark.parametrize("damage", [
    b"",                                        # truncated by a power loss
    b"\x00\x00\x00\x00",
    b"c1\r\neth0",                              # cut before the addresses
    b"c2\r\neth0\r\n\r\n10.9.0.3",              # another attachment's content
    b"c1\r\neth0\r\n\r\n../../../etc/passwd",   # not an address: never used as a file name
    b"c1\r\neth0\r\n\r\n10.9.0",
])
def test_torn_index_file_is_rebuilt_from_the_leases(store, damage):
    conf, index = store
    (index / "c1@eth0").write_bytes(damage)
    assert host_local("DEL", conf, "c1").ok
    assert leases(conf) == ["10.9.0.3", "10.9.0.4"]
    assert host_local("DEL", conf, "c2").ok and host_local("DEL", conf, "c3").ok
    assert leases(conf) == []


@pytest.mark.parametrize("damage", ["truncate stamp", "garbage stamp", "garbage boot", "old format",
                                    "remove stamp", "remove index"])
def test_torn_stamp_is_a_rebuild_not_a_reboot(store, damage):
    conf, index = store
    fmt, mtime, boot = (index / STAMP).read_text().split()
    if damage == "truncate stamp":
        (index / STAMP).write_bytes(b"")
    elif damage == "garbage stamp":
        (index / STAMP).write_bytes(b"2 12 zz\x00")
    elif damage == "garbage boot":
        (index / STAMP).write_text(f"{fmt} {mtime} {boot[:-1]}")
    elif damage == "old format":
        (index / STAMP).write_text(mtime)
    elif damage == "remove stamp":
        (index / STAMP).unlink()
    else:
        for f in index.iterdir():
            f.unlink()
        index.rmdir()
    assert host_local("DEL", conf, "c2").ok
    assert leases(conf) == ["10.9.0.2", "10.9.0.4"]


def test_torn_index_under_gc(store):
    conf, index = store
    (index / "c3@eth0").write_bytes(b"")
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert host_local("GC", gc).ok
    assert leases(conf) == ["10.9.0.2"]


def test_lost_index_file_is_found_again_after_a_reboot(tmp_path):
    """A power loss may lose an unsynced index file; the reboot that follows rebuilds the index."""
    conf = {"cniVersion": "1.1.0", "name": "torn", "type": "macvlan",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.9.0.0/24"}]]}}
    for cid in ("c1", "c2", "c3"):   # pods that survived: their netns still opens
        assert host_local("ADD", conf, cid, netns="/proc/1/ns/net").ok
    index = tmp_path / "torn" / INDEX_DIR
    (index / "c2@eth0").unlink()
    fmt, mtime, _ = (index / STAMP).read_text().split()
    (index / STAMP).write_text(f"{fmt} {mtime} {uuid.uuid4()}")
    assert host_local("DEL", conf, "c2").ok
    assert leases(conf) == ["10.9.0.2", "10.9.0.4"]
