"""host-local's conflict holds (conflictDetection's IPAM side) and ipam.reuseCooldown, as a runtime
runs the plugin: ADD and DEL exec'd, the hold made as macvlan makes it in its own process
(cni/dispatch.py hold_ipam_conflict), the records read and given back by `underlay`.

Time: cool-downs that must not end during a test are an hour; one that must end is 1 s, and the test
waits until the recorded time has passed (a bounded wait on the clock, never an assertion on it).
"""

import calendar
import concurrent.futures
import os
import time

import pytest

from cni import contract, dispatch
from tests.exec.conftest import NETNS, addresses, error
from tests.operator import run_underlay

MAC = "02:00:5e:10:00:01"
HOUR = 3600


def hold(hl, conf, address, cid="c1", ifname="eth0", mac=MAC):
    """The hold macvlan's ADD makes when its probe finds `address` answered for (in its own process)."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": NETNS}
    request = contract.Request("ADD", env, conf, b"")
    dispatch.load_ipam_config(request)
    return dispatch.hold_ipam_conflict(request, address, mac)


def conflicts(hl):
    out = run_underlay("leases", "--data-dir", hl.data_dir, "-o", "json")
    assert out.code == 0, out
    return {row["address"]: row for row in out.json if row["kind"] == "conflict"}


def iso_seconds(text):
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def wait_past(t):
    """Until the wall clock is past `t` (a recorded time), bounded."""
    deadline = time.monotonic() + 30
    while time.time() <= t:
        assert time.monotonic() < deadline, f"the clock never passed {t}"
        time.sleep(min(0.1, max(0.0, t - time.time()) + 0.01))


def test_a_held_conflict_is_never_handed_out_and_the_next_add_gets_the_next_address(hl):
    conf = hl.config("10.1.0.0/24", "fd00:1::/64", conflictCooldown=HOUR)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2", "fd00:1::2"]
    before = time.time()
    assert hold(hl, conf, "10.1.0.2/24") is True
    assert hl.leases()["10.1.0.2"].startswith(b"!conflict\r\n02:00:5e:10:00:01\r\n")
    assert hl.delete(conf, "c1").ok                  # what the probing plugin does next: the rest goes
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.3", "fd00:1::3"]   # round-robin moves on
    held = conflicts(hl)
    assert list(held) == ["10.1.0.2"]
    row = held["10.1.0.2"]
    assert (row["network"], row["mac"], row["container"]) == ("net1", MAC, None)
    assert before - 1 <= iso_seconds(row["since"]) <= time.time()
    assert iso_seconds(row["until"]) - iso_seconds(row["since"]) == HOUR
    # DEL and GC of every attachment never free it
    assert hl.delete(conf, "c1").ok
    gc = dict(conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    assert hl.run("GC", gc, cid=None, ifname=None, netns=None).ok
    assert list(conflicts(hl)) == ["10.1.0.2"] and "10.1.0.2" in hl.leases()
    error(hl.add(conf, "c2", args="IP=10.1.0.2"), 101, "requested IP 10.1.0.2 is held as a conflict",
          f"{MAC} answered for it")
    who = run_underlay("who-has", "10.1.0.2", "--data-dir", hl.data_dir, "-o", "json")
    assert who.code == 0 and [(r["kind"], r["mac"]) for r in who.json] == [("conflict", MAC)], who
    table = run_underlay("leases", "--data-dir", hl.data_dir)
    assert table.code == 0 and "no leases" in table.stdout
    assert table.stdout.splitlines()[-2].split() == ["NETWORK", "ADDRESS", "CONFLICT", "SINCE", "UNTIL"]
    assert table.stdout.splitlines()[-1].split()[:3] == ["net1", "10.1.0.2", MAC]


def test_ipv6_conflicts_are_held_alike(hl):
    conf = hl.config("10.1.0.0/24", "fd00:1::/64", conflictCooldown=HOUR)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2", "fd00:1::2"]
    assert hold(hl, conf, "fd00:1::2/64", mac="02:00:5E:10:00:06")   # DAD failed: a neighbour has it
    assert hl.delete(conf, "c1").ok
    assert addresses(hl.add(conf, "c2")) == ["10.1.0.3", "fd00:1::3"]
    assert {a: r["mac"] for a, r in conflicts(hl).items()} == {"fd00:1::2": "02:00:5e:10:00:06"}
    error(hl.add(conf, "c3", args="IP=fd00:1::2"), 101, "held as a conflict")


def test_the_cool_down_gives_a_conflict_back_to_the_next_add(hl):
    conf = hl.config("10.1.0.0/24", conflictCooldown=1)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    assert hold(hl, conf, "10.1.0.2")
    held_at = time.time()
    assert hl.delete(conf, "c1").ok
    assert addresses(hl.add(conf, "c2")) == ["10.1.0.3"]
    wait_past(held_at + 1)
    assert list(conflicts(hl)) == ["10.1.0.2"]            # given back lazily: by the next ADD
    assert addresses(hl.add(conf, "c3", args="IP=10.1.0.2")) == ["10.1.0.2"]
    assert conflicts(hl) == {}


def test_the_operator_gives_a_conflict_back(hl):
    conf = hl.config("10.1.0.0/24")                       # the default cool-down: a day
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    assert hold(hl, conf, "10.1.0.2")
    assert hl.delete(conf, "c1").ok
    row = conflicts(hl)["10.1.0.2"]
    assert iso_seconds(row["until"]) - iso_seconds(row["since"]) == 86400
    out = run_underlay("release-conflict", "10.1.0.3", "--data-dir", hl.data_dir)
    assert out.code == 1 and "no conflict record of 10.1.0.3" in out.stdout, out
    out = run_underlay("release-conflict", "10.1.0.2", "--data-dir", hl.data_dir, "--network", "nett1")
    assert out.code == 2 and "no host-local network nett1" in out.stderr, out
    assert not os.path.exists(os.path.join(hl.data_dir, "nett1"))
    out = run_underlay("release-conflict", "10.1.0.2", "--data-dir", hl.data_dir, "--network", "net1")
    assert out.code == 0 and "gave back 10.1.0.2 in net1" in out.stdout, out
    assert conflicts(hl) == {}
    assert addresses(hl.add(conf, "c2", args="IP=10.1.0.2")) == ["10.1.0.2"]


def test_hold_conflict_of_an_address_not_the_attachments_is_refused(hl):
    conf = hl.config("10.1.0.0/24")
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    with pytest.raises(Exception) as e:
        hold(hl, conf, "10.1.0.2", cid="c2")
    assert getattr(e.value, "code", None) == 101 and "10.1.0.2 is not leased to c2/eth0" in e.value.msg
    assert conflicts(hl) == {}
    not_ours = dict(conf, ipam={"type": "static", "addresses": [{"address": "10.1.0.9/24"}]})
    assert hold(hl, not_ours, "10.1.0.9") is False       # another IPAM: the caller releases and fails


def test_released_addresses_cool_then_come_back(hl):
    # .2 and .3 only: once both are taken, a released one is all that is left
    spec = {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.3"}
    conf = hl.config([spec], reuseCooldown=HOUR)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    assert addresses(hl.add(conf, "c2")) == ["10.1.0.3"]
    assert hl.delete(conf, "c1").ok
    released = time.time()
    out = error(hl.add(conf, "c3"), 101, "1 released less than ipam.reuseCooldown ago: the first comes back at")
    back = out["msg"].rpartition("comes back at ")[2].split()[0]
    assert released - 60 < iso_seconds(back) - HOUR <= released
    assert addresses(hl.add(conf, "c4", args="IP=10.1.0.2")) == ["10.1.0.2"]   # asked for: honoured
    assert hl.delete(conf, "c4").ok
    short = hl.config([spec], reuseCooldown=1)            # the same release times, a shorter cool-down
    released = time.time()
    wait_past(released + 1)
    assert addresses(hl.add(short, "c3")) == ["10.1.0.2"]


def test_reuse_cooldown_0_reuses_at_once_and_writes_nothing_new(hl):
    spec = {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.2"}
    conf = hl.config([spec])
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    assert hl.delete(conf, "c1").ok
    assert addresses(hl.add(conf, "c2")) == ["10.1.0.2"]
    assert not os.path.exists(os.path.join(hl.net_dir(), ".underlay-released"))


def test_the_reference_plugin_works_beside_conflicts_and_release_times(hl, reference):
    spec = {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.5"}
    conf = hl.config([spec], reuseCooldown=HOUR)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    assert hold(hl, conf, "10.1.0.2")
    assert hl.delete(conf, "c1").ok
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.3"]
    assert hl.delete(conf, "c1").ok                       # .3 cools, in .underlay-released
    assert os.path.exists(os.path.join(hl.net_dir(), ".underlay-released"))
    # the reference neither hands out the conflict nor releases it; it ignores the release times
    assert addresses(reference.add(conf, "r1")) == ["10.1.0.4"]
    assert addresses(reference.add(conf, "r2")) == ["10.1.0.5"]
    assert addresses(reference.add(conf, "r3")) == ["10.1.0.3"]
    assert not reference.add(conf, "r4").ok               # .2 is held: the reference finds no address
    for cid in ("r1", "r2", "r3"):
        assert reference.delete(conf, cid).ok
    assert list(conflicts(hl)) == ["10.1.0.2"]
    assert "10.1.0.2" in hl.leases()


def test_64_parallel_adds_never_get_a_held_address(hl):
    conf = hl.config("10.1.0.0/24", conflictCooldown=HOUR)
    held = []
    for i in range(6):
        [address] = addresses(hl.add(conf, f"h{i}"))
        if i % 2 == 0:
            assert hold(hl, conf, address, cid=f"h{i}")
            held.append(address)
        assert hl.delete(conf, f"h{i}").ok
    with open(os.path.join(hl.net_dir(), "last_reserved_ip.0"), "w") as f:
        f.write("10.1.0.1")                                # round-robin starts again among the held ones
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda i: hl.add(conf, f"p{i}"), range(64)))
    given = [address for out in outs for address in addresses(out)]
    assert len(given) == len(set(given)) == 64
    assert not set(given) & set(held)
    assert sorted(conflicts(hl)) == sorted(held)


@pytest.mark.parametrize("ipam, fragment", [
    ({"reuseCooldown": -1}, "ipam.reuseCooldown"),
    ({"reuseCooldown": True}, "ipam.reuseCooldown"),
    ({"conflictCooldown": 0}, "ipam.conflictCooldown"),
    ({"conflictCooldown": 1e9}, "ipam.conflictCooldown"),
])
def test_bad_cooldowns_are_code_7_naming_the_field(hl, ipam, fragment):
    conf = hl.config("10.1.0.0/24", **ipam)
    error(hl.add(conf, "c1"), 7, fragment)                    # the schema's words
    error(hl.delete(conf, "c1"), 7, f"{fragment}: ")          # the loader's (DEL checks no schema)
    assert not os.path.isdir(hl.net_dir()) or hl.leases() == {}
