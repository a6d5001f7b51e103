"""host-local exec'd as a runtime does: every verb, every error code, every cniVersion."""

import fcntl
import ipaddress
import json
import os
import sys

import pytest

from cni.contract import SUPPORTED_VERSIONS
from tests.exec.conftest import addresses, error
from tests.plugins import ROOT

V4 = "10.1.0.0/24"
V6 = "fd00:1::/64"


def no_leases(hl):
    return not os.path.exists(hl.net_dir()) or hl.leases() == {}


# -- VERSION and about --------------------------------------------------------------

def test_version(hl):
    out = hl.run("VERSION", b'{"cniVersion": "1.0.0"}', cid=None, ifname=None, netns=None)
    assert out.ok and out.stderr == ""
    assert out.json["cniVersion"] == "1.1.0"
    assert out.json["supportedVersions"] == list(SUPPORTED_VERSIONS)


def test_about(hl):
    out = hl.run(None, b"", extra={"CNI_COMMAND": None})
    assert out.ok and out.stdout == ""
    assert out.stderr.startswith("CNI host-local IPAM plugin (underlay ")
    assert "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in out.stderr


# -- ADD in every version --------------------------------------------------------------

@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.both_paths
def test_add_result_in_every_version(hl, version, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nnameserver 10.1.0.53\nnameserver fd00:1::53\nsearch a.test b.test\n"
                      "domain a.test\noptions ndots:2 edns0\n")
    routes = [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "priority": 5}, {"dst": "::/0"}]
    out = hl.add(hl.config(V4, V6, version=version, routes=routes, resolvConf=str(resolv)))
    assert out.ok, out
    dns = {"nameservers": ["10.1.0.53", "fd00:1::53"], "search": ["a.test", "b.test"], "domain": "a.test",
           "options": ["ndots:2", "edns0"]}
    if version in ("0.1.0", "0.2.0"):
        assert out.json == {
            "cniVersion": version,
            "ip4": {"ip": "10.1.0.2/24", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]},
            "ip6": {"ip": "fd00:1::2/64", "gateway": "fd00:1::1", "routes": [{"dst": "::/0"}]},
            "dns": dns,
        }
        return
    ips = [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}, {"address": "fd00:1::2/64", "gateway": "fd00:1::1"}]
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        ips[0]["version"], ips[1]["version"] = "4", "6"
    if version != "1.1.0":
        routes = [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}]
    assert out.json == {"cniVersion": version, "ips": ips, "routes": routes, "dns": dns}


def test_two_addresses_of_one_family_refused_in_020(hl):
    out = hl.add(hl.config("10.1.0.0/24", "10.2.0.0/24", version="0.2.0"))
    error(out, 7, "0.2.0", "one address per family")
    assert no_leases(hl)


@pytest.mark.both_paths
def test_add_allocates_round_robin_and_del_releases(hl):
    conf = hl.config("10.1.0.0/29")
    assert [addresses(hl.add(conf, f"c{i}"))[0] for i in range(3)] == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert hl.delete(conf, "c1").ok
    assert sorted(hl.leases()) == ["10.1.0.2", "10.1.0.4"]
    # round-robin: the freed .3 comes back only after the range wraps
    assert [addresses(hl.add(conf, f"d{i}"))[0] for i in range(3)] == ["10.1.0.5", "10.1.0.6", "10.1.0.3"]


def test_dual_stack_and_ifnames(hl):
    conf = hl.config(V4, V6)
    assert addresses(hl.add(conf, "c1", "eth0")) == ["10.1.0.2", "fd00:1::2"]
    assert addresses(hl.add(conf, "c1", "net1")) == ["10.1.0.3", "fd00:1::3"]   # another interface, same pod
    assert hl.delete(conf, "c1", "eth0").ok
    assert sorted(hl.leases()) == ["10.1.0.3", "fd00:1::3"]
    assert hl.leases()["10.1.0.3"] == b"c1\r\nnet1"


# -- DEL ------------------------------------------------------------------------------------

@pytest.mark.both_paths
def test_del_is_idempotent(hl):
    conf = hl.config(V4)
    assert hl.add(conf).ok
    for _ in range(3):
        out = hl.delete(conf)
        assert out.ok and out.stdout == "", out
    assert hl.leases() == {}


def test_del_of_unknown_container(hl):
    out = hl.delete(hl.config(V4), "never-added")
    assert out.ok and out.stdout == "", out


