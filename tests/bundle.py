"""The built executables (dist/bin), built at most once per test session: the `bundle` fixture.

dist/bin is reused when build/work/bin.stamp matches the digest of the
sources (build/source_stamp.py); otherwise `build/build.sh` runs (~5-10 s on
2 cores). pytest-xdist workers share one build through a file lock.
"""

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from cni import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIST_BIN = ROOT / "dist" / "bin"
STAMP = ROOT / "build" / "work" / "bin.stamp"
# the CNI plugins of the registry; tests/build/test_bundle.py checks the rest
PLUGINS = tuple(registry.cni_plugins())


def source_digest():
    out = subprocess.run([sys.executable, str(ROOT / "build" / "source_stamp.py")], check=True,
                         capture_output=True, text=True).stdout
    return out.strip()


def fresh():
    try:
        return STAMP.read_text().strip() == source_digest() and (DIST_BIN / ".underlay" / "underlay").is_file()
    except FileNotFoundError:
        return False


class Bundle:
    """dist/bin after a build: the bundle dir, the plugin links, the build info."""

    def __init__(self, bin_dir, build_seconds=None):
        self.bin_dir = pathlib.Path(bin_dir)
        self.dir = self.bin_dir / ".underlay"
        self.exe = self.dir / "underlay"
        self.build_seconds = build_seconds
        self.plugins = [p for p in PLUGINS if (self.bin_dir / p).is_symlink()]
        self.info = json.loads(self.run("host-local", {"CNI_COMMAND": "VERSION"}).stdout)["underlay"]

    def path(self, plugin):
        return str(self.bin_dir / plugin)

    def run(self, plugin, env, stdin=b"", argv=None, list_modules=None):
        """Exec a plugin with exactly `env` (plus PATH); optionally list its modules into a file."""
        env = dict(env, PATH=os.environ.get("PATH", "/usr/bin:/bin"))
        if list_modules:
            env["UNDERLAY_LIST_MODULES"] = str(list_modules)
        return subprocess.run(argv or [self.path(plugin)], input=stdin, env=env, capture_output=True, timeout=60)

    def modules(self, plugin, env, stdin=b"", tmp_path=None, argv=None):
        """(CompletedProcess, sorted module names) of one exec."""
        listing = pathlib.Path(tmp_path) / f"modules-{plugin}-{time.monotonic_ns()}"
        proc = self.run(plugin, env, stdin, argv=argv, list_modules=listing)
        return proc, listing.read_text().split()


@pytest.fixture(scope="session")
def bundle():
    """The freshly built dist/bin (built here if stale or missing)."""
    lock_path = ROOT / "build" / "work" / ".test-build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    seconds = None
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not fresh():
            start = time.monotonic()
            proc = subprocess.run([str(ROOT / "build" / "build.sh")], cwd=ROOT, capture_output=True, text=True,
                                  env=dict(os.environ, PYTHON=sys.executable))
            if proc.returncode != 0:
                pytest.fail(f"build/build.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
            seconds = time.monotonic() - start
    return Bundle(DIST_BIN, seconds)


def built_bin_dir(request):
    """The built executables for a test that runs what ships: $UNDERLAY_BIN_DIR, else dist/bin (the
    `bundle` fixture, built if stale); None inside the test VM, which builds no bundle (the checkout's
    Python runs there, handing off through cni/handoff.py)."""
    if os.environ.get("UNDERLAY_BIN_DIR"):
        return os.path.abspath(os.environ["UNDERLAY_BIN_DIR"])
    if os.environ.get("UNDERLAY_VM"):
        return None
    return str(request.getfixturevalue("bundle").bin_dir)
