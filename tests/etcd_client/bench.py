"""Figures for ipam/etcd.py's docstring: import cost, per-txn cost, a whole process.

    /work/venv/bin/python -m tests.etcd_client.bench

Prints medians (and p99 for txns); asserts nothing. Noisy on a shared machine: compare ratios.
"""

import os
import statistics
import subprocess
import sys
import time

from tests.etcd import EtcdCluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = 21


def _child(code):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {ROOT!r})\n{code}"],
                          capture_output=True, text=True, check=True, env=env).stdout


def import_ms(modules):
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    return statistics.median(float(_child(code)) for _ in range(RUNS)) * 1000


def process_ms(endpoints):
    code = (f"from ipam import etcd\nc = etcd.Client({endpoints!r})\n"
            "c.txn([etcd.absent('uet/bench/p')], [etcd.put('uet/bench/p', 'x')])")
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        _child(code)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def txn_ms(cluster, n=500):
    from ipam import etcd
    client = cluster.client()
    client.put("uet/bench/warm", "x")
    times = []
    for i in range(n):
        key = f"uet/bench/{i}"
        t = time.perf_counter()
        client.txn([etcd.absent(key)], [etcd.put(key, "pod")])
        times.append(time.perf_counter() - t)
    times.sort()
    client.close()
    return statistics.median(times) * 1000, times[int(n * 0.99)] * 1000


def main():
    bare = statistics.median(
        (lambda t: (subprocess.run([sys.executable, "-I", "-c", "pass"], check=True), time.perf_counter() - t)[1])(
            time.perf_counter()) for _ in range(RUNS)) * 1000
    base = import_ms("cni.contract")
    print(f"python3 -I -c pass (whole process)           {bare:6.1f} ms")
    print(f"import cni.contract                          {base:6.1f} ms")
    print(f"import ipam.etcd (includes cni.contract)     {import_ms('ipam.etcd'):6.1f} ms")
    print(f"import ipam.etcd + ssl (https endpoints)     {import_ms('ipam.etcd, ssl'):6.1f} ms")
    print(f"import cni.contract + http.client (compare)  {import_ms('cni.contract, http.client'):6.1f} ms")
    for members, tls in ((1, False), (3, False), (3, True)):
        with EtcdCluster(members=members, tls=tls) as cluster:
            # the client starts on endpoint 0; put the leader there so 3 members measure one hop
            leader = cluster.leader()
            cluster.members.insert(0, cluster.members.pop(leader))
            median, p99 = txn_ms(cluster)
            label = f"txn absent->put, {members} member{'s' if members > 1 else ''}{', TLS' if tls else ''}"
            print(f"{label:44s} {median:6.2f} ms median, p99 {p99:5.2f} ms")
            if not tls:
                print(f"{'whole process, one txn, ' + str(members) + ' member(s)':44s} "
                      f"{process_ms(cluster.endpoints):6.1f} ms")


if __name__ == "__main__":
    main()
