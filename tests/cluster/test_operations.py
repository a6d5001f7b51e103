"""docs/cluster-ipam.md's "Operating it", as written: the `underlay cluster` commands reading a
NetworkAttachmentDefinition YAML (a conf/nads example pointed at a real etcd with TLS)."""

import json

import pytest
import yaml

from tests.cluster.conftest import addresses
from tests.clients import libcni
from tests.operator import run_underlay
from tests.plugins import run_plugin

pytestmark = pytest.mark.etcd


@pytest.fixture
def nad(etcd_cluster, tmp_path):
    """cluster-macvlan.yaml with its etcd section on a real 3-member TLS cluster: (path, plugin config of node)."""
    cluster = etcd_cluster(members=3, tls=True)
    with open(libcni.NADS / "cluster-macvlan.yaml") as f:
        doc = yaml.safe_load(f)
    config = json.loads(doc["spec"]["config"])
    ipam = config["plugins"][0]["ipam"]
    ipam["etcd"] = dict(ipam["etcd"], **cluster.config(), prefix="/uci-ops")
    doc["spec"]["config"] = json.dumps(config, indent=2)
    path = tmp_path / "lab-shared.yaml"
    path.write_text(yaml.safe_dump(doc))

    def on(node):
        plugin = dict(config["plugins"][0], name=config["name"], cniVersion=config["cniVersion"])
        plugin["ipam"] = dict(plugin["ipam"], node=node, dataDir=str(tmp_path / node))
        return plugin

    return path, on


def add(conf, cid):
    out = run_plugin("cluster-ipam", "ADD", conf, container_id=cid, netns="/run/netns/uci-none",
                     args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={cid}")
    return addresses(out)[0]


def test_inspect_then_release_a_dead_node(nad):
    path, on = nad
    kept = [add(on("n1"), f"a{i}") for i in range(3)]
    dead = [add(on("n2"), f"b{i}") for i in range(2)]

    out = run_underlay("cluster", "leases", "--config", path, "-o", "json")
    assert out.code == 0, out
    rows = {r["address"]: r for r in out.json}
    assert sorted(rows) == sorted(kept + dead)
    assert {(r["node"], r["pod"], r["kind"]) for ip, r in rows.items() if ip in dead} == \
        {("n2", "b0", "lease"), ("n2", "b1", "lease")}
    table = run_underlay("cluster", "leases", "--config", path)
    assert table.code == 0 and all(ip in table.stdout for ip in kept + dead), table

    refused = run_underlay("cluster", "release-node", "n2", "--config", path, "--yes")
    assert refused.code != 0 and "still holds 2 lease(s)" in refused.stderr + refused.stdout, refused
    assert len(run_underlay("cluster", "leases", "--config", path, "-o", "json").json) == 5

    released = run_underlay("cluster", "release-node", "n2", "--config", path, "--yes", "--force", "-o", "json")
    assert released.code == 0, released
    assert released.json["node"] == "n2" and released.json["leases"] == 2
    rows = run_underlay("cluster", "leases", "--config", path, "-o", "json").json
    assert sorted(r["address"] for r in rows) == sorted(kept) and {r["node"] for r in rows} == {"n1"}
    # the dead node's addresses are free again: asked for by name, another node gets them
    for n, ip in enumerate(dead):
        asked = dict(on("n3"), args={"cni": {"ips": [ip]}})
        out = run_plugin("cluster-ipam", "ADD", asked, container_id=f"c{n}", netns="/run/netns/uci-none")
        assert addresses(out) == [ip], out
