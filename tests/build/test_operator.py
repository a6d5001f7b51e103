"""The built `underlay`: the operator's command in the bundle, beside the plugins."""

import json
import os
import shutil
import tempfile

from tests.build.test_bundle import DENY_ALWAYS, denied, host_local_conf
from tests.bundle import ROOT
from tests.operator import run_underlay
from tests.plugins import REFERENCE_DIR, run_plugin


def underlay(bundle):
    return [str(bundle.bin_dir / "underlay")]


def test_dist_bin_carries_the_command(bundle):
    assert os.readlink(bundle.bin_dir / "underlay") == ".underlay/underlay"
    out = run_underlay("--help", argv=underlay(bundle))
    assert out.code == 0, out
    for command in ("leases", "who-has", "pools", "validate", "gc", "underlay PLUGIN"):
        assert command in out.stdout
    out = run_underlay(argv=underlay(bundle))
    assert out.code == 2 and "usage: underlay" in out.stderr, out
    out = run_underlay("--version", argv=underlay(bundle))
    assert out.code == 0 and bundle.info["build"] in out.stdout, out


def test_underlay_plugin_still_runs_the_plugin(bundle, tmp_path):
    data = tmp_path / "networks"
    proc = bundle.run(None, {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/uop-b",
                             "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"},
                      stdin=host_local_conf(data), argv=[str(bundle.exe), "host-local"])
    assert proc.returncode == 0, proc
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.123.0.2/24"


def test_leases_from_the_bundle_on_leases_of_the_bundle_and_the_reference(bundle, tmp_path):
    data = tmp_path / "networks"
    conf = json.loads(host_local_conf(data))
    env = {"container_id": "c1", "netns": "/run/netns/uop-b", "ifname": "eth0"}
    assert run_plugin("host-local", "ADD", conf, argv=[bundle.path("host-local")], **env).ok
    assert run_plugin("host-local", "ADD", conf, argv=[os.path.join(REFERENCE_DIR, "host-local")],
                      container_id="r1", netns="/run/netns/uop-r", ifname="net1").ok
    listing = tmp_path / "modules"
    out = bundle.run(None, {"UNDERLAY_LIST_MODULES": str(listing)},
                     argv=underlay(bundle) + ["leases", "--data-dir", str(data), "-o", "json"])
    assert out.returncode == 0, out
    assert [(r["address"], r["container"], r["ifname"], r["netns"]) for r in json.loads(out.stdout)] == [
        ("10.123.0.2", "c1", "eth0", "/run/netns/uop-b"), ("10.123.0.3", "r1", "net1", None)]
    # reading leases needs no netlink
    assert [m for m in listing.read_text().split() if m.startswith("pyroute2")] == []


def test_validate_reads_yaml_in_the_bundle(bundle):
    out = run_underlay("validate", *sorted(str(p) for p in (ROOT / "conf/nads").glob("*.yaml")), "-o", "json",
                       argv=underlay(bundle))
    assert out.code == 0, out
    assert out.json["errors"] == 0 and out.json["warnings"] >= 4     # host-local in a NAD: per node


def test_plugins_never_load_the_command(bundle, tmp_path):
    proc, modules = bundle.modules("host-local", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                                                  "CNI_NETNS": "/run/netns/uop-b", "CNI_IFNAME": "eth0",
                                                  "CNI_PATH": "/nonexistent"},
                                   stdin=host_local_conf(tmp_path / "networks"), tmp_path=tmp_path)
    assert proc.returncode == 0, proc
    assert denied(modules, dict(DENY_ALWAYS, **{"cni.operator": None, "yaml": None})) == []


