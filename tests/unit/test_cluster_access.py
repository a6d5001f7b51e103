"""cluster-access's names and config, in process (the packet paths: tests/ns/test_cluster_access.py)."""

import pytest

from cni import contract
from cni.errors import CniError
from cni.plugins import cluster_access


def request(config, command="ADD", ifname="eth0"):
    return contract.Request(command, {"CNI_IFNAME": ifname}, dict({"name": "n", "type": "cluster-access"}, **config),
                            b"")


def test_node_side_names_never_collide_and_fit_an_interface_name():
    """Two networks, container IDs sharing all but the last character, two interfaces of one pod."""
    shared = "f" * 63
    attachments = [(net, shared + last, ifname) for net in ("lan", "lan2") for last in "0123456789abcdef"
                   for ifname in ("eth0", "net1", "net2")]
    names = {cluster_access.node_link_name(*a) for a in attachments}
    assert len(names) == len(attachments)
    for name in names:
        contract.check_ifname(name)
        assert len(name) == 15 and name.startswith("ulca")


def test_policy_tables_differ_per_interface():
    ifnames = ["eth0"] + [f"net{i}" for i in range(1, 33)]
    assert len({cluster_access.table_of(i) for i in ifnames}) == len(ifnames)
    assert all(t > 255 for t in map(cluster_access.table_of, ifnames))   # never main, local or default


@pytest.mark.parametrize("config,field", [
    ({"mode": "primary"}, "serviceCIDRs"),
    ({"mode": "upside-down"}, "mode"),
    ({"serviceCIDRs": ["10.96.0.0"]}, "serviceCIDRs[0]"),
    ({"nodeAddresses": ["node-1"]}, "nodeAddresses[0]"),
    ({"clusterCIDRs": "10.244.0.0/16"}, "clusterCIDRs"),
])
def test_config_errors_name_the_field(config, field):
    with pytest.raises(CniError) as e:
        cluster_access.load_config(request(config))
    assert e.value.code == 7 and field in e.value.msg


def test_a_config_file_without_prevresult_loads():
    """`underlay validate` loads a conflist's config, which has no prevResult."""
    conf = cluster_access.load_config(request({"serviceCIDRs": ["10.96.0.0/12"]}))
    assert conf.prev is None and conf.mode == "auto" and conf.veth_name == "veth0"


@pytest.mark.parametrize("prev,field", [
    (None, "prevResult: missing"),
    ({"interfaces": [{"name": "other", "sandbox": "/run/netns/x"}], "ips": [{"address": "10.0.0.2/24"}]},
     "prevResult.interfaces"),
    ({"interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}]}, "prevResult.ips"),
])
def test_prev_result_must_name_the_underlay_interface_and_its_addresses(prev, field):
    with pytest.raises(CniError) as e:
        cluster_access.underlay_addresses(prev, "eth0")
    assert e.value.code == 7 and e.value.msg.startswith(field)


def test_addresses_of_the_interface_alone():
    prev = {"interfaces": [{"name": "eth0", "sandbox": "/x"}, {"name": "net1", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0, "gateway": "10.0.0.1"},
                    {"address": "192.168.50.7/24", "interface": 1, "gateway": "192.168.50.1"}]}
    addresses, gateways = cluster_access.underlay_addresses(prev, "net1")
    assert [str(a) for a in addresses] == ["192.168.50.7/24"] and gateways == {4: "192.168.50.1"}


def test_underlay_validate_checks_a_chain_with_cluster_access(tmp_path):
    """The shipped NADs pass; a primary-mode config without serviceCIDRs is an error naming it."""
    import json
    import pathlib
    from cni.operator import validate
    nads = sorted(pathlib.Path(__file__).resolve().parents[2].glob("conf/nads/*cluster-access.yaml"))
    assert len(nads) == 2
    assert [p for p in validate.check_files([str(p) for p in nads]) if p.severity == "error"] == []
    bad = tmp_path / "bad.conflist"
    bad.write_text(json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": [
        {"type": "macvlan", "master": "eth1", "ipam": {}}, {"type": "cluster-access", "mode": "primary"}]}))
    errors = [p for p in validate.check_files([str(bad)]) if p.severity == "error"]
    assert len(errors) == 1 and "serviceCIDRs" in str(errors[0].field) + str(errors[0].message)


HOSTILE = [
    {"prevResult": []}, {"prevResult": {"ips": "x"}}, {"prevResult": {"ips": [{"address": 5}]}},
    {"prevResult": {"interfaces": "eth0", "ips": []}}, {"prevResult": {"interfaces": [5]}},
    {"prevResult": {"ips": [{"address": "10.0.0.2/24", "gateway": "nope"}]}},
    {"prevResult": {"ips": [{"address": "10.0.0.2/24", "interface": -1}]}},
    {"serviceCIDRs": [5]}, {"serviceCIDRs": "10.96.0.0/12"}, {"serviceCIDRs": []}, {"nodeAddresses": [None]},
    {"routes": "x"}, {"routes": [["10.0.0.0/8"]]}, {"vethName": "a/b"}, {"vethName": "x" * 16}, {"mode": 5},
    {"defaultRoute": "yes"}, {"name": 7}, {"clusterCIDRs": ["::/129"]},
]


@pytest.mark.parametrize("config", HOSTILE)
@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_hostile_configs_get_a_cni_error_never_a_traceback(config, command):
    import io
    import json
    from cni import dispatch, registry
    conf = dict({"cniVersion": "1.0.0", "name": "n", "type": "cluster-access", "mode": "primary",
                 "serviceCIDRs": ["10.96.0.0/12"]}, **config)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent/netns", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    out = io.StringIO()
    code = dispatch.run(registry.EXECUTABLES["cluster-access"], cluster_access.VERBS, env=env,
                        stdin=json.dumps(conf).encode(), stdout=out, stderr=io.StringIO())
    answer = json.loads(out.getvalue())
    assert code == 1 and answer["code"] in (4, 6, 7), answer
