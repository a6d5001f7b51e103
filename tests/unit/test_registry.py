"""cni/registry.py: one record per executable, and every module behind a record keeps its side of it."""

import pathlib

import pytest

from cni import contract, dispatch, registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECORDS = list(registry.EXECUTABLES.values())
CNI_PLUGINS = [e for e in RECORDS if e.is_cni_plugin]


def test_a_record_is_a_read_only_tuple_with_names():
    e = registry.EXECUTABLES["host-local"]
    assert (e.name, e.module, e.role, e.schema, e.about) == tuple(e)
    assert e == ("host-local", "ipam.host_local", "ipam", "host-local", "CNI host-local IPAM plugin")
    with pytest.raises(AttributeError):
        e.name = "other"


def test_every_name_is_its_records_name_and_every_role_known():
    for name, e in registry.EXECUTABLES.items():
        assert e.name == name and e.role in ("main", "ipam", "agent", "tool")
    assert registry.cni_plugins() == ["macvlan", "ipvlan", "cluster-access", "host-local", "cluster-ipam", "dhcp"]


@pytest.mark.parametrize("plugin", CNI_PLUGINS, ids=lambda e: e.name)
def test_a_cni_plugins_record(plugin):
    """Its schema is in conf/schema, its about line names it, its module has VERBS and load_config."""
    assert (ROOT / "conf" / "schema" / f"{plugin.schema}.json").is_file()
    assert plugin.about.startswith(f"CNI {plugin.name} ")
    module = dispatch.plugin_module(plugin)
    assert set(module.VERBS) <= set(contract.REQUIRED_ENV) and "ADD" in module.VERBS
    assert all(callable(verb) for verb in module.VERBS.values())
    assert callable(module.load_config) and callable(module.main)


@pytest.mark.parametrize("plugin", [e for e in CNI_PLUGINS if e.role == "ipam"], ids=lambda e: e.name)
def test_an_ipams_optional_hold_conflict_takes_request_address_mac(plugin):
    """Where an IPAM module defines hold_conflict (dispatch.hold_ipam_conflict), it is
    hold_conflict(request, address, mac); host-local and cluster-ipam define it."""
    import inspect
    hold = getattr(dispatch.plugin_module(plugin), "hold_conflict", None)
    if plugin.name in ("host-local", "cluster-ipam"):
        assert hold is not None
    if hold is not None:
        assert list(inspect.signature(hold).parameters) == ["request", "address", "mac"]


def test_hold_ipam_conflict_is_false_for_an_ipam_that_is_not_ours():
    request = contract.Request("ADD", {}, {"name": "n", "type": "macvlan", "ipam": {"type": "dhcp-of-others"}}, b"")
    assert dispatch.hold_ipam_conflict(request, "10.0.0.2", "02:00:00:00:00:01") is False
    request = contract.Request("ADD", {}, {"name": "n", "type": "macvlan"}, b"")
    assert dispatch.hold_ipam_conflict(request, "10.0.0.2", "02:00:00:00:00:01") is False


@pytest.mark.parametrize("executable", [e for e in RECORDS if not e.is_cni_plugin], ids=lambda e: e.name)
def test_the_agent_and_the_tool_run_through_main(executable):
    assert executable.schema is None
    assert callable(dispatch.plugin_module(executable).main)


def test_in_process_ipam_is_our_ipam_record_prefixed_or_not():
    assert registry.in_process_ipam("host-local") is registry.EXECUTABLES["host-local"]
    assert registry.in_process_ipam("underlay-cluster-ipam") is registry.EXECUTABLES["cluster-ipam"]
    assert registry.in_process_ipam("dhcp") is registry.EXECUTABLES["dhcp"]
    assert registry.in_process_ipam("macvlan") is None and registry.in_process_ipam("static") is None
    assert registry.in_process_ipam(None) is None


def test_python_m_registry_lists_names_by_role():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "cni.registry", "main", "ipam"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.split() == registry.cni_plugins()
    out = subprocess.run([sys.executable, "-m", "cni.registry"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.split() == list(registry.EXECUTABLES)
