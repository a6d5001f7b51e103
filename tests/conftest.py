"""Shared fixtures: data dirs, a "host" netns with veth parents, pod namespaces."""

import os

import pytest

from tests import netns as nsutil


def pytest_collection_modifyitems(config, items):
    # Tests under namespaces/ (and anything marked root) need root and namespaces.
    for item in items:
        if "/tests/namespaces/" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "networks"
    return str(path)


@pytest.fixture
def host_ns():
    """A fresh network namespace playing the node; removed even when the test fails."""
    name = nsutil.unique("ulh")
    nsutil.add_netns(name)
    try:
        yield name
    finally:
        nsutil.del_netns(name)


@pytest.fixture
def pod_ns():
    """Factory for pod namespaces; all removed at teardown."""
    made = []

    def make():
        name = nsutil.add_netns(nsutil.unique("ulp"))
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            nsutil.del_netns(name)


@pytest.fixture
def master(host_ns):
    """A veth parent `m...` in the host netns (peer `p...` stays there too, up)."""
    name, peer = nsutil.unique("m"), nsutil.unique("p")
    nsutil.sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer, ns=host_ns)
    nsutil.sh("ip", "link", "set", name, "up", ns=host_ns)
    nsutil.sh("ip", "link", "set", peer, "up", ns=host_ns)
    return name


@pytest.fixture(autouse=True)
def _require_root(request):
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces)")
