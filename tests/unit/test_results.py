"""Result conversion between the newest (1.1.0) form and every cniVersion, both ways."""

import copy

import pytest

from cni.contract import SUPPORTED_VERSIONS
from cni.errors import ERR_DECODE, CniError
from cni.results import convert_result, upconvert_result

DNS = {"nameservers": ["10.1.0.53"], "domain": "example.test", "search": ["a.test"], "options": ["ndots:2"]}

# What a main plugin builds: every 1.1.0 field present.
FULL = {
    "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1400, "sandbox": "/run/netns/p1"}],
    "ips": [
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 0},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100,
         "scope": 0},
        {"dst": "192.168.0.0/16"},
        {"dst": "::/0", "gw": "fd00::1", "priority": 5},
    ],
    "dns": DNS,
}

V4_ROUTES_10 = [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "192.168.0.0/16"}]
ROUTES_10 = V4_ROUTES_10 + [{"dst": "::/0", "gw": "fd00::1"}]
INTERFACES_10 = [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/p1"}]

FORM_020 = {
    "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1", "routes": V4_ROUTES_10},
    "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
    "dns": DNS,
}
FORM_03 = {
    "interfaces": INTERFACES_10,
    "ips": [
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0, "version": "4"},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 0, "version": "6"},
    ],
    "routes": ROUTES_10,
    "dns": DNS,
}
FORM_100 = {"interfaces": INTERFACES_10, "ips": FULL["ips"], "routes": ROUTES_10, "dns": DNS}
FORM_110 = FULL

EXPECTED = {
    "0.1.0": FORM_020, "0.2.0": FORM_020,
    "0.3.0": FORM_03, "0.3.1": FORM_03, "0.4.0": FORM_03,
    "1.0.0": FORM_100, "1.1.0": FORM_110,
}


def test_every_version_has_an_expected_form():
    assert set(EXPECTED) == set(SUPPORTED_VERSIONS)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_convert_full_result(version):
    result = copy.deepcopy(FULL)
    assert convert_result(result, version) == dict(EXPECTED[version], cniVersion=version)
    assert result == FULL  # the plugin's result is not changed in place


# What converting back gives: the newest form, minus what the version cannot carry.
UPCONVERTED = {
    "0.2.0": {"ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                      {"address": "fd00::5/64", "gateway": "fd00::1"}],
              "routes": ROUTES_10, "dns": DNS},
    "0.3.1": {"interfaces": INTERFACES_10, "ips": FULL["ips"], "routes": ROUTES_10, "dns": DNS},
    "1.0.0": {"interfaces": INTERFACES_10, "ips": FULL["ips"], "routes": ROUTES_10, "dns": DNS},
    "1.1.0": FULL,
}
UPCONVERTED["0.1.0"] = UPCONVERTED["0.2.0"]
UPCONVERTED["0.3.0"] = UPCONVERTED["0.4.0"] = UPCONVERTED["0.3.1"]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_round_trip(version):
    printed = convert_result(FULL, version)
    assert upconvert_result(printed, version) == UPCONVERTED[version]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_ipam_result_has_no_interfaces(version):
    ipam = {"ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}], "routes": [], "dns": {}}
    out = convert_result(ipam, version)
    assert "interfaces" not in out
    assert out["dns"] == {}
    if version in ("0.1.0", "0.2.0"):
        assert out == {"cniVersion": version, "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1"}, "dns": {}}
    else:
        assert [ip["address"] for ip in out["ips"]] == ["10.1.0.5/24"]
        assert "routes" not in out


@pytest.mark.parametrize("version, has_version_field", [
    ("0.3.0", True), ("0.3.1", True), ("0.4.0", True), ("1.0.0", False), ("1.1.0", False),
])
def test_ips_version_field_only_in_03_and_04(version, has_version_field):
    out = convert_result(FULL, version)
    assert all(("version" in ip) == has_version_field for ip in out["ips"])


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_110_fields_dropped_below_110(version):
    out = convert_result(FULL, version)
    assert all("mtu" not in i for i in out["interfaces"])
    assert all(set(r) <= {"dst", "gw"} for r in out["routes"])


def test_020_keeps_one_address_per_family():
    result = {"ips": [{"address": "10.1.0.5/24"}, {"address": "10.2.0.5/24"}, {"address": "fd00::5/64"}]}
    out = convert_result(result, "0.2.0")
    assert out["ip4"] == {"ip": "10.1.0.5/24"}
    assert out["ip6"] == {"ip": "fd00::5/64"}


def test_020_without_addresses():
    assert convert_result({"ips": [], "routes": [{"dst": "0.0.0.0/0"}]}, "0.2.0") == {"cniVersion": "0.2.0",
                                                                                     "dns": {}}


def test_upconvert_020_single_family():
    prev = {"cniVersion": "0.2.0", "ip6": {"ip": "fd00::5/64", "routes": [{"dst": "::/0"}]}}
    assert upconvert_result(prev, "0.2.0") == {"ips": [{"address": "fd00::5/64"}], "routes": [{"dst": "::/0"}],
                                               "dns": {}}


@pytest.mark.parametrize("version, prev", [
    ("1.0.0", []),
    ("1.0.0", "x"),
    ("1.0.0", {"ips": [{"gateway": "10.0.0.1"}]}),
    ("1.0.0", {"ips": [{"address": 5}]}),
    ("1.0.0", {"ips": "10.0.0.5/24"}),
    ("0.4.0", {"ips": [5]}),
    ("0.2.0", {"ip4": {"gateway": "10.0.0.1"}}),
    ("0.2.0", {"ip4": "10.0.0.5/24"}),
])
def test_upconvert_malformed(version, prev):
    with pytest.raises(CniError) as e:
        upconvert_result(prev, version, "prevResult")
    assert e.value.code == ERR_DECODE
    assert "prevResult" in e.value.msg


# -- every prefix carries its length: libcni refuses a result without one ---------------

@pytest.mark.parametrize("version, prev, fragments", [
    ("1.0.0", {"ips": [{"address": "10.0.0.5/24"}], "routes": [{"dst": "10.9.0.0"}]},
     ["prevResult.routes[0].dst: '10.9.0.0' is not a CIDR: the prefix length is missing", "10.9.0.0/32"]),
    ("1.0.0", {"ips": [{"address": "fd00::5/64"}], "routes": [{"dst": "::/0"}, {"dst": "fd00:9::"}]},
     ["prevResult.routes[1].dst", "fd00:9::/128"]),
    ("1.0.0", {"ips": [{"address": "10.0.0.5/24"}], "routes": [{"dst": "10.9.0.1/16"}]},
     ["prevResult.routes[0].dst: 10.9.0.1/16 has host bits set", "network address is 10.9.0.0 (10.9.0.0/16)"]),
    ("0.2.0", {"ip4": {"ip": "10.0.0.5/24", "routes": [{"dst": "10.9.0.0"}]}}, ["prevResult.routes[0].dst"]),
    ("1.0.0", {"ips": [{"address": "10.0.0.5"}]}, ["prevResult.ips[0].address", "no prefix length"]),
    ("1.0.0", {"ips": [{"address": "10.0.0.5/24"}], "routes": [{"dst": "banana/8"}]},
     ["prevResult.routes[0].dst: 'banana/8' is not a valid CIDR"]),
])
def test_a_route_or_address_without_prefix_is_refused(version, prev, fragments):
    with pytest.raises(CniError) as e:
        upconvert_result(prev, version, "prevResult")
    assert e.value.code == 7
    for fragment in fragments:
        assert fragment in e.value.msg
