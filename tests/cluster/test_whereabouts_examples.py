"""Issue 17 item 12: every ipam example of whereabouts' README and docs works after the change
docs/cluster-ipam.md documents ("type" to cluster-ipam, `etcd` added; an etcd_host example only
pointed at our etcd, as whereabouts' docs tell you to), with whereabouts' semantics, exec'd as a
runtime execs it against a real etcd.

The examples are whereabouts' (github.com/k8snetworkplumbingwg/whereabouts, README.md,
doc/extended-configuration.md, doc/developer_notes.md, doc/sample_config.json and
doc/proposals/dualstack.md's ipRanges form), their ipam sections as printed there. What whereabouts
hands out, from its source (pkg/config/config.go, pkg/allocate/allocate.go, pkg/iphelpers):
- a CIDR's host bits are ignored ("176.168.10.1/16" starts at 176.168.0.1); first-last/prefix bounds it;
- never the subnet's first (network) and last address, IPv6 included; never an excluded CIDR, whose
  host bits are masked;
- the lowest free address first; the gateway is only reported, never range-checked.
Its README adds that no IPv4 address ending in .0 is handed out; its code stopped skipping them in
v0.4.1 (2021). cluster-ipam keeps the README's promise (a /16 never gives x.y.z.0), .255 is handed
out as whereabouts does.

The harness adds `node` and `dataDir` (each simulated node's own) and, for configs with `etcd`,
a key prefix per test.
"""

import json

import pytest

from tests.cluster.conftest import addresses, error
from tests.etcd import EtcdCluster
from tests.operator import run_underlay
from tests.plugins import run_plugin

MACVLAN = {"cniVersion": "0.3.0", "name": "whereaboutsexample", "type": "macvlan", "master": "eth0",
           "mode": "bridge"}

# README.md "Example IPAM Config"
README_EXCLUDE = {"type": "whereabouts", "range": "192.168.2.225/28",
                  "exclude": ["192.168.2.229/30", "192.168.2.236/32"]}
# README.md "An example configuration using a NetworkAttachmentDefinition" (also its kind section and
# extended-configuration.md's flat-file NAD)
README_NAD = {"type": "whereabouts", "range": "192.168.2.225/28"}
# README.md "Example IPv6 Config"
README_IPV6 = {"type": "whereabouts", "range": "2001::0/116", "gateway": "2001::f:1"}
# README.md "Example IPAM config for assigning multiple IP addresses", and with `range`
README_MULTIPLE = {"type": "whereabouts", "ipRanges": [{"range": "192.168.10.1/24"}, {"range": "176.168.10.1/16"}]}
README_MULTIPLE_AND_RANGE = {"type": "whereabouts",
                             "ipRanges": [{"range": "192.168.10.1/24"}, {"range": "176.168.10.1/16"}],
                             "range": "abcd::1/64"}
# README.md "Example DualStack config"
README_DUAL_STACK = {"type": "whereabouts", "ipRanges": [{"range": "192.168.10.1/24"}, {"range": "abcd::1/64"}]}
# README.md "Fast IPAM Configuration" (node slices)
README_NODE_SLICE = {"type": "whereabouts", "range": "192.168.2.0/24", "node_slice_size": "/22"}
# README.md "Network names" (a fragment there: put on the NAD example)
README_NETWORK_NAME = dict(README_NAD, network_name="network-with-independent-allocation",
                           enable_overlapping_ranges=True)
# doc/proposals/dualstack.md, the ipRanges form
PROPOSAL_DUAL_STACK = {"type": "whereabouts", "ipRanges": [
    {"range": "192.168.2.225/28", "exclude": ["192.168.2.229/30", "192.168.2.236/32"]},
    {"range": "2001::0/116"}]}
# doc/extended-configuration.md "Example etcd datastore configuration"
EXTENDED_ETCD = {"type": "whereabouts", "etcd_host": "example-etcd-cluster-client.cluster.local:2379",
                 "range": "192.168.2.225/28", "exclude": ["192.168.2.229/30", "192.168.2.236/32"],
                 "log_file": "/tmp/whereabouts.log", "log_level": "debug", "gateway": "192.168.2.1"}
