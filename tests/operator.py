"""Running the `underlay` operator command as a user does.

From this checkout (`python -m cni.operator`) by default; with UNDERLAY_BIN_DIR
set (e.g. dist/bin after `make build`), the built `underlay` on that path.
"""

import json
import os
import subprocess
import sys

from tests.plugins import ROOT


def underlay_argv():
    bin_dir = os.environ.get("UNDERLAY_BIN_DIR")
    if bin_dir:
        return [os.path.join(bin_dir, "underlay")]
    return [sys.executable, "-m", "cni.operator"]


class Result:
    def __init__(self, proc):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def json(self):
        return json.loads(self.stdout)

    def __repr__(self):
        return f"<exit {self.code} stdout={self.stdout[-2000:]!r} stderr={self.stderr[-2000:]!r}>"


def run_underlay(*args, argv=None, stdin=None, timeout=60):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run((argv or underlay_argv()) + [str(a) for a in args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=timeout)
    result = Result(proc)
    assert "Traceback" not in result.stderr, result
    return result


def tree(path):
    """{relative path: (kind, content, mtime_ns)} of everything under path: what 'unchanged' means."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            if os.path.islink(full):
                content = os.readlink(full)
            elif os.path.isdir(full):
                content = None
            else:
                with open(full, "rb") as f:
                    content = f.read()
            out[os.path.relpath(full, path)] = (st.st_mode, content, st.st_mtime_ns)
    st = os.lstat(path)
    out["."] = (st.st_mode, None, st.st_mtime_ns)
    return out
