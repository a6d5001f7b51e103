"""cluster-ipam's conflict holds (conflictDetection's IPAM side) and ipam.reuseCooldown, exec'd as a
runtime runs it on real etcd; the hold made as macvlan makes it in its own process
(cni/dispatch.py hold_ipam_conflict); the records read and given back by `underlay cluster`.

Cool-downs that must not end during a test are an hour; one that must end is 1 s, and the test waits
until the recorded time has passed (a bounded wait on the clock, never an assertion on it).
"""

import concurrent.futures
import json
import time

import pytest

from cni import contract, dispatch
from tests.cluster.conftest import addresses, error
from tests.exec.test_conflict_holds import MAC, iso_seconds, wait_past
from tests.operator import run_underlay

HOUR = 3600
POD = ("ns1", "web-0")


def hold(conf, address, cid="c1", ifname="eth0", mac=MAC):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": "/run/netns/ucl-none"}
    request = contract.Request("ADD", env, conf, b"")
    dispatch.load_ipam_config(request)
    return dispatch.hold_ipam_conflict(request, address, mac)


def leases(conf, tmp_path):
    path = tmp_path / "net.conf"
    path.write_text(json.dumps(conf))
    out = run_underlay("cluster", "leases", "--config", path, "-o", "json")
    assert out.code == 0, out
    return out.json


def conflicts(conf, tmp_path):
    return {row["address"]: row for row in leases(conf, tmp_path) if row["kind"] == "conflict"}


def test_a_held_conflict_is_never_handed_out_and_the_next_add_gets_the_next_address(cl, tmp_path):
    conf = cl.conf("10.60.0.0/24", conflictCooldown=HOUR, sticky=True)
    [first] = addresses(cl.add(conf, "c1", pod=POD))
    before = time.time()
    assert hold(conf, f"{first}/24") is True
    record = cl.leases()[first]
    assert (record["conflict"], record["mac"], record["node"], record["network"]) == (True, MAC, "n1", "net1")
    assert record["until"] - record["since"] == HOUR and before - 1 <= record["since"] <= time.time()
    assert cl.keys("attachments/") == {}                       # no longer the attachment's
    assert cl.delete(conf, "c1", pod=POD).ok                   # nothing of it left to release (no sticky hold)
    assert cl.keys("sticky/") == {}
    [second] = addresses(cl.add(conf, "c1", pod=POD))
    assert second != first
    row = conflicts(conf, tmp_path)[first]
    assert (row["mac"], row["node"], row["container"]) == (MAC, "n1", None)
    assert iso_seconds(row["until"]) - iso_seconds(row["since"]) == HOUR
    # DEL and GC of every attachment never free it
    assert cl.delete(conf, "c1", pod=POD).ok
    assert cl.run("GC", dict(conf, **{"cni.dev/valid-attachments": []}), cid=None).ok
    assert list(conflicts(conf, tmp_path)) == [first]
    error(cl.run("ADD", dict(conf, runtimeConfig={"ips": [first]}), "c2"), 101, "held as a conflict", MAC)
    pools = run_underlay("cluster", "pools", "--config", tmp_path / "net.conf", "-o", "json")
    assert pools.code == 0 and pools.json[0]["conflict"] == 1, pools


def test_the_cool_down_gives_a_conflict_back_to_the_next_add(cl, tmp_path):
    conf = cl.conf("10.61.0.0/24", conflictCooldown=1)
    [first] = addresses(cl.add(conf, "c1"))
    assert hold(conf, first)
    held_at = time.time()
    assert cl.delete(conf, "c1").ok
    wait_past(held_at + 1)
    assert list(conflicts(conf, tmp_path)) == [first]          # given back lazily: by the next ADD
    assert addresses(cl.run("ADD", dict(conf, runtimeConfig={"ips": [first]}), "c2")) == [first]
    assert conflicts(conf, tmp_path) == {} and cl.keys("conflicts/") == {}