# doc/developer_notes.md
DEVELOPER_NOTES = {"type": "whereabouts", "range": "192.168.2.225/28", "etcd_host": "10.107.83.18:2379",
                   "log_file": "/tmp/whereabouts.log", "log_level": "debug", "gateway": "192.168.2.1"}
# doc/sample_config.json (its first document: the second is a fragment, not a config)
SAMPLE_CONFIG = {"cniVersion": "0.3.1", "name": "mynet", "type": "ipvlan", "master": "foo0", "ipam": {
    "type": "whereabouts", "range": "192.168.1.0/24", "etcd_host": "192.168.122.1",
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}, {"dst": "3ffe:ffff:0:01ff::1/64"}],
    "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"]}}}


def moved(cl, example, node="n1", name="whereaboutsexample", **extra):
    """The example after the documented change: `type` and `etcd`."""
    ipam = dict(example, type="cluster-ipam", etcd=cl.etcd_conf(), node=node, dataDir=cl.data_dir(node), **extra)
    return dict(MACVLAN, name=name, ipam=ipam)


def add(conf, cid):
    """ADD exec'd as a runtime execs it; (outcome, its warnings on stderr)."""
    out = run_plugin("cluster-ipam", "ADD", conf, container_id=cid, netns="/run/netns/uwh-none")
    lines = [line for line in out.stderr.splitlines() if line]
    assert all(line.startswith(WARNING) for line in lines), out.stderr
    return out, [line[len(WARNING):] for line in lines]


WARNING = "cluster-ipam: warning: "


def add_all(conf, count):
    got = []
    for n in range(count):
        out, _ = add(conf, f"c{n}")
        got.append(addresses(out))
    return got


def test_readme_example_with_exclude_hands_out_exactly_what_whereabouts_does(cl):
    conf = moved(cl, README_EXCLUDE)
    expected = ["192.168.2.225", "192.168.2.226", "192.168.2.227", "192.168.2.232", "192.168.2.233",
                "192.168.2.234", "192.168.2.235", "192.168.2.237", "192.168.2.238"]
    got = add_all(conf, len(expected))
    assert got == [[ip] for ip in expected]          # lowest first, .228-.231 and .236 excluded
    out, _ = add(conf, "c-last")
    error(out, 101, "no free address")
    assert "gateway" not in json.dumps(got)


def test_readme_nad_example_from_its_first_address(cl):
    got = add_all(moved(cl, README_NAD), 3)
    assert got == [["192.168.2.225"], ["192.168.2.226"], ["192.168.2.227"]]


def test_readme_ipv6_example_reports_the_gateway_it_never_checked(cl):
    out, warnings = add(moved(cl, README_IPV6), "c1")
    assert out.ok and warnings == [], out
    [ip] = out.json["ips"]
    assert {k: ip[k] for k in ("address", "gateway")} == {"address": "2001::1/116", "gateway": "2001::f:1"}


def test_readme_ipv6_never_hands_out_the_subnets_last_address(cl):
    # range_end is whereabouts' key (README "Optional"): the last two of 2001::/116 are ffe and fff
    conf = moved(cl, dict(README_IPV6, range_start="2001::ffd"))
    assert add_all(conf, 2) == [["2001::ffd"], ["2001::ffe"]]
    error(add(conf, "c-last")[0], 101, "no free address")


def test_readme_multiple_ip_ranges(cl):
    out, _ = add(moved(cl, README_MULTIPLE), "c1")
    assert addresses(out) == ["192.168.10.1", "176.168.0.1"]   # host bits of the CIDR are ignored
    assert [ip["address"] for ip in out.json["ips"]] == ["192.168.10.1/24", "176.168.0.1/16"]


def test_readme_multiple_ip_ranges_with_range(cl):
    out, _ = add(moved(cl, README_MULTIPLE_AND_RANGE), "c1")
    assert addresses(out) == ["abcd::1", "192.168.10.1", "176.168.0.1"]   # `range` first, as whereabouts


