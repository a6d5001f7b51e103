"""Many plugin processes at once on one network, as a node starting a burst of pods
sees them: every ADD succeeds, no address is given twice, nothing is left after DEL.
soak.py runs the same at full size (64 pods, 3 rounds, more mixed traffic)."""

import pytest

from tests.reliability.scenarios import mixed_traffic, parallel_rounds

pytestmark = pytest.mark.root


def test_64_parallel_adds_then_64_parallel_dels(node):
    figures = parallel_rounds(node, pods=64, rounds=1)
    assert figures["add_wall_ms"] and figures["del_wall_ms"]


def test_two_networks_sharing_a_data_dir(node):
    """eth0 on one network and net1 on another for every pod, all at once (Multus-shaped)."""
    parallel_rounds(node, pods=24, rounds=1, networks=(("rela", "10.77.0.0/24"), ("relb", "10.78.0.0/24")))


def test_small_range_filled_exactly_by_parallel_adds(node):
    """A /27 has 29 addresses for pods (network, broadcast and gateway excluded): 29 parallel
    ADDs take them all, the 30th concurrent ADD is refused with code 101 and leaves nothing."""
    conf = node.conf("small", "10.77.9.0/27")
    pods = node.add_pods(30)
    calls = [node.start("ADD", conf, f"c{i}", pod) for i, pod in enumerate(pods)]
    outs = [c.wait() for c in calls]
    ok = [o for o in outs if o.ok]
    refused = [o for o in outs if not o.ok]
    assert len(ok) == 29 and [o.cni_code for o in refused] == [101], refused
    ips = {o.json["ips"][0]["address"] for o in ok}
    assert len(ips) == 29
    loser = pods[outs.index(refused[0])]
    assert node.pod_links(loser) == {}


def test_mixed_add_del_check_gc(node):
    figures = mixed_traffic(node, pods=24, ops=80, workers=12)
    assert min(figures[v] for v in ("ADD", "DEL", "CHECK", "GC")) > 0, figures
