"""containerd's CRI plugin, driven as kubelet drives it, with our plugins in its bin_dir.

RunPodSandbox makes containerd create the pod netns and run its CNI setup
(loopback and our conflist) with the full K8S_* arguments; StopPodSandbox tears
the network down; RemovePodSandbox deletes the netns. The conflist is
conf/examples/macvlan-bridge.conflist on a uniquely named veth in the ROOT
netns (containerd's pod netns live there).

The tests run twice (both_paths): the plugins working in-process, and handing
off to a test underlayd, which must then serve every run (tests/clients/conftest.py
PluginRoute). Each starts from a fresh store, so the pod IPs are the same either way.
"""

import concurrent.futures
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from tests import netns as nsutil
from tests.clients import containerd as ctd
from tests.clients import libcni
from tests.clients.conftest import require

pytestmark = [pytest.mark.root, pytest.mark.clients]

EXAMPLE = "macvlan-bridge.conflist"


class Cri:
    """The session's containerd, its CRI client and the sandboxes the tests made."""

    def __init__(self, daemon, client, conflist, data_dir):
        self.daemon = daemon
        self.client = client
        self.conflist = conflist
        self.data_dir = data_dir
        self.sandboxes = set()

    @property
    def network(self):
        return self.conflist["name"]

    @property
    def ipam(self):
        return self.conflist["plugins"][0]["ipam"]

    def run(self, name):
        try:
            sandbox = self.client.run_pod_sandbox(name, uid=f"uid-{name}", cgroup_parent=self.daemon.cgroup_parent,
                                                  log_dir=os.path.join(self.daemon.dir, "pods", name))
        except Exception as e:
            raise AssertionError(f"RunPodSandbox {name}: {e}\n--- containerd log:\n{self.daemon.tail()}") from None
        self.sandboxes.add(sandbox)
        return sandbox

    def stop_and_remove(self, sandbox):
        self.client.stop(sandbox)
        self.client.remove(sandbox)
        self.sandboxes.discard(sandbox)

    def leases(self):
        return libcni.leases(self.data_dir, self.network)

    def fresh_store(self):
        """The network's host-local store as new (containerd reads its conflist once, so the
        dataDir is the module's): a test's pods get the first addresses host-local hands out."""
        assert self.leases() == {}, "an earlier test left a lease"
        shutil.rmtree(os.path.join(self.data_dir, self.network), ignore_errors=True)

    def first_addresses(self, count):
        """The first `count` addresses host-local hands out from a fresh store."""
        [(_, first, last, _)] = libcni.host_local_ranges(self.ipam)
        candidates = (str(ipaddress.ip_address(value)) for value in range(first, last + 1))
        return [ip for ip in candidates if libcni.allowed(ip, self.ipam)][:count]


@pytest.fixture(scope="module")
def cri_master():
    """The module's containerd reads its conflist at start: one veth for the module."""
    name, peer = nsutil.unique("ulm"), nsutil.unique("ulq")
    nsutil.sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
    try:
        for link in (name, peer):
            nsutil.sh("ip", "link", "set", link, "addrgenmode", "none")
            nsutil.sh("ip", "link", "set", link, "up")
        yield name
    finally:
        nsutil.sh("ip", "link", "del", name, check=False)


