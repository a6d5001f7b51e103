"""host-local run as a runtime runs it, on a data directory of its own per test."""

import os

import pytest

from tests.plugins import REFERENCE_DIR, run_plugin, run_reference

NETNS = "/run/netns/underlay-test"   # host-local never opens it; ADD and CHECK only need it set


class HostLocal:
    """Runs host-local (ours, or the reference with reference=True) on one data directory."""

    def __init__(self, data_dir, reference=False):
        self.data_dir = str(data_dir)
        self.reference = reference

    def config(self, *range_sets, version="1.0.0", name="net1", **ipam):
        """A network config; each range set is a list of range dicts or a bare subnet string."""
        sets = [[{"subnet": s}] if isinstance(s, str) else s for s in range_sets]
        section = {"type": "host-local", "dataDir": self.data_dir}
        if sets:
            section["ranges"] = sets
        section.update(ipam)
        return {"cniVersion": version, "name": name, "type": "macvlan", "ipam": section}

    def run(self, command, conf, cid="c1", ifname="eth0", netns=NETNS, **kw):
        runner = run_reference if self.reference else run_plugin
        # None or "" leaves a variable unset
        outcome = runner("host-local", command, conf, container_id=cid or "", ifname=ifname or "",
                         netns=netns or "", **kw)
        if command not in ("", None):
            assert outcome.stderr == "", f"host-local {command} wrote to stderr: {outcome.stderr}"
        return outcome

    def add(self, conf, cid="c1", ifname="eth0", **kw):
        return self.run("ADD", conf, cid, ifname, **kw)

    def delete(self, conf, cid="c1", ifname="eth0", **kw):
        return self.run("DEL", conf, cid, ifname, **kw)

    def net_dir(self, name="net1"):
        return os.path.join(self.data_dir, name)

    def leases(self, name="net1"):
        """{ip: file content} of the lease files on disk."""
        out = {}
        for entry in os.scandir(self.net_dir(name)):
            if entry.is_file(follow_symlinks=False) and ("." in entry.name or ":" in entry.name) \
                    and not entry.name.startswith((".", "last_reserved_ip.")):
                with open(entry.path, "rb") as f:
                    out[entry.name] = f.read()
        return out


def addresses(outcome):
    """The bare addresses of an ADD result (newest forms)."""
    assert outcome.ok, outcome
    return [ip["address"].split("/")[0] for ip in outcome.json["ips"]]


def error(outcome, code, *fragments):
    """Assert an error outcome: non-zero exit, spec error JSON with `code`, msg holding fragments."""
    assert not outcome.ok, outcome
    assert outcome.json is not None, outcome
    assert set(outcome.json) == {"cniVersion", "code", "msg", "details"}, outcome
    assert outcome.json["code"] == code, outcome
    for fragment in fragments:
        assert fragment in outcome.json["msg"], outcome
    return outcome.json


@pytest.fixture
def hl(tmp_path):
    return HostLocal(tmp_path / "networks")


@pytest.fixture
def reference(hl):
    """The Debian reference host-local on the same data directory. Missing is a failure, not a skip."""
    binary = os.path.join(REFERENCE_DIR, "host-local")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing: install containernetworking-plugins (build/apt-packages.txt)")
    return HostLocal(hl.data_dir, reference=True)
