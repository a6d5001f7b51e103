"""The VM harness and its pytest plugin, with and without booting a VM."""

from __future__ import annotations

import lzma
import os
import shlex
import stat
import subprocess
import tempfile
import uuid
from types import SimpleNamespace

import pytest

from tests.vm import harness, plugin


def unique(prefix: str = "uvm") -> str:
    return prefix + uuid.uuid4().hex[:8]


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, f"{shlex.join(argv)}: {proc.stderr}"
    return proc.stdout


def in_vm() -> bool:
    return bool(os.environ.get(harness.IN_VM_ENV))


needs_host = pytest.mark.skipif(in_vm(), reason="boots a VM; not nested inside one")


# --- building blocks, no VM -----------------------------------------------

SHOW = """Package: linux-image-amd64
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description: Linux for 64-bit PCs (meta-package)
"""


def test_kernel_package_comes_from_the_depends_line():
    assert harness.parse_kernel_depends(SHOW) == "linux-image-6.1.0-56-amd64"


def test_kernel_package_missing_is_an_error():
    with pytest.raises(harness.VMError):
        harness.parse_kernel_depends("Package: linux-image-amd64\nDepends: nothing-useful\n")


def test_vmlinux_is_the_first_xz_stream_that_holds_an_elf():
    elf = b"\x7fELF" + bytes(range(256)) * 64
    decoy = harness.XZ_MAGIC + b"not really xz"
    bzimage = b"MZ setup" + decoy + b"pad" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailing data"
    assert harness.extract_vmlinux(bzimage) == elf


def test_vmlinux_missing_is_an_error():
    with pytest.raises(harness.VMError):
        harness.extract_vmlinux(b"MZ no payload" + lzma.compress(b"not an elf", format=lzma.FORMAT_XZ))


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, rdev), parsed independently of the writer."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], data[pos:pos + filesize], (fields[9], fields[10]))
        pos += filesize
        pos += -pos % 4


def test_cpio_newc_holds_files_links_dirs_and_devices():
    archive = harness.cpio_newc([
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, b"odd length"),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        ("dev/console", stat.S_IFCHR | 0o600, (5, 1)),
    ])
    assert len(archive) % 4 == 0
    entries = read_newc(archive)
    assert entries["bin/busybox"] == (stat.S_IFREG | 0o755, b"odd length", (0, 0))
    assert entries["bin/sh"][1] == b"busybox"
    assert stat.S_ISDIR(entries["bin"][0])
    assert entries["dev/console"] == (stat.S_IFCHR | 0o600, b"", (5, 1))


def test_module_order_puts_dependencies_first_and_skips_builtin_or_absent():
    modules_dep = "\n".join([
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko",
        "kernel/net/9p/9pnet.ko:",
        "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko",
        "kernel/fs/netfs/netfs.ko:",
        "kernel/drivers/virtio/virtio_ring.ko:",
    ])
    order = harness.module_order(modules_dep, "kernel/fs/netfs/netfs.ko\n", ["9pnet_virtio", "9p", "absent"])
    assert order == ["kernel/net/9p/9pnet.ko", "kernel/drivers/virtio/virtio_ring.ko",
                     "kernel/net/9p/9pnet_virtio.ko", "kernel/fs/9p/9p.ko"]


# --- the plugin's decisions, no VM ----------------------------------------

def fake_item(nodeid: str, *marks: tuple[str, ...]):
    return SimpleNamespace(nodeid=nodeid, iter_markers=lambda name: [SimpleNamespace(args=m) for m in marks])


def test_only_tests_needing_a_missing_feature_move_to_the_vm():
    plain, mv, ipv = fake_item("a"), fake_item("b", ("macvlan",)), fake_item("c", ("ipvlan",), ("8021q",))
    keep, moved = plugin.split_items([plain, mv, ipv], have=frozenset({"macvlan", "ipvlan"}))
    assert keep == [plain, mv] and moved == [ipv]


def test_unknown_feature_is_a_usage_error():
    with pytest.raises(pytest.UsageError, match="vxlan"):
        plugin.split_items([fake_item("a", ("vxlan",))], have=frozenset())


@pytest.mark.parametrize("returncode, outcomes, problem", [
    (0, {"t1": "passed", "t2": "passed"}, None),
    (0, {"t1": "passed", "t2": "skipped"}, "t2: skipped"),
    (1, {"t1": "passed", "t2": "failed"}, "t2: failed"),
    (4, {"t1": "passed"}, "t2: did not run"),
    (0, {"t1": "passed", "t2": "passed", "t3": "passed"}, "not asked to: t3"),
    (1, None, "wrote no report"),
])
def test_inner_run_counts_only_when_every_expected_test_passed(returncode, outcomes, problem):
    problems = plugin.judge(["t1", "t2"], returncode, outcomes)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
        assert returncode == 0 or any("exited" in p for p in problems)


def test_feature_probe_names_only_known_features():
    assert plugin.kernel_features() <= plugin.FEATURES


# --- booting the VM -------------------------------------------------------

