"""podman (CNI backend) running containers on an underlay macvlan network.

Everything podman keeps is private to the test session: containers.conf,
storage.conf, registries.conf (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF,
CONTAINERS_REGISTRIES_CONF), --root/--runroot, tmp_dir, file locks instead of
/dev/shm, a cgroup parent of its own. The busybox image is imported from a
tarball of Debian's busybox-static. podman's container netns live in the root
namespace context, so the master is a uniquely named veth in the ROOT netns.

podman's libcni keeps its result cache in /var/lib/cni/results (not
configurable in podman 4.3): entries of the test networks are checked and removed.

The tests run twice (both_paths): the plugins working in-process, and handing
off to a test underlayd, which must then serve every run (tests/clients/conftest.py
PluginRoute); the addresses, errors and leases expected are the same.
"""

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

from tests import netns as nsutil
from tests.clients import cleanup, libcni
from tests.clients.conftest import require
from tests.lan import kea4, lan_on, wait_for  # noqa: F401 (kea4: a fixture)

pytestmark = [pytest.mark.root, pytest.mark.clients]

IMAGE = "localhost/underlay-busybox:test"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "sleep", "ping", "ip", "cat")
PODMAN_RESULTS = "/var/lib/cni/results"


def busybox_tarball(path):
    """A root filesystem: Debian's static busybox and the applets the tests use."""
    with tarfile.open(path, "w") as tar:
        for name in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))


