"""The built executables (dist/bin): the `bundle` fixture.

The tests never build them: `make build` does (the make targets of the tiers
that run them depend on it). A dist/bin that is missing, or stale against the
sources (build/source_stamp.py --check), is an error of every test that needs
it, at once, saying "run make build"; never a skip.
"""

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
# the CNI plugins of the registry; tests/build/test_bundle.py checks the rest
PLUGINS = tuple(registry.cni_plugins())


def stale():
    """Why dist/bin is not the build of this checkout (build/source_stamp.py --check), or None."""
    proc = subprocess.run([sys.executable, str(ROOT / "build" / "source_stamp.py"), "--check"],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return proc.stdout.strip() or proc.stderr.strip()


class Bundle:
    """dist/bin after a build: the bundle dir, the plugin links, the build info."""

    def __init__(self, bin_dir):
        self.bin_dir = pathlib.Path(bin_dir)
        self.dir = self.bin_dir / ".underlay"
        self.exe = self.dir / "underlay"
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
    """dist/bin as `make build` left it; an error (cached: every test asking fails at once) when missing or stale."""
    problem = stale()
    if problem:
        pytest.fail(f"{problem}: run `make build` (the tests run the built executables, they never build them)",
                    pytrace=False)
    return Bundle(DIST_BIN)


def built_bin_dir(request):
    """The built executables for a test that runs what ships: $UNDERLAY_BIN_DIR, else dist/bin (the
    `bundle` fixture: an error when not built or stale); None inside the test VM, which builds no bundle (the checkout's
    Python runs there, handing off through cni/handoff.py)."""
    if os.environ.get("UNDERLAY_BIN_DIR"):
        return os.path.abspath(os.environ["UNDERLAY_BIN_DIR"])
    if os.environ.get("UNDERLAY_VM"):
        return None
    return str(request.getfixturevalue("bundle").bin_dir)
