"""Figures for ipam/etcd.py's docstring: import cost, per-txn cost, a whole process.

    /work/venv/bin/python -m tests.bench.etcd_client

Prints min / median (and p99 for txns) and the load average; asserts nothing. Noisy on a
shared machine: the minimum is the closest to an idle machine; compare ratios.
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


def spread(seconds):
    return f"{min(seconds) * 1000:6.1f} / {statistics.median(seconds) * 1000:6.1f} ms"


def import_ms(modules):
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    return spread([float(_child(code)) for _ in range(RUNS)])


def process_ms(endpoints):
    code = (f"from ipam import etcd\nc = etcd.Client({endpoints!r})\n"
            "c.txn([etcd.absent('uet/bench/p')], [etcd.put('uet/bench/p', 'x')])")
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        _child(code)
        times.append(time.perf_counter() - t)
    return spread(times)


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
    return f"{times[0] * 1000:5.2f} / {statistics.median(times) * 1000:5.2f} ms, p99 {times[int(n * 0.99)] * 1000:5.2f} ms"


def main():
    def bare():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        return time.perf_counter() - t

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; min / median of {RUNS} runs")
    print(f"python3 -I -c pass (whole process)           {spread([bare() for _ in range(RUNS)])}")
    print(f"import cni.contract                          {import_ms('cni.contract')}")
    print(f"import ipam.etcd (includes cni.contract)     {import_ms('ipam.etcd')}")
    print(f"import ipam.etcd + ssl (https endpoints)     {import_ms('ipam.etcd, ssl')}")
    print(f"import cni.contract + http.client (compare)  {import_ms('cni.contract, http.client')}")
    for members, tls in ((1, False), (3, False), (3, True)):
        with EtcdCluster(members=members, tls=tls) as cluster:
            # the client starts on endpoint 0; put the leader there so 3 members measure one hop
            leader = cluster.leader()
            cluster.members.insert(0, cluster.members.pop(leader))
            label = f"txn absent->put, {members} member{'s' if members > 1 else ''}{', TLS' if tls else ''}"
            print(f"{label:44s} {txn_ms(cluster)}")
            if not tls:
                print(f"{'whole process, one txn, ' + str(members) + ' member(s)':44s} {process_ms(cluster.endpoints)}")


if __name__ == "__main__":
    main()
