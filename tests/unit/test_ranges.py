"""Canonical ranges: defaults, validation, exclusions, aux addresses."""

import ipaddress

import pytest

from cni.errors import ERR_INVALID_CONFIG, CniError
from ipam import ranges


def ip(text):
    return int(ipaddress.ip_address(text))


def sets(ipam, runtime_ranges=None):
    return ranges.range_sets(ipam, runtime_ranges)


def one(spec, **ipam):
    """The single Range of a one-range config."""
    [s] = sets(dict(ipam, ranges=[[spec]]))
    [r] = s.ranges
    return r


def refused(ipam, runtime_ranges=None):
    with pytest.raises(CniError) as e:
        sets(ipam, runtime_ranges)
    assert e.value.code == ERR_INVALID_CONFIG
    return e.value.msg


def handed_out(r):
    """Every address a Range may hand out, in order (small ranges only)."""
    out, value = [], r.next_available(r.start)
    while value is not None:
        out.append(r.text(value))
        value = r.next_available(value + 1)
    return out


# -- defaults -------------------------------------------------------------------

@pytest.mark.parametrize("subnet, start, end, gateway", [
    ("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1"),
    ("10.1.0.0/30", "10.1.0.1", "10.1.0.2", "10.1.0.1"),
    ("192.168.4.0/22", "192.168.4.1", "192.168.7.254", "192.168.4.1"),
    ("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1"),
    ("fd00:1::/126", "fd00:1::1", "fd00:1::3", "fd00:1::1"),
])
def test_defaults(subnet, start, end, gateway):
    r = one({"subnet": subnet})
    assert (r.text(r.start), r.text(r.end), r.text(r.gateway)) == (start, end, gateway)
    assert r.field == "ipam.ranges[0][0]"


