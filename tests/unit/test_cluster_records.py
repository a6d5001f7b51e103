"""cluster-ipam's network records (<dataDir>/<network>/network.json), by which underlayd heals the
networks no config file names: what one holds, and how a dataDir's records are read (no root, no etcd;
tests/reliability/test_agent.py heals by them)."""

import json
import os
import socket

from ipam import cluster


def store_config(data_dir, **ipam):
    section = {"type": "cluster-ipam", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.9.0.0/24"}]],
               "etcd": {"endpoints": ["https://127.0.0.1:2379"], "certFile": "/etc/uj/client.crt",
                        "keyFile": "/etc/uj/client.key", "trustedCAFile": "/etc/uj/ca.crt"}}
    section.update(ipam)
    return cluster.ClusterConfig({"name": "ujnet", "ipam": section})


def write(data_dir, network, data):
    os.makedirs(data_dir / network, exist_ok=True)
    (data_dir / network / cluster.RECORD).write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


def test_a_record_holds_the_ipam_keys_the_plugin_reads_with_node_and_dataDir_resolved(tmp_path):
    conf = store_config(tmp_path, dataDir=None, auxAddresses={"router": "10.9.0.9"}, ujToken="s3cr3t",
                        etcd={"endpoints": ["https://127.0.0.1:2379"], "keyFile": "/etc/uj/client.key",
                              "ujPassword": "s3cr3t"},
                        ranges=[[{"subnet": "10.9.0.0/24", "ujNote": "s3cr3t"}]])
    doc = json.loads(cluster.record(conf, "ujnet"))
    assert doc == {"network": "ujnet", "ipam": {
        "type": "cluster-ipam", "node": socket.gethostname(), "dataDir": cluster.DEFAULT_DATA_DIR,
        "auxAddresses": {"router": "10.9.0.9"}, "ranges": [[{"subnet": "10.9.0.0/24"}]],
        "etcd": {"endpoints": ["https://127.0.0.1:2379"], "keyFile": "/etc/uj/client.key"}}}
    assert b"s3cr3t" not in cluster.record(conf, "ujnet")       # a key the plugin does not read never lands
    assert cluster.record(conf, "ujnet") == cluster.record(conf, "ujnet")   # stable: compared byte for byte


def test_a_dataDirs_records_are_read_and_the_malformed_named_never_fatal(tmp_path):
    good = store_config(tmp_path, node="uj-n1")
    write(tmp_path, "ujgood", cluster.record(good, "ujgood"))
    write(tmp_path, "ujbad1", b"{not json")
    write(tmp_path, "ujbad2", ["a list"])
    write(tmp_path, "ujbad3", json.loads(cluster.record(good, "ujother")))           # another network's
    write(tmp_path, "ujbad4", json.loads(cluster.record(store_config("/elsewhere"), "ujbad4")))
    write(tmp_path, "ujbad5", b"\xff\xfe")
    os.makedirs(tmp_path / "ujlink")
    os.symlink(tmp_path / "ujgood" / cluster.RECORD, tmp_path / "ujlink" / cluster.RECORD)
    os.makedirs(tmp_path / "ujnone")                       # a network with no record: nothing to say
    os.makedirs(tmp_path / ".ujhidden")
    write(tmp_path, ".ujhidden", cluster.record(good, ".ujhidden"))
    (tmp_path / "ujstray").write_text("a file")
    found, problems = cluster.recorded_networks(str(tmp_path))
    assert found == [(str(tmp_path / "ujgood" / cluster.RECORD),
                      {"name": "ujgood", "ipam": json.loads(cluster.record(good, "ujgood"))["ipam"]})]
    assert [p.split(": ", 1)[0] for p in problems] == [str(tmp_path / n / cluster.RECORD) for n in
                                                       ("ujbad1", "ujbad2", "ujbad3", "ujbad4", "ujbad5", "ujlink")]
    assert "not JSON" in problems[0] and "no ipam object" in problems[1]
    assert "names network 'ujother', not 'ujbad3'" in problems[2]
    assert "names dataDir '/elsewhere'" in problems[3] and "not JSON" in problems[4]
    assert "Too many levels of symbolic links" in problems[5]
    assert cluster.recorded_networks(str(tmp_path / "missing")) == ([], [])
    assert cluster.recorded_networks(str(tmp_path / "ujstray")) == ([], [f"{tmp_path / 'ujstray'}: Not a directory"])
