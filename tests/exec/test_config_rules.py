"""Config rules host-local applies before it takes an address, exec'd as a runtime does:
prefixes (routes, exclusions), near-miss keys, messages in words."""

import os

import pytest

from tests.exec.conftest import error

V4 = "10.60.0.0/24"


def no_leases(hl):
    assert not os.path.isdir(hl.net_dir()) or hl.leases() == {}


@pytest.mark.parametrize("routes, fragments", [
    ([{"dst": "10.9.0.0"}], ["ipam.routes[0].dst: '10.9.0.0' is not a CIDR: the prefix length is missing"]),
    ([{"dst": "0.0.0.0/0"}, {"dst": "fd00:9::"}], ["ipam.routes[1].dst", "fd00:9::/128"]),
    ([{"dst": "10.9.0.1/16"}], ["ipam.routes[0].dst: 10.9.0.1/16 has host bits set", "10.9.0.0/16"]),
    ([{"dst": "10.9.0.0/16", "gw": "10.60.0"}], ["ipam.routes[0].gw"]),
])
@pytest.mark.parametrize("version", ["0.2.0", "1.0.0"])
def test_a_route_without_prefix_is_refused_before_any_lease(hl, routes, fragments, version):
    error(hl.add(hl.config(V4, routes=routes, version=version)), 7, *fragments)
    no_leases(hl)


def test_routes_with_prefixes_are_returned_as_written(hl):
    routes = [{"dst": "10.9.0.0/16", "gw": "10.60.0.1"}, {"dst": "10.10.0.7/32"}]
    out = hl.add(hl.config(V4, routes=routes))
    assert out.ok and out.json["routes"] == routes, out


@pytest.mark.parametrize("where", ["top", "range"])
def test_an_exclusion_with_host_bits_is_taken_as_the_network_it_names(hl, tmp_path, where):
    """Issue 17: releases before the one CIDR rule took `exclude` entries with host bits as the
    network they name (as whereabouts does); refusing them stopped an upgraded network's pods.
    Taken so again, with a warning on stderr and in the log; a subnet's host bits stay refused."""
    import json
    from tests.plugins import run_plugin
    log = tmp_path / "ops.log"
    span = {"subnet": "192.168.50.0/24", "rangeStart": "192.168.50.99", "rangeEnd": "192.168.50.104"}
    if where == "top":
        conf, field = hl.config([span], exclude=["192.168.50.101/30"]), "ipam.exclude[0]"
    else:
        conf = hl.config([dict(span, exclude=["192.168.50.101/30"])])
        field = "ipam.ranges[0][0].exclude[0]"
    conf["logFile"] = str(log)
    got = []
    for cid in ("c1", "c2"):
        out = run_plugin("host-local", "ADD", conf, container_id=cid, ifname="eth0", netns="/run/netns/x")
        assert out.ok, out
        got += [ip["address"] for ip in out.json["ips"]]
    assert got == ["192.168.50.99/24", "192.168.50.104/24"]   # .100-.103: the /30 that .101/30 names
    warning = (f"{field}: 192.168.50.101/30 has host bits set; excluded as 192.168.50.100/30, the network it "
               "names (write 192.168.50.100/30 to say so)")
    assert out.stderr == f"host-local: warning: {warning}\n", out
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["warnings"] for e in entries] == [[warning], [warning]]
    subnet = hl.config("192.168.50.1/24")
    error(hl.add(subnet), 7, "ipam.ranges[0][0].subnet: 192.168.50.1/24 has host bits set",
          "the network address is 192.168.50.0 (192.168.50.0/24)")


# -- GC reads the older name of the valid list when the newer is absent -----------------------

@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_keeps_what_either_name_lists(hl, key):
    conf = hl.config(V4, version="1.1.0")
    for cid in ("keep", "drop"):
        assert hl.add(conf, cid).ok
    out = hl.run("GC", dict(conf, **{key: [{"containerID": "keep", "ifname": "eth0"}]}), cid=None, ifname=None,
                 netns=None)
    assert out.ok and out.stdout == "", out
    assert list(hl.leases().values()) == [b"keep\r\neth0"]


def test_gc_with_both_names_follows_the_spec_name(hl):
    conf = hl.config(V4, version="1.1.0")
    for cid in ("a", "b"):
        assert hl.add(conf, cid).ok
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
                       "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]})
    assert hl.run("GC", gc).ok
    assert list(hl.leases().values()) == [b"a\r\neth0"]


def test_gc_refuses_a_malformed_older_list_and_releases_nothing(hl):
    conf = hl.config(V4, version="1.1.0")
    assert hl.add(conf).ok
    error(hl.run("GC", dict(conf, **{"cni.dev/attachments": [{"containerID": "c1"}]})), 7, "cni.dev/attachments[0]")
    assert len(hl.leases()) == 1


# -- unknown keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("ipam, message", [
    ({"exlude": ["10.60.0.0/24"]}, "unknown key 'exlude' in ipam; did you mean 'exclude'?"),
    ({"ranges": [[{"subnet": V4, "exlude": ["10.60.0.0/24"]}]]},
     "unknown key 'exlude' in ipam.ranges[0][0]; did you mean 'exclude'?"),
    ({"auxAdresses": {"a": "10.60.0.2"}}, "unknown key 'auxAdresses' in ipam; did you mean 'auxAddresses'?"),
    ({"ranges": [[{"subnet": V4, "rangStart": "10.60.0.100"}]]},
     "unknown key 'rangStart' in ipam.ranges[0][0]; did you mean 'rangeStart'?"),
    ({"route": [{"dst": "0.0.0.0/0"}]}, "unknown key 'route' in ipam; did you mean 'routes'?"),
    ({"resolveConf": "/etc/resolv.conf"}, "unknown key 'resolveConf' in ipam; did you mean 'resolvConf'?"),
])
@pytest.mark.parametrize("version", ["0.3.1", "1.1.0"])
def test_a_near_miss_key_is_refused_before_any_lease(hl, ipam, message, version):
    conf = hl.config(V4, version=version, **ipam)
    e = error(hl.add(conf), 7, message)
    assert e["msg"] == message and e["cniVersion"] == version
    no_leases(hl)