def test_explicit_values():
    r = one({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254"})
    assert (r.text(r.start), r.text(r.end), r.text(r.gateway)) == ("10.1.0.10", "10.1.0.20", "10.1.0.254")


def test_empty_strings_mean_defaults():
    r = one({"subnet": "10.1.0.0/24", "rangeStart": "", "rangeEnd": "", "gateway": ""})
    assert (r.text(r.start), r.text(r.end), r.text(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")


@pytest.mark.parametrize("subnet, expected", [
    ("10.1.0.0/30", ["10.1.0.2"]),                                   # .0 network, .1 gateway, .3 broadcast
    ("10.1.0.0/29", ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]),
    ("fd00::/126", ["fd00::2", "fd00::3"]),                          # IPv6 has no broadcast
])
def test_never_network_broadcast_gateway(subnet, expected):
    assert handed_out(one({"subnet": subnet})) == expected


def test_explicit_start_and_end_on_network_and_broadcast():
    # The reference hands out the network address when rangeStart names it; we never do.
    r = one({"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.7", "gateway": "10.1.0.6"})
    assert handed_out(r) == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
    assert r.why_refused(ip("10.1.0.0")) == "it is the network address"
    assert r.why_refused(ip("10.1.0.7")) == "it is the broadcast address"
    assert r.why_refused(ip("10.1.0.6")) == "it is the gateway"
    assert r.why_refused(ip("10.1.0.3")) is None


def test_ipv6_network_address_never_handed_out():
    r = one({"subnet": "fd00::/126", "rangeStart": "fd00::"})
    assert handed_out(r) == ["fd00::2", "fd00::3"]
    assert r.why_refused(ip("fd00::")) == "it is the network address"


# -- invalid ranges -------------------------------------------------------------

@pytest.mark.parametrize("spec, fragments", [
    ({"subnet": "10.1.0.1/24"}, ["ipam.ranges[0][0].subnet", "host bits set", "10.1.0.0"]),
    ({"subnet": "fd00::1/64"}, ["ipam.ranges[0][0].subnet", "host bits set", "fd00::"]),
    ({"subnet": "10.1.0.0/31"}, ["ipam.ranges[0][0].subnet", "too small", "/30"]),
    ({"subnet": "10.1.0.0/32"}, ["too small"]),
    ({"subnet": "fd00::/127"}, ["ipam.ranges[0][0].subnet", "too small", "/126"]),
    ({"subnet": "fd00::/128"}, ["too small"]),
    ({"subnet": "10.1.0.0"}, ["not a CIDR"]),
    ({"subnet": "10.1.0.0/33"}, ["not a valid CIDR"]),
    ({"subnet": "banana/24"}, ["not a valid CIDR"]),
    ({"subnet": 10}, ["not a CIDR"]),
    ({}, ["ipam.ranges[0][0].subnet", "is required"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.1.5"},
     ["ipam.ranges[0][0].rangeStart", "10.1.1.5 is outside subnet"]),
    ({"subnet": "10.1.0.0/24", "rangeEnd": "10.2.0.5"}, ["ipam.ranges[0][0].rangeEnd", "outside subnet"]),
    ({"subnet": "10.1.0.0/24", "gateway": "10.1.1.1"}, ["ipam.ranges[0][0].gateway", "outside subnet"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "fd00::5"}, ["rangeStart", "outside subnet"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.300"}, ["rangeStart", "not a valid IP address"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.20", "rangeEnd": "10.1.0.10"},
     ["ipam.ranges[0][0].rangeStart", "10.1.0.20 comes after rangeEnd 10.1.0.10"]),
])
def test_invalid_range(spec, fragments):
    msg = refused({"ranges": [[spec]]})
    for fragment in fragments:
        assert fragment in msg


@pytest.mark.parametrize("ipam, fragments", [
    ({}, ["no IP ranges specified"]),
    ({"ranges": []}, ["no IP ranges specified"]),
    ({"ranges": [[]]}, ["ipam.ranges[0]", "non-empty list"]),
    ({"ranges": [{"subnet": "10.1.0.0/24"}]}, ["ipam.ranges[0]", "non-empty list"]),
    ({"ranges": [["10.1.0.0/24"]]}, ["ipam.ranges[0][0]", "must be an object"]),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]},
     ["ipam.ranges[0][1]", "mixes address families"]),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]},
     ["ipam.ranges[0][1]", "overlaps ipam.ranges[0][0]"]),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.100"},
                  {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"}]]}, ["overlaps"]),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.128/25"}]]},
     ["ipam.ranges[1][0]", "overlaps range set 0", "ipam.ranges[0][0]"]),
    ({"ranges": [[{"subnet": "fd00::/64"}], [{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00::/120"}]]},
     ["ipam.ranges[2][0]", "overlaps range set 0"]),
    ({"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "10.1.0.0/16"}]]}, ["overlaps range set 0"]),
])
def test_invalid_range_sets(ipam, fragments):
    msg = refused(ipam)
    for fragment in fragments:
        assert fragment in msg


def test_same_subnet_in_two_sets_with_disjoint_ranges():
    s0, s1 = sets({"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.99"}],
                              [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"}]]})
    assert (s0.ranges[0].text(s0.ranges[0].end), s1.ranges[0].text(s1.ranges[0].start)) == ("10.1.0.99",
                                                                                          "10.1.0.100")


def test_dual_stack_sets():
    v4, v6 = sets({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    assert (v4.index, v4.version, len(v4.ranges)) == (0, 4, 2)
    assert (v6.index, v6.version, len(v6.ranges)) == (1, 6, 1)


def test_legacy_top_level_subnet():
    [s] = sets({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50", "rangeEnd": "10.1.0.60", "gateway": "10.1.0.254"})
    [r] = s.ranges
    assert (r.text(r.start), r.text(r.end), r.text(r.gateway), r.field) == ("10.1.0.50", "10.1.0.60", "10.1.0.254",
                                                                            "ipam")


def test_legacy_error_names_top_level_field():
    assert refused({"subnet": "10.1.0.0/24", "rangeStart": "10.9.0.1"}).startswith("ipam.rangeStart: ")


def test_order_runtime_ranges_then_legacy_then_ranges():
    # As the reference: the legacy range is prepended to `ranges`, then runtimeConfig.ipRanges before both.
    # The order fixes which last_reserved_ip.N belongs to which set.
    s = sets({"subnet": "10.2.0.0/24", "ranges": [[{"subnet": "10.3.0.0/24"}]]},
             [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]])
    assert [(x.index, str(x.ranges[0].subnet), x.ranges[0].field) for x in s] == [
        (0, "10.1.0.0/24", "runtimeConfig.ipRanges[0][0]"),
        (1, "fd00::/64", "runtimeConfig.ipRanges[1][0]"),
        (2, "10.2.0.0/24", "ipam"),
        (3, "10.3.0.0/24", "ipam.ranges[0][0]"),
    ]


def test_runtime_ranges_are_checked_too():
    msg = refused({"ranges": [[{"subnet": "10.1.0.0/24"}]]}, [[{"subnet": "10.1.0.0/25"}]])
    assert "ipam.ranges[0][0]" in msg and "overlaps range set 0" in msg
    assert "runtimeConfig.ipRanges[0][0].subnet" in refused({}, [[{"subnet": "10.1.0.1/24"}]])


# -- exclusions -----------------------------------------------------------------

@pytest.mark.parametrize("subnet, exclude, expected", [
    ("10.1.0.0/29", ["10.1.0.3"], ["10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]),
    ("10.1.0.0/29", ["10.1.0.4/30"], ["10.1.0.2", "10.1.0.3"]),
    ("10.1.0.0/29", ["10.1.0.3-10.1.0.5"], ["10.1.0.2", "10.1.0.6"]),
    ("10.1.0.0/29", [" 10.1.0.3 - 10.1.0.5 "], ["10.1.0.2", "10.1.0.6"]),
    ("10.1.0.0/29", ["10.1.0.3-10.1.0.3"], ["10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]),
    # overlapping and adjacent exclusions merge
    ("10.1.0.0/29", ["10.1.0.2-10.1.0.4", "10.1.0.3-10.1.0.5", "10.1.0.4"], ["10.1.0.6"]),
    ("10.1.0.0/29", ["10.1.0.2", "10.1.0.3", "10.1.0.5"], ["10.1.0.4", "10.1.0.6"]),
    # exclusions reaching outside the subnet are clipped to it
    ("10.1.0.8/29", ["10.1.0.0-10.1.0.10"], ["10.1.0.11", "10.1.0.12", "10.1.0.13", "10.1.0.14"]),
    ("10.1.0.8/29", ["10.1.0.0/16"], []),
    # the whole range
    ("10.1.0.0/29", ["10.1.0.2-10.1.0.6"], []),
    ("10.1.0.0/29", ["10.1.0.0/29"], []),
    ("fd00::/125", ["fd00::3"], ["fd00::2", "fd00::4", "fd00::5", "fd00::6", "fd00::7"]),
    ("fd00::/125", ["fd00::4/126"], ["fd00::2", "fd00::3"]),
    ("fd00::/125", ["fd00::2-fd00::6"], ["fd00::7"]),
    ("fd00::/125", ["fd00::/125"], []),
    ("fd00::/125", ["fd00::2-fd00::3", "fd00::3-fd00::5", "fd00::7"], ["fd00::6"]),
])
def test_exclusions(subnet, exclude, expected):
    assert handed_out(one({"subnet": subnet, "exclude": exclude})) == expected
    assert handed_out(one({"subnet": subnet}, exclude=exclude)) == expected   # top level: same effect


def test_top_level_exclusions_apply_to_their_family_in_every_set():
    v4a, v4b, v6 = sets({"ranges": [[{"subnet": "10.1.0.0/29"}], [{"subnet": "10.2.0.0/29"}],
                                    [{"subnet": "fd00::/125"}]],
                         "exclude": ["10.1.0.3", "10.2.0.0/30", "fd00::7"]})
    assert handed_out(v4a.ranges[0]) == ["10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    assert handed_out(v4b.ranges[0]) == ["10.2.0.4", "10.2.0.5", "10.2.0.6"]
    assert handed_out(v6.ranges[0]) == ["fd00::2", "fd00::3", "fd00::4", "fd00::5", "fd00::6"]


def test_exclusion_crossing_range_boundaries():
    [s] = sets({"ranges": [[{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.2"},
                            {"subnet": "10.1.0.8/29", "rangeEnd": "10.1.0.12"}]],
                "exclude": ["10.1.0.5-10.1.0.10"]})
    assert [handed_out(r) for r in s.ranges] == [["10.1.0.2", "10.1.0.3", "10.1.0.4"], ["10.1.0.11", "10.1.0.12"]]
    assert s.ranges[1].why_refused(ip("10.1.0.10")) == "it is excluded by ipam.exclude[0] (10.1.0.5-10.1.0.10)"


def test_per_range_exclusion_crossing_its_subnet_is_clipped():
    r = one({"subnet": "10.1.0.0/29", "exclude": ["10.1.0.6-10.1.0.20"]})
    assert handed_out(r) == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
    assert r.excluded == [(ip("10.1.0.6"), ip("10.1.0.7"))]


def test_why_refused_names_the_rule():
    r = one({"subnet": "10.1.0.0/24", "exclude": ["10.1.0.16/28", "10.1.0.20-10.1.0.40"]},
            exclude=["10.1.0.100"], auxAddresses={"router": "10.1.0.2"})
    assert r.why_refused(ip("10.1.0.17")) == "it is excluded by ipam.ranges[0][0].exclude[0] (10.1.0.16/28)"
    assert r.why_refused(ip("10.1.0.35")) == "it is excluded by ipam.ranges[0][0].exclude[1] (10.1.0.20-10.1.0.40)"
    assert r.why_refused(ip("10.1.0.100")) == "it is excluded by ipam.exclude[0] (10.1.0.100)"
    assert r.why_refused(ip("10.1.0.2")) == "it is aux address 'router'"
    assert r.why_refused(ip("10.1.0.41")) is None


@pytest.mark.parametrize("exclude, fragments", [
    (["10.1.0.9-10.1.0.5"], ["exclude[0]", "last address comes before the first"]),
    (["10.1.0.5-fd00::1"], ["exclude[0]", "mixes IPv4 and IPv6"]),
    (["10.1.0.5-"], ["exclude[0]", "not a valid IP address"]),
    (["banana"], ["exclude[0]", "not a valid IP address"]),
    (["10.1.0.0/33"], ["exclude[0]", "not a valid CIDR"]),
    ([5], ["exclude[0]", "not an address, CIDR or first-last range"]),
    (["10.1.0.5", "10.9.0.0/24"], ["exclude[1]", "outside"]),
    (["fd00::5"], ["exclude[0]", "outside"]),
])
@pytest.mark.parametrize("where", ["ipam", "range"])
def test_invalid_exclusions(exclude, fragments, where):
    if where == "ipam":
        msg = refused({"ranges": [[{"subnet": "10.1.0.0/24"}]], "exclude": exclude})
        assert msg.startswith("ipam.exclude[")
    else:
        msg = refused({"ranges": [[{"subnet": "10.1.0.0/24", "exclude": exclude}]]})
        assert msg.startswith("ipam.ranges[0][0].exclude[")
    for fragment in fragments:
        assert fragment in msg


def test_exclude_must_be_a_list():
    assert "ipam.exclude" in refused({"ranges": [[{"subnet": "10.1.0.0/24"}]], "exclude": "10.1.0.5"})
    assert "ipam.ranges[0][0].exclude" in refused({"ranges": [[{"subnet": "10.1.0.0/24", "exclude": "10.1.0.5"}]]})


def test_many_exclusions_are_not_expanded():
    # 20 000 single-address exclusions in a /16 and a /8 excluded whole: canonical form is a few intervals.
    exclude = [f"10.1.{i // 256}.{i % 256}" for i in range(0, 40000, 2)] + ["10.0.0.0/8"]
    r = one({"subnet": "10.0.0.0/8"}, exclude=exclude)
    assert r.excluded == [(ip("10.0.0.0"), ip("10.255.255.255"))]
    assert r.next_available(r.start) is None


# -- aux addresses --------------------------------------------------------------

def test_aux_addresses_are_blocked():
    v4, v6 = sets({"ranges": [[{"subnet": "10.1.0.0/29"}], [{"subnet": "fd00::/125"}]],
                   "auxAddresses": {"router": "10.1.0.3", "dns": "fd00::4", "outside-range": "10.1.0.7"}})
    assert handed_out(v4.ranges[0]) == ["10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    assert handed_out(v6.ranges[0]) == ["fd00::2", "fd00::3", "fd00::5", "fd00::6", "fd00::7"]
    assert v6.ranges[0].why_refused(ip("fd00::4")) == "it is aux address 'dns'"


def test_aux_outside_range_but_inside_subnet_is_accepted():
    r = one({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"}, auxAddresses={"host": "10.1.0.10"})
    assert r.aux == {ip("10.1.0.10"): "host"}
    assert r.counts() == (155, 155, 0, 0)   # .100-.254; the aux address is not among them


@pytest.mark.parametrize("aux, fragments", [
    ({"router": "10.2.0.1"}, ["ipam.auxAddresses.router", "10.2.0.1 lies outside every subnet"]),
    ({"ok": "10.1.0.5", "v6": "fd00::1"}, ["ipam.auxAddresses.v6", "outside every subnet"]),
    ({"bad": "10.1.0.300"}, ["ipam.auxAddresses.bad", "not a valid IP address"]),
    ({"bad": 5}, ["ipam.auxAddresses.bad", "not an IP address string"]),
    ({"cidr": "10.1.0.0/28"}, ["ipam.auxAddresses.cidr", "not a valid IP address"]),
])
def test_invalid_aux(aux, fragments):
    msg = refused({"ranges": [[{"subnet": "10.1.0.0/24"}]], "auxAddresses": aux})
    for fragment in fragments:
        assert fragment in msg


def test_aux_must_be_a_map():
    assert "ipam.auxAddresses" in refused({"ranges": [[{"subnet": "10.1.0.0/24"}]], "auxAddresses": ["10.1.0.5"]})


# -- counts and candidate order -------------------------------------------------

@pytest.mark.parametrize("spec, ipam, expected", [
    # (addresses, usable, excluded, aux) within rangeStart..rangeEnd
    ({"subnet": "10.1.0.0/29"}, {}, (6, 5, 0, 0)),
    ({"subnet": "10.1.0.0/29"}, {"exclude": ["10.1.0.2-10.1.0.3"], "auxAddresses": {"a": "10.1.0.6"}}, (6, 2, 2, 1)),
    # an aux address that is also excluded counts once, as excluded
    ({"subnet": "10.1.0.0/29"}, {"exclude": ["10.1.0.6"], "auxAddresses": {"a": "10.1.0.6"}}, (6, 4, 1, 0)),
    ({"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.7"}, {}, (8, 5, 0, 0)),
    ({"subnet": "fd00::/125"}, {"exclude": ["fd00::/125"]}, (7, 0, 7, 0)),
])
def test_counts(spec, ipam, expected):
    assert one(spec, **ipam).counts() == expected


def test_candidates_round_robin_across_ranges():
    [s] = sets({"ranges": [[{"subnet": "10.1.0.0/29", "rangeEnd": "10.1.0.4"},
                            {"subnet": "10.2.0.0/29", "rangeEnd": "10.2.0.3"}]]})
    order = [r.text(v) for r, v in s.candidates(None)]
    assert order == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.2.0.2", "10.2.0.3"]
    after = [r.text(v) for r, v in s.candidates(ipaddress.ip_address("10.1.0.3"))]
    assert after == ["10.1.0.4", "10.2.0.2", "10.2.0.3", "10.1.0.2", "10.1.0.3"]
    # the very last: wrap to the first range
    after = [r.text(v) for r, v in s.candidates(ipaddress.ip_address("10.2.0.3"))]
    assert after == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.2.0.2", "10.2.0.3"]
    # a last_reserved no range holds (config changed): start from the beginning
    assert [r.text(v) for r, v in s.candidates(ipaddress.ip_address("10.9.0.1"))] == order


@pytest.mark.parametrize("where", ["ipam", "range"])
def test_host_bits_in_an_exclusion_name_its_network_with_a_warning(where):
    """As before the one CIDR rule, and as whereabouts: `exclude` entries only (issue 17)."""
    exclude = ["10.1.0.4/30", "10.1.0.101/30", "10.1.0.200-10.1.0.201"]
    ipam = {"ranges": [[{"subnet": "10.1.0.0/24"}]], "exclude": exclude} if where == "ipam" else \
        {"ranges": [[{"subnet": "10.1.0.0/24", "exclude": exclude}]]}
    warnings = []
    [s] = ranges.range_sets(ipam, warnings=warnings)
    r = s.ranges[0]
    assert [r.may_hand_out(ip(f"10.1.0.{i}")) for i in range(99, 106)] == [True] + [False] * 4 + [True, True]
    field = "ipam.exclude" if where == "ipam" else "ipam.ranges[0][0].exclude"
    assert warnings == [f"{field}[1]: 10.1.0.101/30 has host bits set; excluded as 10.1.0.100/30, the network "
                        "it names (write 10.1.0.100/30 to say so)"]
    [s] = ranges.range_sets({"ranges": [[{"subnet": "fd00::/64", "exclude": ["fd00::5/126"]}]]}, warnings=warnings)
    assert not s.ranges[0].may_hand_out(ip("fd00::4")) and "excluded as fd00::4/126" in warnings[-1]
    assert "ipam.ranges[0][0].subnet: 10.1.0.1/24 has host bits set" in refused({"ranges": [[{"subnet": "10.1.0.1/24"}]]})


def test_host_bits_in_a_long_list_too():
    """Past FAST_PARSING_FROM exclusions take the inet_pton path: the same rule holds there."""
    exclude = [f"10.1.{i // 64}.{i % 64 * 4}/30" for i in range(ranges.FAST_PARSING_FROM + 10)]
    assert len(one({"subnet": "10.1.0.0/16", "exclude": exclude}).exclusions) == len(exclude)
    exclude[70] = "10.1.1.25/30"
    warnings = []
    [s] = ranges.range_sets({"ranges": [[{"subnet": "10.1.0.0/16", "exclude": exclude}]]}, warnings=warnings)
    assert [w.split(";")[0] for w in warnings] == ["ipam.ranges[0][0].exclude[70]: 10.1.1.25/30 has host bits set"]
    assert not s.ranges[0].may_hand_out(ip("10.1.1.24"))


