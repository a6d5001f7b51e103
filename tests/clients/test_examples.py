"""Every conflist in conf/examples: valid against conf/schema, and run through libcni.

ADD, CHECK (prevResult from libcni's result cache), STATUS, GC (valid attachments
from the cache) and DEL, in a test "host" netns whose veth stands in for the
example's master, with a private dataDir.
"""

import ipaddress
import json
import uuid

import pytest

from tests import netns as nsutil
from tests.clients import libcni
from tests.clients.libcni import version_key

EXAMPLE_NAMES = sorted(p.name for p in libcni.EXAMPLES.glob("*.conflist"))
DOCKER_NAMES = sorted(f"docker/{p.name}" for p in libcni.DOCKER.glob("*.conflist"))
SHIPPED = [pytest.param(name, marks=pytest.mark.kernel(*needs)) if needs else name
           for name in EXAMPLE_NAMES + DOCKER_NAMES for needs in [libcni.kernel_needs(libcni.load_example(name))]]


def routes(ns):
    out = nsutil.sh("ip", "-j", "route", "show", "table", "all", ns=ns).stdout
    out6 = nsutil.sh("ip", "-j", "-6", "route", "show", "table", "all", ns=ns).stdout
    return json.loads(out) + json.loads(out6)


def assert_attached(result, ns, conflist, data_dir, cid, ifname="eth0"):
    """What ADD printed is what is in the pod netns and on disk."""
    ours, chained = conflist["plugins"][0], conflist["plugins"][1:]
    iface = result["interfaces"][0]
    assert iface["name"] == ifname and iface["sandbox"] == nsutil.netns_path(ns)
    link = nsutil.link_json(ns, ifname)
    assert link["address"] == iface["mac"]
    assert link["linkinfo"]["info_kind"] == ours["type"]
    default_mode = {"macvlan": "bridge", "ipvlan": "l2"}[ours["type"]]
    assert link["linkinfo"]["info_data"]["mode"] == ours.get("mode", default_mode)
    assert "UP" in link["flags"]
    tuning = next((p for p in chained if p["type"] == "tuning"), {})
    mtu = tuning.get("mtu") or ours.get("mtu")
    if mtu:
        assert link["mtu"] == mtu
    if tuning.get("promisc"):
        assert link["promiscuity"] >= 1

    ipam = ours.get("ipam") or {}
    if not ipam.get("type"):
        assert not result.get("ips") and nsutil.addrs(ns, ifname) == []
        return
    addresses = [ip["address"] for ip in result["ips"]]
    assert len(addresses) == (len(ipam["ranges"]) if ipam.get("ranges") else 1)  # one per range set
    assert nsutil.addrs(ns, ifname) == sorted(addresses)
    for address in addresses:
        assert libcni.allowed(address, ipam), f"{address} should never have been handed out"
    for ip in result["ips"]:
        assert ip["interface"] == 0
    on_disk = libcni.leases(data_dir, conflist["name"])
    assert sorted(on_disk) == sorted(a.split("/")[0] for a in addresses)
    assert set(on_disk.values()) == {f"{cid}\r\n{ifname}".encode()}
    present = routes(ns)
    for route in result.get("routes") or []:
        dst = "default" if ipaddress.ip_network(route["dst"]).prefixlen == 0 else route["dst"]
        assert any(r["dst"] == dst and r.get("dev") == ifname for r in present), (route, present)
    if ours.get("dns"):
        assert result["dns"] == ours["dns"]


