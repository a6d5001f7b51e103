"""cni/config.py: the one CIDR rule, near-miss keys, messages in words."""

import ipaddress

import pytest

from cni import config as netconf
from cni.contract import CniError


@pytest.mark.parametrize("text, network", [
    ("10.9.0.0/16", "10.9.0.0/16"), ("0.0.0.0/0", "0.0.0.0/0"), ("10.9.0.1/32", "10.9.0.1/32"),
    ("fd00::/64", "fd00::/64"), ("::/0", "::/0"),
])
def test_cidr(text, network):
    assert netconf.parse_cidr(text, "f") == ipaddress.ip_network(network)


@pytest.mark.parametrize("text, message", [
    ("10.9.0.0", "routes[0].dst: '10.9.0.0' is not a CIDR: the prefix length is missing "
                 "(address/prefix, e.g. 10.9.0.0/32 for this address alone)"),
    ("fd00::", "routes[0].dst: 'fd00::' is not a CIDR: the prefix length is missing "
               "(address/prefix, e.g. fd00::/128 for this address alone)"),
    ("10.9.0.1/16", "routes[0].dst: 10.9.0.1/16 has host bits set; for a /16 the network address is "
                    "10.9.0.0 (10.9.0.0/16)"),
    ("192.168.50.101/30", "routes[0].dst: 192.168.50.101/30 has host bits set; for a /30 the network address "
                          "is 192.168.50.100 (192.168.50.100/30)"),
    ("10.9.0.0/33", "routes[0].dst: '10.9.0.0/33' is not a valid CIDR (address/prefix)"),
    ("banana", "routes[0].dst: 'banana' is not a CIDR (address/prefix)"),
    ("", "routes[0].dst: '' is not a CIDR (address/prefix)"),
    (None, "routes[0].dst: None is not a CIDR (address/prefix)"),
    (16, "routes[0].dst: 16 is not a CIDR (address/prefix)"),
])
def test_cidr_refused(text, message):
    with pytest.raises(CniError) as e:
        netconf.parse_cidr(text, "routes[0].dst")
    assert (e.value.code, e.value.msg) == (7, message)
