"""Property-based fuzzing of the six plugins' inputs: stdin, CNI_* variables, CNI_ARGS, prevResult.

Each case runs in this process through dispatch.run (as an exec would, minus
the interpreter start), on a tmpfs sandbox and in a network namespace of the
test's own; tests/hostile/harness.py says what every answer must be. A
sample also runs as real processes. cluster-ipam's etcd is a member started inside
the sandbox's netns. The default run takes ~4 500 cases (~75 s on 2 cores); the `fuzz`
target (`python3 -m pytest tests/hostile -m fuzz -n 2`) runs 21 300 and prints the counts.

A failing case is written to tests/hostile/regressions/ (replayed by
test_regressions.py) before the failure is reported.
"""

import base64
import hashlib
import json
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.hostile import strategies
from tests.hostile.harness import Sandbox, check_answer, exercise
from tests.plugins import ROOT, run_plugin

REGRESSIONS = pathlib.Path(__file__).parent / "regressions"
DATABASE = DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "examples"))

# (default run, fuzz target) cases per test
IN_PROCESS = {"host-local": (1500, 6000), "macvlan": (800, 3000), "ipvlan": (800, 3000),
              "cluster-ipam": (400, 3000), "dhcp": (300, 2000)}
REAL_NAMESPACES = {"macvlan": (300, 1500), "ipvlan": (100, 500), "cluster-access": (300, 2000)}
EXECUTED = (40, 300)
EXECUTED_PLUGINS = ["host-local", "macvlan", "ipvlan", "cluster-access", "dhcp", "cluster-ipam"]
# cluster-ipam's leases are in etcd: a member in the sandbox's netns (also for the main plugins'
# cluster-ipam ipam with a real pod netns, so their ADDs succeed and roll back against it)
WITH_ETCD = {("cluster-ipam", False), ("macvlan", True), ("ipvlan", True)}


def fuzz_settings(examples):
    return settings(max_examples=examples, deadline=None, database=DATABASE, print_blob=True,
                    suppress_health_check=list(HealthCheck))


def save_regression(plugin, env, stdin, sandbox, error):
    """Write a failing case, with the sandbox path as @ROOT@, to regressions/."""
    def unroot(text):
        return text.replace(sandbox.pod, "@POD@").replace(sandbox.root, "@ROOT@")
    entry = {"plugin": plugin, "why": f"{type(error).__name__}: {str(error)[-400:]}",
             "env": {k: unroot(v) for k, v in env.items()}}
    if sandbox.pod_name:
        entry["pod"] = True
    if sandbox.pod_eth0:
        entry["pod_eth0"] = True
    raw = stdin.replace(sandbox.pod.encode(), b"@POD@").replace(sandbox.root.encode(), b"@ROOT@")
    try:
        entry["stdin"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["stdin_b64"] = base64.b64encode(raw).decode()
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:12]
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"{plugin}-{digest}.json"
    path.write_text(json.dumps(entry, indent=1) + "\n")
    return path


