"""The Lease record: JSON round trip, tolerance of a newer record, wall-clock times."""

import json

import pytest

from ipam.dhcp.lease import Lease, default_t1, default_t2


def a_lease(**changes):
    fields = dict(family=4, address="10.88.0.23", prefixlen=24, server_id="10.88.0.1",
                  server_address="10.88.0.1", routers=["10.88.0.1"],
                  routes=[{"dst": "10.99.0.0/16", "gw": "10.88.0.254"}],
                  dns={"nameservers": ["10.88.0.53"], "domain": "lan", "search": ["lan"]},
                  lease_time=600, t1=300, t2=525, bound_at=1_700_000_000.5,
                  client_id="ff0000000100010001", iaid=1, mac="02:00:00:00:00:01", ifname="eth0",
                  netns="/var/run/netns/p1", hostname="pod-1", container_id="c1", network="lan")
    fields.update(changes)
    return Lease(**fields)


def test_round_trip_through_json_text():
    lease = a_lease()
    assert Lease.from_json(json.loads(json.dumps(lease.to_json()))) == lease


def test_defaults_and_a_v6_lease():
    lease = Lease(family=6, address="2001:db8::17", prefixlen=64, server_id="000100011234",
                  server_address="fe80::1", routers=[], routes=[], dns={}, lease_time=100, t1=50,
                  t2=80, bound_at=10, client_id="0003000102", iaid=7, mac="02:00:00:00:00:02",
                  ifname="net1", netns="/proc/1/ns/net")
    assert lease.hostname is None and lease.container_id == "" and lease.network == ""
    assert Lease.from_json(lease.to_json()) == lease


def test_wall_clock_times():
    lease = a_lease(bound_at=1000.0, lease_time=600, t1=300, t2=525)
    assert (lease.renew_at(), lease.rebind_at(), lease.expires_at()) == (1300.0, 1525.0, 1600.0)


def test_a_newer_records_unknown_keys_are_ignored():
    d = a_lease().to_json()
    d["from_the_future"] = 1
    assert Lease.from_json(d) == a_lease()


def test_a_missing_field_is_refused():
    d = a_lease().to_json()
    del d["address"]
    with pytest.raises(TypeError):
        Lease.from_json(d)


@pytest.mark.parametrize("field,value", [("family", 5), ("family", "4"), ("lease_time", "600"),
                                         ("routers", "10.88.0.1"), ("bound_at", None), ("iaid", True),
                                         ("hostname", 3)])
def test_a_wrong_value_is_refused_naming_the_field(field, value):
    d = a_lease().to_json()
    d[field] = value
    with pytest.raises(ValueError, match=field):
        Lease.from_json(d)


def test_not_an_object_is_refused():
    with pytest.raises(ValueError):
        Lease.from_json(["a", "list"])


def test_default_timers():
    assert default_t1(600) == 300
    assert default_t2(600) == 525
    assert default_t2(600, family=6) == 480


def test_attachment_identity_is_stable_and_tells_attachments_apart():
    from ipam.dhcp.client import attachment_identity, duid
    one = attachment_identity("02:00:00:00:00:01", "c1", "lan", "eth0", "pod-1")
    assert one == attachment_identity("02:00:00:00:00:01", "c1", "lan", "eth0", "pod-1")
    others = [attachment_identity("02:00:00:00:00:01", *a) for a in [("c2", "lan", "eth0"), ("c1", "wan", "eth0"),
                                                                     ("c1", "lan", "net1")]]
    assert len({one.client_id, *(o.client_id for o in others)}) == 4
    assert len({one.iaid, *(o.iaid for o in others)}) == 4 and 0 <= one.iaid < 2 ** 32
    assert duid(one.client_id)[:2] == b"\x00\x04" and len(duid(one.client_id)) == 18
