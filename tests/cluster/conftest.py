"""The cluster tier: cluster-ipam and the etcd client against real etcd (tests/etcd.py).

One member for the module with a key prefix per test (cluster fixture `cl`); clusters made
per test for the failure tests (they get killed: `make_cl`); simulated nodes as processes.
"""

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

from tests.etcd import EtcdCluster
from tests.plugins import ROOT, run_plugin


@pytest.fixture(scope="module")
def etcd_member():
    with EtcdCluster(members=1) as cluster:
        yield cluster


class Cluster:
    """Builds cluster-ipam configs for simulated nodes (each its own `node` and dataDir) and runs the plugin."""

    def __init__(self, etcd_cluster, root):
        self.etcd = etcd_cluster
        self.root = root
        self.prefix = f"/ucl-{uuid.uuid4().hex[:8]}"
        self.client = etcd_cluster.client()

    def etcd_conf(self, **extra):
        return dict(self.etcd.config(), prefix=self.prefix, **extra)

    def conf(self, *range_sets, node="n1", name="net1", version="1.1.0", etcd=None, **ipam):
        sets = [[{"subnet": s}] if isinstance(s, str) else [s] if isinstance(s, dict) else s for s in range_sets]
        section = {"type": "cluster-ipam", "node": node, "dataDir": self.data_dir(node),
                   "etcd": etcd or self.etcd_conf()}
        if sets:
            section["ranges"] = sets
        section.update(ipam)
        return {"cniVersion": version, "name": name, "type": "macvlan", "ipam": section}

    def data_dir(self, node):
        return str(self.root / "nodes" / node)

    def run(self, command, conf, cid="c1", ifname="eth0", pod=None, netns="/run/netns/ucl-none", **kw):
        args = f"K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}" if pod else ""
        out = run_plugin("cluster-ipam", command, conf, container_id=cid or "", ifname=ifname,
                         netns=netns, args=args, **kw)
        assert out.stderr == "", f"cluster-ipam {command} wrote to stderr: {out.stderr}"
        return out

    def add(self, conf, cid="c1", **kw):
        return self.run("ADD", conf, cid, **kw)

    def delete(self, conf, cid="c1", **kw):
        return self.run("DEL", conf, cid, **kw)

    def marks(self, node="n1", network="net1"):
        """The ADDs of `node` not (yet) answered with success: the names in its dataDir's ADDING."""
        from ipam.stores.block_leases import ADDING
        try:
            return sorted(os.listdir(os.path.join(self.data_dir(node), network, ADDING)))
        except FileNotFoundError:
            return []

    def keys(self, under=""):
        """{key below the prefix: decoded JSON value} of everything under prefix/under."""
        base = f"{self.prefix}/"
        return {kv.key.decode()[len(base):]: json.loads(kv.value) for kv in self.client.range(base + under)}

    def leases(self):
        """{ip: record} of the address keys (leases and holds)."""
        return {k[len("ips/"):]: v for k, v in self.keys("ips/").items()}

    def close(self):
        self.client.close()


@pytest.fixture
def cl(etcd_member, tmp_path):
    c = Cluster(etcd_member, tmp_path)
    try:
        yield c
    finally:
        c.close()


def addresses(outcome):
    assert outcome.ok, outcome
    return [ip["address"].split("/")[0] for ip in outcome.json["ips"]]


def error(outcome, code, *fragments):
    assert not outcome.ok, outcome
    assert outcome.json is not None and set(outcome.json) == {"cniVersion", "code", "msg", "details"}, outcome
    assert outcome.json["code"] == code, outcome
    for fragment in fragments:
        assert fragment in outcome.json["msg"], outcome
    return outcome.json


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)


# -- the failure tests: clusters made per test, simulated nodes ------------------------------


@pytest.fixture
def make_cl(etcd_cluster, tmp_path):
    """Factory: make_cl(members=3, tls=False) -> a Cluster (above) on a fresh etcd."""
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


def start_nodes(confs, verb, count, tmp_path, progress=None, module="tests.cluster.sim_runtime"):
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