def test_a_near_miss_key_does_not_stop_del_or_gc(hl):
    """A config ADDed by an older underlay (typo and all) must still be torn down."""
    from tests.plugins import run_plugin
    conf = hl.config(V4, version="1.1.0")
    assert hl.add(conf).ok
    typo = dict(conf, ipam=dict(conf["ipam"], exlude=["10.60.0.9"]))
    out = run_plugin("host-local", "DEL", typo, container_id="c1", ifname="eth0")   # reads only the store
    assert out.ok, out
    no_leases(hl)
    assert hl.add(conf).ok
    out = run_plugin("host-local", "GC", dict(typo, **{"cni.dev/valid-attachments": []}))
    assert out.ok, out
    assert out.stderr == "host-local: warning: unknown key 'exlude' in ipam is not used; did you mean 'exclude'?\n"
    no_leases(hl)
    out = run_plugin("host-local", "STATUS", typo)
    assert out.ok and "did you mean 'exclude'?" in out.stderr, out


def test_other_unknown_keys_are_kept_and_warned_about(hl, tmp_path):
    from tests.plugins import run_plugin
    log = tmp_path / "ops.log"
    conf = hl.config([{"subnet": V4, "note": "rack 4"}], somethingNew=[1, 2])
    conf.update(future={"x": 1}, logFile=str(log))   # the top level is the main plugin's: no warning
    out = run_plugin("host-local", "ADD", conf, container_id="c1", ifname="eth0", netns="/run/netns/x")
    assert out.ok, out
    assert out.stderr.splitlines() == [
        "host-local: warning: unknown key 'somethingNew' in ipam is not used",
        "host-local: warning: unknown key 'note' in ipam.ranges[0][0] is not used"]
    import json
    [entry] = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["result"] == "ok" and entry["warnings"] == [
        "unknown key 'somethingNew' in ipam is not used", "unknown key 'note' in ipam.ranges[0][0] is not used"]


@pytest.mark.parametrize("plugin, extra, message", [
    ("macvlan", {"mdoe": "private"}, "unknown key 'mdoe' in the network config; did you mean 'mode'?"),
    ("ipvlan", {"mdoe": "l3"}, "unknown key 'mdoe' in the network config; did you mean 'mode'?"),
    ("ipvlan", {"flags": "private"}, "unknown key 'flags' in the network config; did you mean 'flag'?"),
    # the in-process IPAM's section is checked before the main plugin does anything too
    ("macvlan", {"ipam": {"type": "host-local", "dataDir": "/nonexistent/ucf", "ranges": [[{"subnet": V4}]],
                          "exlude": []}}, "unknown key 'exlude' in ipam; did you mean 'exclude'?"),
    ("ipvlan", {"ipam": {"type": "host-local", "dataDir": "/nonexistent/ucf", "ranges": [[{"subnet": V4}]],
                         "routes": [{"dst": "10.9.0.0"}]}},
     "ipam.routes[0].dst: '10.9.0.0' is not a CIDR: the prefix length is missing "
     "(address/prefix, e.g. 10.9.0.0/32 for this address alone)"),
])
def test_a_main_plugin_refuses_near_misses_before_touching_anything(plugin, extra, message):
    from tests.plugins import run_plugin
    conf = dict({"cniVersion": "1.0.0", "name": "ucfnet", "type": plugin, "master": "ucfnone0"}, **extra)
    # the netns does not exist: the config is refused before it is opened
    out = run_plugin(plugin, "ADD", conf, container_id="c1", ifname="eth0", netns="/run/netns/ucf-missing")
    assert error(out, 7, message)["msg"] == message


BLOCK_SIZE_WORDS = ('ipam.blockSize must be a prefix length from 8 to 30 (a number, for IPv4; IPv6 blocks then hold '
                    'as many addresses) or {"ipv4": 8-30, "ipv6": 104-126}; got ')


@pytest.mark.parametrize("block_size, message", [
    ({"ipv4": 28, "ip6": 124}, "unknown key 'ip6' in ipam.blockSize; did you mean 'ipv6'?"),
    (32, "invalid network config: " + BLOCK_SIZE_WORDS + "32"),
    ("26", "invalid network config: " + BLOCK_SIZE_WORDS + "'26'"),
    ({"ipv4": 28, "ipv6": 64}, "invalid network config: " + BLOCK_SIZE_WORDS + "{'ipv4': 28, 'ipv6': 64}"),
])
def test_a_block_size_mistake_is_said_in_words(block_size, message):
    """Issue 17: these all answered "must be valid exactly by one definition (0 matches found)".
    Refused before etcd is contacted (the endpoint serves nothing)."""
    from tests.plugins import run_plugin
    conf = {"cniVersion": "1.0.0", "name": "bsnet", "type": "macvlan",
            "ipam": {"type": "cluster-ipam", "etcd": {"endpoints": ["http://192.0.2.1:2379"]}, "node": "n1",
                     "dataDir": "/nonexistent/bs", "ranges": [[{"subnet": "10.62.0.0/24"}]], "blockSize": block_size}}
    out = run_plugin("cluster-ipam", "ADD", conf, container_id="c1", ifname="eth0", netns="/run/netns/bs-missing")
    assert error(out, 7, message)["msg"] == message
    assert "definition" not in out.stdout