class Podman:
    """podman with private configuration and storage; `run` returns the CompletedProcess."""

    def __init__(self, bin_dir):
        self.dir = tempfile.mkdtemp(prefix="underlay-podman-")
        self.net_dir = os.path.join(self.dir, "net.d")
        self.cgroup_parent = nsutil.unique("ulpod")
        for sub in ("root", "runroot", "tmp", "net.d"):
            os.makedirs(os.path.join(self.dir, sub))
        with open(os.path.join(self.dir, "containers.conf"), "w") as f:
            f.write(f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{self.net_dir}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{self.dir}/events.log"
tmp_dir = "{self.dir}/tmp"
static_dir = "{self.dir}/root/libpod"
volume_path = "{self.dir}/root/volumes"
lock_type = "file"
""")
        with open(os.path.join(self.dir, "storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{self.dir}/root"\nrunroot = "{self.dir}/runroot"\n')
        open(os.path.join(self.dir, "registries.conf"), "w").close()
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "HOME": self.dir,
                    "CONTAINERS_CONF": os.path.join(self.dir, "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": os.path.join(self.dir, "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": os.path.join(self.dir, "registries.conf")}

    def run(self, *args, check=True, timeout=120):
        argv = ["podman", "--root", os.path.join(self.dir, "root"), "--runroot", os.path.join(self.dir, "runroot"),
                "--runtime-flag", f"root={self.dir}/runc"]  # runc's state, else in /run/runc
        proc = subprocess.run(argv + list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def start(self, name, network, *options, command=("sleep", "600")):
        """A detached busybox running `command` on `network`; returns the CompletedProcess (may fail)."""
        return self.run("run", "-d", "--name", name, "--network", network, "--cgroup-parent", f"/{self.cgroup_parent}",
                        "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", *options,
                        IMAGE, *command, check=False)

    def address(self, name):
        out = self.run("exec", name, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        return out.split()[3]

    def remove_all(self):
        self.run("rm", "--all", "--force", "--time", "0", check=False)

    def close(self):
        try:
            self.remove_all()
            self.run("rmi", "--all", "--force", check=False)
        finally:
            cleanup.kill_all(text=self.dir, cgroup=self.cgroup_parent)
            cleanup.unmount_under(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
            cleanup.remove_cgroup(self.cgroup_parent)


@pytest.fixture(scope="module")
def podman(cni_bin_dir):
    require("podman", "podman")
    require("runc", "runc")
    require("conmon", "conmon (a dependency of podman)")
    require(BUSYBOX, "busybox-static")
    results_existed = os.path.isdir(PODMAN_RESULTS)
    # conmon goes to <hierarchy>/libpod_parent/conmon whatever the containers' cgroup parent
    conmon_parent_existed = os.path.isdir("/sys/fs/cgroup/memory/libpod_parent")
    pm = Podman(cni_bin_dir)
    try:
        tarball = os.path.join(pm.dir, "busybox.tar")
        busybox_tarball(tarball)
        pm.run("import", tarball, IMAGE)
        yield pm
    finally:
        pm.close()
        if not conmon_parent_existed:
            cleanup.remove_cgroup("libpod_parent")
        if not results_existed:
            try:
                os.rmdir(PODMAN_RESULTS)  # only if empty: another podman may be using it by now
            except OSError:
                pass


def podman_results(network):
    if not os.path.isdir(PODMAN_RESULTS):
        return []
    return [name for name in os.listdir(PODMAN_RESULTS) if name.startswith(f"{network}-")]


@pytest.fixture
def podman_net(podman, root_master, tmp_path):
    """A macvlan network in podman's config dir: 10.77.0.0/28 with only .12 and .14 free
    (gateway .1, aux .2 .3, excluded .4-.11 and .13). Containers on it are removed at teardown."""
    name = nsutil.unique("ulnet")
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/28", "gateway": "10.77.0.1"}]],
            "auxAddresses": {"router-b": "10.77.0.2", "printer": "10.77.0.3"},
            "exclude": ["10.77.0.4-10.77.0.11", "10.77.0.13"],
            "dataDir": str(tmp_path / "networks")}
    conflist = {"cniVersion": "1.0.0", "name": name,
                "plugins": [{"type": "macvlan", "master": root_master, "mode": "bridge",
                             "stateDir": str(tmp_path / "state"), "ipam": ipam}]}
    path = os.path.join(podman.net_dir, f"{name}.conflist")
    with open(path, "w") as f:
        json.dump(conflist, f)
    try:
        yield conflist
    finally:
        podman.remove_all()
        os.unlink(path)
        for entry in podman_results(name):
            os.unlink(os.path.join(PODMAN_RESULTS, entry))


@pytest.mark.both_paths
def test_two_containers_on_a_macvlan_network(podman, podman_net, plugin_calls):
    net = podman_net["name"]
    ipam = podman_net["plugins"][0]["ipam"]
    data_dir = ipam["dataDir"]

    first = podman.start("c1-" + net, net, "--ip", "10.77.0.14")
    assert first.returncode == 0, first.stderr
    second = podman.start("c2-" + net, net)
    assert second.returncode == 0, second.stderr
    a, b = podman.address("c1-" + net), podman.address("c2-" + net)
    assert a == "10.77.0.14/28", "--ip must be honoured"
    assert b == "10.77.0.12/28" and libcni.allowed(b, ipam), "the one address left that may be handed out"
    for src, dst in (("c1-" + net, b), ("c2-" + net, a)):
        ping = podman.run("exec", src, "ping", "-c", "1", "-W", "2", dst.split("/")[0], check=False)
        assert ping.returncode == 0, f"{src} -> {dst}: {ping.stdout}{ping.stderr}"
    assert sorted(libcni.leases(data_dir, net)) == ["10.77.0.12", "10.77.0.14"]

    # Left: excluded and aux addresses only. They are never handed out, not even asked for.
    third = podman.start("c3-" + net, net)
    assert third.returncode != 0 and "no free address" in third.stderr, third.stderr
    excluded = podman.start("c4-" + net, net, "--ip", "10.77.0.5")
    assert excluded.returncode != 0 and "excluded" in excluded.stderr, excluded.stderr
    aux = podman.start("c5-" + net, net, "--ip", "10.77.0.2")
    assert aux.returncode != 0 and "aux address 'router-b'" in aux.stderr, aux.stderr
    assert sorted(libcni.leases(data_dir, net)) == ["10.77.0.12", "10.77.0.14"]

    sandboxes = [podman.run("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", c).stdout.strip()
                 for c in ("c1-" + net, "c2-" + net)]
    assert len(podman_results(net)) == 2
    removed = podman.run("rm", "--force", "--ignore", "--time", "0", *(f"c{i}-{net}" for i in range(1, 6)), check=False)
    assert removed.returncode == 0, removed.stderr
    assert libcni.leases(data_dir, net) == {}, "podman rm must leave no lease behind"
    assert podman_results(net) == []
    for path in sandboxes:
        assert not os.path.exists(path), f"{path} left behind"
    assert {("macvlan", "ADD"), ("macvlan", "DEL")} <= set(plugin_calls())


@pytest.mark.both_paths
def test_a_container_that_exits_is_detached_by_podmans_cleanup(podman, podman_net, plugin_calls):
    """When a container's process ends, conmon starts `podman container cleanup`, and that process DELs
    with conmon's environment, not podman's (see tests/clients/conftest.py PluginRoute)."""
    net = podman_net["name"]
    data_dir = podman_net["plugins"][0]["ipam"]["dataDir"]
    started = podman.start("c1-" + net, net, command=("ip", "-o", "-4", "addr", "show", "dev", "eth0"))
    assert started.returncode == 0, started.stderr
    assert podman.run("wait", "c1-" + net).stdout.strip() == "0"
    assert podman.run("logs", "c1-" + net).stdout.split()[3] == "10.77.0.12/28"
    deadline = time.monotonic() + 60   # the cleanup process runs on after `podman wait` returns
    while (libcni.leases(data_dir, net) or podman_results(net)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert libcni.leases(data_dir, net) == {} and podman_results(net) == [], "podman's cleanup must DEL"
    assert plugin_calls() == [("macvlan", "ADD"), ("macvlan", "DEL")]


@pytest.fixture
def lan(root_master):
    """tests/lan.py's LAN, behind the root netns master podman's containers need."""
    with lan_on(None, root_master) as made:
        yield made


@pytest.mark.parametrize("plugin_path", ["agent"], indirect=True)   # the dhcp IPAM is served by underlayd alone
def test_a_container_gets_its_address_from_the_lans_dhcp_server(podman, root_master, lan, kea4, plugin_calls):
    """podman's network with our macvlan + dhcp: the container's address is Kea's lease, its name sent
    as the hostname (podman passes K8S_POD_NAME), and `podman rm` releases the lease at the server."""
    server = kea4(valid_lifetime=600)
    name = nsutil.unique("ulnet")
    ipam = {"type": "dhcp", "provide": [{"option": "host-name", "fromArg": "K8S_POD_NAME"}]}
    conflist = {"cniVersion": "1.0.0", "name": name,
                "plugins": [{"type": "macvlan", "master": root_master, "mode": "bridge", "ipam": ipam}]}
    path = os.path.join(podman.net_dir, f"{name}.conflist")
    with open(path, "w") as f:
        json.dump(conflist, f)
    try:
        started = podman.start("c1-" + name, name)
        assert started.returncode == 0, started.stderr
        address = podman.address("c1-" + name)
        assert address.endswith("/24"), f"{address}: the server's mask"
        leased = server.leased()
        assert address.split("/")[0] in leased, (address, leased)
        assert leased[address.split("/")[0]].hostname == "c1-" + name, leased
        removed = podman.run("rm", "--force", "--time", "0", "c1-" + name, check=False)
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: address.split("/")[0] not in server.leased(), what="the release seen by Kea")
        assert podman_results(name) == []
        assert {("macvlan", "ADD"), ("macvlan", "DEL")} <= set(plugin_calls())
    finally:
        podman.remove_all()
        os.unlink(path)
        for entry in podman_results(name):
            os.unlink(os.path.join(PODMAN_RESULTS, entry))
