"""Side by side with Debian's Go host-local (containernetworking-plugins) on one data directory.

Every test here uses the `reference` fixture: a missing /usr/lib/cni/host-local is a failure,
not a skip. The reference (1.1.x) speaks cniVersion up to 1.0.0.
"""

import os

import pytest

from tests.exec.conftest import addresses, error

pytestmark = pytest.mark.usefixtures("reference")

V4 = "10.1.0.0/24"
V6 = "fd00:1::/64"


def test_reference_add_our_del(hl, reference):
    conf = hl.config(V4, V6)
    assert addresses(hl.add(conf, "ours")) == ["10.1.0.2", "fd00:1::2"]        # our index exists first
    assert addresses(reference.add(conf, "theirs")) == ["10.1.0.3", "fd00:1::3"]
    assert hl.leases()["10.1.0.3"] == b"theirs\r\neth0"
    assert hl.delete(conf, "theirs").ok
    assert sorted(hl.leases()) == ["10.1.0.2", "fd00:1::2"]


def test_our_add_reference_del(hl, reference):
    conf = hl.config(V4, V6)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2", "fd00:1::2"]
    assert reference.delete(conf, "c1").ok
    assert hl.leases() == {}
    # our index heals: the same attachment can be added again, not "duplicate allocation"
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.3", "fd00:1::3"]
    assert hl.delete(conf, "c1").ok
    assert hl.leases() == {}


def test_reference_sees_our_leases(hl, reference):
    conf = hl.config(V4)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    # the reference reads our lease format: duplicate detection and requested-IP conflicts
    out = reference.add(conf, "c1")
    assert not out.ok and "duplicate allocation is not allowed" in out.json["msg"], out
    out = reference.add(conf, "c2", args="IP=10.1.0.2")
    assert not out.ok and "10.1.0.2" in out.json["msg"], out
    assert hl.leases() == {"10.1.0.2": b"c1\r\neth0"}


def test_we_see_reference_leases(hl, reference):
    conf = hl.config(V4)
    assert addresses(reference.add(conf, "c1")) == ["10.1.0.2"]
    error(hl.add(conf, "c1"), 101, "duplicate allocation is not allowed")
    error(hl.add(conf, "c2", args="IP=10.1.0.2"), 101, "already allocated to container c1")


def test_mixed_allocation_never_duplicates(hl, reference):
    conf = hl.config("10.1.0.0/28", "fd00:1::/124")
    given = {}
    for i in range(14):
        plugin = hl if i % 2 else reference
        out = plugin.add(conf, f"c{i}")
        if not out.ok:
            break
        for address in addresses(out):
            assert address not in given, f"{address} given to c{i} and {given[address]}"
            given[address] = f"c{i}"
    # 10.1.0.1 is the gateway: 13 addresses, both plugins round-robin past each other's leases
    assert len([a for a in given if ":" not in a]) == 13
    assert sorted(hl.leases()) == sorted(given)
    for i in range(13):
        plugin = reference if i % 2 else hl
        assert plugin.delete(conf, f"c{i}").ok
    assert hl.leases() == {}


def test_last_reserved_ip_interoperates(hl, reference):
    conf = hl.config(V4, V6)
    assert addresses(reference.add(conf, "a")) == ["10.1.0.2", "fd00:1::2"]
    assert addresses(hl.add(conf, "b")) == ["10.1.0.3", "fd00:1::3"]
    assert addresses(reference.add(conf, "c")) == ["10.1.0.4", "fd00:1::4"]
    assert hl.delete(conf, "a").ok
    assert addresses(hl.add(conf, "d")) == ["10.1.0.5", "fd00:1::5"]       # round-robin, not the freed .2
    with open(os.path.join(hl.net_dir(), "last_reserved_ip.1"), "rb") as f:
        assert f.read() == b"fd00:1::5"
    assert addresses(reference.add(conf, "e")) == ["10.1.0.6", "fd00:1::6"]


def test_old_id_only_lease_released_by_ours(hl, reference):
    conf = hl.config(V4)
    assert hl.add(conf, "new").ok
    with open(os.path.join(hl.net_dir(), "10.1.0.9"), "wb") as f:
        f.write(b"old-ctr")                      # what host-local before 0.8 wrote: the ID alone
    error(hl.add(conf, "old-ctr"), 101, "duplicate allocation")
    assert hl.delete(conf, "old-ctr", "eth0").ok
    assert sorted(hl.leases()) == ["10.1.0.2"]


def test_old_id_only_lease_kept_by_gc_when_the_container_is_valid(hl):
    conf = hl.config(V4, version="1.1.0")
    os.makedirs(hl.net_dir())
    for ip, owner in (("10.1.0.8", b"old-keep"), ("10.1.0.9", b"old-drop")):
        with open(os.path.join(hl.net_dir(), ip), "wb") as f:
            f.write(owner)
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "old-keep", "ifname": "eth0"}]})
    assert hl.run("GC", gc).ok
    assert sorted(hl.leases()) == ["10.1.0.8"]


def test_reference_releases_id_only_leases_we_index(hl, reference):
    conf = hl.config(V4)
    os.makedirs(hl.net_dir())
    with open(os.path.join(hl.net_dir(), "10.1.0.9"), "wb") as f:
        f.write(b"old-ctr")
    assert hl.add(conf, "c1").ok                 # our rebuild indexes the old lease
    assert reference.delete(conf, "old-ctr").ok  # our index files never look like its leases
    assert sorted(hl.leases()) == ["10.1.0.2"]
    assert hl.delete(conf, "c1").ok
    assert hl.leases() == {}


def test_check_across_plugins(hl, reference):
    conf = hl.config(V4, V6)
    ours = hl.add(conf, "c1").json
    theirs = reference.add(conf, "c2").json
    assert reference.run("CHECK", dict(conf, prevResult=ours), cid="c1").ok
    assert hl.run("CHECK", dict(conf, prevResult=theirs), cid="c2").ok


def test_gc_releases_reference_leases(hl, reference):
    conf = hl.config(V4)
    for cid in ("a", "b", "c"):
        assert reference.add(conf, cid).ok
    gc = dict(conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}]})
    assert hl.run("GC", gc).ok
    assert hl.leases() == {"10.1.0.3": b"b\r\neth0"}


def test_concurrent_adds_of_both_plugins_never_duplicate(hl, reference):
    """Both take the same flock on <network>/lock: 24 ADDs at once, ours and theirs, get 24 addresses."""
    import json
    import subprocess

    from tests.plugins import REFERENCE_DIR, plugin_argv, plugin_env

    conf = json.dumps(hl.config("10.1.0.0/26", "fd00:1::/120")).encode()
    procs = []
    for i in range(24):
        argv = plugin_argv("host-local") if i % 2 else [os.path.join(REFERENCE_DIR, "host-local")]
        env = plugin_env("ADD", container_id=f"c{i}", netns="/run/netns/x")
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=env))
    given = []
    for proc in procs:
        out, err = proc.communicate(conf, timeout=60)
        assert proc.returncode == 0, (out, err)
        given += [ip["address"].split("/")[0] for ip in json.loads(out)["ips"]]
    assert len(given) == 48 and len(set(given)) == 48
    assert sorted(hl.leases()) == sorted(given)
    for i in range(24):
        assert hl.delete(json.loads(conf), f"c{i}").ok
    assert hl.leases() == {}