def test_examples_cover_the_documented_shapes():
    """conf/examples has what docs/clients.md promises."""
    examples = {name: libcni.load_example(name) for name in EXAMPLE_NAMES}
    versions = {c.get("cniVersion") for c in examples.values()}
    assert {"0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= versions
    plugins = [p for c in examples.values() for p in c["plugins"]]
    # cniVersions beside a cniVersion old libcni runs (libcni before 1.2 ignores cniVersions)
    assert any("cniVersions" in c and c.get("cniVersion") == "1.0.0" for c in examples.values())
    assert any(p.get("ipam") == {} for p in plugins)
    assert any(len(c["plugins"]) > 1 and c["plugins"][-1]["type"] == "tuning" for c in examples.values())
    assert any(len(p.get("ipam", {}).get("ranges", [])) == 2 for p in plugins)
    assert any(p.get("ipam", {}).get("exclude") and p["ipam"].get("auxAddresses") for p in plugins)


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_example_matches_schema(example):
    conflist = libcni.load_example(example)
    assert conflist["plugins"] and conflist["plugins"][0]["type"] in libcni.OUR_PLUGINS
    version = conflist.get("cniVersion") or max(conflist["cniVersions"], key=version_key)
    used = []
    for config in libcni.plugin_configs(conflist, version):
        used += libcni.validate_plugin_config(config)
    assert used, f"{example}: nothing of ours to validate"


@pytest.mark.parametrize("example", DOCKER_NAMES)
def test_docker_example_runs_on_debian_12s_libcni(example):
    """docs/clients.md: write 1.0.0, the highest Debian 12's libcni 1.1.2 reads."""
    assert libcni.load_example(example)["cniVersion"] == "1.0.0"


@pytest.mark.root
@pytest.mark.clients
@pytest.mark.both_paths
@pytest.mark.parametrize("example", SHIPPED)
def test_example_through_libcni(example, driver, host_ns, master, pod_ns, data_dir, state_dir):
    conflist = libcni.localize(libcni.load_example(example), master, data_dir, state_dir)
    node_links = sorted(nsutil.links(host_ns))
    net = driver.install(conflist)
    version = driver.version_of(net)
    ns = pod_ns()
    netns = nsutil.netns_path(ns)
    cid = uuid.uuid4().hex
    if version_key(version) > version_key(driver.libcni_version):
        return libcni_cannot_read(driver, net, version, ns, data_dir, cid)

    added = driver.add(net, netns, container_id=cid)
    assert added.ok, added
    assert added.json["cniVersion"] == version
    assert_attached(added.json, ns, conflist, data_dir, cid)
    assert (net, cid, "eth0") in driver.cached(net)

    checked = driver.check(net, netns, container_id=cid)
    if version_key(version) >= (0, 4, 0):
        assert checked.ok, checked
    else:
        assert not checked.ok and "does not support the CHECK command" in checked.json["error"]

    assert driver.status(net).ok
    before = libcni.leases(data_dir, net)
    collected = driver.gc(net)  # valid attachments: everything in libcni's cache
    assert collected.ok, collected
    assert libcni.leases(data_dir, net) == before
    assert "eth0" in nsutil.links(ns)

    deleted = driver.delete(net, netns, container_id=cid)
    assert deleted.ok, deleted
    assert "eth0" not in nsutil.links(ns)
    assert libcni.leases(data_dir, net) == {}
    assert driver.cached(net) == {}
    again = driver.delete(net, netns, container_id=cid)
    assert again.ok, f"DEL must be idempotent: {again}"
    assert sorted(nsutil.links(host_ns)) == node_links, "a parent made for the example outlived its DEL"


def libcni_cannot_read(driver, net, version, ns, data_dir, cid):
    """This libcni predates `version` (Debian 12's libcni 1.1.2 reads results up to 1.0.0):
    our ADD succeeds, libcni fails reading its result, and the runtime's DEL must then
    leave nothing behind. STATUS and GC (1.1.0 verbs) reach the plugins."""
    netns = nsutil.netns_path(ns)
    added = driver.add(net, netns, container_id=cid)
    assert not added.ok and f'unsupported CNI result version "{version}"' in added.json["error"], added
    assert "eth0" in nsutil.links(ns) and libcni.leases(data_dir, net)
    deleted = driver.delete(net, netns, container_id=cid)
    assert deleted.ok, deleted
    assert "eth0" not in nsutil.links(ns) and libcni.leases(data_dir, net) == {}
    assert driver.status(net).ok
    assert driver.gc(net).ok


@pytest.mark.root
@pytest.mark.clients
@pytest.mark.both_paths
def test_check_through_libcni_reports_a_lost_address(driver, master, pod_ns, data_dir, state_dir):
    """CHECK compares libcni's cached prevResult with the pod: a removed address is code 100."""
    conflist = libcni.localize(libcni.load_example("macvlan-bridge.conflist"), master, data_dir, state_dir)
    net = driver.install(conflist)
    ns = pod_ns()
    netns = nsutil.netns_path(ns)
    added = driver.add(net, netns, container_id="c-check")
    assert added.ok, added
    nsutil.sh("ip", "addr", "flush", "dev", "eth0", "scope", "global", ns=ns)
    checked = driver.check(net, netns, container_id="c-check")
    assert not checked.ok
    assert checked.json["code"] == 100 and added.json["ips"][0]["address"] in checked.json["error"], checked
    assert driver.delete(net, netns, container_id="c-check").ok
    assert libcni.leases(data_dir, net) == {}


@pytest.mark.root
@pytest.mark.clients
@pytest.mark.both_paths
def test_status_through_libcni_reports_a_missing_master(driver, host_ns, master, data_dir, state_dir):
    """STATUS (a 1.1.0 list) answers 50 "not available" once the master is gone."""
    conflist = libcni.localize(libcni.load_example("version-1.1.0.conflist"), master, data_dir, state_dir)
    net = driver.install(conflist)
    assert driver.status(net).ok
    nsutil.sh("ip", "link", "del", master, ns=host_ns)
    status = driver.status(net)
    assert not status.ok and status.json["code"] == 50 and master in status.json["error"], status
