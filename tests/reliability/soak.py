"""The reliability scenarios at full size, with their figures:

    sudo python3 -m tests.reliability.soak            # everything (~5-10 minutes on 2 cores)
    sudo python3 -m tests.reliability.soak crash      # one scenario: parallel, two-networks,
                                                      # mixed, crash, locks, healing

Exits 1 if any invariant breaks. The default test run (tests/reliability) runs
the same scenarios smaller.
"""

import json
import sys
import tempfile
import time
import traceback

from tests.reliability import scenarios
from tests.reliability.node import Node

SCENARIOS = {
    "parallel": lambda node: scenarios.parallel_rounds(node, pods=64, rounds=3),
    "two-networks": lambda node: scenarios.parallel_rounds(
        node, pods=64, rounds=2, networks=(("rela", "10.77.0.0/22"), ("relb", "10.79.0.0/22"))),
    "mixed": lambda node: scenarios.mixed_traffic(node, pods=64, ops=600, workers=16),
    "crash": lambda node: scenarios.CrashRun(node, ops=500, lanes=4, slots_per_lane=4).run(),
    "locks": lambda node: scenarios.lock_waits(node, timeouts=(0.5, 2, 10), tries=2),
    "healing": lambda node: scenarios.reboot_healing(node, pods=64, gone=40),
}


def main(argv):
    names = argv or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario {unknown}; choose from {', '.join(SCENARIOS)}")
    failed = []
    for name in names:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="underlay-soak-") as tmp, \
                Node(f"{tmp}/networks", f"{tmp}/state") as node:
            try:
                figures = SCENARIOS[name](node)
                status = "ok"
            except Exception as e:  # a broken invariant, or the harness itself: the next scenarios still run
                figures, status = {"error": str(e)[:2000]}, "FAILED"
                traceback.print_exc()
                failed.append(name)
        print(f"== {name}: {status} in {time.monotonic() - started:.0f} s")
        print(json.dumps(figures, indent=1), flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
