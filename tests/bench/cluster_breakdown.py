#!/usr/bin/env python3
"""Where one cluster-ipam ADD's (and DEL's) time goes, and how one node's concurrent ADDs queue.
A script, not a test: it prints, asserts nothing.

  make build && .venv/bin/python tests/bench/cluster_breakdown.py [--ops 200] [--concurrent 8] [--bin DIR]
      [--parts in-process,concurrent,agent,cpu] [--base OTHER/dist/bin]

Against 3 etcd members on 127.0.0.1 (tests/etcd.py), one simulated node, a /16 with /26 blocks:
1. In-process (this checkout's source, dispatch.run per operation: config, client and node lock
   built afresh as in a worker), `--ops` ADDs one after another, then their DELs: per operation,
   medians of the whole, the etcd round trips (count, and their wall time), waiting for and taking
   the node's lock, the node's local files (the network's record, the last-reserved cache), the
   process's CPU, and the rest (what is neither CPU nor measured waiting).
2. Through one underlayd (dist/bin, or --bin another build's): the ADD alone (median of the serial
   ones), then rounds of `--concurrent` ADDs handed off at once on that one node: each round's wall
   against N x the ADD alone (fully serialised) and against the CPU floor (N x the CPU of one ADD,
   agent and worker, over the cores). A node lock held for a whole ADD puts a round near N x one.
3. (--parts cpu) Served operations one at a time, dist/bin (or --bin) and --base alternating round by
   round: the agent's and its workers' CPU, their page faults (the same on a loaded machine) and
   etcd's CPU per ADD, DEL and thin request (a worker with nothing to do: the served path's floor).
"""

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.bench import cluster_bench  # noqa: E402

SUBNET = "10.95.0.0/16"


def conf_of(etcd, workdir, prefix):
    return cluster_bench.cluster_conf(etcd.config(), os.path.join(workdir, "data"), "n0", SUBNET, prefix)


class Meter:
    """Wraps the functions whose time is waiting, not Python: etcd calls, the lock, local files."""

    def __init__(self):
        from cni import files, locks
        from ipam import etcd
        from ipam.stores import lease_files
        self.totals = {}
        self.trips = 0
        self.writes = 0
        self.wrap(etcd.Client, "_call", "etcd", count=True)
        self.wrap(locks, "lock", "lock")
        self.wrap(locks, "try_lock", "lock")
        self.wrap(files, "replace_if_changed", "files")
        self.wrap(lease_files.LeaseFiles, "last_reserved", "files")
        self.wrap(lease_files.LeaseFiles, "set_last_reserved", "files")

    def wrap(self, owner, attr, name, count=False):
        inner = getattr(owner, attr)
        meter = self

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                meter.totals[name] = meter.totals.get(name, 0.0) + time.perf_counter() - start
                if count:
                    meter.trips += 1
                    meter.writes += bool(args[3]) if len(args) > 3 else bool(kwargs.get("write"))
        setattr(owner, attr, wrapper)

    def reset(self):
        self.totals, self.trips, self.writes = {}, 0, 0


def in_process(etcd, workdir, ops):
    from cni import dispatch, registry
    from ipam import cluster
    meter = Meter()
    stdin = conf_of(etcd, workdir, "/uci-breakdown-inproc")
    rows = {"ADD": [], "DEL": []}
    for verb in ("ADD", "DEL"):
        for n in range(ops + 2):
            cid = f"bd-{n}"
            env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/uci-bd-none",
                   "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
                   "CNI_ARGS": f"K8S_POD_NAMESPACE=bd;K8S_POD_NAME={cid}"}
            meter.reset()
            cpu, start = time.process_time(), time.perf_counter()
            code = dispatch.run(registry.EXECUTABLES["cluster-ipam"], cluster.VERBS, env=env, stdin=stdin,
                                stdout=io.StringIO(), stderr=sys.stderr)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            if code != 0:
                raise SystemExit(f"{verb} {cid} failed: {code}")
            if n < 2:
                continue   # the pool's first address and the node's first block: not the common case
            waited = sum(meter.totals.values())
            rows[verb].append({"whole": wall, "etcd": meter.totals.get("etcd", 0.0), "trips": meter.trips,
                               "writes": meter.writes, "lock": meter.totals.get("lock", 0.0),
                               "files": meter.totals.get("files", 0.0), "cpu": cpu,
                               "rest": max(0.0, wall - waited - cpu)})
    print(f"\n1. one operation in-process, one node, {ops} each, medians (ms), this checkout's source")
    print(f"  {'':4} {'whole':>6} {'etcd':>6} {'trips':>5} {'writes':>6} {'lock':>5} {'files':>5} {'CPU':>5}  "
          "(CPU includes the etcd calls' and files' own CPU)")
    for verb, found in rows.items():
        med = {k: statistics.median(r[k] for r in found) for k in found[0]}
        print(f"  {verb:4} {med['whole'] * 1e3:6.2f} {med['etcd'] * 1e3:6.2f} {med['trips']:5.0f} "
              f"{med['writes']:6.0f} {med['lock'] * 1e3:5.2f} {med['files'] * 1e3:5.2f} {med['cpu'] * 1e3:5.2f}",
              flush=True)
    return rows


