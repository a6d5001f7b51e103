"""SIGKILL at every step of ADD, DEL, GC and an index rebuild, then the runtime's
recovery (DEL after a failed ADD, DEL until it succeeds): nothing may be left."""

import pytest

from cni.errors import ERR_INVALID_ENV, ERR_IO
from cni.plugins.child_link import temporary_prefix
from tests import netns as nsutil
from tests.reliability.killpoint import POINTS
from tests.reliability.node import Audit, assert_killed
from tests.reliability.scenarios import CrashRun

pytestmark = pytest.mark.root


def killed(node, command, conf, cid, pod, point):
    out = node.run(command, conf, cid, pod, kill_at=point,
                   fail_at="configure" if "rollback" in point else None)
    assert_killed(out, point)


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("add:")])
@pytest.mark.both_paths
def test_add_killed_then_deleted_leaves_nothing(node, point):
    conf = node.conf()
    pod, = node.add_pods(1)
    killed(node, "ADD", conf, "c1", pod, point)
    assert node.run("DEL", conf, "c1", pod).ok
    Audit(node, ["rel"], {}).assert_clean(point)
    out = node.run("ADD", conf, "c2", pod)   # the pod's netns is usable again
    assert out.ok, out
    Audit(node, ["rel"], {("rel", "c2", "eth0"): pod}).assert_clean(point)


@pytest.mark.both_paths
def test_add_whose_lease_cannot_be_made_durable_fails_and_leaves_nothing(node):
    """The lease's fsync runs beside the kernel work: its failure still rolls the whole ADD back."""
    conf = node.conf()
    pod, = node.add_pods(1)
    out = node.run("ADD", conf, "c1", pod, fail_at="fsync")
    assert out.cni_code == ERR_IO and "could not be made durable" in out.json["msg"], out
    assert node.pod_links(pod) == {}
    Audit(node, ["rel"], {}).assert_clean()
    assert node.run("ADD", conf, "c2", pod).ok
    Audit(node, ["rel"], {("rel", "c2", "eth0"): pod}).assert_clean()


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("del:")])
@pytest.mark.both_paths
def test_del_killed_then_retried_leaves_nothing(node, point):
    conf = node.conf()
    pod, = node.add_pods(1)
    assert node.run("ADD", conf, "c1", pod).ok
    killed(node, "DEL", conf, "c1", pod, point)
    assert node.run("DEL", conf, "c1", pod).ok
    Audit(node, ["rel"], {}).assert_clean(point)


@pytest.mark.both_paths
def test_gc_killed_then_retried(node):
    conf = node.conf()
    a, b = node.add_pods(2)
    assert node.run("ADD", conf, "keep", a).ok and node.run("ADD", conf, "gone", b).ok
    node.remove_pod(b)   # its DEL never comes
    attachments = {"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    out = node.run("GC", dict(conf, **attachments), kill_at="gc:after-release")
    assert_killed(out, "gc:after-release")
    assert node.gc(conf, {("keep", "eth0")}).ok
    Audit(node, ["rel"], {("rel", "keep", "eth0"): a}).assert_clean()


@pytest.mark.both_paths
def test_rebuild_killed_then_redone(node):
    """A kill in the middle of rebuilding the index (itself after a kill) is redone by the next call."""
    conf = node.conf()
    a, b = node.add_pods(2)
    assert node.run("ADD", conf, "c1", a).ok
    killed(node, "ADD", conf, "c2", b, "add:after-lease")   # the index no longer matches
    killed(node, "DEL", conf, "c2", b, "rebuild")
    assert node.run("DEL", conf, "c2", b).ok
    Audit(node, ["rel"], {("rel", "c1", "eth0"): a}).assert_clean()


@pytest.mark.in_process   # the plugin's own pid and state; tests/reliability/test_agent.py has the agent's
def test_random_kills(node):
    """The small run of soak.py's crash scenario: kills at every step in turn and after random delays."""
    figures = CrashRun(node, ops=60, lanes=2, slots_per_lane=4).run()
    # how many DELs there are depends on how many ADDs survive: each step is
    # reached for sure by the tests above, here most of them are. Whether a kill
    # after a random delay lands before the exec ends depends on the machine's
    # speed and load of the moment: only that some did is asserted (~35 of ~40 do)
    by_delay = sum(sum(v.values()) for v in figures["killed_by_delay"].values())
    assert len(figures["killed_at"]) >= 12 and by_delay >= 1, figures


def test_del_removes_only_the_leftover_of_its_own_ifname(node):
    """ADDs before issue 21 made the link under a temporary name, then renamed it: one killed in
    between left a `ul<eth0's tag><6 hex>` macvlan, which only the DEL of eth0 removes."""
    conf = node.conf()
    pod, = node.add_pods(1)
    leftover = temporary_prefix("eth0") + "0a1b2c"
    nsutil.sh("ip", "link", "add", leftover, "link", node.master, "netns", pod, "type", "macvlan", ns=node.host)
    assert list(node.pod_links(pod)) == [leftover]
    assert node.run("ADD", conf, "c1", pod, "net1").ok
    assert node.run("DEL", conf, "c1", pod, "net1").ok
    assert list(node.pod_links(pod)) == [leftover]   # not net1's to remove
    assert node.run("DEL", conf, "c1", pod, "eth0").ok
    assert node.pod_links(pod) == {}


def test_add_killed_after_creating_the_link_then_deleted_leaves_nothing(node):
    """The link is made under CNI_IFNAME itself: a kill right after leaves an unconfigured eth0, which
    the runtime's DEL removes, and a new ADD of the same ifname succeeds."""
    conf = node.conf()
    pod, = node.add_pods(1)
    killed(node, "ADD", conf, "c1", pod, "add:after-create")
    assert node.pod_links(pod) == {"eth0": []}
    out = node.run("ADD", conf, "c1", pod)
    assert out.cni_code == ERR_INVALID_ENV and out.json["msg"] == \
        f"CNI_IFNAME: eth0 already exists in {nsutil.netns_path(pod)}", out
    assert node.run("DEL", conf, "c1", pod).ok
    assert node.pod_links(pod) == {}
    assert node.run("ADD", conf, "c2", pod).ok