def seed_bystander(sandbox):
    """A lease of someone else's that no fuzzed call may touch unless it names that container."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bystander", "CNI_NETNS": sandbox.not_netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": sandbox.bin}
    conf = {"cniVersion": "1.1.0", "name": "net1", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": sandbox.data, "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    from tests.hostile.harness import invoke
    assert invoke("host-local", env, json.dumps(conf).encode()).ok


def fuzz_in_process(plugin, examples, count_cases, etcd_cluster, pod=False):
    runs = 0
    last_failure = []
    # cluster-access follows a main plugin: the pod has its eth0, addressed, holding the default route
    with Sandbox(pod=pod, pod_eth0=plugin == "cluster-access") as sandbox:
        if (plugin, pod) in WITH_ETCD:
            sandbox.start_etcd(etcd_cluster)
        seed_bystander(sandbox)

        @fuzz_settings(examples)
        @given(st.data())
        def one(data):
            nonlocal runs
            env, stdin = data.draw(strategies.case(plugin, sandbox), label="case")
            runs += 1
            try:
                exercise(sandbox, plugin, env, stdin)
            except BaseException as e:
                last_failure[:] = [(env, stdin, e)]
                raise

        try:
            one()
        except BaseException:
            if last_failure:
                env, stdin, error = last_failure[0]
                path = save_regression(plugin, env, stdin, sandbox, error)
                print(f"failing case saved as {path}")
            raise
    count_cases(f"in-process {plugin}{' (real pod netns, veth master)' if pod else ''}", runs)


@pytest.mark.parametrize("plugin", sorted(IN_PROCESS))
def test_fuzz_sample(plugin, count_cases, etcd_cluster):
    fuzz_in_process(plugin, IN_PROCESS[plugin][0], count_cases, etcd_cluster)


@pytest.mark.fuzz
@pytest.mark.parametrize("plugin", sorted(IN_PROCESS))
def test_fuzz(plugin, count_cases, etcd_cluster):
    fuzz_in_process(plugin, IN_PROCESS[plugin][1], count_cases, etcd_cluster)


@pytest.mark.parametrize("plugin", sorted(REAL_NAMESPACES))
def test_fuzz_real_namespaces_sample(plugin, count_cases, etcd_cluster):
    """CNI_NETNS is a real pod namespace and the master a real veth: ADDs succeed (macvlan; this
    kernel has no ipvlan, so ipvlan's undo runs), and each must leave only lo in the pod after DEL.
    cluster-access's pod has an eth0 as macvlan leaves it: its ADDs succeed, and the pod's and the
    node's links, routes and rules must be as before after DEL."""
    fuzz_in_process(plugin, REAL_NAMESPACES[plugin][0], count_cases, etcd_cluster, pod=True)


@pytest.mark.fuzz
@pytest.mark.parametrize("plugin", sorted(REAL_NAMESPACES))
def test_fuzz_real_namespaces(plugin, count_cases, etcd_cluster):
    fuzz_in_process(plugin, REAL_NAMESPACES[plugin][1], count_cases, etcd_cluster, pod=True)


def fuzz_executed(examples, count_cases):
    """The same cases as real processes: what the interpreter, stdin and exit status add."""
    runs = 0
    with Sandbox() as sandbox:
        @fuzz_settings(examples)
        @given(st.data())
        def one(data):
            nonlocal runs
            plugin = data.draw(st.sampled_from(EXECUTED_PLUGINS), label="plugin")
            env, stdin = data.draw(strategies.case(plugin, sandbox, allow_nul=False), label="case")
            command = env.pop("CNI_COMMAND", "")
            kw = {"container_id": env.get("CNI_CONTAINERID", ""), "netns": env.get("CNI_NETNS", ""),
                  "ifname": env.get("CNI_IFNAME", ""), "args": env.get("CNI_ARGS", ""),
                  "path": env.get("CNI_PATH") or sandbox.bin}
            before = sandbox.leases()
            # in the sandbox's netns: DEL and GC of macvlan talk to the "host" netns
            outcome = run_plugin(plugin, command, stdin, in_netns=sandbox.netns_name, **kw)
            runs += 1
            check_answer(outcome, command)
            if outcome.ok and command == "ADD":
                undo = run_plugin(plugin, "DEL", stdin, in_netns=sandbox.netns_name, **kw)
                assert undo.ok, (outcome, undo)
            if not outcome.ok or command in ("ADD", "CHECK", "STATUS"):
                assert sandbox.leases() == before, outcome
            sandbox.check_outside(f"exec {plugin} {command} {env} {stdin[:500]!r}", stdin)

        one()
    count_cases("executed", runs)


def test_fuzz_executed_sample(count_cases):
    fuzz_executed(EXECUTED[0], count_cases)


@pytest.mark.fuzz
def test_fuzz_executed(count_cases):
    fuzz_executed(EXECUTED[1], count_cases)