def test_del_without_netns(hl):
    conf = hl.config(V4)
    assert hl.add(conf).ok
    assert hl.delete(conf, netns="").ok
    assert hl.leases() == {}


def test_del_needs_only_the_store(hl):
    """DEL parses only what it needs: a config whose ranges became invalid still releases."""
    assert hl.add(hl.config(V4)).ok
    out = hl.delete(hl.config("10.1.0.1/24", exclude=["nonsense"]))
    assert out.ok, out
    assert hl.leases() == {}


# -- requested addresses -----------------------------------------------------------------

def test_requested_from_cni_args(hl):
    assert addresses(hl.add(hl.config(V4), args="IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.0.77")) == ["10.1.0.77"]


def test_requested_from_args_cni_ips(hl):
    conf = dict(hl.config(V4), args={"cni": {"ips": ["10.1.0.78"]}})
    assert addresses(hl.add(conf)) == ["10.1.0.78"]


def test_requested_from_runtime_config(hl):
    conf = dict(hl.config(V4, V6), runtimeConfig={"ips": ["10.1.0.79/24", "fd00:1::79/64"]})
    assert addresses(hl.add(conf)) == ["10.1.0.79", "fd00:1::79"]


def test_requested_sources_combined(hl):
    conf = dict(hl.config(V4, V6, "10.2.0.0/24"), args={"cni": {"ips": ["fd00:1::80"]}},
                runtimeConfig={"ips": ["10.2.0.80"]})
    assert addresses(hl.add(conf, args="IP=10.1.0.80")) == ["10.1.0.80", "fd00:1::80", "10.2.0.80"]


def test_requested_twice_from_two_sources_is_one_request(hl):
    conf = dict(hl.config(V4), runtimeConfig={"ips": ["10.1.0.81"]})
    assert addresses(hl.add(conf, args="IP=10.1.0.81")) == ["10.1.0.81"]


def test_requested_in_one_set_others_allocated(hl):
    assert addresses(hl.add(hl.config(V4, V6), args="IP=fd00:1::99")) == ["10.1.0.2", "fd00:1::99"]


@pytest.mark.parametrize("args, conf_extra, code, fragments", [
    ("IP=10.1.0.300", {}, 4, ["CNI_ARGS IP", "'10.1.0.300' is not a valid IP address"]),
    ("", {"runtimeConfig": {"ips": ["banana"]}}, 7, ["runtimeConfig.ips", "'banana'"]),
    ("", {"args": {"cni": {"ips": ["10.1.0.1.1"]}}}, 7, ["args.cni.ips"]),
    ("IP=10.9.0.5", {}, 4, ["requested IP 10.9.0.5 is in no subnet of network"]),
    ("IP=10.1.0.5,10.1.0.6", {}, 4, ["10.1.0.5 and 10.1.0.6", "one address per range set"]),
    ("", {"runtimeConfig": {"ips": ["10.1.0.1"]}}, 7, ["requested IP 10.1.0.1", "it is the gateway"]),
    ("IP=10.1.0.0", {}, 4, ["requested IP 10.1.0.0", "it is the network address"]),
    ("IP=10.1.0.255", {}, 4, ["it is the broadcast address"]),
])
def test_requested_refused(hl, args, conf_extra, code, fragments):
    out = hl.add(dict(hl.config(V4), **conf_extra), args=args)
    error(out, code, *fragments)
    assert no_leases(hl)


def test_requested_taken(hl):
    conf = hl.config(V4)
    assert addresses(hl.add(conf, "c1", args="IP=10.1.0.50")) == ["10.1.0.50"]
    error(hl.add(conf, "c2", args="IP=10.1.0.50"), 101, "requested IP 10.1.0.50 is already allocated to container c1")


def test_failed_second_set_releases_the_first(hl):
    conf = hl.config(V4, V6)
    assert addresses(hl.add(conf, "c1", args="IP=fd00:1::7")) == ["10.1.0.2", "fd00:1::7"]
    error(hl.add(conf, "c2", args="IP=fd00:1::7"), 101, "already allocated")
    assert sorted(hl.leases()) == ["10.1.0.2", "fd00:1::7"]        # c2's 10.1.0.3 was given back
    assert addresses(hl.add(conf, "c2")) == ["10.1.0.4", "fd00:1::8"]


# -- duplicates and exhaustion -----------------------------------------------------------------