def concurrent_in_process(etcd, workdir, concurrent, rounds=10):
    """Rounds of `concurrent` ADDs on one node at once, each a fork of this warm process (as the
    agent's workers are): each one's wait for the node's lock, and the round's wall."""
    from cni import dispatch, registry
    from ipam import cluster
    meter = Meter()
    stdin = conf_of(etcd, workdir, "/uci-breakdown-concurrent")

    def add(cid):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/uci-bd-none",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", "CNI_ARGS": ""}
        meter.reset()
        start = time.perf_counter()
        code = dispatch.run(registry.EXECUTABLES["cluster-ipam"], cluster.VERBS, env=env, stdin=stdin,
                            stdout=io.StringIO(), stderr=sys.stderr)
        return code, time.perf_counter() - start, meter.totals.get("lock", 0.0), meter.trips

    for n in range(20):
        add(f"cc-one-{n}")
    one = statistics.median(add(f"cc-alone-{n}")[1] for n in range(20))
    print(f"\n{concurrent} concurrent ADDs on one node, each a fork of a warm process, this checkout's source: "
          f"an ADD alone {one * 1e3:.1f} ms")
    walls, waits, trips = [], [], []
    for r in range(rounds):
        children = []
        gate_r, gate_w = os.pipe()
        start = time.perf_counter()
        for k in range(concurrent):
            out_r, out_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(out_r)
                os.read(gate_r, 1)
                os.write(out_w, json.dumps(add(f"cc-{r}-{k}")).encode())
                os._exit(0)
            os.close(out_w)
            children.append((pid, out_r))
        start = time.perf_counter()
        os.write(gate_w, b"x" * concurrent)
        found = []
        for pid, out_r in children:
            found.append(json.loads(os.read(out_r, 4096)))
            os.close(out_r)
            os.waitpid(pid, 0)
        walls.append(time.perf_counter() - start)
        os.close(gate_r)
        os.close(gate_w)
        waits += [f[2] for f in found]
        trips += [f[3] for f in found]
        if any(f[0] for f in found):
            raise SystemExit(f"a concurrent ADD failed: {found}")
    wall = statistics.median(walls)
    print(f"  median of {rounds} rounds: wall {wall * 1e3:.0f} ms = {wall / one:.1f} x the ADD alone; "
          f"each ADD's wait for the node's lock: median {statistics.median(waits) * 1e3:.1f} ms, "
          f"max {max(waits) * 1e3:.1f} ms; etcd round trips per ADD {statistics.mean(trips):.2f}", flush=True)


def through_agent(etcd, workdir, ops, concurrent, rounds=10):
    agents = cluster_bench.Agents(1, os.path.join(workdir, "agent"))
    argv, _ = cluster_bench.argv_of("cluster-ipam")
    socket = agents.sockets["n0"]
    stdin = conf_of(etcd, workdir, "/uci-breakdown-agent")
    try:
        singles, cpu_before = [], agents.cpu()
        for n in range(ops):
            seconds, code, out = cluster_bench.exec_once(argv, "ADD", f"one-{n}", stdin, socket)
            if code != 0:
                raise SystemExit(f"ADD one-{n} failed: {out[:200]}")
            singles.append(seconds)
        cpu_one = (agents.cpu() - cpu_before) / ops
        one = statistics.median(singles[2:])
        print(f"\n2. through one underlayd ({cluster_bench.BUNDLE}): an ADD alone {one * 1e3:.1f} ms (median of "
              f"{ops - 2}), agent + worker CPU {cpu_one * 1e3:.1f} ms an ADD")
        walls = []
        for r in range(rounds):
            results = []

            def add(k, r=r):
                results.append(cluster_bench.exec_once(argv, "ADD", f"round{r}-{k}", stdin, socket))
            threads = [threading.Thread(target=add, args=(k,)) for k in range(concurrent)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            walls.append(wall)
            failed = sum(code != 0 for _, code, _ in results)
            print(f"  {concurrent} concurrent ADDs on the node: wall {wall * 1e3:.0f} ms; N x alone "
                  f"{concurrent * one * 1e3:.0f} ms; CPU floor {concurrent * cpu_one / os.cpu_count() * 1e3:.0f} ms; "
                  f"slowest {max(s for s, _, _ in results) * 1e3:.0f} ms; failures {failed}", flush=True)
        print(f"  median of {rounds} rounds: {statistics.median(walls) * 1e3:.0f} ms = "
              f"{statistics.median(walls) / one:.1f} x the ADD alone")
    finally:
        agents.stop()


def agent_faults(agents):
    """Minor page faults of the agents and their reaped workers so far (copy-on-write of the agent's
    pages, mostly): unlike CPU time, the same on a loaded machine as on an idle one."""
    total = 0
    for proc, _ in agents.procs:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[7]) + int(fields[8])      # minflt, cminflt
    return total


