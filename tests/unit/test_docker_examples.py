"""conf/docker/: one conflist and one NetworkAttachmentDefinition per Docker option
of the README's "Coming from Docker" section, each valid for its plugin."""

import json
import pathlib
import textwrap

import jsonschema
import pytest

from cni.contract import Request
from ipam import ranges

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKER = ROOT / "conf" / "docker"
OPTIONS = ["parent", "parent-vlan", "macvlan-mode", "ipvlan-mode", "ipvlan-flag", "subnet-gateway",
           "ip-range", "aux-address", "ip", "internal", "ipv6"]


def nad_config(path):
    """The JSON under `spec.config: |` of one of our NAD files."""
    text = path.read_text()
    head, sep, block = text.partition("  config: |\n")
    assert sep, f"{path.name}: no spec.config block"
    assert "kind: NetworkAttachmentDefinition" in head and "apiVersion: k8s.cni.cncf.io/v1" in head
    return json.loads(textwrap.dedent(block))


def schema(kind):
    return json.loads((ROOT / "conf" / "schema" / f"{kind}.json").read_text())


def test_every_option_has_its_pair_and_nothing_else_is_there():
    names = sorted(p.name for p in DOCKER.iterdir())
    assert names == sorted([f"{o}.conflist" for o in OPTIONS] + [f"{o}.yaml" for o in OPTIONS])


@pytest.mark.parametrize("option", OPTIONS)
def test_conflist_and_nad_say_the_same_and_validate(option):
    conflist = json.loads((DOCKER / f"{option}.conflist").read_text())
    assert nad_config(DOCKER / f"{option}.yaml") == conflist
    assert "# Docker: " in (DOCKER / f"{option}.yaml").read_text()
    for plugin in conflist["plugins"]:
        netconf = dict(plugin, name=conflist["name"], cniVersion=conflist["cniVersion"])
        jsonschema.validate(netconf, schema(plugin["type"]))
        jsonschema.validate(netconf, schema("host-local"))
        # what the plugins themselves check before acting
        env = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}
        request = Request("STATUS", env, netconf, b"")
        module = __import__(f"cni.plugins.{plugin['type']}", fromlist=["Conf"])
        module.Conf(request)
        ranges.range_sets(netconf["ipam"])
