"""Running the plugins the way a runtime does: exec, CNI_* environment, stdin, stdout.

By default the plugins run from this checkout (`python3 -m ...`); with
UNDERLAY_BIN_DIR set (e.g. to dist/bin after `make build`) the same tests run
the built executables. Through the agent (tests/conftest.py plugin_path) they
are the built ones: the compiled thin client that ships, in front of an agent
run from this checkout.
"""

import json
import os
import pathlib
import subprocess
import sys

from cni import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
# UNDERLAY_SOCKET for every plugin run: the test agent's socket while a test runs
# through underlayd (tests/conftest.py plugin_path), else a path where no agent is
NO_AGENT = "/nonexistent/underlay-tests-no-agent.sock"
AGENT_SOCKET = None
# the built executables' directory while a test runs the compiled thin client (tests/conftest.py)
BIN_DIR = None
# TRACEPARENT for every plugin run: each test's own (tests/conftest.py plugin_path), so the agent's
# served lines tell this test's runs from those an earlier test left running
TRACEPARENT = None


def plugin_argv(name):
    bin_dir = BIN_DIR or os.environ.get("UNDERLAY_BIN_DIR")
    if bin_dir:
        return [os.path.join(bin_dir, name)]
    return [sys.executable, "-m", registry.module_of(name)]


def plugin_env(command, container_id="ctr1", netns="", ifname="eth0", args="", path=None, extra=None):
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "PYTHONPATH": str(ROOT),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": path or f"{ROOT}/tests/bin:{REFERENCE_DIR}",
        "UNDERLAY_SOCKET": AGENT_SOCKET or NO_AGENT,
        "TRACEPARENT": TRACEPARENT or "",
    }
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return {k: v for k, v in env.items() if v != "" or k == "CNI_COMMAND"}


class Outcome:
    def __init__(self, proc):
        self.code = proc.returncode
        self.stdout = proc.stdout.decode(errors="replace")
        self.stderr = proc.stderr.decode(errors="replace")
        try:
            self.json = json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            self.json = None

    @property
    def cni_code(self):
        """The CNI error code of a failed call (None if it succeeded or printed no error)."""
        if self.code == 0 or not isinstance(self.json, dict):
            return None
        return self.json.get("code")

    @property
    def ok(self):
        return self.code == 0

    def __repr__(self):
        return f"<exit {self.code} stdout={self.stdout.strip()!r} stderr={self.stderr.strip()[-500:]!r}>"


def run_plugin(name, command, conf, in_netns=None, argv=None, timeout=60, **env_kw):
    """Exec a plugin once; `in_netns` runs it inside that named netns (ip netns exec)."""
    argv = argv or plugin_argv(name)
    if in_netns:
        argv = ["ip", "netns", "exec", in_netns] + argv
    stdin = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    if isinstance(stdin, str):
        stdin = stdin.encode()
    proc = subprocess.run(argv, input=stdin, env=plugin_env(command, **env_kw), capture_output=True,
                          timeout=timeout)
    outcome = Outcome(proc)
    assert "Traceback" not in outcome.stderr, f"traceback from {name} {command}: {outcome.stderr}"
    return outcome


def run_reference(name, command, conf, **kw):
    return run_plugin(name, command, conf, argv=[os.path.join(REFERENCE_DIR, name)], **kw)


def run_on_node(name, command, conf, host_ns, pod=None, cid="c1", ifname="eth0", **kw):
    """Exec a plugin inside the test's "host" netns for pod netns `pod` (by name)."""
    return run_plugin(name, command, conf, in_netns=host_ns, container_id=cid,
                      netns=f"/run/netns/{pod}" if pod else "", ifname=ifname, **kw)
