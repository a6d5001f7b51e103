"""One config loader per IPAM (issue 18): the plugin's verbs, `underlay validate`, `underlay pools`
(and `underlay cluster ...`) and underlayd's pool figures all read an IPAM config through the
plugin's own loader (ipam/host_local.py HostLocalConfig, ipam/cluster.py ClusterConfig), so a rule
of the config is refused alike by each of them, with the same field and words. The plugins are
exec'd as a runtime execs them; `underlay` as an operator runs it; underlayd's readers in-process."""

import json

from cni.agent import pools as agent_pools
from tests.exec.conftest import error
from tests.operator import run_underlay
from tests.plugins import run_plugin

NOT_A_PATH = "\x7f"   # the schema's pattern takes it (no C0 control); host-local's dataDir rule does not


def write(directory, name, conf):
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(conf))
    return str(path)


def test_host_locals_dataDir_rule_is_one_for_the_plugin_validate_pools_and_underlayd(hl, tmp_path):
    """A dataDir that is no printable path: ADD and DEL refuse it (code 7); validate and pools
    used to skip the plugin's check and pass it (pools then read a store that could never exist)."""
    conf = hl.config("10.61.0.0/24", dataDir=hl.data_dir + NOT_A_PATH)
    said = f"ipam.dataDir: {hl.data_dir + NOT_A_PATH!r} is not a path"
    error(hl.add(conf), 7, said)
    error(hl.delete(conf), 7, said)     # DEL reads only the store's part, by the same rule
    path = write(tmp_path / "net.d", "10-net1.conf", conf)

    out = run_underlay("validate", path, "-o", "json")
    assert out.code == 1, out
    assert [(p["field"], p["severity"], p["message"]) for p in out.json["problems"]] == \
        [("ipam.dataDir", "error", said.removeprefix("ipam.dataDir: "))], out

    out = run_underlay("pools", "--config", path)
    assert out.code == 3 and out.stdout == "", out
    assert f"network net1: {said}" in out.stderr, out

    rows, readable, problems = agent_pools.host_local_pools(str(tmp_path / "net.d"), [])
    assert rows == [] and readable == {}, rows
    assert any(said in p for p in problems), problems


def test_host_locals_default_dataDir_is_written_once():
    """dataDir unset or empty: host-local's default, one constant, which `underlay` (and underlayd's
    --data-dir) default to as well."""
    from ipam import host_local
    assert host_local.data_dir({}) == host_local.data_dir({"dataDir": ""}) == host_local.DEFAULT_DATA_DIR
    assert host_local.DEFAULT_DATA_DIR in run_underlay("leases", "--help").stdout


def test_cluster_ipams_store_rules_are_one_for_the_plugin_validate_cluster_commands_and_underlayd(tmp_path):
    """A rule of cluster-ipam's store part (dataDir, as host-local's, beyond the schema) is refused
    by ADD and DEL before etcd is asked, by validate, by `underlay cluster pools` and `leases`, and
    by underlayd's pool figures."""
    data_dir = str(tmp_path / "n1") + NOT_A_PATH
    conf = {"cniVersion": "1.0.0", "name": "uln", "type": "macvlan", "master": "eth1",
            "ipam": {"type": "cluster-ipam", "node": "n1", "dataDir": data_dir,
                     "etcd": {"endpoints": ["http://127.0.0.1:9"]}, "ranges": [[{"subnet": "10.62.0.0/24"}]]}}
    said = f"ipam.dataDir: {data_dir!r} must be an absolute path"
    for verb in ("ADD", "DEL"):
        out = run_plugin("cluster-ipam", verb, conf, container_id="c1", ifname="eth0", netns="/run/netns/uln-x")
        error(out, 7, said)
    path = write(tmp_path / "net.d", "10-uln.conf", conf)

    out = run_underlay("validate", path, "-o", "json")
    assert out.code == 1, out
    assert [(p["field"], p["severity"], p["message"]) for p in out.json["problems"]] == \
        [("ipam.dataDir", "error", said.removeprefix("ipam.dataDir: "))], out

    for command in ("pools", "leases"):
        out = run_underlay("cluster", command, "--config", path)
        assert out.code == 2 and said in out.stderr, out

    rows, readable, problems = agent_pools.cluster_pools(str(tmp_path / "net.d"), [])
    assert rows == [] and readable == {("cluster-ipam", "uln"): False}, (rows, readable)
    assert problems == [f"cluster-ipam network uln ({path}): {said}"], problems
    assert not any(tmp_path.glob("n1*"))   # refused at load: no lock, no record
