"""pytest plugin: `@pytest.mark.kernel(*features)` tests run in one VM when
this kernel lacks a feature they need.

On the host, a marked test runs as usual if this kernel has its features.
Otherwise it is deselected, and one extra item boots one VM for the session and
runs all such tests there with an inner pytest. That item passes only if the
inner run passed and every moved test passed (a skip is not a pass).

Inside the VM (the harness sets UNDERLAY_VM) nothing is moved and no extra
item is added, so the inner run does not recurse. Feature detection is
deterministic, so xdist workers all collect the same items.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.vm import harness

# A throw-away link of each kind, made on the veth parent uvmp0.
PROBES = {
    "dummy": "type dummy",
    "macvlan": "link uvmp0 type macvlan",
    "ipvlan": "link uvmp0 type ipvlan",
    "8021q": "link uvmp0 type vlan id 5",
}
FEATURES = frozenset(PROBES)
VM_ITEM = "test_kernel_feature_tests_in_vm"
REPORT_ENV = "UNDERLAY_VM_REPORT"   # inner run: where to write per-test outcomes
TIMEOUT_ENV = "UNDERLAY_VM_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0


@functools.cache
def kernel_features() -> frozenset[str]:
    """The features this kernel has, tried in a private throw-away netns.

    The namespace dies with the probe process, so nothing on the host changes.
    If the probe cannot run at all (not root, no unshare), nothing is assumed.
    """
    # Each probe link goes again at once: ipvlan refuses a parent that has a macvlan.
    checks = "; ".join(f"ip link add uvmprobe {args} 2>/dev/null && echo {name} && ip link del uvmprobe"
                       for name, args in PROBES.items())
    script = f"ip link add uvmp0 type veth peer name uvmp9 2>/dev/null || exit 0; {checks}"
    try:
        proc = subprocess.run(["unshare", "--net", "sh", "-c", script],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(proc.stdout.split()) & FEATURES


def needed_features(item) -> frozenset[str]:
    wanted = set()
    for mark in item.iter_markers("kernel"):
        wanted.update(mark.args)
    unknown = wanted - FEATURES
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: unknown kernel feature(s) {sorted(unknown)};"
                                f" known: {sorted(FEATURES)}")
    return frozenset(wanted)


def split_items(items, have=None):
    """(items to run here, items to run in the VM). `have` is probed only if
    some item needs a feature."""
    keep, moved = [], []
    for item in items:
        wanted = needed_features(item)
        if wanted:
            have = kernel_features() if have is None else have
        (moved if wanted - (have or frozenset()) else keep).append(item)
    return keep, moved


def judge(expected: list[str], returncode: int, outcomes: dict[str, str] | None) -> list[str]:
    """Why the inner run does not count as a pass (empty if it does)."""
    problems = []
    if returncode != 0:
        problems.append(f"the inner pytest exited {returncode}")
    if outcomes is None:
        return problems + ["the inner pytest wrote no report"]
    for nodeid in expected:
        outcome = outcomes.get(nodeid, "did not run")
        if outcome != "passed":
            problems.append(f"{nodeid}: {outcome}")
    extra = sorted(set(outcomes) - set(expected))
    if extra:
        problems.append("ran tests it was not asked to: " + ", ".join(extra))
    return problems


class VMRunFailed(Exception):
    pass


class KernelFeatureTests(pytest.Item):
    """Runs the moved tests in one VM with an inner pytest."""

    def __init__(self, *, nodeids: list[str], **kw):
        super().__init__(**kw)
        self.nodeids = nodeids

    def runtest(self) -> None:
        config = self.config
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                "--rootdir", str(config.rootpath)]
        if config.inipath:
            argv += ["-c", str(config.inipath)]
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        # The report comes back through a host directory shared into the VM.
        with tempfile.TemporaryDirectory(prefix="underlay-vm-report-") as tmp:
            report = Path(tmp) / "outcomes.json"
            try:
                run = harness.boot([*argv, *self.nodeids], timeout, env={REPORT_ENV: str(report)},
                                   cwd=config.rootpath, shares=[tmp])
            except harness.VMError as e:
                raise VMRunFailed(f"the VM could not run {len(self.nodeids)} kernel-feature tests: {e}") from e
            outcomes = json.loads(report.read_text()) if report.exists() else None
        summary = (f"{len(self.nodeids)} tests in the VM; launch to command {run.boot_seconds or 0:.1f} s,"
                   f" total {run.total_seconds:.1f} s")
        problems = judge(self.nodeids, run.returncode, outcomes)
        if problems:
            raise VMRunFailed("\n".join(problems) + f"\n({summary})\n--- inner pytest output ---\n" + run.output)
        self.add_report_section("call", "vm", summary + "\n" + run.output)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, VMRunFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{VM_ITEM} ({len(self.nodeids)} tests)"


# Last, so -k/-m and others have already narrowed the selection.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    if os.environ.get(harness.IN_VM_ENV):
        return
    keep, moved = split_items(items)
    if not moved:
        return
    config.hook.pytest_deselected(items=moved)
    vm_item = KernelFeatureTests.from_parent(
        session, name=VM_ITEM, path=Path(__file__),
        nodeid=f"{Path(__file__).relative_to(config.rootpath).as_posix()}::{VM_ITEM}"
        if Path(__file__).is_relative_to(config.rootpath) else VM_ITEM,
        nodeids=[item.nodeid for item in moved])
    # First, so under xdist the long VM run overlaps with the host's tests.
    items[:] = [vm_item, *keep]


# --- inside the VM: record what each moved test really did ----------------

_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report) -> None:
    if not os.environ.get(REPORT_ENV):
        return
    before = _outcomes.get(report.nodeid)
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and before != "failed":
        _outcomes[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.when == "call" and before is None:
        _outcomes[report.nodeid] = "passed"


def pytest_sessionfinish(session) -> None:
    path = os.environ.get(REPORT_ENV)
    if path and not hasattr(session.config, "workerinput"):
        Path(path).write_text(json.dumps(_outcomes, indent=1))
