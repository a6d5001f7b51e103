"""Shared fixtures, each built on the one before where it can: data_dir and state_dir
(under the test's tmp_path); host_ns (a "host" netns) and master (a veth parent in it,
tests/netns.py add_parent, which also makes further parents); pod_ns (pod namespaces);
the bundle (tests/bundle.py); the test agent and the path the plugins take."""

import os
import signal

import pytest

from tests import netns as nsutil
from tests import plugins
from tests.agent import new_traceparent
from tests.bundle import built_bin_dir, bundle  # noqa: F401  (bundle: a fixture for every tier)


def pytest_configure(config):
    # A run stopped from outside (SIGTERM: CI's timeout, a kill of the run or of an xdist worker)
    # unwinds as Ctrl-C does, so pytest still tears the fixtures down: namespaces, links, agents.
    signal.signal(signal.SIGTERM, stop_as_interrupt(os.getpid()))


def stop_as_interrupt(pid):
    def stop(signum, frame):
        if os.getpid() != pid:   # a child forked by a test: SIGTERM does what it would have done there
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"stopped by signal {signum}")
    return stop


def pytest_addoption(parser):
    parser.addoption("--agent", action="store_true", default=os.environ.get("UNDERLAY_TEST_AGENT") == "1",
                     help="run every plugin the tests exec through underlayd (also UNDERLAY_TEST_AGENT=1)")


def pytest_generate_tests(metafunc):
    # both_paths: the test runs twice, exec'd plugins working in-process and handing off to underlayd
    if metafunc.definition.get_closest_marker("both_paths") and not metafunc.config.getoption("--agent"):
        metafunc.parametrize("plugin_path", ["exec", "agent"], indirect=True)


@pytest.fixture(scope="session")
def test_agent():
    """underlayd on a socket of its own for the session (each xdist worker has its own)."""
    from tests.agent import Agent
    agent = Agent()
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture(autouse=True)
def plugin_path(request, monkeypatch):
    """"agent": every plugin the test execs hands off to the test agent; "exec": no agent answers.
    A both_paths test fails unless the path it names was really taken."""
    mode = getattr(request, "param", None) or ("agent" if request.config.getoption("--agent") else "exec")
    if request.node.get_closest_marker("in_process"):
        mode = "exec"
    checked = hasattr(request, "param")
    agent = request.getfixturevalue("test_agent") if mode == "agent" or checked else None
    traceparent = new_traceparent()   # this test's runs, told apart in the agent's log from any other's
    monkeypatch.setattr(plugins, "TRACEPARENT", traceparent)
    if mode == "agent":
        monkeypatch.setattr(plugins, "AGENT_SOCKET", agent.socket)
        # the thin client that ships (cni/handoff.c); tests/reliability/test_agent.py runs both clients
        monkeypatch.setattr(plugins, "BIN_DIR", built_bin_dir(request))
    yield mode
    if checked and mode == "agent":
        assert agent.wait_served(1, traceparent=traceparent), "no plugin run of this test went through underlayd"
    elif checked:
        assert not agent.served(traceparent), "a plugin run of this exec-path test went through underlayd"


def pytest_collection_modifyitems(config, items):
    # Tests under ns/ (and anything marked root) need root and namespaces. The VM tier
    # (make test-vm) is tests/vm and every kernel(...) test: `-m "vm or kernel"`.
    for item in items:
        if "/tests/ns/" in str(item.fspath):
            item.add_marker(pytest.mark.root)
        if "/tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture
def data_dir(tmp_path):
    """host-local's dataDir, private to the test."""
    return str(tmp_path / "networks")


@pytest.fixture
def state_dir(tmp_path):
    """underlay's stateDir (records of the parents it creates), private to the test."""
    return str(tmp_path / "state")


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
        name = nsutil.unique("ulp")
        made.append(name)   # recorded first: removed even if `ip` fails half way
        return nsutil.add_netns(name)

    try:
        yield make
    finally:
        for name in made:
            nsutil.del_netns(name)


@pytest.fixture
def master(host_ns):
    """A veth parent `m...` in the host netns (peer `p...` stays there too, up)."""
    return nsutil.add_parent(host_ns)[0]


@pytest.fixture(autouse=True)
def _require_root(request):
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces)")