def test_readme_dual_stack(cl):
    out, _ = add(moved(cl, README_DUAL_STACK), "c1")
    assert addresses(out) == ["192.168.10.1", "abcd::1"]


def test_a_16_hands_out_255_and_never_an_address_ending_in_0(cl):
    """Across a /24 boundary inside the README's 176.168.10.1/16 (range_start: whereabouts' key):
    .255 is an address like any other, x.y.1.0 is skipped (whereabouts' README), and blocks are
    taken lowest first, so the order is whereabouts' ascending one."""
    conf = moved(cl, {"type": "whereabouts", "range": "176.168.10.1/16", "range_start": "176.168.0.253"})
    assert add_all(conf, 4) == [["176.168.0.253"], ["176.168.0.254"], ["176.168.0.255"], ["176.168.1.1"]]
    requested = dict(conf, args={"cni": {"ips": ["176.168.2.0"]}})
    error(add(requested, "c-asked")[0], 7, "176.168.2.0", "ends in .0")


def test_readme_node_slice_example_is_accepted_and_its_key_warned_of(cl):
    out, warnings = add(moved(cl, README_NODE_SLICE), "c1")
    assert addresses(out) == ["192.168.2.1"]
    assert any("ipam.node_slice_size" in w and "blockSize" in w for w in warnings), warnings


def test_readme_network_names_allocate_the_same_range_independently(cl):
    named = moved(cl, README_NETWORK_NAME, name="tenant-a")
    plain = moved(cl, README_NAD, name="tenant-b")
    same_name = moved(cl, README_NETWORK_NAME, name="tenant-c")
    out, warnings = add(named, "a1")
    assert addresses(out) == ["192.168.2.225"]
    assert any("ipam.enable_overlapping_ranges" in w for w in warnings), warnings
    assert addresses(add(plain, "b1")[0]) == ["192.168.2.225"]      # another name: its own allocation
    assert addresses(add(same_name, "c1")[0]) == ["192.168.2.226"]  # the same name: one allocation
    named_keys = "networks/network-with-independent-allocation/ips/"
    assert set(cl.keys(named_keys)) == {named_keys + "192.168.2.225", named_keys + "192.168.2.226"}
    assert set(cl.leases()) == {"192.168.2.225"}


def test_validate_takes_the_readme_network_name_overlap_as_deliberate(cl, tmp_path):
    """Review of issue 17, item 8: the overlap of the example above, one range on one master kept
    apart by network_name, is what network_name is for: a warning saying so, not an error."""
    files = []
    for name, example in (("tenant-a", README_NETWORK_NAME), ("tenant-b", README_NAD)):
        files.append(tmp_path / f"{name}.conf")
        files[-1].write_text(json.dumps(moved(cl, example, name=name)))
    out = run_underlay("validate", *files, "-o", "json")
    assert out.code == 0, out
    [p] = [p for p in out.json["problems"] if "overlaps" in p["message"]]
    assert p["severity"] == "warning" and "network_name keeps their leases apart" in p["message"] \
        and "deliberate" in p["message"] and "separate L2s" in p["message"], out


def test_dual_stack_proposal_ip_ranges_with_their_own_exclude(cl):
    conf = moved(cl, PROPOSAL_DUAL_STACK)
    got = add_all(conf, 4)
    assert got == [["192.168.2.225", "2001::1"], ["192.168.2.226", "2001::2"], ["192.168.2.227", "2001::3"],
                   ["192.168.2.232", "2001::4"]]


