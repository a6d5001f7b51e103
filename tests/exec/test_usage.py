"""What a person running a plugin by hand sees: --help, a hint for a mistyped verb, and
errors in the config's cniVersion. Exec'd as a runtime would (from source, or the
bundle with UNDERLAY_BIN_DIR)."""

import pytest

from cni import registry
from tests.exec.conftest import error
from tests.plugins import plugin_argv, run_plugin

NETNS = "/run/netns/ucf-never-opened"
PLUGINS = registry.cni_plugins()


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(plugin, flag):
    # CNI_COMMAND set and stdin empty: --help wins, nothing is read or done
    out = run_plugin(plugin, "ADD", b"", argv=plugin_argv(plugin) + [flag])
    assert out.code == 0 and out.stderr == "", out
    assert f"CNI {plugin} " in out.stdout.splitlines()[0]
    assert "CNI_COMMAND      the verb: ADD, CHECK, DEL, GC, STATUS, VERSION" in out.stdout
    for variable in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"):
        assert variable in out.stdout
    assert "README.md and docs/" in out.stdout


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("command, hint", [("add", "ADD"), ("DELETE", "DEL"), ("Check", "CHECK")])
def test_a_mistyped_verb_gets_a_hint(plugin, command, hint):
    conf = {"cniVersion": "0.4.0", "name": "n1", "type": plugin, "ipam": {"type": "host-local"}}
    e = error(run_plugin(plugin, command, conf), 4, f"unknown command {command!r}; did you mean {hint!r}?")
    assert e["cniVersion"] == "0.4.0"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_errors_before_the_config_is_validated_answer_in_its_version(plugin):
    conf = {"cniVersion": "0.3.1", "name": "bad name", "type": plugin, "ipam": {"type": "host-local"}}
    assert error(run_plugin(plugin, "ADD", conf, netns=NETNS), 7, "name:")["cniVersion"] == "0.3.1"
    conf["name"] = "n1"
    assert error(run_plugin(plugin, "ADD", conf, netns=NETNS, ifname="a/b"), 4, "CNI_IFNAME")["cniVersion"] == "0.3.1"
