"""Fixtures for driving our plugins through real clients (libcni, podman, containerd).

Clients come from Debian packages (build/apt-packages.txt). A missing client is
a test failure naming the package, never a skip.
"""

import os
import shutil
import sys
import tempfile

import pytest

from tests import netns as nsutil
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


def write_wrapper(path, module):
    """A plugin executable running `module` from this checkout. Runtimes may clear the
    environment, so the wrapper sets PYTHONPATH itself; -P keeps the runtime's cwd
    off sys.path."""
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                f"PYTHONPATH='{libcni.ROOT}' exec '{sys.executable}' -P -m {module} \"$@\"\n")
    os.chmod(path, 0o755)


@pytest.fixture(scope="session")
def cni_bin_dir():
    """One CNI bin dir for every client: our plugins (wrappers around this checkout, or
    the executables built into $UNDERLAY_BIN_DIR) and Debian's reference loopback and tuning."""
    for name in REFERENCE_PLUGINS:
        require(os.path.join(libcni.REFERENCE_DIR, name), "containernetworking-plugins")
    path = tempfile.mkdtemp(prefix="underlay-bin-")
    try:
        built = os.environ.get("UNDERLAY_BIN_DIR")
        for name, module in libcni.OUR_PLUGINS.items():
            if built:
                source = os.path.join(os.path.abspath(built), name)
                if not os.path.exists(source):
                    pytest.fail(f"UNDERLAY_BIN_DIR={built} has no {name} (run `make build`)", pytrace=False)
                os.symlink(source, os.path.join(path, name))
            else:
                write_wrapper(os.path.join(path, name), module)
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
def state_dir(tmp_path):
    """underlay's stateDir (records of the parents it creates), private to the test."""
    return str(tmp_path / "state")


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
