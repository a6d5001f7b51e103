#!/usr/bin/env python3
"""cluster-ipam's figures (bench.py's `cluster` section, or alone): prints, asserts nothing.

  make bench BENCH_ARGS="--sections cluster"
  /work/venv/bin/python tests/bench/cluster_bench.py [--iterations 40] [--pods 1000] [--nodes 10]

1. Whole-exec ADD (and DEL) with cluster-ipam against host-local on the same
   machine, alternating in one loop (who goes first alternates too), against a
   3-member etcd cluster on 127.0.0.1 (tests/etcd.py). Both run from the built
   bundle when dist/bin has cluster-ipam (`make build`), otherwise both from
   source (`python3 -m ...`), so the ratio compares like with like. Goal: <= 1.5x.
2. 1 000 pods (ADD) over 10 simulated nodes, each node a thread exec'ing the
   plugin once per pod, one after another, all nodes at once against the same
   cluster (the nodes' configs name the members in a different order each):
   wall time (goal: under 60 s here), p50/p99 per ADD, duplicates (must be 0),
   failures, the CPU time the execs used (on a shared machine the wall time is
   bounded by it: CPU seconds / cores); then every DEL, in parallel the same
   way, and whether the range is whole again (nothing left in etcd but the
   pool's config).
4. (--sections cluster-agents, or --agents here) the same pods through one underlayd per simulated
   node (dist/bin/underlayd on a socket of its own; the node's execs of dist/bin/cluster-ipam hand
   off to it): wall time, duplicates, failures, every DEL, etcd's CPU.
5. The etcd round trips and writes of one ADD and one DEL per case (tests/cluster/round_trips.py,
   counted on the wire by tests/cluster/proxy.py; tests/cluster/test_round_trips.py pins them).
3. The same 1 000 pods with each node a process running its ADDs in-process
   (tests/cluster/sim_node.py: dispatch.run per ADD, config, client and node
   lock built afresh each time; only the interpreter start-up is saved): what
   the store and etcd cost at this scale, apart from starting Python.
"""

import argparse
import ipaddress
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BUNDLE = os.path.join(ROOT, "dist", "bin")
MODULES = {"cluster-ipam": "ipam.cluster", "host-local": "ipam.host_local"}
CNI_VERSION = "1.0.0"


def argv_of(name):
    """(argv, where) for a plugin: the bundle's executable when built, else this checkout's module."""
    if os.access(os.path.join(BUNDLE, "cluster-ipam"), os.X_OK):
        return [os.path.join(BUNDLE, name)], os.path.relpath(BUNDLE, ROOT) if BUNDLE.startswith(ROOT + "/") else BUNDLE
    return [sys.executable, "-m", MODULES[name]], "source"


