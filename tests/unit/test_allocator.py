"""Allocation policy over the in-memory store: round-robin, skips, requested IPs, exhaustion."""

import ipaddress

import pytest

from cni.errors import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_NO_ADDRESS, CniError
from ipam import allocator, ranges
from ipam.stores.memory import Leases, MemoryStore


class CountingStore(MemoryStore):
    """ipam.stores.memory's store, counting the calls a nearly full range must not multiply."""

    def __init__(self, leases=(), last=None):
        super().__init__(Leases({ip: ("other", "eth0") for ip in leases}, last))
        self.reserve_calls = 0
        self.listings = 0

    def reserve(self, ip, container_id, ifname, set_index=None):
        self.reserve_calls += 1
        return super().reserve(ip, container_id, ifname, set_index)

    def leased(self):
        self.listings += 1
        return super().leased()


def range_set(*specs, **ipam):
    [s] = ranges.range_sets(dict(ipam, ranges=[list(specs)]))
    return s


SMALL = {"subnet": "10.1.0.0/29"}      # hands out .2-.6


def allocate(s, store, requested=None, source="runtimeConfig.ips", cid="c1"):
    req = allocator.Requested(ipaddress.ip_address(requested), source) if requested else None
    r, value = allocator.allocate(s, store, cid, "eth0", req)
    return r.text(value)


def drain(s, store):
    """Allocate until the range set is exhausted; return what was handed out, in order."""
    out = []
    for n in range(1000):
        try:
            out.append(allocate(s, store, cid=f"c{n}"))
        except CniError as e:
            assert e.code == ERR_NO_ADDRESS and "no free address" in e.msg
            return out
    raise AssertionError("never exhausted")


@pytest.mark.parametrize("last, leases, expected", [
    (None, [], "10.1.0.2"),                          # first: .1 is the gateway
    ("10.1.0.3", [], "10.1.0.4"),                    # after last_reserved_ip
    ("10.1.0.3", ["10.1.0.4", "10.1.0.5"], "10.1.0.6"),
    ("10.1.0.6", [], "10.1.0.2"),                    # wrap at the end of the range
    ("10.1.0.5", ["10.1.0.6", "10.1.0.2"], "10.1.0.3"),
    ("10.1.0.4", ["10.1.0.5", "10.1.0.6", "10.1.0.2", "10.1.0.3"], "10.1.0.4"),   # last one tried: itself
    ("garbage", [], "10.1.0.2"),                     # a torn or foreign last_reserved_ip
    ("fd00::1", [], "10.1.0.2"),
    ("::a01:3", [], "10.1.0.2"),                     # 10.1.0.3 as an integer, but IPv6
    ("10.9.9.9", [], "10.1.0.2"),                    # the config changed since
])
def test_round_robin(last, leases, expected):
    store = CountingStore(leases, {0: last} if last else None)
    assert allocate(range_set(SMALL), store) == expected
    assert store.last[0] == expected
    assert store.leases[expected] == ("c1", "eth0")


@pytest.mark.parametrize("specs, ipam, expected", [
    ([SMALL], {}, ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]),
    ([{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.7"}], {},
     ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]),          # never network/broadcast
    ([{"subnet": "10.1.0.0/29", "gateway": "10.1.0.4"}], {"exclude": ["10.1.0.2"], "auxAddresses": {"r": "10.1.0.6"}},
     ["10.1.0.1", "10.1.0.3", "10.1.0.5"]),
    ([SMALL, {"subnet": "10.2.0.0/30"}], {"exclude": ["10.1.0.3-10.1.0.6"]}, ["10.1.0.2", "10.2.0.2"]),
    ([{"subnet": "fd00::/125"}], {"exclude": ["fd00::3"], "auxAddresses": {"dns": "fd00::5"}},
     ["fd00::2", "fd00::4", "fd00::6", "fd00::7"]),
    ([SMALL], {"exclude": ["10.1.0.0/29"]}, []),
])
def test_allocate_until_exhausted(specs, ipam, expected):
    assert drain(range_set(*specs, **ipam), CountingStore()) == expected


def test_released_address_comes_back_after_wrapping():
    s, store = range_set(SMALL), CountingStore()
    assert drain(s, store) == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    del store.leases["10.1.0.3"]
    assert allocate(s, store) == "10.1.0.3"


