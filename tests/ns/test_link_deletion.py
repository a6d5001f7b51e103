"""A link's deletion returns once the kernel has unlisted it, not when its DELLINK returns
(cni/net/netlink.py delete_link): the link, its addresses and routes are gone from every view
when the call returns, its name is free at once, errors are what they were; and a DEL, through
underlayd and through the exec'd bundle, answers with the pod's link gone."""

import errno
import json
import os
import select

import pytest

from tests import netns as ns
from tests import plugins
from tests.bundle import built_bin_dir
from tests.ns.test_macvlan import leases
from tests.ns.test_netlink_codec import socket_in
from tests.plugins import run_on_node
from cni.net import netlink


def add_child(host_ns, master, pod):
    """A macvlan `eth0` in `pod`, up, with an address and a route of each family."""
    ns.sh("ip", "link", "add", "link", master, "name", "eth0", "netns", pod, "type", "macvlan", "mode", "bridge",
          ns=host_ns)
    for argv in (("ip", "link", "set", "eth0", "up"),
                 ("ip", "addr", "add", "10.61.0.5/24", "dev", "eth0"),
                 ("ip", "addr", "add", "fd61::5/64", "dev", "eth0", "nodad"),
                 ("ip", "route", "add", "default", "via", "10.61.0.1", "dev", "eth0"),
                 ("ip", "-6", "route", "add", "fd62::/48", "via", "fd61::1", "dev", "eth0")):
        ns.sh(*argv, ns=pod)


@pytest.fixture
def pod(host_ns, master, pod_ns):
    name = pod_ns()
    add_child(host_ns, master, name)
    return name


def test_delete_link_returns_with_the_link_its_addresses_and_routes_gone(host_ns, master, pod):
    with socket_in(pod) as nl, socket_in(pod) as other:
        index = nl.link("eth0").index
        nl.delete_link(index)
        # right away, from another socket: by name, by index, its addresses, its routes
        assert other.find_link("eth0") is None
        with pytest.raises(netlink.LinkNotFound):
            other.link(index=index)
        assert other.addresses(index) == []
        assert [r for r in other.routes() if r["oif"] == index] == []
    assert "eth0" not in ns.sh("cat", "/proc/net/dev", ns=pod).stdout
    add_child(host_ns, master, pod)   # the name is free at once


def test_delete_link_returns_at_the_kernels_echo_and_its_ack_comes_after(pod):
    """delete_link returns at the echo of its DELLINK (the link unlisted); the DELLINK's ACK comes
    once the kernel is done with the device, to a socket nobody reads it from."""
    with socket_in(pod) as nl:
        nl.delete_link(nl.link("eth0").index)
        seq = nl.seq
        assert select.select([nl.sock], [], [], 60)[0], "no ACK of the DELLINK"   # 60 s: only a hang
        data = nl.sock.recv(netlink.RECV_SIZE)
        acks = [(kind, rseq, -netlink.S32.unpack_from(data, start + netlink.HEADER.size)[0])
                for start, _length, kind, rseq in netlink.messages(data)]
        assert acks == [(netlink.NLMSG_ERROR, seq, 0)]
        assert nl.find_link("lo").name == "lo"   # the socket answers in step after it


def test_delete_link_errors_are_what_they_were(pod):
    with socket_in(pod) as nl:
        lo = nl.link("lo")
        with pytest.raises(netlink.NetlinkError) as e:
            nl.delete_link(lo.index, "lo")   # the kernel refuses: loopback has no rtnl_link_ops
        assert e.value.errno == errno.EOPNOTSUPP and str(e.value) == "deleting link lo: Operation not supported"
        index = nl.link("eth0").index
        nl.delete_link(index)
        with pytest.raises(netlink.LinkNotFound) as e:
            nl.delete_link(index, "eth0")
        assert e.value.errno == errno.ENODEV and str(e.value) == "eth0: No such device"
        assert nl.find_link("lo").index == lo.index


def test_a_dellink_that_cannot_be_sent_is_an_error_not_a_hang(pod):
    """The DELLINK goes out from a thread: its send failing ends the wait with that error."""
    class Refusing:
        def send(self, data):
            raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))

        def close(self):
            pass

    class Socket:
        def __init__(self, real):
            self.real = real

        def dup(self):
            return Refusing()

        def fileno(self):
            return self.real.fileno()

        def recv(self, *args):
            return self.real.recv(*args)

    with socket_in(pod) as nl:
        index = nl.link("eth0").index
        real, nl.sock = nl.sock, Socket(nl.sock)
        try:
            with pytest.raises(netlink.NetlinkError) as e:
                nl.delete_link(index, "eth0")
        finally:
            nl.sock = real
        assert e.value.errno == errno.ENOBUFS and "deleting link eth0" in str(e.value)
        assert nl.link("eth0").index == index   # nothing was sent


# -- DEL, as a runtime execs it ---------------------------------------------------------------

@pytest.fixture(params=["agent", "bundle"])
def path(request, monkeypatch):
    """The built compiled client handing off to the test agent, or exec'ing the bundle itself."""
    monkeypatch.setattr(plugins, "BIN_DIR", built_bin_dir(request))
    agent = request.getfixturevalue("test_agent")
    monkeypatch.setattr(plugins, "AGENT_SOCKET", agent.socket if request.param == "agent" else None)
    yield request.param
    if request.param == "agent":
        assert agent.wait_served(1, traceparent=plugins.TRACEPARENT), "no run of this test went through underlayd"
    else:
        assert not agent.served(plugins.TRACEPARENT), "a run of this test went through underlayd"


def conf(kind, master, data_dir, **extra):
    c = {"cniVersion": "1.1.0", "name": "dlnet", "type": kind, "master": master,
         "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.62.0.0/24"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}}
    c.update(extra)
    return c


def pod_state(pod):
    """(links, global addresses, routes of the main tables) of a pod netns but loopback's, as `ip`
    shows them."""
    links = [link["ifname"] for link in json.loads(ns.sh("ip", "-j", "link", "show", ns=pod).stdout)]
    addrs = [a["local"] for link in json.loads(ns.sh("ip", "-j", "addr", "show", ns=pod).stdout)
             for a in link.get("addr_info", []) if a.get("scope") == "global"]
    routes = json.loads(ns.sh("ip", "-j", "route", "show", ns=pod).stdout) + \
        json.loads(ns.sh("ip", "-j", "-6", "route", "show", ns=pod).stdout)
    return [name for name in links if name != "lo"], addrs, [r for r in routes if r.get("dev") != "lo"]


@pytest.mark.parametrize("kind", ["macvlan", pytest.param("ipvlan", marks=pytest.mark.kernel("ipvlan"))])
def test_del_answers_with_the_link_gone_and_the_same_ifname_can_be_added_at_once(host_ns, master, pod_ns,
                                                                                 data_dir, path, kind):
    c, pod = conf(kind, master, data_dir), pod_ns()
    assert run_on_node(kind, "ADD", c, host_ns, pod).ok
    assert pod_state(pod)[0] == ["eth0"]
    out = run_on_node(kind, "DEL", c, host_ns, pod)
    assert out.ok and out.stdout == "", out
    assert pod_state(pod) == ([], [], [])   # checked right after the client exits
    assert leases(data_dir, "dlnet") == []
    out = run_on_node(kind, "ADD", c, host_ns, pod, cid="c2")   # the same ifname, the same netns
    assert out.ok, out
    assert run_on_node(kind, "DEL", c, host_ns, pod, cid="c2").ok
    assert pod_state(pod) == ([], [], []) and leases(data_dir, "dlnet") == []
