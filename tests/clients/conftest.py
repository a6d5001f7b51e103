"""Fixtures for driving our plugins through real clients (libcni, podman, containerd).

Clients come from Debian packages (build/apt-packages.txt). A missing client is
a test failure naming the package, never a skip.
"""

import collections
import os
import shutil
import sys
import tempfile

import pytest

from cni import registry
from tests import netns as nsutil
from tests import plugins
from tests.bundle import built_bin_dir
from tests.clients import libcni

REFERENCE_PLUGINS = ("loopback", "tuning")


def require(path_or_cmd, package):
    """Fail (not skip) when a client binary is missing."""
    found = path_or_cmd if os.path.isabs(path_or_cmd) and os.path.exists(path_or_cmd) \
        else shutil.which(path_or_cmd)
    if not found:
        pytest.fail(f"{path_or_cmd} not found: install Debian's {package} "
                    "(listed in build/apt-packages.txt; build/deps.sh installs it)", pytrace=False)
    return found


class PluginRoute:
    """Where the plugins of the session's CNI bin dirs hand off to, and what they were run for.

    A client execs our plugins from its bin dir with an environment of its own making: libcni and
    containerd's CRI pass theirs on, but podman's cleanup process (conmon starts it when a container
    exits, and it DELs the network) gets only a few variables. An UNDERLAY_SOCKET given to the client
    would not reach every plugin, which would then ask the node's default socket. So each plugin in
    the bin dir is a wrapper that sets UNDERLAY_SOCKET itself, always to `socket`: a symlink to the
    test agent's socket while a test runs through underlayd, else nothing (no agent answers, the
    plugins work in-process). The wrapper also appends "plugin verb" to `calls`, and sets TRACEPARENT
    to the running test's (in `trace`): the agent's served lines name it, so a test counts its own runs."""

    def __init__(self, directory):
        self.socket = os.path.join(directory, "underlay.sock")
        self.calls = os.path.join(directory, "calls")
        self.trace = os.path.join(directory, "trace")
        open(self.calls, "w").close()
        open(self.trace, "w").close()

    def through(self, agent_socket, traceparent=""):
        """Send the wrapped plugins to the agent on `agent_socket` (None: to no agent)."""
        if os.path.lexists(self.socket):
            os.unlink(self.socket)
        if agent_socket:
            os.symlink(agent_socket, self.socket)
        with open(self.trace, "w") as f:
            f.write(traceparent)

    def mark(self):
        return os.path.getsize(self.calls)

    def calls_since(self, mark):
        """[(plugin, verb)] of the wrapped plugins' runs since `mark`, VERSION left out (never handed off)."""
        with open(self.calls) as f:
            f.seek(mark)
            return [tuple(fields) for fields in map(str.split, f.read().splitlines())
                    if len(fields) == 2 and fields[1] != "VERSION"]


def install_plugin(bin_dir, name, route, built):
    """Our plugin `name` in `bin_dir`: a wrapper (see PluginRoute) running the built executable in
    `built` (tests/bundle.py built_bin_dir: what ships, the compiled thin client in front of the
    bundle), or this checkout's module when there is none (inside the test VM)."""
    if built:
        target = os.path.join(built, name)
        if not os.path.exists(target):
            pytest.fail(f"{built} has no {name} (run `make build`)", pytrace=False)
        run = f"exec '{target}'"
    else:
        # runtimes may clear the environment, so PYTHONPATH is set here; -P keeps the runtime's cwd off sys.path
        run = f"PYTHONPATH='{libcni.ROOT}' exec '{sys.executable}' -P -m {registry.module_of(name)}"
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                f"echo {name} \"$CNI_COMMAND\" >> '{route.calls}'\n"
                f"TRACEPARENT=$(cat '{route.trace}') UNDERLAY_SOCKET='{route.socket}' {run} \"$@\"\n")
    os.chmod(path, 0o755)


@pytest.fixture(scope="session")
def plugin_route():
    directory = tempfile.mkdtemp(prefix="underlay-route-")
    try:
        yield PluginRoute(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def plugin_calls(plugin_path, plugin_route, request):
    """The wrapped plugins take this test's path (tests/conftest.py plugin_path). Yields a function
    returning [(plugin, verb)] of their runs so far in this test. Through the agent, every one of
    them must have been served by it (checked at teardown, after the test's fixtures have DELeted)."""
    agent = request.getfixturevalue("test_agent") if plugin_path == "agent" else None
    # the test's own TRACEPARENT (tests/conftest.py plugin_path), which its exec-path check looks for too
    mark, traceparent = plugin_route.mark(), plugins.TRACEPARENT
    plugin_route.through(agent.socket if agent else None, traceparent)
    try:
        yield lambda: plugin_route.calls_since(mark)
    finally:
        plugin_route.through(None)
    if agent:
        calls = plugin_route.calls_since(mark)
        served = [(plugin, verb) for plugin, verb, _, _ in agent.wait_served(len(calls), traceparent=traceparent)]
        missed = collections.Counter(calls) - collections.Counter(served)
        assert not missed, f"runs of our plugins under the client that underlayd did not serve: {dict(missed)}"


@pytest.fixture(scope="session")
def cni_bin_dir(plugin_route, request):
    """One CNI bin dir for every client: our plugins (install_plugin) and Debian's reference
    loopback and tuning."""
    for name in REFERENCE_PLUGINS:
        require(os.path.join(libcni.REFERENCE_DIR, name), "containernetworking-plugins")
    path = tempfile.mkdtemp(prefix="underlay-bin-")
    try:
        built = built_bin_dir(request)
        for name in libcni.OUR_PLUGINS:
            install_plugin(path, name, plugin_route, built)
        for name in REFERENCE_PLUGINS:
            os.symlink(os.path.join(libcni.REFERENCE_DIR, name), os.path.join(path, name))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cnitool():
    """The libcni driver (tests/clients/cnitool), built once per session into a temp dir."""
    out = tempfile.mkdtemp(prefix="underlay-cnitool-")
    try:
        try:
            exe = libcni.build_driver(out)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        yield exe
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def driver(cnitool, cni_bin_dir, host_ns):
    """libcni run inside the test's "host" netns with its own conflists and result cache;
    at teardown whatever the cache still holds is DELeted and the cache removed."""
    drv = libcni.Driver(cnitool, cni_bin_dir, host_ns)
    try:
        yield drv
    finally:
        drv.cleanup()


@pytest.fixture
def root_master():
    """A uniquely named veth pair in the ROOT netns, for clients whose pod netns live
    there (podman, containerd); returns the end to use as master. Removed even on failure."""
    name, peer = nsutil.unique("ulm"), nsutil.unique("ulq")
    nsutil.sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
    try:
        for link in (name, peer):
            # no IPv6 link-local addresses in the machine's own namespace
            nsutil.sh("ip", "link", "set", link, "addrgenmode", "none")
            nsutil.sh("ip", "link", "set", link, "up")
        yield name
    finally:
        nsutil.sh("ip", "link", "del", name, check=False)
