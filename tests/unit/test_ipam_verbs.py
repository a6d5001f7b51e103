"""ipam/verbs.py: what host-local and cluster-ipam share, and the early load both offer a main plugin."""

import json

import pytest

from cni import contract, dispatch
from cni.errors import CniError
from ipam import cluster, host_local, verbs

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/uhs-x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/nonexistent"}


def request(ipam, **env):
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": "macvlan", "master": "eth0", "ipam": ipam}
    return contract.read_request(dict(ENV, **env), json.dumps(conf).encode())


CLUSTER = {"type": "cluster-ipam", "node": "n1", "etcd": {"endpoints": ["http://127.0.0.1:9"]},
           "ranges": [[{"subnet": "10.85.0.0/24"}]], "routes": [{"dst": "10.86.0.0/16"}]}
HOST_LOCAL = {"type": "host-local", "ranges": [[{"subnet": "10.85.0.0/24"}]], "routes": [{"dst": "10.86.0.0/16"}]}


@pytest.mark.parametrize("ipam, kind", [(CLUSTER, cluster.ClusterConfig), (HOST_LOCAL, host_local.HostLocalConfig)])
def test_a_main_plugin_loads_either_ipam_before_it_changes_anything(ipam, kind):
    r = request(ipam, CNI_ARGS="IP=10.85.0.7")
    dispatch.load_ipam_config(r)
    assert isinstance(r.ipam_config, kind) and isinstance(r.ipam_config, verbs.IpamConfig)
    assert r.ipam_config.routes == [{"dst": "10.86.0.0/16"}]
    assert {k: v.ip.exploded for k, v in verbs.assign_requested(r.ipam_config).items()} == {0: "10.85.0.7"}
    bad = request(dict(ipam, routes=[{"dst": "10.86.0.0"}]))
    with pytest.raises(CniError) as e:
        dispatch.load_ipam_config(bad)
    assert e.value.code == 7 and "ipam.routes[0].dst" in e.value.msg


def test_valid_attachments_keep_old_id_only_leases_of_listed_containers():
    valid = verbs.ValidAttachments({("c1", "eth0")})
    assert valid.keeps("c1", "eth0") and valid.keeps("c1", None)
    assert not valid.keeps("c1", "net1") and not valid.keeps("c2", None)
