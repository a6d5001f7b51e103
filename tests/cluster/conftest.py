"""cluster-ipam against a real etcd (tests/etcd.py): one member for the module, a key prefix per test."""

import json
import os
import uuid

import pytest

from tests.etcd import EtcdCluster
from tests.plugins import run_plugin


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
