"""The dhcp IPAM exec'd as a runtime execs it, where no DHCP exchange happens: its config checks
(every bad value a code 7 naming the field) and what it answers without underlayd (ADD code 11
naming underlayd, STATUS 50, DEL 0). The exchanges themselves: tests/lan/test_dhcp.py."""

import pytest

from tests.plugins import run_plugin


def conf(**ipam):
    return {"cniVersion": "1.0.0", "name": "lan", "ipam": dict({"type": "dhcp"}, **ipam)}


@pytest.mark.parametrize("ipam, field", [
    ({"families": ["ipv5"]}, "ipam.families[0]"),
    ({"families": []}, "ipam.families"),
    ({"families": "ipv4"}, "ipam.families"),
    ({"prefixLength6": 0}, "ipam.prefixLength6"),
    ({"prefixLength6": "64"}, "ipam.prefixLength6"),
    ({"timeout": "ten seconds"}, "ipam.timeout"),
    ({"timeout": 0}, "ipam.timeout"),
    ({"timeout": "10m"}, "ipam.timeout"),
    ({"timeout": True}, "ipam.timeout"),
    ({"broadcast": "yes"}, "ipam.broadcast"),
    ({"request": [{"option": "no-such-option"}]}, "ipam.request[0].option"),
    ({"request": [{"option": 255}]}, "ipam.request[0].option"),
    ({"request": [{"skipDefault": True}]}, "ipam.request[0]"),
    ({"provide": [{"option": "host-name"}]}, "ipam.provide[0]"),
    ({"provide": [{"option": "host-name", "value": "a", "fromArg": "K8S_POD_NAME"}]}, "ipam.provide[0]"),
    ({"provide": [{"option": "host-name", "value": "not a host name"}]}, "ipam.provide[0]"),
    ({"provide": [{"option": 0, "value": "x"}]}, "ipam.provide[0].option"),
    ({"prefixlength6": 64}, "prefixlength6"),
])
def test_a_bad_value_is_refused_naming_its_field(ipam, field):
    out = run_plugin("dhcp", "ADD", conf(**ipam), netns="/run/netns/none", ifname="net1")
    assert out.cni_code == 7, out
    assert field in out.json["msg"], out


def test_add_without_underlayd_fails_at_once_with_code_11_naming_it():
    """No agent would renew the lease: nothing is asked of any server, the runtime is told to try again."""
    out = run_plugin("dhcp", "ADD", conf(), netns="/run/netns/none", ifname="net1")
    assert out.cni_code == 11 and "underlayd" in out.json["msg"], out


def test_status_without_underlayd_is_50_and_del_is_0():
    out = run_plugin("dhcp", "STATUS", dict(conf(), cniVersion="1.1.0"))
    assert out.cni_code == 50 and "underlayd" in out.json["msg"], out
    assert run_plugin("dhcp", "DEL", conf(), netns="", ifname="net1").ok


def test_the_references_keys_are_taken_and_daemon_socket_path_is_warned_about():
    out = run_plugin("dhcp", "ADD", conf(daemonSocketPath="/run/cni/dhcp.sock", timeout="2s", broadcast=False,
                                         request=[{"skipDefault": False, "option": "121"}],
                                         provide=[{"option": "host-name", "fromArg": "K8S_POD_NAME"}]),
                     netns="/run/netns/none", ifname="net1", args="IgnoreUnknown=1;K8S_POD_NAME=web-0")
    assert out.cni_code == 11, out   # valid: refused only for want of the agent
    assert "daemonSocketPath is ignored" in out.stderr, out