@pytest.fixture(scope="module")
def cri(cni_bin_dir, cri_master):
    for exe, package in (("containerd", "containerd"), ("ctr", "containerd"),
                         ("containerd-shim-runc-v2", "containerd"), ("runc", "runc"),
                         (ctd.BUSYBOX, "busybox-static"), ("nsenter", "util-linux")):
        require(exe, package)
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        pytest.fail(f"{e}: pip install -e '.[dev]' (grpcio, grpcio-tools, protobuf pinned in pyproject.toml)",
                    pytrace=False)
    work = tempfile.mkdtemp(prefix="underlay-cri-")
    daemon = client = None
    state = None
    try:
        conf_dir, data_dir, gen_dir = (os.path.join(work, d) for d in ("net.d", "networks", "cri"))
        for d in (conf_dir, gen_dir):
            os.makedirs(d)
        conflist = libcni.localize(libcni.load_example(EXAMPLE), cri_master, data_dir, os.path.join(work, "state"),
                                   name=nsutil.unique("ulcri"))
        with open(os.path.join(conf_dir, "10-underlay.conflist"), "w") as f:
            json.dump(conflist, f, indent=2)
        pb, pb_grpc = ctd.generate_cri(gen_dir)
        daemon = ctd.Containerd(cni_bin_dir, conf_dir)
        daemon.start()
        tarball = os.path.join(daemon.dir, "pause.tar")
        ctd.pause_image_tarball(tarball)
        daemon.ctr("images", "import", tarball)
        client = ctd.CriClient(daemon.socket, pb, pb_grpc)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.version()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f"containerd's CRI does not answer:\n{daemon.tail()}") from None
                time.sleep(0.1)
        state = Cri(daemon, client, conflist, data_dir)
        yield state
    finally:
        try:
            for sandbox in list(state.sandboxes if state else []):
                try:
                    state.stop_and_remove(sandbox)
                except Exception:
                    pass  # the daemon's shutdown and cleanup below still remove it
            if client:
                client.close()
        finally:
            if daemon:
                daemon.close()
            shutil.rmtree(work, ignore_errors=True)


def sandbox_view(cri, sandbox):
    """(status, netns path, eth0 as `ip -d -j link` shows it, eth0 addresses, lo flags)."""
    status = cri.client.status(sandbox)
    path = ctd.netns_path(status)

    def ip(*args):
        out = subprocess.run(["nsenter", f"--net={path}", "ip", "-j", *args], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)[0]

    eth0 = ip("-d", "link", "show", "dev", "eth0")
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in ip("addr", "show", "dev", "eth0")["addr_info"]
             if a.get("scope") == "global"]
    return status, path, eth0, addrs, ip("link", "show", "dev", "lo")["flags"]


@pytest.mark.both_paths
def test_pod_sandbox_on_an_underlay_network(cri, plugin_calls):
    cri.fresh_store()
    sandbox = cri.run("web-0")
    status, path, eth0, addrs, lo_flags = sandbox_view(cri, sandbox)
    pod_ip = status.status.network.ip
    assert status.status.state == cri.client.pb.SANDBOX_READY
    assert [pod_ip] == cri.first_addresses(1)
    assert addrs == [f"{pod_ip}/24"]
    assert eth0["linkinfo"]["info_kind"] == "macvlan" and eth0["linkinfo"]["info_data"]["mode"] == "bridge"
    assert "UP" in lo_flags, "containerd runs loopback from the same bin_dir"
    cni_result = json.loads(status.info["info"])["cniResult"]["Interfaces"]["eth0"]
    assert cni_result["IPConfigs"] == [{"IP": pod_ip, "Gateway": "192.168.50.1"}]
    assert cni_result["Mac"] == eth0["address"] and cni_result["Sandbox"] == path
    assert cri.leases() == {pod_ip: f"{sandbox}\r\neth0".encode()}

    cri.client.stop(sandbox)
    assert cri.leases() == {}, "StopPodSandbox must release the address"
    cri.client.remove(sandbox)
    cri.sandboxes.discard(sandbox)
    assert not os.path.exists(path), "RemovePodSandbox leaves the netns behind"
    assert {("macvlan", "ADD"), ("macvlan", "DEL")} <= set(plugin_calls())


@pytest.mark.both_paths
def test_sandboxes_in_parallel(cri, plugin_calls):
    cri.fresh_store()
    names = [f"batch-{i}" for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        sandboxes = list(pool.map(cri.run, names))
    ips = [cri.client.status(s, verbose=False).status.network.ip for s in sandboxes]
    assert sorted(ips, key=ipaddress.ip_address) == cri.first_addresses(4), f"duplicate or unexpected pod IPs {ips}"
    assert cri.leases() == {ip: f"{s}\r\neth0".encode() for ip, s in zip(ips, sandboxes)}
    for sandbox, ip in zip(sandboxes, ips):
        assert sandbox_view(cri, sandbox)[3] == [f"{ip}/24"]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(cri.stop_and_remove, sandboxes))
    assert cri.leases() == {}
    assert plugin_calls().count(("macvlan", "ADD")) == len(names)