def test_the_operator_gives_a_conflict_back(cl, tmp_path):
    conf = cl.conf("10.62.0.0/24")                             # the default cool-down: a day
    [first] = addresses(cl.add(conf, "c1"))
    assert hold(conf, first)
    row = conflicts(conf, tmp_path)[first]
    assert iso_seconds(row["until"]) - iso_seconds(row["since"]) == 86400
    table = run_underlay("cluster", "leases", "--config", tmp_path / "net.conf")
    assert table.stdout.splitlines()[0].split()[-2:] == ["MAC", "UNTIL"], table
    out = run_underlay("cluster", "release-conflict", "10.62.0.200", "--config", tmp_path / "net.conf")
    assert out.code == 1 and "no conflict record of 10.62.0.200" in out.stdout, out
    out = run_underlay("cluster", "release-conflict", first, "--config", tmp_path / "net.conf")
    assert out.code == 0 and f"gave back {first}" in out.stdout, out
    assert conflicts(conf, tmp_path) == {} and cl.keys("conflicts/") == {}
    assert set(cl.keys()) == {"pools/10.62.0.0/24/config"}     # its block went back with it
    assert addresses(cl.run("ADD", dict(conf, runtimeConfig={"ips": [first]}), "c2")) == [first]


def test_released_addresses_cool_but_a_sticky_pod_gets_its_own_back(cl):
    spec = {"subnet": "10.63.0.0/24", "rangeStart": "10.63.0.2", "rangeEnd": "10.63.0.3"}
    conf = cl.conf([spec], reuseCooldown=HOUR, sticky=True, stickySeconds=HOUR)
    assert addresses(cl.add(conf, "c1", pod=POD)) == ["10.63.0.2"]
    assert addresses(cl.add(conf, "c2")) == ["10.63.0.3"]
    assert cl.delete(conf, "c2").ok                            # no pod: free, cooling
    released = time.time()
    out = error(cl.add(conf, "c3"), 101, "1 released less than ipam.reuseCooldown ago: the first comes back at")
    back = out["msg"].rpartition("comes back at ")[2].split()[0]
    assert released - 60 < iso_seconds(back) - HOUR <= released
    assert cl.delete(conf, "c1", pod=POD).ok                   # web-0's: held for it, and cooling
    assert addresses(cl.add(conf, "c1-again", pod=POD)) == ["10.63.0.2"]   # the same pod: its own address
    short = cl.conf([spec], reuseCooldown=1, sticky=True, stickySeconds=HOUR)
    wait_past(released + 1)
    assert addresses(cl.add(short, "c3")) == ["10.63.0.3"]


def test_64_parallel_adds_on_two_nodes_never_get_a_held_address(cl, tmp_path):
    confs = [cl.conf("10.64.0.0/24", node=node, blockSize=28, conflictCooldown=HOUR) for node in ("n1", "n2")]
    held = []
    for i in range(6):
        [address] = addresses(cl.add(confs[i % 2], f"h{i}"))
        if i % 2 == 0:
            assert hold(confs[i % 2], address, cid=f"h{i}")
            held.append(address)
        assert cl.delete(confs[i % 2], f"h{i}").ok
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda i: cl.add(confs[i % 2], f"p{i}"), range(64)))
    given = [address for out in outs for address in addresses(out)]
    assert len(given) == len(set(given)) == 64
    assert not set(given) & set(held)
    assert sorted(conflicts(confs[0], tmp_path)) == sorted(held)


@pytest.mark.parametrize("ipam, fragment", [
    ({"reuseCooldown": -1}, "ipam.reuseCooldown"),
    ({"reuseCooldown": "60"}, "ipam.reuseCooldown"),
    ({"conflictCooldown": 0}, "ipam.conflictCooldown"),
    ({"conflictCooldown": 1e9}, "ipam.conflictCooldown"),
])
def test_bad_cooldowns_are_code_7_naming_the_field(cl, ipam, fragment):
    conf = cl.conf("10.65.0.0/24", **ipam)
    error(cl.add(conf, "c1"), 7, fragment)                    # the schema's words
    error(cl.delete(conf, "c1"), 7, fragment)                  # the loader's (DEL checks no schema)
    assert cl.keys() == {}
