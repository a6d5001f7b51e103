"""`underlay dhcp`: the dhcp IPAM's lease records as an operator reads them (run as an operator runs it)."""

import json
import os
import time

from ipam.dhcp import records
from ipam.dhcp.client import Options
from ipam.dhcp.lease import Lease
from tests.operator import run_underlay


def a_lease(address, bound_at, cid, network="lan"):
    return Lease(family=4, address=address, prefixlen=24, server_id="10.88.0.1", server_address="10.88.0.1",
                 routers=["10.88.0.1"], routes=[], dns={}, lease_time=600, t1=300, t2=525, bound_at=bound_at,
                 client_id="ff00", iaid=1, mac="aa:bb:cc:dd:ee:ff", ifname="net1", netns="/run/netns/p",
                 container_id=cid, network=network)


def write(directory, lease):
    fd = records.open_dir(str(directory))
    try:
        name = records.record_name(lease.network, lease.container_id, lease.ifname, lease.family)
        records.write(fd, name, lease, Options())
    finally:
        os.close(fd)


def test_every_lease_with_its_state_and_a_broken_record_named(tmp_path):
    now = time.time()
    write(tmp_path, a_lease("10.88.0.5", now, "a" * 64))
    write(tmp_path, a_lease("10.88.0.6", now - 400, "b" * 64))    # past T1: renewing
    write(tmp_path, a_lease("10.88.0.7", now - 700, "c" * 64, network="other"))    # expired
    table = run_underlay("dhcp", "--dhcp-dir", tmp_path)
    assert table.code == 0, table
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[5]) for r in rows] == [("lan", "10.88.0.5/24", "a" * 12, "bound"),
                                                       ("lan", "10.88.0.6/24", "b" * 12, "renewing"),
                                                       ("other", "10.88.0.7/24", "c" * 12, "expired")]
    listed = json.loads(run_underlay("dhcp", "--dhcp-dir", tmp_path, "--network", "other", "-o", "json").stdout)
    assert [(x["address"], x["container"], x["state"]) for x in listed] == [("10.88.0.7/24", "c" * 64, "expired")]

    (tmp_path / "v4-broken.json").write_text("{not json")
    out = run_underlay("dhcp", "--dhcp-dir", tmp_path)
    assert out.code == 3 and "v4-broken.json" in out.stderr and "10.88.0.5/24" in out.stdout, out


def test_no_dhcp_dir_is_no_leases(tmp_path):
    out = run_underlay("dhcp", "--dhcp-dir", tmp_path / "none")
    assert out.code == 0 and "no DHCP leases" in out.stdout, out
