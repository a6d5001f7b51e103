"""pytest plugin: `@pytest.mark.kernel(*features)` tests run in one VM when
this kernel lacks a feature they need.

On the host, a marked test runs as usual if this kernel has its features.
Otherwise it moves: the session boots one VM, once, and runs every moved test
there in one inner pytest. Each moved test stays an item on the host with its
own node id, and passes or fails as it did in the guest, with the guest's
message (a skip there is not a pass; a test the guest never got to, because it
died or stalled, fails). One extra item, first, boots the guest and passes when
the run as a whole was sound (it booted, its exit code fits the outcomes, it
ran what it was asked); its report carries the inner output and timings.

Inside the VM (the harness sets UNDERLAY_VM) nothing is moved and no extra
item is added, so the inner run does not recurse. Feature detection is
deterministic, so xdist workers all collect the same items, and the first
worker to need the guest boots it for all of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Outcome:
    outcome: str        # passed, failed, skipped or xfailed
    message: str = ""


def fold(events: list[dict]) -> tuple[dict[str, Outcome], set[str]]:
    """Each test's outcome from the guest's event lines, and the tests that started.

    A failure in any phase wins over a skip, and a skip over a pass.
    """
    outcomes: dict[str, Outcome] = {}
    started = set()
    for event in events:
        nodeid = event["nodeid"]
        before = outcomes.get(nodeid)
        if event["event"] == "start":
            started.add(nodeid)
        elif event["outcome"] == "failed":
            where = "" if event["when"] == "call" else f"(in {event['when']}) "
            earlier = before.message + "\n" if before and before.outcome == "failed" else ""
            outcomes[nodeid] = Outcome("failed", earlier + where + event["message"])
        elif event["outcome"] == "skipped" and (before is None or before.outcome != "failed"):
            outcomes[nodeid] = Outcome("xfailed" if event["xfail"] else "skipped", event["message"])
        elif event["when"] == "call" and before is None:
            outcomes[nodeid] = Outcome("passed")
    return outcomes, started


@dataclass(frozen=True)
class GuestRun:
    """What the one guest session did: the tests asked for, the events it reported back, how it ended."""

    asked: list[str]
    events: list[dict]
    returncode: int | None   # None: the VM could not run the inner pytest to its end
    error: str               # why not (the harness's VMError)
    output: str              # the inner pytest's output
    summary: str

    @functools.cached_property
    def folded(self) -> tuple[dict[str, Outcome], set[str]]:
        return fold(self.events)

    def ended_early(self) -> str:
        if self.returncode is None:
            return self.error.splitlines()[0] if self.error else "the VM stopped"
        return f"the inner pytest exited {self.returncode}"

    def problems(self) -> list[str]:
        """Why the session as a whole is not sound (empty if it is); each test's own
        outcome is its own item's."""
        outcomes, _ = self.folded
        problems = []
        if self.returncode is None:
            problems.append(f"the VM could not run {len(self.asked)} kernel-feature tests: {self.error}")
        elif self.returncode != (1 if any(o.outcome == "failed" for o in outcomes.values()) else 0):
            problems.append(f"the inner pytest exited {self.returncode}")
        if not self.events and self.returncode is not None:
            problems.append("the inner pytest wrote no report")
        extra = sorted(set(outcomes) - set(self.asked))
        if extra:
            problems.append("ran tests it was not asked to: " + ", ".join(extra))
        return problems

    def verdict(self, nodeid: str) -> str | None:
        """Why nodeid does not pass (None if it passed in the guest)."""
        outcomes, started = self.folded
        got = outcomes.get(nodeid)
        if got is None:
            if nodeid in started:
                return f"the VM stopped while this test ran ({self.ended_early()})"
            extra = sorted(set(outcomes) - set(self.asked))
            return (f"did not run in the VM ({self.ended_early()})"
                    + (f"; it ran instead: {', '.join(extra)}" if extra else ""))
        if got.outcome == "passed":
            return None
        if got.outcome == "failed":
            return got.message
        return f"{got.outcome} in the VM (not a pass): {got.message}"