def test_top_level_exclude_is_the_ranges_only(cl):
    """whereabouts' config.go gives the top-level `exclude` to `range` alone; an ipRanges entry has its
    own. So ipRanges hands out its lowest. An entry only an ipRanges subnet holds (whereabouts ignores
    it) still excludes there, as cluster-ipam took it before, with a warning naming it: a config that
    worked keeps working, and no address the config names as excluded is handed out."""
    ipam = {"type": "whereabouts", "range": "192.168.2.225/28", "exclude": ["192.168.2.225/32"],
            "ipRanges": [{"range": "192.168.10.1/24"}]}
    out, warnings = add(moved(cl, ipam), "c1")
    assert addresses(out) == ["192.168.2.226", "192.168.10.1"] and not any("exclude" in w for w in warnings)
    stray = dict(ipam, exclude=["192.168.2.225/32", "192.168.10.0/30"])
    out, warnings = add(moved(cl, stray), "c2")
    assert addresses(out) == ["192.168.2.227", "192.168.10.4"], out
    assert [w for w in warnings if w.startswith("ipam.exclude[1]: '192.168.10.0/30' lies outside range "
                                                "192.168.2.224/28")], warnings


@pytest.fixture
def own_etcd():
    """A member of its own: etcd_host examples use the default key prefix."""
    with EtcdCluster(members=1) as cluster:
        yield cluster


def pointed(example, etcd, tmp_path, node="n1"):
    """An etcd_host example with etcd_host pointed at our etcd (host:port, as whereabouts takes it)."""
    host = etcd.endpoints[0].split("://", 1)[1]
    return dict(example, type="cluster-ipam", etcd_host=host, node=node, dataDir=str(tmp_path / node))


@pytest.mark.parametrize("example", [EXTENDED_ETCD, DEVELOPER_NOTES], ids=["extended-configuration", "developer-notes"])
def test_etcd_host_examples_need_only_their_host(own_etcd, tmp_path, example):
    conf = dict(MACVLAN, ipam=pointed(example, own_etcd, tmp_path))
    out, warnings = add(conf, "c1")
    [ip] = out.json["ips"] if out.ok else [out]
    assert ip["address"] == "192.168.2.225/28" and ip["gateway"] == "192.168.2.1", out
    assert sorted(w.split(":")[0] for w in warnings if "whereabouts' key" in w) == \
        ["ipam.log_file", "ipam.log_level"], warnings
    with own_etcd.client() as client:
        assert [kv.key.decode() for kv in client.range("/underlay/ipam/ips/")] == ["/underlay/ipam/ips/192.168.2.225"]


def test_sample_config_with_routes_and_dns(own_etcd, tmp_path):
    conf = dict(SAMPLE_CONFIG, ipam=pointed(SAMPLE_CONFIG["ipam"], own_etcd, tmp_path))
    out, _ = add(conf, "c1")
    assert addresses(out) == ["192.168.1.1"]
    assert "gateway" not in out.json["ips"][0]
    assert out.json["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"},
                                  {"dst": "3ffe:ffff:0:1ff::/64"}]   # host bits cleared, as Go's ParseCIDR
    assert out.json["dns"] == SAMPLE_CONFIG["ipam"]["dns"]


def test_kubernetes_section_left_in_place_is_warned_of(cl):
    out, warnings = add(moved(cl, dict(README_NAD, kubernetes={"kubeconfig": "/etc/cni/net.d/whereabouts.d/"
                                                                             "whereabouts.kubeconfig"})), "c1")
    assert addresses(out) == ["192.168.2.225"]
    assert any(w.startswith("ipam.kubernetes: whereabouts' key, not used") for w in warnings), warnings


@pytest.mark.parametrize("ipam, fragments", [
    ({"etcd_host": ""}, ["ipam.etcd_host"]),
    ({}, ["ipam.etcd", "etcd.endpoints", "etcd_host"]),
    ({"etcd_host": "127.0.0.1:2379", "etcd_username": "root", "etcd_password": "x"},
     ["ipam.etcd_username", "certificate"]),
])
def test_etcd_mistakes_name_the_keys(tmp_path, ipam, fragments):
    conf = dict(MACVLAN, ipam=dict(README_NAD, type="cluster-ipam", node="n1", dataDir=str(tmp_path), **ipam))
    out, _ = add(conf, "c1")
    error(out, 7, *fragments)