def test_duplicate_allocation(hl):
    conf = hl.config(V4, V6)
    assert hl.add(conf).ok
    error(hl.add(conf), 101, "has been allocated to c1/eth0", "duplicate allocation is not allowed")
    assert len(hl.leases()) == 2


def test_exhaustion(hl):
    conf = hl.config([{"subnet": "10.1.0.0/28", "rangeEnd": "10.1.0.9"}], exclude=["10.1.0.3-10.1.0.4"],
                     auxAddresses={"router": "10.1.0.5"})
    got = [addresses(hl.add(conf, f"c{i}"))[0] for i in range(5)]
    assert got == ["10.1.0.2", "10.1.0.6", "10.1.0.7", "10.1.0.8", "10.1.0.9"]
    out = hl.add(conf, "c-last")
    error(out, 101, "no free address in range set 0 (10.1.0.0/28 10.1.0.1-10.1.0.9): 9 addresses, 2 excluded, "
                    "1 aux, 1 reserved (network, broadcast, gateway), 5 in use")
    status = hl.run("STATUS", dict(conf, cniVersion="1.1.0"))
    error(status, 50, "range set 0", "no free address")
    assert hl.delete(conf, "c2").ok
    assert hl.run("STATUS", dict(conf, cniVersion="1.1.0")).ok


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_excluded_and_aux_never_handed_out(hl, family):
    if family == "v4":
        subnet, rng = "10.1.0.0/26", {"subnet": "10.1.0.0/26", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.63"}
        excluded = ["10.1.0.10", "10.1.0.16/29", "10.1.0.30-10.1.0.33", "10.1.0.32-10.1.0.40"]
        aux = {"router": "10.1.0.2", "dns": "10.1.0.50"}
    else:
        subnet, rng = "fd00:2::/122", {"subnet": "fd00:2::/122", "rangeStart": "fd00:2::"}
        excluded = ["fd00:2::10", "fd00:2::18/125", "fd00:2::30-fd00:2::33", "fd00:2::32-fd00:2::3a"]
        aux = {"router": "fd00:2::2", "dns": "fd00:2::3e"}
    conf = hl.config([rng], exclude=excluded[:2], auxAddresses=aux)
    conf["ipam"]["ranges"][0][0]["exclude"] = excluded[2:]
    got = []
    for i in range(100):
        out = hl.add(conf, f"c{i}")
        if not out.ok:
            error(out, 101, "no free address")
            break
        got += addresses(out)
    network = ipaddress.ip_network(subnet)
    never = {network.network_address, network.network_address + 1}        # network, gateway
    if family == "v4":
        never.add(network.broadcast_address)
    for entry in excluded:
        if "-" in entry:
            first, last = (ipaddress.ip_address(x) for x in entry.split("-"))
            never.update(first + i for i in range(int(last) - int(first) + 1))
        else:
            never.update(ipaddress.ip_network(entry, strict=False))
    never.update(ipaddress.ip_address(a) for a in aux.values())
    expected = [a for a in network if a not in never]
    assert sorted(ipaddress.ip_address(a) for a in got) == expected
    assert len(got) == len(set(got))


@pytest.mark.parametrize("requested, fragment", [
    ("10.1.0.17", "it is excluded by ipam.exclude[0] (10.1.0.16/29)"),
    ("10.1.0.31", "it is excluded by ipam.ranges[0][0].exclude[0] (10.1.0.30-10.1.0.33)"),
    ("10.1.0.2", "it is aux address 'router'"),
])
def test_excluded_and_aux_refused_when_requested(hl, requested, fragment):
    conf = hl.config([{"subnet": V4, "exclude": ["10.1.0.30-10.1.0.33"]}], exclude=["10.1.0.16/29"],
                     auxAddresses={"router": "10.1.0.2"})
    error(hl.add(conf, args=f"IP={requested}"), 4, f"requested IP {requested} cannot be handed out", fragment)


def test_network_address_never_handed_out_with_explicit_range_start(hl):
    conf = hl.config([{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "gateway": "10.1.0.6"}])
    got = [addresses(hl.add(conf, f"c{i}"))[0] for i in range(5)]
    assert got == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
    error(hl.add(conf, "c5"), 101, "no free address")


# -- CHECK --------------------------------------------------------------------------------

def prev(version, *ips):
    return {"cniVersion": version, "ips": [{"address": ip} for ip in ips]}


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
@pytest.mark.both_paths
def test_check_matches(hl, version):
    conf = hl.config(V4, V6, version=version)
    result = hl.add(conf).json
    assert hl.run("CHECK", dict(conf, prevResult=result)).ok


@pytest.mark.parametrize("prev_ips, fragment", [
    (["10.1.0.9/24", "fd00:1::2/64"], "prevResult address 10.1.0.9 is not leased to c1/eth0"),
    (["fd00:1::2/64"], "10.1.0.2 is leased to c1/eth0 but missing from prevResult"),
])
@pytest.mark.both_paths
def test_check_mismatch(hl, prev_ips, fragment):
    conf = hl.config(V4, V6)
    assert hl.add(conf).ok
    error(hl.run("CHECK", dict(conf, prevResult=prev("1.0.0", *prev_ips))), 100, fragment)


def test_check_after_del(hl):
    conf = hl.config(V4)
    result = hl.add(conf).json
    assert hl.delete(conf).ok
    error(hl.run("CHECK", dict(conf, prevResult=result)), 100, "not leased to c1/eth0")


def test_check_ignores_addresses_of_other_plugins(hl):
    conf = hl.config(V4)
    result = hl.add(conf).json
    result["ips"].append({"address": "192.168.9.9/24"})     # e.g. a chained plugin's
    assert hl.run("CHECK", dict(conf, prevResult=result)).ok


def test_check_needs_prev_result(hl):
    error(hl.run("CHECK", hl.config(V4)), 7, "prevResult")


def test_check_needs_040(hl):
    conf = hl.config(V4, version="0.3.1")
    error(hl.run("CHECK", dict(conf, prevResult=prev("0.3.1", "10.1.0.2/24"))), 1, "CHECK")


# -- GC and STATUS ------------------------------------------------------------------------------

@pytest.mark.both_paths
def test_gc(hl):
    conf = hl.config(V4, V6, version="1.1.0")
    for cid, ifname in [("keep", "eth0"), ("keep", "net1"), ("drop", "eth0"), ("drop2", "net1")]:
        assert hl.add(conf, cid, ifname).ok
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"},
                                                      {"containerID": "drop", "ifname": "net9"}]})
    out = hl.run("GC", gc, cid=None, ifname=None, netns=None)
    assert out.ok and out.stdout == "", out
    assert sorted(hl.leases()) == ["10.1.0.2", "fd00:1::2"]
    assert hl.leases()["10.1.0.2"] == b"keep\r\neth0"


