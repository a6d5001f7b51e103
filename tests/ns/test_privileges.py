"""A plugin run without the privileges it needs: a documented error naming them (code 103), never
"internal error" (999), and nothing done. Runtimes run plugins as root; an operator trying one by
hand as a user, or a container without CAP_NET_ADMIN, meets this."""

import os

import pytest

from tests import netns as ns
from tests import plugins
from tests.bundle import built_bin_dir

pytestmark = pytest.mark.in_process   # a non-root caller is never served by the agent anyway

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NO_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]


@pytest.fixture(params=["python", "compiled"])
def client(request, monkeypatch):
    """The plugin run from Python, and the built executable a runtime execs."""
    if request.param == "compiled":
        monkeypatch.setattr(plugins, "BIN_DIR", built_bin_dir(request))
    return request.param


def conf(master, data_dir, ipam=True):
    return {"cniVersion": "1.1.0", "name": "privnet", "type": "macvlan", "master": master,
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.21.0.0/24"}]]}
            if ipam else {}}


def run_as(who, command, c, host_ns, pod):
    return plugins.run_plugin("macvlan", command, c, in_netns=host_ns, argv=who + plugins.plugin_argv("macvlan"),
                              container_id="c1", netns=f"/run/netns/{pod}")


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_a_non_root_caller_is_told_what_privilege_is_missing(client, command, host_ns, master, pod_ns, data_dir):
    pod = pod_ns()
    # DEL releases its addresses before it enters the pod: without ipam it reaches the netns first
    out = run_as(NOBODY, command, conf(master, data_dir, ipam=command == "ADD"), host_ns, pod)
    assert out.cni_code == 103, out
    assert out.json["msg"] == ("entering the pod's network namespace (CNI_NETNS): setns: Operation not permitted: "
                               "the plugin needs CAP_SYS_ADMIN and CAP_NET_ADMIN (runtimes run plugins as root)"), out
    assert out.stderr == "", out
    assert not os.path.exists(os.path.join(data_dir, "privnet")) and ns.links(pod) == ["lo"]


def test_a_caller_without_cap_net_admin_is_told_so_and_nothing_is_left(client, host_ns, master, pod_ns, data_dir):
    pod = pod_ns()
    out = run_as(NO_NET_ADMIN, "ADD", conf(master, data_dir), host_ns, pod)
    assert out.cni_code == 103, out
    assert out.json["msg"].startswith("creating macvlan link ") and out.json["msg"].endswith(
        ": Operation not permitted: the plugin needs CAP_SYS_ADMIN and CAP_NET_ADMIN (runtimes run plugins as root)"), out
    assert not os.path.exists(os.path.join(data_dir, "privnet")) and ns.links(pod) == ["lo"]
