"""Config and result rules in real namespaces: a refused prefix leaves nothing behind
(no link in the pod, no shim or parent on the node, no lease)."""

import json
import os
import stat

import pytest

from tests import netns as ns
from tests.plugins import run_on_node


@pytest.fixture
def node(host_ns, master, pod_ns):
    """(host netns, a pod netns, the veth master): tests/conftest.py's fixtures."""
    return host_ns, pod_ns(), master


def conf(master, tmp_path, **extra):
    c = {"cniVersion": "1.0.0", "name": "ucfnet", "type": "macvlan", "master": master,
         "stateDir": str(tmp_path / "state"),
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "networks"),
                  "ranges": [[{"subnet": "10.61.0.0/24"}]]}}
    c.update(extra)
    return c


def assert_nothing_left(host, pod, master, tmp_path, shim=None):
    assert ns.links(pod) == ["lo"]
    node_links = set(ns.links(host))
    assert master in node_links and (shim is None or shim not in node_links)
    network = tmp_path / "networks" / "ucfnet"
    leases = [n for n in os.listdir(network) if n[0].isdigit()] if network.is_dir() else []
    assert leases == []


@pytest.mark.parametrize("version", ["0.3.1", "1.1.0"])
def test_ipam_route_without_prefix(node, tmp_path, version):
    host, pod, master = node
    c = conf(master, tmp_path, cniVersion=version)
    c["ipam"]["routes"] = [{"dst": "10.9.0.0"}]
    out = run_on_node("macvlan", "ADD", c, host, pod)
    assert out.cni_code == 7 and "ipam.routes[0].dst: '10.9.0.0' is not a CIDR" in out.json["msg"], out
    assert out.json["cniVersion"] == version
    assert_nothing_left(host, pod, master, tmp_path)
    c["ipam"]["routes"] = [{"dst": "10.9.0.0/16"}]   # the same config with its prefix works
    out = run_on_node("macvlan", "ADD", c, host, pod)
    assert out.ok, out
    assert "10.9.0.0/16 via 10.61.0.1" in ns.sh("ip", "route", "show", ns=pod).stdout
    assert run_on_node("macvlan", "DEL", c, host, pod).ok
    assert_nothing_left(host, pod, master, tmp_path)


def test_host_shim_route_without_prefix(node, tmp_path):
    host, pod, master = node
    c = conf(master, tmp_path, hostShim={"name": "ucfshim0", "address": "10.61.0.250", "routes": ["10.61.0.0"]})
    out = run_on_node("macvlan", "ADD", c, host, pod)
    assert out.cni_code == 7 and "hostShim.routes[0]: '10.61.0.0' is not a CIDR" in out.json["msg"], out
    assert_nothing_left(host, pod, master, tmp_path, shim="ucfshim0")


def test_delegated_ipam_result_without_prefix(node, tmp_path):
    """An IPAM that is not ours answers with a bare route: refused before it is applied,
    the link undone and the IPAM's DEL run."""
    host, pod, master = node
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    result = {"cniVersion": "1.0.0", "ips": [{"address": "10.61.0.9/24"}], "routes": [{"dst": "10.9.0.0"}]}
    script = bin_dir / "ucf-ipam"
    script.write_text(f"#!/bin/sh\necho \"$CNI_COMMAND\" >> {calls}\n"
                      f"[ \"$CNI_COMMAND\" = ADD ] && echo '{json.dumps(result)}'\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    c = conf(master, tmp_path, ipam={"type": "ucf-ipam"})
    out = run_on_node("macvlan", "ADD", c, host, pod, path=str(bin_dir))
    assert out.cni_code == 7, out
    assert "ucf-ipam result.routes[0].dst: '10.9.0.0' is not a CIDR" in out.json["msg"], out
    assert calls.read_text().split() == ["ADD", "DEL"]
    assert_nothing_left(host, pod, master, tmp_path)


def test_gc_with_only_the_older_name_keeps_listed_pods_and_their_shim(node, pod_ns, tmp_path):
    """libcni 1.2.0 sends cni.dev/attachments only: the listed pod keeps its lease, and the
    hostShim it uses stays; the unlisted one is released."""
    host, pod, master = node
    other = pod_ns()
    c = conf(master, tmp_path, cniVersion="1.1.0",
             hostShim={"name": "ucfshim1", "address": "10.61.0.250", "routes": ["10.61.0.0/24"]})
    assert run_on_node("macvlan", "ADD", c, host, pod, cid="keep").ok
    assert run_on_node("macvlan", "ADD", c, host, other, cid="lost").ok
    gc = dict(c, **{"cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    out = run_on_node("macvlan", "GC", gc, host)
    assert out.ok, out
    network = tmp_path / "networks" / "ucfnet"
    owners = [(network / n).read_bytes() for n in os.listdir(network) if n[0].isdigit()]
    assert owners == [b"keep\r\neth0"]
    assert "ucfshim1" in ns.links(host)
    assert run_on_node("macvlan", "DEL", c, host, pod, cid="keep").ok
    assert run_on_node("macvlan", "DEL", c, host, other, cid="lost").ok
    assert_nothing_left(host, pod, master, tmp_path, shim="ucfshim1")


@pytest.mark.parametrize("change, message", [
    ({"mdoe": "private"}, "unknown key 'mdoe' in the network config; did you mean 'mode'?"),
    ({"ipam": {"exlude": ["10.61.0.0/25"]}}, "unknown key 'exlude' in ipam; did you mean 'exclude'?"),
    ({"ipam": {"ranges": [[{"subnet": "10.61.0.0/24", "exlude": ["10.61.0.0/24"]}]]}},
     "unknown key 'exlude' in ipam.ranges[0][0]; did you mean 'exclude'?"),
    ({"hostShim": {"name": "ucfshim2", "address": "10.61.0.250", "route": ["10.61.0.0/24"]}},
     "unknown key 'route' in hostShim; did you mean 'routes'?"),
])
def test_a_near_miss_key_leaves_nothing_behind(node, tmp_path, change, message):
    host, pod, master = node
    c = conf(master, tmp_path)
    for key, value in change.items():
        c[key] = dict(c[key], **value) if key == "ipam" else value
    out = run_on_node("macvlan", "ADD", c, host, pod)
    assert out.cni_code == 7 and out.json["msg"] == message, out
    assert_nothing_left(host, pod, master, tmp_path, shim="ucfshim2")


def test_an_unknown_key_is_kept_and_warned_about(node, tmp_path):
    host, pod, master = node
    c = conf(master, tmp_path, future={"x": 1})
    out = run_on_node("macvlan", "ADD", c, host, pod)
    assert out.ok, out
    assert out.stderr == "macvlan: warning: unknown key 'future' in the network config is not used\n"
    assert run_on_node("macvlan", "DEL", c, host, pod).ok
    assert_nothing_left(host, pod, master, tmp_path)