@pytest.mark.parametrize("valid", [[], None, "absent"])
def test_gc_with_no_valid_attachments_releases_all(hl, valid):
    """libcni sends null for "none" (a nil Go slice) and omits the key without GC args: all go, as in the reference."""
    conf = hl.config(V4, version="1.1.0")
    assert hl.add(conf).ok
    gc = conf if valid == "absent" else dict(conf, **{"cni.dev/valid-attachments": valid})
    assert hl.run("GC", gc).ok
    assert hl.leases() == {}


def test_gc_reads_the_older_key_when_valid_attachments_is_absent(hl):
    """libcni sends both cni.dev/valid-attachments and cni.dev/attachments (containernetworking/cni #1101):
    a runtime sending only the older name keeps what it lists, as cluster-ipam and `underlay gc` read it."""
    conf = hl.config(V4, version="1.1.0")
    for cid in ("keep", "drop"):
        assert hl.add(conf, cid).ok
    assert hl.run("GC", dict(conf, **{"cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]})).ok
    assert list(hl.leases().values()) == [b"keep\r\neth0"]
    # both keys: the newer one rules, an empty list included
    both = {"cni.dev/valid-attachments": [], "cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert hl.run("GC", dict(conf, **both)).ok
    assert hl.leases() == {}
    assert hl.add(conf, "keep").ok
    error(hl.run("GC", dict(conf, **{"cni.dev/attachments": [{"containerID": "keep"}]})), 7,
          "cni.dev/attachments[0]")
    assert len(hl.leases()) == 1


def test_gc_needs_110(hl):
    error(hl.run("GC", hl.config(V4, version="1.0.0")), 1, "GC")


@pytest.mark.parametrize("attachments", [{"containerID": "c1"}, [{"containerID": "c1"}], ["c1"]])
def test_gc_bad_attachments(hl, attachments):
    conf = hl.config(V4, version="1.1.0")
    assert hl.add(conf).ok
    error(hl.run("GC", dict(conf, **{"cni.dev/valid-attachments": attachments})), 7, "valid-attachments")
    assert len(hl.leases()) == 1


@pytest.mark.both_paths
def test_status_ok(hl):
    out = hl.run("STATUS", hl.config(V4, V6, version="1.1.0"), cid=None, ifname=None, netns=None,
                 extra={"CNI_PATH": None})
    assert out.ok and out.stdout == "", out


def test_status_needs_110(hl):
    error(hl.run("STATUS", hl.config(V4, version="1.0.0")), 1, "STATUS")


@pytest.mark.both_paths
def test_status_one_set_exhausted(hl):
    conf = hl.config("10.1.0.0/30", V6, version="1.1.0")
    assert hl.add(conf).ok
    error(hl.run("STATUS", conf), 50, "range set 0 (10.1.0.0/30 10.1.0.1-10.1.0.2) has no free address")


def test_status_ignores_stray_files(hl):
    conf = hl.config(V4, version="1.1.0")
    assert hl.add(conf).ok
    with open(os.path.join(hl.net_dir(), "notes.txt"), "w") as f:
        f.write("someone's notes\n")
    assert hl.run("STATUS", conf).ok


@pytest.mark.parametrize("how", ["data dir is a file", "network dir is a file", "network dir is a symlink"])
def test_status_store_unusable(hl, tmp_path, how):
    if how == "data dir is a file":
        open(hl.data_dir, "w").close()
    else:
        os.makedirs(hl.data_dir)
        if how == "network dir is a file":
            open(hl.net_dir(), "w").close()
        else:
            os.makedirs(tmp_path / "elsewhere")
            os.symlink(tmp_path / "elsewhere", hl.net_dir())
    error(hl.run("STATUS", hl.config(V4, version="1.1.0")), 50, "host-local store not usable")


# -- every other error code ---------------------------------------------------------------------

def test_code_1_incompatible_version(hl):
    error(hl.add(hl.config(V4, version="2.0.0")), 1, "incompatible CNI versions")


@pytest.mark.parametrize("env, fragment", [
    ({"extra": {"CNI_NETNS": None}}, "CNI_NETNS"),
    ({"cid": None}, "CNI_CONTAINERID"),
    ({"ifname": None}, "CNI_IFNAME"),
    ({"extra": {"CNI_PATH": None}}, "CNI_PATH"),
    ({"ifname": "averyveryverylongname"}, "CNI_IFNAME"),
    ({"args": "FOO=bar"}, "unknown key 'FOO'"),
])
@pytest.mark.both_paths
def test_code_4_environment(hl, env, fragment):
    error(hl.add(hl.config(V4), **env), 4, fragment)
    assert not os.path.exists(hl.data_dir)


def test_code_4_unknown_command(hl):
    error(hl.run("ADDD", hl.config(V4)), 4, "CNI_COMMAND")


@pytest.mark.parametrize("stdin", [b"", b"{", b"[]", b"\xff"])
@pytest.mark.both_paths
def test_code_6_decode(hl, stdin):
    error(hl.add(stdin), 6)


@pytest.mark.parametrize("ipam, fragment", [
    ({"ranges": [[{"subnet": "10.1.0.1/24"}]]}, "ipam.ranges[0][0].subnet: 10.1.0.1/24 has host bits set"),
    ({"ranges": [[{"subnet": "10.1.0.0/31"}]]}, "too small"),
    ({"ranges": [[{"subnet": 5}]]}, "ipam.ranges[0][0].subnet must be string"),
    ({"ranges": [[{"subnet": V4}, {"subnet": V6}]]}, "mixes address families"),
    ({"ranges": [[{"subnet": V4}], [{"subnet": "10.1.0.0/25"}]]}, "overlaps range set 0"),
    ({"ranges": [[{"subnet": V4}]], "exclude": ["10.2.0.1"]}, "ipam.exclude[0]"),
    ({"ranges": [[{"subnet": V4}]], "auxAddresses": {"gw2": "10.2.0.1"}}, "ipam.auxAddresses.gw2"),
    ({"ranges": [[{"subnet": V4}]], "routes": [{"dst": "banana"}]}, "ipam.routes[0].dst"),
    ({"ranges": [[{"subnet": V4}]], "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}, "ipam.routes[0].gw"),
    ({"ranges": [[{"subnet": V4}]], "dataDir": "relative/dir"}, "ipam.dataDir"),
    ({"ranges": [[{"subnet": V4}]], "resolvConf": "/nonexistent/resolv.conf"}, "ipam.resolvConf"),
    ({}, "no IP ranges specified"),
])
@pytest.mark.both_paths
def test_code_7_invalid_config(hl, ipam, fragment):
    conf = hl.config()
    conf["ipam"].update(ipam)
    error(hl.add(conf), 7, fragment)
    assert no_leases(hl)


def test_code_7_missing_ipam(hl):
    error(hl.add({"cniVersion": "1.0.0", "name": "net1"}), 7, "ipam")
    error(hl.delete({"cniVersion": "1.0.0", "name": "net1"}), 7, "ipam")


@pytest.mark.both_paths
def test_code_11_lock_held(hl):
    conf = hl.config(V4, lockTimeout=0.3)
    assert hl.add(conf, "c0").ok
    fd = os.open(os.path.join(hl.net_dir(), "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        error(hl.add(conf, "c1"), 11, "try again later", f"held by pid {os.getpid()}", "0.3s")
        error(hl.delete(conf, "c0"), 11)
    finally:
        os.close(fd)
    assert hl.add(conf, "c1").ok


def test_code_5_io(hl, tmp_path):
    open(hl.data_dir, "w").close()          # the data dir is a file
    error(hl.add(hl.config(V4)), 5, "ipam.dataDir")
    error(hl.delete(hl.config(V4)), 5, "ipam.dataDir")


def test_cni_versions_list(hl):
    conf = hl.config(V4)
    del conf["cniVersion"]
    conf["cniVersions"] = ["0.3.1", "1.0.0", "5.0.0"]
    out = hl.add(conf)
    assert out.ok and out.json["cniVersion"] == "1.0.0"


def test_result_is_one_json_line(hl):
    out = hl.add(hl.config(V4))
    assert out.stdout.count("\n") == 1 and json.loads(out.stdout)


def test_requested_goes_to_the_set_whose_range_holds_it(hl):
    """Two sets may share a subnet with disjoint ranges (as the reference allows)."""
    conf = hl.config([{"subnet": V4, "rangeEnd": "10.1.0.99"}], [{"subnet": V4, "rangeStart": "10.1.0.100"}])
    assert addresses(hl.add(conf, args="IP=10.1.0.150")) == ["10.1.0.2", "10.1.0.150"]


def test_code_999_unexpected_exception(hl, tmp_path):
    """A bug (here: injected at start-up through sitecustomize) is an error JSON, never a traceback."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import ipam.ranges\n"
        "def broken(*args, **kwargs):\n"
        "    raise ZeroDivisionError('injected failure')\n"
        "ipam.ranges.range_sets = broken\n")
    # the bug is injected into this process: it must do the work itself, not hand it to underlayd
    out = hl.add(hl.config(V4), argv=[sys.executable, "-m", "ipam.host_local"],
                 extra={"PYTHONPATH": f"{inject}:{ROOT}", "UNDERLAY_AGENT": "0"})
    err = error(out, 999, "internal error: injected failure")
    assert "ZeroDivisionError: injected failure" in err["details"]
    assert "Traceback" not in out.stdout


@pytest.mark.parametrize("ranges_, requested", [
    ([V4], "::a01:5"),                  # as an integer, ::a01:5 is 10.1.0.5
    (["::/120"], "0.0.0.5"),            # and 0.0.0.5 is ::5
])
def test_requested_ip_of_the_other_family(hl, ranges_, requested):
    error(hl.add(hl.config(*ranges_), args=f"IP={requested}"), 4, f"requested IP {requested} is in no subnet")
    assert no_leases(hl)


def test_check_prev_result_of_the_other_family(hl):
    conf = hl.config("::/120")
    assert addresses(hl.add(conf)) == ["::2"]
    # 0.0.0.2 is not ::2: it belongs to some other plugin, CHECK ignores it
    assert hl.run("CHECK", dict(conf, prevResult=prev("1.0.0", "::2/120", "0.0.0.2/24"))).ok


@pytest.mark.parametrize("address", ["banana", "10.1.0.2/99", 5])
def test_check_malformed_prev_result(hl, address):
    conf = hl.config(V4)
    assert hl.add(conf).ok
    error(hl.run("CHECK", dict(conf, prevResult={"cniVersion": "1.0.0", "ips": [{"address": address}]})),
          6 if address == 5 else 7, "prevResult")
