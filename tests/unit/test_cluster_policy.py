"""cluster-ipam's pure parts: whereabouts configs, block sizes, the block grid and the order addresses are tried."""

import ipaddress

import pytest

from cni.errors import CniError
from ipam import cluster, ranges
from ipam.blocks import Block, Grid
from ipam.stores.memory import MemoryBlockStore, Pools


def one_range(**ipam):
    [s] = ranges.range_sets(cluster.with_whereabouts(ipam))
    [r] = s.ranges
    return r


def ip(value):
    return int(ipaddress.ip_address(value))


@pytest.mark.parametrize("ipam, subnet, start, end, gateway", [
    ({"range": "10.1.0.0/24"}, "10.1.0.0/24", "10.1.0.1", "10.1.0.254", None),
    ({"range": "10.1.0.0/24", "gateway": "10.1.0.1"}, "10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1"),
    ({"range": "10.1.0.0/24", "range_start": "10.1.0.10", "range_end": "10.1.0.20"}, "10.1.0.0/24",
     "10.1.0.10", "10.1.0.20", None),
    ({"range": "192.168.2.225-192.168.2.230/28"}, "192.168.2.224/28", "192.168.2.225", "192.168.2.230", None),
    ({"range": "192.168.2.225/28"}, "192.168.2.224/28", "192.168.2.225", "192.168.2.238", None),
    # whereabouts never hands out an IPv6 subnet's last address either (iphelpers.LastUsableIP)
    ({"range": "fd00::/120"}, "fd00::/120", "fd00::1", "fd00::fe", None),
    # a CIDR's host bits are ignored, as whereabouts' config.go ignores them
    ({"range": "176.168.10.1/16"}, "176.168.0.0/16", "176.168.0.1", "176.168.255.254", None),
    # its gateway is whatever the config says, inside the subnet or not (its IPv6 and etcd examples)
    ({"range": "2001::0/116", "gateway": "2001::f:1"}, "2001::/116", "2001::1", "2001::ffe", "2001::f:1"),
    ({"range": "192.168.2.225/28", "gateway": "192.168.2.1"}, "192.168.2.224/28", "192.168.2.225",
     "192.168.2.238", "192.168.2.1"),
])
def test_whereabouts_ranges(ipam, subnet, start, end, gateway):
    r = one_range(**ipam)
    assert (str(r.subnet), r.text(r.start), r.text(r.end)) == (subnet, start, end)
    assert (r.text(r.gateway) if r.gateway is not None else None) == gateway


def test_whereabouts_exclude_and_ip_ranges():
    sets = ranges.range_sets(cluster.with_whereabouts(
        {"range": "10.1.0.0/24", "exclude": ["10.1.0.0/28"],
         "ipRanges": [{"range": "fd00::/120", "exclude": ["fd00::/124"]}]}))
    assert [s.version for s in sets] == [4, 6]
    assert sets[0].ranges[0].next_available(0) == ip("10.1.0.16")
    assert sets[1].ranges[0].next_available(0) == ip("fd00::10")


def test_whereabouts_exclude_host_bits_are_masked_as_whereabouts_does():
    """whereabouts' README: exclude "192.168.2.229/30" means .228-.231 (in `range` configs and ipRanges)."""
    sets = ranges.range_sets(cluster.with_whereabouts(
        {"range": "192.168.2.225/28", "exclude": ["192.168.2.229/30", "192.168.2.236/32"],
         "ipRanges": [{"range": "10.1.0.0/24", "exclude": ["10.1.0.1/31"]}]}))
    r = sets[0].ranges[0]
    assert [r.text(v) for v in (r.next_available(ip("192.168.2.228")), r.next_available(ip("192.168.2.236")))] \
        == ["192.168.2.232", "192.168.2.237"]
    assert sets[1].ranges[0].next_available(0) == ip("10.1.0.2")


@pytest.mark.parametrize("ipam", [
    {"ranges": [[{"subnet": "192.168.2.224/28"}]], "exclude": ["192.168.2.229/30"]},
    {"ranges": [[{"subnet": "192.168.2.224/28", "exclude": ["192.168.2.229/30"]}]]},
])
def test_own_ranges_take_exclude_host_bits_with_a_warning(ipam):
    """whereabouts' keys mask silently (their semantics); our own keys mask and warn (issue 17)."""
    warnings = []
    [s] = ranges.range_sets(cluster.with_whereabouts(ipam), warnings=warnings)
    assert not s.ranges[0].may_hand_out(ip("192.168.2.228"))
    assert len(warnings) == 1 and "192.168.2.229/30 has host bits set; excluded as 192.168.2.228/30" in warnings[0]


@pytest.mark.parametrize("text", ["10.1.0.0", "10.1.0.0/33", "a-b/24", 7])
def test_whereabouts_bad_range(text):
    with pytest.raises(CniError) as e:
        cluster.with_whereabouts({"range": text})
    assert e.value.code == 7 and e.value.msg.startswith("ipam.range:")


@pytest.mark.parametrize("value, expected", [
    (None, {4: 26, 6: 122}), (24, {4: 24, 6: 120}), ({"ipv6": 112}, {4: 26, 6: 112}),
    ({"ipv4": 28, "ipv6": 124}, {4: 28, 6: 124}),
])
def test_block_sizes(value, expected):
    assert cluster.block_sizes(value) == expected