def cpu_per_operation(etcd, workdir, ops, builds, rounds=2):
    """Served operations one at a time through one underlayd per build, the builds alternating round by
    round: the CPU of the agent and its workers, their page faults and etcd's CPU, per ADD, per DEL and per
    thin request (a worker that fails to decode its stdin: the served path's floor)."""
    rows = {b: {k: [] for k in ("ADD", "DEL", "thin", "ADD faults", "DEL faults", "thin faults", "etcd ADD",
                                "etcd DEL")} for b in builds}
    for r in range(rounds):
        for i, build in enumerate(builds):
            cluster_bench.BUNDLE = os.path.abspath(build)
            agents = cluster_bench.Agents(1, os.path.join(workdir, f"cpu-{r}-{i}"))
            argv = [os.path.join(cluster_bench.BUNDLE, "cluster-ipam")]
            socket = agents.sockets["n0"]
            stdin = conf_of(etcd, os.path.join(workdir, f"cpu-{r}-{i}"), f"/uci-breakdown-cpu-{r}-{i}")
            try:
                for n in range(3):      # the pool's config, the node's first block
                    cluster_bench.exec_once(argv, "ADD", f"warm-{n}", stdin, socket)
                for kind, command, data in (("ADD", "ADD", stdin), ("DEL", "DEL", stdin), ("thin", "ADD", b"{")):
                    cpu, faults, etcd_used = agents.cpu(), agent_faults(agents), cluster_bench.etcd_cpu(etcd)
                    for n in range(ops):
                        _, code, out = cluster_bench.exec_once(argv, command, f"op-{n}", data, socket)
                        if (code != 0) != (kind == "thin"):
                            raise SystemExit(f"{kind} op-{n} with {build}: exit {code}: {out[:200]}")
                    rows[build][kind].append((agents.cpu() - cpu) / ops * 1e3)
                    rows[build][f"{kind} faults"].append((agent_faults(agents) - faults) / ops)
                    if kind != "thin":
                        rows[build][f"etcd {kind}"].append((cluster_bench.etcd_cpu(etcd) - etcd_used) / ops * 1e3)
            finally:
                agents.stop()
    print(f"\n3. served one at a time through one underlayd, {ops} of each, {rounds} rounds, builds alternating "
          f"(load {os.getloadavg()[0]:.1f}); per operation, the median of the rounds (each round's in brackets)")
    print("  CPU ms (agent + worker): ADD, DEL, thin; page faults: ADD, DEL, thin; etcd's CPU ms: ADD, DEL")
    for build in builds:
        cells = [f"{statistics.median(v):.2f} [{' '.join(f'{x:.2f}' for x in v)}]" if "faults" not in k else
                 f"{statistics.median(v):.0f}" for k, v in rows[build].items()]
        print(f"  {build}: " + ", ".join(f"{k} {c}" for k, c in zip(rows[build], cells)), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--bin", help="another build's dist/bin for part 2")
    parser.add_argument("--base", help="with --parts cpu: another build's dist/bin, run alternately with dist/bin")
    parser.add_argument("--rounds", type=int, default=2, help="with --parts cpu: rounds of each build")
    parser.add_argument("--parts", default="in-process,concurrent,agent", help="of in-process, concurrent, agent, "
                        "cpu (served operations one at a time: CPU, page faults and etcd's CPU per operation)")
    args = parser.parse_args()
    if args.bin:
        cluster_bench.BUNDLE = os.path.abspath(args.bin)
    from tests.etcd import EtcdCluster
    print(f"host: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    workdir = tempfile.mkdtemp(prefix="uci-breakdown-")
    try:
        with EtcdCluster(members=3) as etcd:
            if "in-process" in args.parts.split(","):
                in_process(etcd, workdir, args.ops)
            if "concurrent" in args.parts.split(","):
                concurrent_in_process(etcd, workdir, args.concurrent)
            if "agent" in args.parts.split(","):
                through_agent(etcd, workdir, 40, args.concurrent)
            if "cpu" in args.parts.split(","):
                builds = [cluster_bench.BUNDLE] + ([os.path.abspath(args.base)] if args.base else [])
                cpu_per_operation(etcd, workdir, min(args.ops, 100), builds, args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