def test_exhaustion_message():
    s = range_set(SMALL, exclude=["10.1.0.2"], auxAddresses={"router": "10.1.0.3", "dns": "10.1.0.7"})
    # a lease on an excluded address (written by the reference plugin, say) is not counted twice
    store = CountingStore(["10.1.0.4", "10.1.0.5", "10.1.0.6", "10.1.0.2", "lock", "not-an-ip"])
    with pytest.raises(CniError) as e:
        allocate(s, store)
    assert e.value.code == ERR_NO_ADDRESS
    assert e.value.msg == ("no free address in range set 0 (10.1.0.0/29 10.1.0.1-10.1.0.6): 6 addresses, "
                           "1 excluded, 1 aux, 1 reserved (network, broadcast, gateway), 3 in use")


def test_nearly_full_range_lists_the_directory_once():
    # 4094 leases in a /20: after a few probes the allocator lists the leases instead of probing each.
    s = range_set({"subnet": "10.1.0.0/20"})
    taken = [str(ipaddress.ip_address("10.1.0.2") + i) for i in range(4091)]
    store = CountingStore(taken, {0: "10.1.0.1"})
    assert allocate(s, store) == "10.1.15.253"
    assert store.listings == 1
    assert store.reserve_calls <= allocator.PROBES_BEFORE_LISTING + 1


@pytest.mark.parametrize("requested", ["10.1.0.5", "10.1.0.2", "10.1.0.6"])
def test_requested_ip_honoured(requested):
    store = CountingStore(last={0: "10.1.0.2"})
    assert allocate(range_set(SMALL), store, requested) == requested
    assert store.last[0] == requested


@pytest.mark.parametrize("requested, why", [
    ("10.1.0.1", "it is the gateway"),
    ("10.1.0.0", "it is the network address"),
    ("10.1.0.7", "it is the broadcast address"),
    ("10.1.0.4", "it is aux address 'router'"),
    ("10.1.0.3", "it is excluded by ipam.exclude[0] (10.1.0.2-10.1.0.3)"),
    ("10.1.0.6", "it is excluded by ipam.ranges[0][0].exclude[0] (10.1.0.6)"),
])
@pytest.mark.parametrize("source, code", [("CNI_ARGS IP", ERR_INVALID_ENV), ("args.cni.ips", ERR_INVALID_CONFIG),
                                          ("runtimeConfig.ips", ERR_INVALID_CONFIG)])
def test_requested_ip_refused(requested, why, source, code):
    s = range_set({"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.7", "exclude": ["10.1.0.6"]},
                  exclude=["10.1.0.2-10.1.0.3"], auxAddresses={"router": "10.1.0.4"})
    store = CountingStore()
    with pytest.raises(CniError) as e:
        allocate(s, store, requested, source)
    assert e.value.code == code
    assert e.value.msg == f"{source}: requested IP {requested} cannot be handed out: {why}"
    assert store.leases == {} and store.last == {}


def test_requested_ip_outside_range_start_end_but_in_the_subnet_is_honoured():
    # Docker's --ip may lie outside --ip-range, inside --subnet
    s = range_set({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20"})
    store = CountingStore()
    assert allocate(s, store, "10.1.0.50") == "10.1.0.50" and "10.1.0.50" in store.leases
    assert store.last == {}  # round-robin stays inside the range
    assert allocate(s, store, cid="c2") == "10.1.0.10"


def test_requested_ip_outside_the_subnet_is_refused():
    s = range_set({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20"})
    with pytest.raises(CniError) as e:
        allocate(s, CountingStore(), "10.2.0.50")
    assert e.value.code == ERR_INVALID_CONFIG
    assert "requested IP 10.2.0.50 is outside the subnets of range set 0 (10.1.0.0/24 10.1.0.10-10.1.0.20)" in e.value.msg


def test_requested_ip_taken():
    store = CountingStore()
    allocate(range_set(SMALL), store, "10.1.0.5", cid="first")
    with pytest.raises(CniError) as e:
        allocate(range_set(SMALL), store, "10.1.0.5", cid="second")
    assert e.value.code == ERR_NO_ADDRESS
    assert e.value.msg == "runtimeConfig.ips: requested IP 10.1.0.5 is already allocated to container first"
    assert store.leases["10.1.0.5"] == ("first", "eth0")