def env_of(command, cid, socket=None):
    """socket: the node's underlayd (None: no agent, the exec does the work)."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": ROOT, "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/uci-bench-none", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/nonexistent", "CNI_ARGS": f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}",
            "UNDERLAY_SOCKET": socket or "/nonexistent/uci-bench-no-agent.sock"}


def exec_once(argv, command, cid, stdin, socket=None):
    """(seconds, exit code, stdout) of one exec, as a runtime sees it: stdin and stdout pipes, stderr
    dropped. posix_spawn (vfork) and plain reads, not subprocess.run: its communicate() loop cost the
    bench ~1.5 ms of CPU an exec, under the GIL of every node's thread, as much as the client exec'd."""
    env = env_of(command, cid, socket)
    start = time.perf_counter()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
    finally:
        os.close(in_r)
        os.close(out_w)
    try:
        os.write(in_w, stdin)          # a config is far below a pipe's 64 KiB: never blocks
    except BrokenPipeError:
        pass
    os.close(in_w)
    parts = []
    while True:
        part = os.read(out_r, 1 << 16)
        if not part:
            break
        parts.append(part)
    os.close(out_r)
    _, status = os.waitpid(pid, 0)
    return time.perf_counter() - start, os.waitstatus_to_exitcode(status), b"".join(parts)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def cluster_conf(etcd_conf, data_dir, node, subnet, prefix):
    return json.dumps({"cniVersion": CNI_VERSION, "name": "benchnet", "type": "macvlan",
                       "ipam": {"type": "cluster-ipam", "node": node, "dataDir": os.path.join(data_dir, node),
                                "etcd": dict(etcd_conf, prefix=prefix), "ranges": [[{"subnet": subnet}]]}}).encode()


def host_local_conf(data_dir, subnet):
    return json.dumps({"cniVersion": CNI_VERSION, "name": "benchnet", "type": "macvlan",
                       "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]]}}).encode()


def bench_exec(etcd, n, workdir, figures):
    (cl_argv, where), (hl_argv, _) = argv_of("cluster-ipam"), argv_of("host-local")
    confs = {"cluster-ipam": (cl_argv, cluster_conf(etcd.config(), os.path.join(workdir, "exec"), "n0",
                                                    "10.91.0.0/16", "/uci-bench-exec")),
             "host-local": (hl_argv, host_local_conf(os.path.join(workdir, "exec-hl"), "10.91.0.0/16"))}
    ms = {name: {"ADD": [], "DEL": []} for name in confs}
    failures = {name: 0 for name in confs}
    order = list(confs)
    for i in range(n + 2):
        for name in order if i % 2 == 0 else order[::-1]:
            argv, stdin = confs[name]
            for command in ("ADD", "DEL"):
                seconds, code, out = exec_once(argv, command, f"exec-{i}", stdin)
                failures[name] += code != 0
                if i >= 2:                              # two warm-up rounds (page cache, first block)
                    ms[name][command].append(seconds * 1000)
    print(f"\ncluster-ipam vs host-local, whole exec from {where}, etcd: 3 members on 127.0.0.1, "
          f"{n} each, alternating")
    row = {}
    for command in ("ADD", "DEL"):
        med = {name: statistics.median(ms[name][command]) for name in confs}
        p90 = {name: percentile(ms[name][command], 90) for name in confs}
        ratio = med["cluster-ipam"] / med["host-local"]
        print(f"  {command}: cluster-ipam {med['cluster-ipam']:.1f} ms (p90 {p90['cluster-ipam']:.1f}), host-local "
              f"{med['host-local']:.1f} ms (p90 {p90['host-local']:.1f}): {ratio:.2f}x"
              f"{' (goal <= 1.5x)' if command == 'ADD' else ''}", flush=True)
        row[command] = {"cluster_ipam_median_ms": med["cluster-ipam"], "host_local_median_ms": med["host-local"],
                        "cluster_ipam_p90_ms": p90["cluster-ipam"], "host_local_p90_ms": p90["host-local"],
                        "ratio": ratio}
    if any(failures.values()):
        print(f"  failures: {failures}")
    figures["cluster-ipam vs host-local, whole exec"] = dict(row, where=where, n=n, failures=failures)


def run_nodes(argv, confs, command, per_node, sockets=None):
    """Every node a thread exec'ing `command` per pod in turn (through its agent, with `sockets`
    {node: socket}); (wall seconds, {node: [(cid, s, code, out)]}, the execs' CPU seconds, this
    process's: the runtime's part, which shares the cores)."""
    results = {node: [] for node in confs}

    def node_loop(node):
        for k in range(per_node):
            cid = f"{node}-p{k}"
            seconds, code, out = exec_once(argv, command, cid, confs[node], (sockets or {}).get(node))
            results[node].append((cid, seconds, code, out))

    threads = [threading.Thread(target=node_loop, args=(node,)) for node in confs]
    cpu, own = children_cpu(), time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results, children_cpu() - cpu, time.process_time() - own


def etcd_cpu(etcd):
    """CPU seconds the etcd members have used so far (they are not reaped until the end)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for m in etcd.members:
        with open(f"/proc/{m.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks     # utime, stime
    return total


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_scale(etcd, pods, nodes, workdir, figures, sockets=None, agents_cpu=None):
    """`agents_cpu`: the agents' CPU seconds so far (with `sockets`), reported per ADD and per DEL."""
    argv, where = argv_of("cluster-ipam")
    subnet, prefix = ("10.94.0.0/16", "/uci-bench-agents") if sockets else ("10.92.0.0/20", "/uci-bench-scale")
    if sockets:
        where += ", through one underlayd per node"
    per_node = pods // nodes
    eps = etcd.endpoints
    confs = {f"n{i}": cluster_conf(dict(etcd.config(), endpoints=eps[i % len(eps):] + eps[:i % len(eps)]),
                                   os.path.join(workdir, "scale"), f"n{i}", subnet, prefix)
             for i in range(nodes)}
    etcd_before, agents_before = etcd_cpu(etcd), agents_cpu and agents_cpu()
    wall, results, cpu, bench_cpu = run_nodes(argv, confs, "ADD", per_node, sockets)
    etcd_used = etcd_cpu(etcd) - etcd_before
    agents_used = agents_cpu and agents_cpu() - agents_before
    ips, seconds, failed = [], [], []
    for node, rows in results.items():
        for cid, s, code, out in rows:
            seconds.append(s * 1000)
            if code == 0:
                ips += [ip["address"] for ip in json.loads(out)["ips"]]
            else:
                failed.append(out.decode(errors="replace")[:160])
    duplicates = len(ips) - len(set(ips))
    with etcd.client() as client:
        leased = len(client.range(f"{prefix}/ips/", keys_only=True))
        blocks = [json.loads(kv.value) for kv in client.range(f"{prefix}/pools/")
                  if "/blocks/" in kv.key.decode()]
    print(f"\n{nodes * per_node} pods (ADD) over {nodes} simulated nodes in parallel, whole exec from {where}, "
          f"etcd: 3 members")
    print(f"  wall {wall:.1f} s, {nodes * per_node / wall:.1f} ADDs/s; per ADD p50 "
          f"{percentile(seconds, 50):.1f} ms, p99 {percentile(seconds, 99):.1f} ms; duplicates {duplicates}; "
          f"failures {len(failed)}; {leased} leases in etcd, {len(blocks)} blocks; the execs used {cpu:.1f} CPU s "
          f"({cpu / (nodes * per_node) * 1000:.1f} ms per ADD), this bench {bench_cpu:.1f} CPU s, etcd "
          f"{etcd_used:.1f} CPU s ({etcd_used / (nodes * per_node) * 1000:.1f} ms per ADD): "
          f"{(cpu + bench_cpu + etcd_used) / os.cpu_count():.1f} s of wall on {os.cpu_count()} idle cores at the least "
          "with the agents' CPU not counted "
          f"(load average now {os.getloadavg()[0]:.1f})", flush=True)
    for why in sorted(set(failed))[:3]:
        print(f"    failure: {why}")
    if agents_cpu:
        print(f"  the agents and their workers used {agents_used:.1f} CPU s for the ADDs "
              f"({agents_used / (nodes * per_node) * 1000:.1f} ms per ADD)", flush=True)
    etcd_before, agents_before = etcd_cpu(etcd), agents_cpu and agents_cpu()
    del_wall, del_results, del_cpu, del_bench_cpu = run_nodes(argv, confs, "DEL", per_node, sockets)
    del_etcd = etcd_cpu(etcd) - etcd_before
    del_agents = agents_cpu and agents_cpu() - agents_before
    del_failed = sum(1 for rows in del_results.values() for row in rows if row[2] != 0)
    with etcd.client() as client:
        left = [kv.key.decode()[len(prefix):] for kv in client.range(prefix + "/", keys_only=True)]
    whole = left == [f"/pools/{ipaddress.ip_network(subnet)}/config"]
    print(f"  then every DEL in parallel: wall {del_wall:.1f} s, failures {del_failed}, the execs {del_cpu:.1f} CPU s, "
          f"this bench {del_bench_cpu:.1f} CPU s, etcd {del_etcd:.1f} CPU s ({del_etcd / (nodes * per_node) * 1000:.1f} "
          "ms per DEL); "
          f"range whole again: {'yes' if whole else f'no, left: {left[:5]}'}", flush=True)
    if agents_cpu:
        print(f"  the agents and their workers used {del_agents:.1f} CPU s for the DELs "
              f"({del_agents / (nodes * per_node) * 1000:.1f} ms per DEL)", flush=True)
    label = f"cluster-ipam {nodes * per_node} pods over {nodes} nodes" + (", through the agents" if sockets else "")
    figures[label] = {"del_etcd_cpu_s": del_etcd, "bench_cpu_s": bench_cpu, "del_bench_cpu_s": del_bench_cpu,
        "agents_add_cpu_s": agents_used, "agents_del_cpu_s": del_agents,
        "where": where, "pods": nodes * per_node, "nodes": nodes, "wall_s": wall, "p50_ms": percentile(seconds, 50),
        "p99_ms": percentile(seconds, 99), "cpu_s": cpu, "etcd_cpu_s": etcd_used, "duplicates": duplicates, "failures": len(failed), "leases": leased,
        "blocks": len(blocks), "del_wall_s": del_wall, "del_failures": del_failed, "whole_after_del": whole}


def bench_in_process(etcd, pods, nodes, workdir, figures):
    subnet, prefix = "10.93.0.0/20", "/uci-bench-inproc"
    per_node = pods // nodes
    eps = etcd.endpoints
    procs = {}
    cpu, etcd_before = children_cpu(), etcd_cpu(etcd)
    start = time.perf_counter()
    for i in range(nodes):
        node = f"n{i}"
        conf_path = os.path.join(workdir, f"inproc-{node}.json")
        with open(conf_path, "wb") as f:
            f.write(cluster_conf(dict(etcd.config(), endpoints=eps[i % len(eps):] + eps[:i % len(eps)]),
                                 os.path.join(workdir, "inproc"), node, subnet, prefix))
        out = os.path.join(workdir, f"inproc-{node}.out")
        procs[node] = (subprocess.Popen([sys.executable, "-m", "tests.cluster.sim_node", conf_path, "ADD",
                                         str(per_node), f"{node}-p", out], cwd=ROOT,
                                        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"}), out)
    for proc, _ in procs.values():
        proc.wait()
    wall = time.perf_counter() - start
    cpu, etcd_used = children_cpu() - cpu, etcd_cpu(etcd) - etcd_before
    ips, seconds, failed = [], [], 0
    for proc, out in procs.values():
        with open(out) as f:
            for r in json.load(f):
                seconds.append(r["seconds"] * 1000)
                if r["code"] == 0:
                    ips += [ip["address"] for ip in json.loads(r["out"])["ips"]]
                else:
                    failed += 1
    duplicates = len(ips) - len(set(ips))
    print(f"\nthe same {nodes * per_node} pods, {nodes} node processes running ADDs in-process "
          f"(tests/cluster/sim_node.py)")
    print(f"  wall {wall:.1f} s, {nodes * per_node / wall:.1f} ADDs/s; per ADD p50 {percentile(seconds, 50):.1f} ms, "
          f"p99 {percentile(seconds, 99):.1f} ms; duplicates {duplicates}; failures {failed}; "
          f"{cpu:.1f} CPU s in the node processes, etcd {etcd_used:.1f} CPU s", flush=True)
    figures["cluster-ipam 1000 pods over 10 nodes, in-process"] = {
        "pods": nodes * per_node, "nodes": nodes, "wall_s": wall, "p50_ms": percentile(seconds, 50),
        "p99_ms": percentile(seconds, 99), "cpu_s": cpu, "etcd_cpu_s": etcd_used, "duplicates": duplicates, "failures": failed}


class Agents:
    """One dist/bin/underlayd per simulated node, each on a socket of its own (healing off, no configs
    read: only the handing off is measured)."""

    def __init__(self, nodes, workdir):
        self.procs, self.sockets = [], {}
        empty = os.path.join(workdir, "agents-empty")
        os.makedirs(empty, exist_ok=True)
        for i in range(nodes):
            node = f"n{i}"
            socket = os.path.join(workdir, "agents", node, "underlay.sock")
            log = open(os.path.join(workdir, f"underlayd-{node}.log"), "wb")
            self.procs.append((subprocess.Popen(
                [os.path.join(BUNDLE, "underlayd"), "--socket", socket, "--heal-every", "0", "--config-dir", empty,
                 "--data-dir", empty, "--cluster-data-dir", empty],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log), log))
            self.sockets[node] = socket
        deadline = time.monotonic() + 60
        for (proc, log), socket in zip(self.procs, self.sockets.values()):
            while not os.path.exists(socket):
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"underlayd did not start (see {log.name})")
                time.sleep(0.02)

    def cpu(self):
        """CPU seconds of the agents and their reaped workers so far."""
        total = 0.0
        for proc, _ in self.procs:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")   # utime stime cutime cstime
        return total

    def stop(self):
        for proc, _ in self.procs:
            proc.terminate()
        for proc, log in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def bench_agents(etcd, pods, nodes, workdir, figures):
    if not os.access(os.path.join(BUNDLE, "underlayd"), os.X_OK):
        print("\ncluster-ipam through the agents: dist/bin/underlayd is missing (make build)")
        return
    agents = Agents(nodes, workdir)
    try:
        before = agents.cpu()
        bench_scale(etcd, pods, nodes, workdir, figures, agents.sockets, agents.cpu)
        used = agents.cpu() - before
        print(f"  the agents and their workers used {used:.1f} CPU s for the ADDs and DELs "
              f"({used / (2 * pods) * 1000:.0f} ms per operation)", flush=True)
        figures[f"cluster-ipam {pods} pods over {nodes} nodes, through the agents"]["agents_cpu_s"] = used
    finally:
        agents.stop()


def bench_round_trips(etcd, workdir, figures):
    from tests.cluster import round_trips
    from tests.cluster.proxy import FaultProxy
    argv, where = argv_of("cluster-ipam")
    with FaultProxy(etcd.endpoints[0]) as proxy:
        def conf(subnet, node, name, **ipam):
            doc = json.loads(cluster_conf(dict(etcd.config(), endpoints=[proxy.url]), os.path.join(workdir, "rt"),
                                          node, subnet, "/uci-bench-round-trips"))
            doc["name"] = name
            doc["ipam"].update(ipam)
            return json.dumps(doc).encode()

        def run(command, config, cid, pod):
            env = env_of(command, cid)
            if pod:
                env["CNI_ARGS"] = f"K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}"
            return subprocess.run(argv, input=config, env=env, capture_output=True).returncode == 0

        counts = round_trips.count(proxy, run, conf)
    print(f"\netcd round trips and writes of one cluster-ipam operation (counted on the wire, from {where})")
    print(round_trips.table(counts), flush=True)
    figures["cluster-ipam etcd round trips"] = counts


def run(iterations, pods, nodes, figures, sections=("exec", "scale", "in-process", "round-trips")):
    from tests.etcd import EtcdCluster
    workdir = tempfile.mkdtemp(prefix="uci-bench-")
    try:
        with EtcdCluster(members=3) as etcd:
            if "round-trips" in sections:
                bench_round_trips(etcd, workdir, figures)
            if "exec" in sections:
                bench_exec(etcd, iterations, workdir, figures)
            if "scale" in sections:
                bench_scale(etcd, pods, nodes, workdir, figures)
            if "in-process" in sections:
                bench_in_process(etcd, pods, nodes, workdir, figures)
            if "agents" in sections:
                bench_agents(etcd, pods, nodes, workdir, figures)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--bin", help="another build's dist/bin to run (e.g. the commit before a change)")
    parser.add_argument("--parts", default="exec,scale,in-process,round-trips",
                        help="of exec, scale, in-process, agents (one underlayd per node), round-trips")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.bin:
        global BUNDLE
        BUNDLE = os.path.abspath(args.bin)
    figures = {"load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(f"host: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    run(args.iterations, args.pods, args.nodes, figures, args.parts.split(","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