class GuestSession:
    """The session's one guest: booted by the first item that needs it, once, for every
    moved test. Under xdist the first worker to ask boots it; the others wait for and
    read the same run, through a file next to their temp dirs."""

    def __init__(self, config, nodeids: list[str]):
        self.config = config
        self.nodeids = nodeids
        self._run: GuestRun | None = None

    def run(self) -> GuestRun:
        if self._run is None:
            shared = self.config._tmp_path_factory.getbasetemp()
            if hasattr(self.config, "workerinput"):
                shared = shared.parent   # the controller's, common to every worker
            saved = shared / "underlay-vm-run.json"
            with open(shared / "underlay-vm-run.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not saved.exists():
                    saved.write_text(json.dumps(asdict(self._boot())))
            self._run = GuestRun(**json.loads(saved.read_text()))
        return self._run

    def _boot(self) -> GuestRun:
        config = self.config
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                "--rootdir", str(config.rootpath)]
        if config.inipath:
            argv += ["-c", str(config.inipath)]
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        # The report comes back through a host directory shared into the VM, a line per event
        # as it happens, so a VM that dies mid-run still tells which tests it finished.
        with tempfile.TemporaryDirectory(prefix="underlay-vm-report-") as tmp:
            report = Path(tmp) / "events.jsonl"
            try:
                run = harness.boot([*argv, *self.nodeids], timeout, env={REPORT_ENV: str(report)},
                                   cwd=config.rootpath, shares=[tmp])
                returncode, error, output = run.returncode, "", run.output
                summary = (f"{len(self.nodeids)} tests in one VM; launch to command {run.boot_seconds or 0:.1f} s,"
                           f" total {run.total_seconds:.1f} s")
            except harness.VMError as e:
                returncode, error, output = None, str(e), ""
                summary = f"{len(self.nodeids)} tests in one VM; it did not run them to the end"
            events = read_events(report)
        return GuestRun(self.nodeids, events, returncode, error, output, summary)


def read_events(path: Path) -> list[dict]:
    """The event lines the guest wrote; a last line cut short by a dying VM is dropped."""
    events = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


class VMRunFailed(Exception):
    pass


class GuestItem(pytest.Item):
    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, VMRunFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class KernelFeatureTests(GuestItem):
    """Boots the session's guest and runs the moved tests there; passes when the run as a
    whole was sound. Each moved test passes or fails on its own item."""

    def __init__(self, *, guest: GuestSession, **kw):
        super().__init__(**kw)
        self.guest = guest

    def runtest(self) -> None:
        run = self.guest.run()
        problems = run.problems()
        if problems:
            raise VMRunFailed("\n".join(problems) + f"\n({run.summary})\n--- inner pytest output ---\n" + run.output)
        self.add_report_section("call", "vm", run.summary + "\n" + run.output)

    def reportinfo(self):
        return self.path, None, f"{VM_ITEM} ({len(self.guest.nodeids)} tests)"


class GuestTest(GuestItem):
    """A moved test on the host: its outcome is the one it had in the guest. Nothing of it
    (fixtures included) runs on the host."""

    def __init__(self, *, guest: GuestSession, location: tuple, **kw):
        super().__init__(**kw)
        self.guest = guest
        self.moved_from = location

    def runtest(self) -> None:
        why = self.guest.run().verdict(self.nodeid)
        if why is not None:
            raise VMRunFailed(why)

    def reportinfo(self):
        return self.path, self.moved_from[1], f"{self.moved_from[2]} (in the VM)"


# Last, so -k/-m and others have already narrowed the selection.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    if os.environ.get(harness.IN_VM_ENV):
        return
    keep, moved = split_items(items)
    if not moved:
        return
    guest = GuestSession(config, [item.nodeid for item in moved])
    vm_item = KernelFeatureTests.from_parent(
        session, name=VM_ITEM, path=Path(__file__),
        nodeid=f"{Path(__file__).relative_to(config.rootpath).as_posix()}::{VM_ITEM}"
        if Path(__file__).is_relative_to(config.rootpath) else VM_ITEM,
        guest=guest)
    # Each moved test keeps its node id and its line in the report; its body runs in the guest.
    stand_ins = [GuestTest.from_parent(session, name=item.name, path=item.path, nodeid=item.nodeid,
                                       guest=guest, location=item.location) for item in moved]
    # First, so under xdist the long VM run overlaps with the host's tests.
    items[:] = [vm_item, *stand_ins, *keep]


# --- inside the VM: report what each moved test really did, as it happens --

_report: str | None = None   # where this process records events, if it does


def pytest_configure(config) -> None:
    global _report
    # Under xdist the controller sees every worker's events; record them there only.
    _report = None if hasattr(config, "workerinput") else os.environ.get(REPORT_ENV)


def _record(event: dict) -> None:
    # A line per event, written at once to the host (the report's share is uncached): the host
    # reads what a VM that dies mid-run got to.
    with open(_report, "a") as f:
        f.write(json.dumps(event) + "\n")


def pytest_runtest_logstart(nodeid, location) -> None:
    if _report:
        _record({"nodeid": nodeid, "event": "start"})


def pytest_runtest_logreport(report) -> None:
    if not _report:
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        message = report.longrepr[2]   # (file, line, reason)
    else:
        message = report.longreprtext
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash:   # first, for the host's one-line summary
            message = f"{crash.message.splitlines()[0]}\n\n{message}"
    if report.failed:
        message += "".join(f"\n--- {title} ---\n{content}" for title, content in report.sections)
    _record({"nodeid": report.nodeid, "event": "report", "when": report.when, "outcome": report.outcome,
             "xfail": hasattr(report, "wasxfail"), "message": message.strip()})
