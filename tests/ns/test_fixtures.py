"""The shared fixtures clean up after a run that is stopped from outside (SIGTERM: CI's timeout,
a kill of the run), not only after a test that fails."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import netns as nsutil
from tests.plugins import ROOT

pytestmark = pytest.mark.root

HANG = 60   # an upper bound only rules out a hang (speed is never asserted)

STOPPED_TEST = """
import os, time

def test_held_while_stopped(host_ns, master, pod_ns):
    pod = pod_ns()
    with open(os.environ["UL_NAMES"] + ".tmp", "w") as f:
        f.write(f"{host_ns} {pod}\\n")
    os.rename(os.environ["UL_NAMES"] + ".tmp", os.environ["UL_NAMES"])
    time.sleep(600)   # stopped here by the outer test's SIGTERM
"""


def test_a_run_stopped_by_sigterm_removes_its_namespaces(tmp_path):
    (tmp_path / "test_stopped.py").write_text(STOPPED_TEST)
    names = tmp_path / "names"
    env = dict(os.environ, PYTHONPATH=str(ROOT), UL_NAMES=str(names))
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_XDIST_")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                             "-q", "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path / "test_stopped.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    made = []
    try:
        deadline = time.monotonic() + HANG
        while not names.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the inner test never reached its sleep"
            time.sleep(0.05)
        made = names.read_text().split()
        assert all(os.path.exists(nsutil.netns_path(n)) for n in made), made
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=HANG)[0]
        assert proc.returncode != 0, out
        left = [n for n in made if os.path.exists(nsutil.netns_path(n))]
        assert left == [], f"left behind by a run stopped with SIGTERM: {left}\n{out}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for name in made:
            nsutil.del_netns(name)
