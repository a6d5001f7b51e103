"""The README's demonstration script works (plugins from the checkout, or UNDERLAY_BIN_DIR)."""

import os
import subprocess
import sys

from tests.plugins import ROOT


def test_demo_attaches_two_pods_that_ping_each_other():
    argv = [str(ROOT / "build" / "demo.sh")]
    if os.environ.get("UNDERLAY_BIN_DIR"):
        argv.append(os.environ["UNDERLAY_BIN_DIR"])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== demo OK" in proc.stdout
    assert "2 received" in proc.stdout
    listing = proc.stdout.split("as the operator's command shows them:", 1)[1].split("== pod1 pings", 1)[0]
    assert "demo-c1" in listing and "demo-c2" in listing, listing
    for skipped in ("192.0.2.2/", "192.0.2.3/", "192.0.2.4/", "192.0.2.5/"):
        assert skipped not in proc.stdout