@pytest.mark.parametrize("value", [31, 7, True, "26", {"ipv6": 127}])
def test_bad_block_sizes(value):
    with pytest.raises(CniError) as e:
        cluster.block_sizes(value)
    assert e.value.code == 7 and "ipam.blockSize" in e.value.msg


def test_grid_blocks_start_where_the_node_name_points_and_wrap():
    grid = Grid(one_range(ranges=[[{"subnet": "10.1.0.0/24"}]]), 26)
    orders = {node: list(grid.blocks_from(node)) for node in ("n0", "n1", "n2", "n3", "n4")}
    for order in orders.values():
        assert sorted(order) == [ip("10.1.0.0"), ip("10.1.0.64"), ip("10.1.0.128"), ip("10.1.0.192")]
    assert len({order[0] for order in orders.values()}) > 1        # nodes do not all race for one block


def test_grid_skips_blocks_with_nothing_to_hand_out():
    r = one_range(ranges=[[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.150"}]], exclude=["10.1.0.64/26"])
    assert sorted(Grid(r, 26).blocks_from("n1")) == [ip("10.1.0.0"), ip("10.1.0.128")]


def test_a_subnet_smaller_than_a_block_is_one_block():
    grid = Grid(one_range(ranges=[[{"subnet": "10.1.0.0/27"}]]), 26)
    assert (grid.prefix, grid.size, list(grid.blocks_from("x"))) == (27, 32, [ip("10.1.0.0")])


def test_free_in_skips_used_held_and_blocked_but_not_expired_holds():
    grid = Grid(one_range(ranges=[[{"subnet": "10.1.0.0/28"}]], exclude=["10.1.0.5"]), 28)
    block = Block(ip("10.1.0.0"), ip("10.1.0.15"), "k", "n1", used=[2, 3], held={4: 100.0, 6: 50.0})
    assert [v - block.first for v in grid.free_in(block, now=75.0)] == [6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert [v - block.first for v in grid.free_in(block, now=75.0, after=ip("10.1.0.9"))] == [10, 11, 12, 13, 14]


def test_block_value_round_trip():
    block = Block(10, 73, "k", "n1", used=[1, 5], held={7: 12.5})
    again = Block.decode(10, 73, "k", block.encode(), 42)
    assert (again.node, again.used, again.held, again.revision) == ("n1", {1, 5}, {7: 12.5}, 42)
    torn = Block.decode(10, 73, "k", b"{not json", 43)
    assert torn.node == "?" and len(torn.used) == 64                 # unreadable counts as full


def test_candidates_own_blocks_round_robin_then_a_free_block_then_borrowing():
    grid = Grid(one_range(ranges=[[{"subnet": "10.1.0.0/26"}]]), 28)      # 4 blocks of 16
    store = MemoryBlockStore(Pools(), "net1", "n1", [grid])
    mine, theirs = store.block(grid, ip("10.1.0.16")), store.block(grid, ip("10.1.0.32"))
    mine.node, mine.used = "n1", set(range(0, 16, 2))
    theirs.node, theirs.used = "n2", {0}
    pick = cluster.candidate([grid], store, ip("10.1.0.19"), 0)
    assert pick[2] == ip("10.1.0.21")                                     # after the last one, in my block
    assert cluster.candidate([grid], store, ip("10.1.0.31"), 0)[2] == ip("10.1.0.17")   # wrapped
    mine.used = set(range(16))
    block = cluster.candidate([grid], store, None, 0)[1]
    assert block.node is None and block.first in (ip("10.1.0.0"), ip("10.1.0.48"))       # a free block
    for first in (ip("10.1.0.0"), ip("10.1.0.48")):
        store.block(grid, first).node = "n3"
        store.block(grid, first).used = set(range(16))
    assert cluster.candidate([grid], store, None, 0)[1:] == (theirs, ip("10.1.0.33"))     # borrowed
    theirs.used = set(range(16))
    assert cluster.candidate([grid], store, None, 0) is None


@pytest.mark.parametrize("ipam, expected", [
    ({"etcd_host": "192.168.122.1"}, {"endpoints": ["http://192.168.122.1:2379"]}),   # its sample_config.json
    ({"etcd_host": "example-etcd-cluster-client.cluster.local:2379"},
     {"endpoints": ["http://example-etcd-cluster-client.cluster.local:2379"]}),
    ({"etcd_host": "a:2379, b:2380"}, {"endpoints": ["http://a:2379", "http://b:2380"]}),
    ({"etcd_host": ["fd00::1", "https://c:2379"]}, {"endpoints": ["http://[fd00::1]:2379", "https://c:2379"]}),
    ({"etcd_host": "a", "etcd_cert_file": "/c", "etcd_key_file": "/k", "etcd_ca_cert_file": "/ca"},
     {"endpoints": ["https://a:2379"], "certFile": "/c", "keyFile": "/k", "trustedCAFile": "/ca"}),
])
def test_whereabouts_etcd_keys_make_the_etcd_section(ipam, expected):
    warnings = []
    assert cluster.whereabouts_etcd(ipam, warnings) == expected and warnings == []


def test_an_etcd_section_wins_over_etcd_host_and_says_so():
    warnings = []
    assert cluster.whereabouts_etcd({"etcd": {"endpoints": ["http://x:1"]}, "etcd_host": "a"}, warnings) == \
        {"endpoints": ["http://x:1"]}
    assert warnings == ["ipam: whereabouts' etcd_host not used: ipam.etcd is given"]
