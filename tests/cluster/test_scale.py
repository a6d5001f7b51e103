"""8 simulated nodes x 250 ADDs in parallel against one range with exclusions and aux addresses."""

import ipaddress
import json
import subprocess
import sys
import time

from tests.plugins import ROOT

NODES, PER_NODE = 8, 250
SUBNET = "10.60.0.0/21"                        # 2046 usable before the rules below
EXCLUDE = ["10.60.1.0/28", "10.60.3.100-10.60.3.120"]
AUX = {"router": "10.60.2.1", "dns": "10.60.7.200"}


def run_nodes(cl, tmp_path, verb):
    """Start every node's process at once; wait; return {node: results}."""
    procs = {}
    for i in range(NODES):
        node = f"n{i}"
        conf_path = tmp_path / f"{node}.json"
        conf_path.write_text(json.dumps(cl.conf(SUBNET, node=node, exclude=EXCLUDE, auxAddresses=AUX)))
        out = tmp_path / f"{node}-{verb}.out"
        procs[node] = (subprocess.Popen([sys.executable, "-m", "tests.cluster.sim_node", str(conf_path), verb,
                                         str(PER_NODE), f"{node}-c", str(out)], cwd=ROOT,
                                        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}), out)
    results = {}
    try:
        for node, (proc, out) in procs.items():
            assert proc.wait(timeout=300) == 0, f"{node} failed"
            results[node] = json.loads(out.read_text())
    finally:   # a failed node leaves none of the others running into the next tests
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def refused(value):
    ip = ipaddress.ip_address(value)
    net = ipaddress.ip_network(SUBNET)
    if ip in (net.network_address, net.broadcast_address, net.network_address + 1) or value in AUX.values():
        return True
    if ip in ipaddress.ip_network(EXCLUDE[0]):
        return True
    first, last = (ipaddress.ip_address(x) for x in EXCLUDE[1].split("-"))
    return first <= ip <= last


def test_8_nodes_x_250_adds_in_parallel_no_duplicates_then_all_dels(cl, tmp_path):
    start = time.monotonic()
    added = run_nodes(cl, tmp_path, "ADD")
    took = time.monotonic() - start
    got = []
    for node, results in added.items():
        for r in results:
            assert r["code"] == 0, (node, r)
            got += [ip["address"].split("/")[0] for ip in json.loads(r["out"])["ips"]]
    assert len(got) == NODES * PER_NODE
    assert len(set(got)) == len(got), "duplicate addresses"
    assert [ip for ip in got if refused(ip)] == []
    leases = cl.leases()
    assert sorted(leases) == sorted(got)
    assert all(v["node"] == v["containerID"].split("-")[0] for v in leases.values())
    blocks = {k: v for k, v in cl.keys("pools/").items() if "/blocks/" in k}
    borrowed = sum(1 for v in leases.values()
                   if blocks[f"pools/{SUBNET}/blocks/{v['block']}"]["node"] != v["node"])
    per_add = sorted(r["seconds"] for results in added.values() for r in results)
    print(f"\n{NODES}x{PER_NODE} ADDs: {took:.1f}s wall, p50 {per_add[len(per_add) // 2] * 1000:.1f} ms, "
          f"p99 {per_add[len(per_add) * 99 // 100] * 1000:.1f} ms per ADD in-process, "
          f"{len(blocks)} blocks, {borrowed} borrowed addresses")

    deleted = run_nodes(cl, tmp_path, "DEL")
    assert all(r["code"] == 0 for results in deleted.values() for r in results)
    assert set(cl.keys()) == {f"pools/{SUBNET}/config"}        # the range is whole again: no lease, no block
