"""The VM harness and its pytest plugin, with and without booting a VM."""

from __future__ import annotations

import ast
import lzma
import os
import shlex
import stat
import subprocess
import sys
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


def events(*rows) -> list[dict]:
    """Guest event lines from (nodeid, when, outcome[, message]); when "start" is a test starting."""
    out = []
    for nodeid, when, *rest in rows:
        if when == "start":
            out.append({"nodeid": nodeid, "event": "start"})
        else:
            outcome, message = rest[0], rest[1] if len(rest) > 1 else ""
            # pytest reports an xfail as a skip that has wasxfail
            out.append({"nodeid": nodeid, "event": "report", "when": when,
                        "outcome": "skipped" if outcome == "xfailed" else outcome,
                        "xfail": outcome == "xfailed", "message": message})
    return out


def ran(*names, outcome="passed"):
    return [row for n in names for row in [(n, "start"), (n, "setup", "passed"), (n, "call", outcome),
                                            (n, "teardown", "passed")]]


def guest_run(rows, returncode=0, error=""):
    return plugin.GuestRun(["t1", "t2"], events(*rows), returncode, error, "inner output", "summary")


@pytest.mark.parametrize("run, problem", [
    (guest_run(ran("t1", "t2")), None),
    (guest_run(ran("t1") + ran("t2", outcome="failed"), returncode=1), None),   # t2's own item fails
    (guest_run(ran("t1", "t2"), returncode=1), "exited 1"),
    (guest_run(ran("t1") + ran("t2", outcome="failed"), returncode=0), "exited 0"),
    (guest_run(ran("t1", "t2", "t3")), "not asked to: t3"),
    (guest_run([], returncode=0), "wrote no report"),
    (guest_run(ran("t1"), returncode=None, error="the VM stopped (exit -9)"), "could not run 2 kernel-feature"),
])
def test_the_guest_session_is_sound_only_when_its_exit_fits_what_it_ran(run, problem):
    problems = run.problems()
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("rows, returncode, verdict", [
    (ran("t1", "t2"), 0, None),
    (ran("t1") + [("t2", "start"), ("t2", "setup", "passed"), ("t2", "call", "failed", "assert 4 == 5")], 1,
     "assert 4 == 5"),
    (ran("t1") + [("t2", "start"), ("t2", "setup", "skipped", "no tool")], 0, "skipped in the VM (not a pass): no tool"),
    (ran("t1") + [("t2", "start"), ("t2", "setup", "passed"), ("t2", "call", "xfailed", "known")], 0, "xfailed"),
    (ran("t1") + [("t2", "start"), ("t2", "setup", "failed", "no fixture")], 1, "(in setup) no fixture"),
    (ran("t1") + ran("t2") + [("t2", "teardown", "failed", "left a link")], 1, "(in teardown) left a link"),
    (ran("t1") + [("t2", "start"), ("t2", "setup", "passed")], None, "stopped while this test ran"),
    (ran("t1"), None, "did not run in the VM (the VM stopped"),
    (ran("t1"), 2, "did not run in the VM (the inner pytest exited 2)"),
])
def test_each_moved_test_gets_the_outcome_it_had_in_the_guest(rows, returncode, verdict):
    run = guest_run(rows, returncode, error="" if returncode is not None else "the VM stopped (exit -9)\ntail")
    assert run.verdict("t1") is None
    if verdict is None:
        assert run.verdict("t2") is None
    else:
        assert verdict in run.verdict("t2")


def test_a_line_cut_short_by_a_dying_vm_is_dropped(tmp_path):
    report = tmp_path / "events.jsonl"
    report.write_text('{"nodeid": "t1", "event": "start"}\n{"nodeid": "t1", "ev')
    assert plugin.read_events(report) == [{"nodeid": "t1", "event": "start"}]
    assert plugin.read_events(tmp_path / "absent") == []


# --- the guest session end to end, a host process standing in for the VM --

STAND_IN_CONFTEST = """
import os, subprocess
from tests.vm import harness, plugin

pytest_plugins = ["tests.vm.plugin"]
plugin.kernel_features = lambda: frozenset()   # every kernel-marked test moves


def boot(argv, timeout, env=None, cwd=None, shares=(), **kw):
    # What the harness runs in the VM, run here; a test that leaves a "died" file stands for a VM
    # that dies under it (the harness then raises).
    with open(os.environ["UVM_BOOTS"], "a") as f:
        f.write("boot\\n")
    proc = subprocess.run(argv, env={**os.environ, harness.IN_VM_ENV: "1", **env}, cwd=cwd,
                          capture_output=True, text=True)
    if os.path.exists(os.environ["UVM_BOOTS"] + ".died"):
        raise harness.VMError("the VM stopped (exit -9) before the command finished")
    return harness.Run(proc.returncode, proc.stdout + proc.stderr, 1.0, 2.0)


harness.boot = boot
"""

# A plugin (not a conftest hook, which sees only the items under its folder): the host's reports.
STAND_IN_RECORDER = """
import os
from tests.vm import harness


def pytest_runtest_logreport(report):
    # once: on the host, and under xdist in the controller only
    if not os.environ.get(harness.IN_VM_ENV) and not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(os.environ["UVM_HOST"], "a") as f:
            f.write(f"{report.nodeid} {report.when} {report.outcome} {report.longreprtext!r}\\n")
"""

