"""Fixtures for cluster-ipam's failure tests: clusters made per test (they get killed), simulated nodes."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.cluster.conftest import Cluster
from tests.plugins import ROOT


@pytest.fixture
def make_cl(etcd_cluster, tmp_path):
    """Factory: make_cl(members=3, tls=False) -> a Cluster (tests/cluster/conftest.py) on a fresh etcd."""
    made = []

    def make(members=3, tls=False):
        c = Cluster(etcd_cluster(members=members, tls=tls), tmp_path)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


@pytest.fixture
def silent_endpoint():
    """An http:// URL whose listener accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def dir_snapshot(path):
    """{relative path: content} of every file under path."""
    out = {}
    for d, _, names in os.walk(path):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), path)] = f.read()
    return out


_started = []   # every simulated node process of the running test (killed at its end by _no_node_left)


@pytest.fixture(autouse=True)
def _no_node_left():
    """A test that fails before wait_nodes leaves no simulated node running into the next tests."""
    try:
        yield
    finally:
        while _started:
            proc = _started.pop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def start_nodes(confs, verb, count, tmp_path, progress=None, module="tests.cluster_ipam.sim_runtime"):
    """Start one simulated node process per config at once: {node: (Popen, out path)}."""
    procs = {}
    for node, conf in confs.items():
        conf_path = tmp_path / f"{node}-{verb}.json"
        conf_path.write_text(json.dumps(conf))
        out = tmp_path / f"{node}-{verb}.out"
        argv = [sys.executable, "-m", module, str(conf_path), verb, str(count), f"{node}-c", str(out)]
        if progress:
            argv.append(str(progress))
        procs[node] = (subprocess.Popen(argv, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}),
                       out)
        _started.append(procs[node][0])
    return procs


def wait_nodes(procs, timeout=120):
    """{node: {"results": [...], "failed": [...]}} once every node's process has exited; kills them on failure."""
    try:
        results = {}
        for node, (proc, out) in procs.items():
            assert proc.wait(timeout=timeout) == 0, f"simulated node {node} failed"
            results[node] = json.loads(out.read_text())
        return results
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
