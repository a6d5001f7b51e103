"""Every input that once crashed, hung or escaped a plugin, replayed with the fuzz checks.

Each tests/hostile/regressions/*.json holds {"plugin", "why", "env", "stdin" or
"stdin_b64", "files"?, "pod"?, "pod_eth0"?}; "@ROOT@" stands for the sandbox, "@POD@" for a
real pod netns (with a veth master "m1" in the plugins' netns) when "pod" is true, which has an
eth0 as a main plugin leaves it when "pod_eth0" is true (Sandbox). `files` are created
before the run and must be there, unchanged, afterwards (victims of traversal).
test_fuzz.py writes a new one whenever a fuzz case fails.
"""

import base64
import json
import os
import pathlib

import pytest

from tests.hostile.harness import Sandbox, exercise

REGRESSIONS = sorted((pathlib.Path(__file__).parent / "regressions").glob("*.json"))


def test_there_are_regressions():
    assert len(REGRESSIONS) >= 10


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression(path, count_cases):
    entry = json.loads(path.read_text())
    with Sandbox(pod=entry.get("pod", False), pod_eth0=entry.get("pod_eth0", False)) as sandbox:
        def rooted(text):
            return text.replace("@POD@", sandbox.pod).replace("@ROOT@", sandbox.root)
        env = {k: rooted(v) for k, v in entry["env"].items()}
        if "stdin_b64" in entry:
            stdin = base64.b64decode(entry["stdin_b64"]).replace(b"@POD@", sandbox.pod.encode())
            stdin = stdin.replace(b"@ROOT@", sandbox.root.encode())
        else:
            stdin = rooted(entry["stdin"]).encode(errors="surrogatepass")
        files = {rooted(p): content for p, content in entry.get("files", {}).items()}
        for name, content in files.items():
            os.makedirs(os.path.dirname(name), exist_ok=True)
            with open(name, "w") as f:
                f.write(content)
        sandbox.outside = sandbox.outside_state()
        exercise(sandbox, entry["plugin"], env, stdin)
        for name, content in files.items():
            with open(name) as f:
                assert f.read() == content, f"{entry['why']}: {name} was changed"
    count_cases("regressions replayed", 1)