STAND_IN_TESTS = """
import os, pytest

@pytest.fixture
def host_fixture():
    # runs only where the test body runs
    assert os.environ.get("UNDERLAY_VM"), "a moved test's fixture ran on the host"

@pytest.mark.kernel("ipvlan")
def test_passes(host_fixture):
    pass

@pytest.mark.kernel("ipvlan")
def test_fails():
    assert 2 + 2 == 5, "arithmetic in the guest"

@pytest.mark.kernel("8021q")
def test_skips():
    pytest.skip("no tool in the guest")

@pytest.mark.kernel("dummy")
def test_kills_the_vm():
    if os.environ.get("UVM_DIE"):
        open(os.environ["UVM_BOOTS"] + ".died", "w").close()
        os._exit(1)

@pytest.mark.kernel("dummy")
def test_after():
    pass

def test_on_the_host():
    assert not os.environ.get("UNDERLAY_VM")
"""


def outer_run(tmp_path, *args, die=False):
    """Run the stand-in suite through the plugin; (boots, {test: (outcome, message)}, exit code)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    kernel: x\n")
    (tmp_path / "conftest.py").write_text(STAND_IN_CONFTEST)
    (tmp_path / "test_moved.py").write_text(STAND_IN_TESTS)
    (tmp_path / "uvm_recorder.py").write_text(STAND_IN_RECORDER)
    boots, host = tmp_path / "boots", tmp_path / "host"
    # the stand-in suite is a pytest run of its own, not a worker of ours (make test runs this under xdist)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_") and k != harness.IN_VM_ENV}
    env.update(PYTHONPATH=f"{harness.REPO}:{tmp_path}", UVM_BOOTS=str(boots), UVM_HOST=str(host))
    if die:
        env["UVM_DIE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "uvm_recorder", "-q",
                           "--basetemp", str(tmp_path / "base"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    results = {}
    for line in host.read_text().splitlines():
        nodeid, when, outcome, message = line.split(" ", 3)
        name = nodeid.rsplit("::", 1)[-1]
        if outcome != "passed" or name not in results:
            results[name] = (outcome, ast.literal_eval(message))
    return len(boots.read_text().splitlines()), results, proc.returncode


def test_one_boot_runs_every_moved_test_and_each_keeps_its_own_outcome(tmp_path):
    boots, results, code = outer_run(tmp_path)
    assert boots == 1
    assert {name: outcome for name, (outcome, _) in results.items()} == {
        plugin.VM_ITEM: "passed", "test_passes": "passed", "test_fails": "failed", "test_skips": "failed",
        "test_kills_the_vm": "passed", "test_after": "passed", "test_on_the_host": "passed"}
    assert "arithmetic in the guest" in results["test_fails"][1]
    assert "assert (2 + 2) == 5" in results["test_fails"][1]
    assert "skipped in the VM (not a pass)" in results["test_skips"][1]
    assert "no tool in the guest" in results["test_skips"][1]
    assert code == 1


def test_a_vm_that_dies_mid_run_fails_the_tests_it_did_not_finish(tmp_path):
    boots, results, code = outer_run(tmp_path, "-k", "passes or kills or after", die=True)
    assert boots == 1   # a VM that dies after the command started is never booted again
    assert results["test_passes"][0] == "passed"   # finished before the VM died
    assert results["test_kills_the_vm"][0] == "failed"
    assert "the VM stopped while this test ran" in results["test_kills_the_vm"][1]
    assert results["test_after"][0] == "failed"
    assert "did not run in the VM" in results["test_after"][1]
    assert results[plugin.VM_ITEM][0] == "failed"
    assert "before the command finished" in results[plugin.VM_ITEM][1]
    assert code == 1


def test_xdist_workers_share_the_one_boot(tmp_path):
    boots, results, code = outer_run(tmp_path, "-n", "2")
    assert boots == 1
    assert results["test_fails"][0] == "failed" and "arithmetic in the guest" in results["test_fails"][1]
    assert sorted(name for name, (outcome, _) in results.items() if outcome != "passed") == ["test_fails", "test_skips"]


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
def test_exit_code_and_output_come_back(backend, monkeypatch, tmp_path):
    """Also: a stalled first boot (a stand-in, no VM) is followed by a real one that runs the
    command, once. One real boot checks both."""
    kernel = harness.prepare(backend)
    real_wait, calls = harness._wait, []

    def first_stalls(launch, rundir, timeout, stream):
        calls.append(rundir)
        if len(calls) == 1:
            raise harness.BootStalled("stalled")
        return real_wait(launch, rundir, timeout, stream)

    monkeypatch.setattr(harness, "_wait", first_stalls)
    (tmp_path / "host-file").write_text("from the host")   # under /tmp: must not be hidden
    script = f'echo hi; echo oops >&2; echo "vm=$UNDERLAY_VM $(uname -r)"; cat {tmp_path}/host-file; exit 3'
    code, output = harness.run_in_vm(["sh", "-c", script], timeout=300, kernel=kernel)
    assert code == 3
    assert output.splitlines() == ["hi", "oops", f"vm=1 {kernel.release}", "from the host"]
    assert len(calls) == 2


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
def test_what_the_guest_wrote_to_a_share_survives_its_crash(tmp_path):
    """The guest's per-test report relies on this: the lines written before the guest's
    kernel dies are on the host (a cached share loses them)."""
    kernel = harness.prepare("qemu")
    share = tmp_path / "share"
    share.mkdir()
    script = f"echo written-before-the-crash >> {share}/report; echo c > /proc/sysrq-trigger; sleep 600"
    with pytest.raises(harness.VMError, match="before the command finished"):
        harness.run_in_vm(["sh", "-c", script], timeout=300, kernel=kernel, shares=[share])
    assert (share / "report").read_text() == "written-before-the-crash\n"


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