def vm_processes(marker: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


backends = pytest.mark.parametrize("backend", harness.BACKENDS)


@needs_host
@backends
def test_exit_code_and_output_come_back(backend, tmp_path):
    kernel = harness.prepare(backend)
    (tmp_path / "host-file").write_text("from the host")   # under /tmp: must not be hidden
    script = f'echo hi; echo oops >&2; echo "vm=$UNDERLAY_VM $(uname -r)"; cat {tmp_path}/host-file; exit 3'
    code, output = harness.run_in_vm(["sh", "-c", script], timeout=300, kernel=kernel)
    assert code == 3
    assert output.splitlines() == ["hi", "oops", f"vm=1 {kernel.release}", "from the host"]


@needs_host
@backends
def test_timeout_kills_the_vm_and_leaves_nothing(backend, monkeypatch, tmp_path):
    kernel = harness.prepare(backend)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run directory goes
    with pytest.raises(harness.VMError, match="did not finish within 1 s"):
        harness.run_in_vm(["sleep", "600"], timeout=1, kernel=kernel)
    assert list(tmp_path.iterdir()) == []
    assert vm_processes(str(tmp_path)) == []


@needs_host
def test_vm_that_cannot_start_is_an_error_with_the_reason(monkeypatch):
    kernel = harness.prepare("qemu")
    monkeypatch.setattr(harness, "qemu_argv",
                        lambda *a: ["sh", "-c", "echo 'qemu: no such machine' >&2; exit 1"])
    with pytest.raises(harness.BootStalled, match="(?s)before reaching the command.*no such machine"):
        harness.run_in_vm(["true"], timeout=60, kernel=kernel)


@needs_host
def test_offline_falls_back_to_the_cached_kernel(monkeypatch):
    kernel = harness.prepare()

    def offline(backend):
        raise harness.VMError("apt-cache cannot resolve linux-image-amd64")

    monkeypatch.setattr(harness, "_wanted", offline)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)   # no apt-get update
    assert harness.prepare(kernel.backend) == kernel


# --- the plugin end to end: these run in the VM on a kernel without them --

@pytest.fixture
def netns():
    """A fresh, uniquely named netns; deleting it removes every link made in it."""
    name = unique()
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.kernel("ipvlan", "8021q", "dummy")
def test_dummy_vlan_and_ipvlan_links(netns):
    veth, peer, dummy, ipvl = unique("uvmv"), unique("uvmp"), unique("uvmd"), unique("uvmi")
    vlan = f"{veth}.50"
    ip = ["ip", "-n", netns, "link"]
    sh(*ip, "add", veth, "type", "veth", "peer", "name", peer)
    sh(*ip, "add", dummy, "type", "dummy")
    sh(*ip, "add", vlan, "link", veth, "type", "vlan", "id", "50")
    sh(*ip, "add", ipvl, "link", vlan, "type", "ipvlan", "mode", "l2")
    assert "dummy" in sh("ip", "-n", netns, "-d", "link", "show", dummy)
    assert "vlan protocol 802.1Q id 50" in sh("ip", "-n", netns, "-d", "link", "show", vlan)
    shown = sh("ip", "-n", netns, "-d", "link", "show", ipvl)
    assert f"{ipvl}@{vlan}" in shown and "ipvlan  mode l2" in shown


@pytest.mark.kernel("ipvlan", "8021q", "dummy", "macvlan")
def test_vm_kernel_has_every_feature():
    assert plugin.kernel_features() == plugin.FEATURES


@pytest.mark.kernel("macvlan")
def test_macvlan_link(netns):
    # Runs wherever macvlan exists: on the host here, without a VM.
    parent, peer, mv = unique("uvmv"), unique("uvmp"), unique("uvmm")
    sh("ip", "-n", netns, "link", "add", parent, "type", "veth", "peer", "name", peer)
    sh("ip", "-n", netns, "link", "add", mv, "link", parent, "type", "macvlan", "mode", "bridge")
    assert "macvlan mode bridge" in sh("ip", "-n", netns, "-d", "link", "show", mv)



@needs_host
def test_a_boot_that_never_reaches_the_command_is_retried_once(monkeypatch, tmp_path):
    """A stand-in VM that never starts the command: booted twice, then BootStalled; nothing left."""
    kernel = harness.prepare("qemu")
    launches = []

    def stalled(kernel, rundir, shares):
        launches.append(rundir)
        return ["sleep", "600"]

    monkeypatch.setattr(harness, "qemu_argv", stalled)
    monkeypatch.setattr(harness, "BOOT_TIMEOUT", 0.5)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(harness.BootStalled, match="did not reach the command"):
        harness.run_in_vm(["true"], timeout=60, kernel=kernel)
    assert len(launches) == harness.BOOT_ATTEMPTS == 2
    assert list(tmp_path.iterdir()) == []


@needs_host
def test_a_vm_that_dies_before_the_command_is_booted_again_once(monkeypatch, tmp_path):
    """A stand-in VM that aborts while booting: booted twice, then BootStalled naming its exit;
    nothing left."""
    kernel = harness.prepare("qemu")
    launches = []

    def dies(kernel, rundir, shares):
        launches.append(rundir)
        return ["sh", "-c", "kill -ABRT $$"]

    monkeypatch.setattr(harness, "qemu_argv", dies)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(harness.BootStalled, match=r"stopped \(exit -6\) before reaching the command"):
        harness.run_in_vm(["true"], timeout=60, kernel=kernel)
    assert len(launches) == harness.BOOT_ATTEMPTS == 2
    assert list(tmp_path.iterdir()) == []


@needs_host
def test_a_stalled_first_boot_then_a_good_one_runs_the_command(monkeypatch):
    kernel = harness.prepare("qemu")
    real_wait, calls = harness._wait, []

    def first_stalls(launch, rundir, timeout, stream):
        calls.append(rundir)
        if len(calls) == 1:
            raise harness.BootStalled("stalled")
        return real_wait(launch, rundir, timeout, stream)

    monkeypatch.setattr(harness, "_wait", first_stalls)
    code, output = harness.run_in_vm(["sh", "-c", "echo second boot"], timeout=300, kernel=kernel)
    assert (code, output.strip(), len(calls)) == (0, "second boot", 2)
