"""Requested addresses as Docker's --ip: anywhere in the subnet, also outside
rangeStart..rangeEnd, unless a rule refuses them; dynamic allocation stays in the range."""

import os

import pytest

from tests.exec.conftest import HostLocal, addresses

RANGE = {"subnet": "10.80.0.0/24", "rangeStart": "10.80.0.100", "rangeEnd": "10.80.0.101",
         "exclude": ["10.80.0.40-10.80.0.49"]}


@pytest.fixture
def hl(tmp_path):
    return HostLocal(tmp_path)


def net(hl):
    return hl.config([RANGE], auxAddresses={"printer": "10.80.0.30"})


def test_a_requested_address_outside_the_range_is_honoured(hl):
    c = net(hl)
    assert addresses(hl.add(c, "c1", args="IP=10.80.0.7")) == ["10.80.0.7"]
    # dynamic allocation is unmoved by it: it still starts at rangeStart
    assert addresses(hl.add(c, "c2")) == ["10.80.0.100"]
    assert addresses(hl.add(c, "c3")) == ["10.80.0.101"]
    out = hl.add(c, "c4")
    assert out.cni_code == 101, out
    assert hl.delete(c, "c1").ok
    assert "10.80.0.7" not in hl.leases()


@pytest.mark.parametrize("ip,rule", [
    ("10.80.0.0", "network address"),
    ("10.80.0.255", "broadcast address"),
    ("10.80.0.1", "gateway"),
    ("10.80.0.30", "aux address 'printer'"),
    ("10.80.0.45", "excluded by ipam.ranges[0][0].exclude[0]"),
    ("10.81.0.5", "in no subnet of network"),
])
def test_each_rule_that_refuses_a_requested_address_is_named(hl, ip, rule):
    out = hl.add(net(hl), "c1", args=f"IP={ip}")
    assert out.cni_code == 4 and rule in out.json["msg"] and ip in out.json["msg"], out
    assert not os.path.isdir(hl.net_dir()) or hl.leases() == {}


def test_a_taken_address_is_refused_naming_its_holder(hl):
    c = net(hl)
    assert hl.add(c, "first", args="IP=10.80.0.7").ok
    out = hl.add(c, "second", args="IP=10.80.0.7")
    assert out.cni_code == 101 and "already allocated to container first" in out.json["msg"], out