def test_cluster_commands_in_the_bundle(bundle, etcd_cluster, tmp_path):
    """`underlay cluster ...` from the bundle, on leases the bundle's cluster-ipam made from two nodes."""
    etcd = etcd_cluster(members=1)

    def conf(node, name="net1"):
        return {"cniVersion": "1.0.0", "name": name, "type": "macvlan",
                "ipam": {"type": "cluster-ipam", "node": node, "dataDir": str(tmp_path / node), "blockSize": 29,
                         "ranges": [[{"subnet": "10.83.0.0/28"}]], "etcd": etcd.config(prefix="/uop-bundle")}}

    got = {}
    for node, cid in (("n1", "c1"), ("n1", "c2"), ("n2", "c3")):
        out = run_plugin("cluster-ipam", "ADD", conf(node), argv=[bundle.path("cluster-ipam")], container_id=cid,
                         netns="/run/netns/uop-none", ifname="eth0", args="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=" + cid)
        assert out.ok, out
        got[cid] = out.json["ips"][0]["address"].split("/")[0]
    path = tmp_path / "net1.conf"
    path.write_text(json.dumps(conf("n2")))
    cmd = ["cluster"]
    out = run_underlay(*cmd, "leases", "--config", path, "-o", "json", argv=underlay(bundle))
    assert out.code == 0, out
    assert sorted((r["address"], r["node"], r["container"], r["pod"]) for r in out.json) == sorted(
        (got[c], n, c, c) for n, c in (("n1", "c1"), ("n1", "c2"), ("n2", "c3")))
    out = run_underlay(*cmd, "who-has", got["c3"], "--config", path, "-o", "json", argv=underlay(bundle))
    assert out.code == 0 and out.json[0]["container"] == "c3", out
    out = run_underlay(*cmd, "pools", "--config", path, "-o", "json", argv=underlay(bundle))
    assert out.code == 0, out
    assert (out.json[0]["in_use"], out.json[0]["free"], out.json[0]["blocks"]) == (3, 10, 2), out
    out = run_underlay(*cmd, "release-node", "n1", "--config", path, "--yes", argv=underlay(bundle))
    assert out.code == 1 and "node n1 still holds 2 lease(s)" in out.stderr, out
    out = run_underlay(*cmd, "release-node", "n1", "--config", path, "--yes", "--force", "-o", "json",
                       argv=underlay(bundle))
    assert out.code == 0 and out.json["leases"] == 2, out
    out = run_underlay(*cmd, "leases", "--config", path, "-o", "json", argv=underlay(bundle))
    assert [r["container"] for r in out.json] == ["c3"], out
    etcd.stop(0)
    out = run_underlay(*cmd, "leases", "--config", path, argv=underlay(bundle))
    assert out.code == 3 and "etcd: no endpoint answered" in out.stderr, out


def test_the_second_trial_in_the_bundle(bundle, etcd_cluster, tmp_path):
    """What the operator's second trial met, with the bundle's command (issue 17: 2, 5, 11, 15)."""
    etcd = etcd_cluster(members=1)

    def conf(name, subnet, prefix):
        return {"cniVersion": "1.0.0", "name": name, "type": "macvlan",
                "ipam": {"type": "cluster-ipam", "node": "n1", "dataDir": str(tmp_path / "n1"),
                         "ranges": [[{"subnet": subnet}]], "etcd": etcd.config(prefix=prefix)}}

    lan, san = conf("lan", "10.90.0.0/28", "/uop-lan"), conf("san", "10.91.0.0/28", "/uop-san")
    for cid, c in (("c1", lan), ("c2", san)):
        assert run_plugin("cluster-ipam", "ADD", c, argv=[bundle.path("cluster-ipam")], container_id=cid,
                          netns="/run/netns/uop-none", ifname="eth0").ok
    nads = tmp_path / "nads.yaml"
    nads.write_text("---\n".join(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n"
        f"metadata: {{name: {c['name']}}}\nspec:\n  config: '{json.dumps(c)}'\n" for c in (lan, san)))
    # 2: the second document's network is read too
    out = run_underlay("cluster", "who-has", "10.91.0.2", "--config", nads, "-o", "json", argv=underlay(bundle))
    assert out.code == 0 and [r["network"] for r in out.json] == ["san"], out
    # 11: no node of that name; no abbreviated --yes
    out = run_underlay("cluster", "release-node", "node-3", "--config", nads, "--network", "lan", "--yes",
                       argv=underlay(bundle))
    assert out.code == 2 and "known nodes: n1" in out.stderr, out
    out = run_underlay("cluster", "release-node", "n1", "--config", nads, "--network", "lan", "--y",
                       argv=underlay(bundle))
    assert out.code == 2 and "unrecognized arguments: --y" in out.stderr, out
    # 15: host-local's pools on a cluster-ipam network names the cluster command
    out = run_underlay("pools", "--config", nads, argv=underlay(bundle))
    assert out.code == 2 and "underlay cluster pools --config" in out.stderr, out

    # 5: a host-local store only root may read, read as uid 65534: no answer on stdout
    open_dir = tempfile.mkdtemp(prefix="uop-")
    try:
        os.chmod(open_dir, 0o755)
        data = os.path.join(open_dir, "networks")
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/uop-b", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/nonexistent"}
        assert bundle.run("host-local", env, host_local_conf(data)).returncode == 0
        os.chmod(data, 0o755)
        for name in os.listdir(data):
            os.chmod(os.path.join(data, name), 0o700)
        as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] + underlay(bundle)
        out = run_underlay("who-has", "10.123.0.2", "--data-dir", data, argv=as_nobody)
        assert out.code == 3 and out.stdout == "" and "Permission denied" in out.stderr, out
        out = run_underlay("leases", "--data-dir", data, "-o", "json", argv=as_nobody)
        assert out.code == 3 and "Permission denied" in out.json["error"], out
    finally:
        shutil.rmtree(open_dir)
