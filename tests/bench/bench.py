#!/usr/bin/env python3
"""Side-by-side benchmark: underlay's built executables against Debian's Go
reference plugins (containernetworking-plugins in /usr/lib/cni).

A script, not a test: it prints figures and asserts none. Ours and Go run
alternately in the same loop (who goes first alternates too), on the same
kind of setup, so machine noise hits both alike; compare the ratios.

  make build && make bench             (all sections; needs root for macvlan)
  tests/bench/bench.py --sections version,leases --iterations 20
  tests/bench/bench.py --json figures.json

Sections:
  version   VERSION exec
  macvlan   macvlan + host-local ADD, CHECK, DEL: a "host" netns with a veth
            parent, a fresh pod netns per iteration (never the machine's own
            interfaces); then 64 macvlan ADDs in parallel, one pod each
  leases    host-local ADD+DEL alone with 10, 1 000, 10 000, 60 000 existing
            leases, pre-populated in the reference on-disk format
  parallel  64 host-local ADDs in parallel on one data dir: wall time,
            failures, duplicate addresses
  agent     ours through underlayd (dist/bin/underlayd on a socket of its
            own), ours without it, and Go, alternately in one loop: host-local
            ADD+DEL, macvlan ADD/CHECK/DEL, 64 parallel macvlan ADDs and DELs;
            the agent's memory idle and under the burst (PSS and RSS of the
            agent and its workers); the thin exec against a bare interpreter.
            CPU through the agent counts the exec, the worker and the agent's
            own (its loop, the fork), per operation and per burst.
            --base OTHER/dist/bin adds another build through its own underlayd
            ("base") to the same loop: before and after a change in one run
  cluster-access
            macvlan + host-local ADD and DEL without and with cluster-access
            after it (primary mode: a veth pair, routes on both sides), through
            underlayd and without it: what the chained plugin costs
  detection macvlan + host-local ADD and DEL through underlayd with conflictDetection,
            with gatewayDetection (the veth peer holds the gateway), with both and
            without, alternately in one loop: what each detection costs an ADD
  cluster   cluster-ipam (tests/bench/cluster_bench.py): whole-exec ADD vs
            host-local, 1 000 pods over 10 simulated nodes on 3 etcd members;
            not in the default set (it starts etcd): --sections cluster; and the
            etcd round trips and writes of one ADD and DEL per case
  cluster-agents  the same pods through one underlayd per simulated node
            (--cluster-pods 1000 --cluster-nodes 10; 10000 over 100 is the larger
            figure): wall time, duplicates, failures, DELs, etcd's CPU; not in the
            default set either (it starts etcd): --sections cluster-agents
  dhcp      macvlan + our dhcp through underlayd vs Go macvlan + the reference
            dhcp and its daemon, one Kea4 server for both (tests/bench/dhcp_bench.py);
            then --dhcp-leases pods on one agent: renewals on schedule, its memory;
            not in the default set (it starts Kea): --sections dhcp
Peak RSS per exec comes from GNU time (`/usr/bin/time -f %M`) on extra,
untimed runs: wait4() on a child forked from this Python process would report
this process's own RSS (the child holds it until exec).
"""

import argparse
import ctypes
import ipaddress
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = os.path.join(ROOT, "dist", "bin")
GO = "/usr/lib/cni"
IMPLS = ("ours", "go")
LEASE_COUNTS = (10, 1000, 10000, 60000)
CNI_VERSION = "1.0.0"          # the newest the Debian Go plugins (1.1.1) speak
CLONE_NEWNET = 0x40000000
PREFIX = f"ulb{os.getpid() % 0x10000:x}"   # every netns and link this run makes
TIME = "/usr/bin/time"         # GNU time (Debian package `time`)
RSS_EVERY = 4                  # every 4th iteration measures peak RSS instead of time


# -- one exec -------------------------------------------------------------------------------

class Exec:
    def __init__(self, seconds, code, stdout, stderr, maxrss_kb, cpu_ms=None):
        self.seconds, self.code, self.stdout, self.stderr, self.maxrss_kb = seconds, code, stdout, stderr, maxrss_kb
        self.cpu_ms = cpu_ms   # user + system of the exec and the children it waited for

    @property
    def json(self):
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


def spawn(argv, env, stdin=b""):
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            bufsize=0)


def feed(proc, stdin):
    try:
        proc.stdin.write(stdin)
    except BrokenPipeError:
        pass
    try:
        proc.stdin.close()
    except BrokenPipeError:     # VERSION never reads its stdin
        pass


def reap(proc, stdin, started):
    """Feed stdin (None: fed already), read both pipes, wait4() for the exit and the peak RSS."""
    if stdin is not None:
        feed(proc, stdin)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    proc.stderr.close()
    return Exec(seconds, proc.returncode, out, err, usage.ru_maxrss, (usage.ru_utime + usage.ru_stime) * 1000)


def run(argv, env, stdin=b"", rss=False):
    """One exec; with rss, under GNU time, whose report replaces maxrss_kb (and the time is not a figure)."""
    if not rss:
        started = time.perf_counter()
        return reap(spawn(argv, env, stdin), stdin, started)
    with tempfile.NamedTemporaryFile("r", prefix="underlay-bench-rss-") as report:
        started = time.perf_counter()
        result = reap(spawn([TIME, "-f", "%M", "-o", report.name] + argv, env, stdin), stdin, started)
        result.maxrss_kb = int(report.read().split()[-1])
        result.seconds = None
    return result


BASE = None           # --base: another build's dist/bin, served by its own underlayd as impl "base"


def bin_dir(impl):
    return GO if impl == "go" else BASE if impl == "base" else OURS


def plugin(impl, name):
    return os.path.join(bin_dir(impl), name)


NO_AGENT = "/nonexistent/underlay-bench-no-agent.sock"
AGENT_SOCKET = None   # set by the agent section while it runs
BASE_SOCKET = None    # the base build's underlayd's, with --base


def cni_env(impl, command, cid="bench", netns="/var/run/netns/bench-none", ifname="eth0"):
    """impl "agent" is ours handing off to the bench's underlayd; "ours" finds no agent."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": bin_dir(impl)}
    if impl != "go":
        env["UNDERLAY_SOCKET"] = {"agent": AGENT_SOCKET, "base": BASE_SOCKET}.get(impl) or NO_AGENT
    return env


# -- figures --------------------------------------------------------------------------------

class Series:
    """Timings (ms) and peak RSS (KiB) of one operation, per implementation."""

    def __init__(self, label, impls=IMPLS):
        self.label = label
        self.impls = impls
        self.ms = {impl: [] for impl in impls}
        self.rss = {impl: [] for impl in impls}
        self.failures = {impl: 0 for impl in impls}

    def add(self, impl, *execs):
        """Timed execs add to the times, GNU-time'd ones to the peak RSS."""
        if all(e.seconds is not None for e in execs):
            self.ms[impl].append(sum(e.seconds for e in execs) * 1000)
        else:
            self.rss[impl].append(max(e.maxrss_kb for e in execs))
        if any(e.code != 0 for e in execs):
            self.failures[impl] += 1

    def median(self, impl):
        return statistics.median(self.ms[impl]) if self.ms[impl] else float("nan")

    def p90(self, impl):
        values = sorted(self.ms[impl])
        return values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))] if values else float("nan")

    def ratio(self, impl="ours"):
        return self.median(impl) / self.median("go")

    def as_dict(self):
        return {impl: {"median_ms": self.median(impl), "p90_ms": self.p90(impl), "n": len(self.ms[impl]),
                       "failures": self.failures[impl],
                       "peak_rss_kib_median": statistics.median(self.rss[impl]) if self.rss[impl] else None,
                       "peak_rss_kib_max": max(self.rss[impl]) if self.rss[impl] else None}
                for impl in self.impls} | {f"ratio_{impl}_go": self.ratio(impl) for impl in self.impls if impl != "go"}


HEADER = (f"{'operation':<40} {'ours med':>9} {'p90':>7} {'Go med':>8} {'p90':>7} {'ours/Go':>8}"
          f" {'RSS ours':>9} {'RSS Go':>8}  failures")


def print_series(series):
    rss = {impl: f"{statistics.median(series.rss[impl]) / 1024:.1f}M" if series.rss[impl] else "-" for impl in IMPLS}
    fails = "" if not any(series.failures.values()) else f"ours {series.failures['ours']}, Go {series.failures['go']}"
    print(f"{series.label:<40} {series.median('ours'):>9.2f} {series.p90('ours'):>7.2f} {series.median('go'):>8.2f}"
          f" {series.p90('go'):>7.2f} {series.ratio():>7.2f}x {rss['ours']:>9} {rss['go']:>8}  {fails}", flush=True)


def alternate(i):
    return IMPLS if i % 2 == 0 else IMPLS[::-1]


# -- sections -------------------------------------------------------------------------------

def bench_version(n, figures):
    rows = [Series(f"VERSION ({name})") for name in ("macvlan", "host-local")]
    for i in range(n + n // RSS_EVERY):
        for row, name in zip(rows, ("macvlan", "host-local")):
            for impl in alternate(i):
                row.add(impl, run([plugin(impl, name)], cni_env(impl, "VERSION"), b'{"cniVersion": "1.0.0"}',
                                  rss=i % RSS_EVERY == RSS_EVERY - 1))
    for row in rows:
        print_series(row)
        figures[row.label] = row.as_dict()


def populate(net_dir, count, subnet):
    """`count` leases in the reference format, the last one as last_reserved_ip.0."""
    os.makedirs(net_dir)
    first = int(subnet.network_address) + 2
    for i in range(count):
        ip = str(ipaddress.ip_address(first + i))
        with open(os.path.join(net_dir, ip), "w") as f:
            f.write(f"existing-{i}\r\neth0")
    if count:
        with open(os.path.join(net_dir, "last_reserved_ip.0"), "w") as f:
            f.write(str(ipaddress.ip_address(first + count - 1)))


def host_local_conf(data_dir, subnet, name="benchnet"):
    return json.dumps({"cniVersion": CNI_VERSION, "name": name, "type": "macvlan",
                       "ipam": {"type": "host-local", "dataDir": data_dir,
                                "ranges": [[{"subnet": str(subnet)}]]}}).encode()


def bench_leases(n, counts, workdir, figures):
    subnet = ipaddress.ip_network("10.200.0.0/16")
    kept = {}
    for count in counts:
        confs = {}
        started = time.perf_counter()
        for impl in IMPLS:
            data = os.path.join(workdir, f"leases-{count}-{impl}")
            populate(os.path.join(data, "benchnet"), count, subnet)
            confs[impl] = host_local_conf(data, subnet)
        print(f"  ({count} leases written for each in {time.perf_counter() - started:.1f} s)", flush=True)
        first = {}
        for impl in IMPLS:   # the first ADD+DEL on a reference-format directory, reported apart
            add = run([plugin(impl, "host-local")], cni_env(impl, "ADD", "warmup"), confs[impl])
            dele = run([plugin(impl, "host-local")], cni_env(impl, "DEL", "warmup"), confs[impl])
            first[impl] = (add.seconds + dele.seconds) * 1000
            if add.code or dele.code:
                print(f"  {impl} warm-up failed: {add.stdout or add.stderr} {dele.stdout or dele.stderr}")
        both, adds, dels = (Series(f"host-local ADD+DEL, {count} leases"), Series(f"  of it ADD, {count} leases"),
                            Series(f"  of it DEL, {count} leases"))
        for i in range(n + n // RSS_EVERY):
            rss = i % RSS_EVERY == RSS_EVERY - 1
            for impl in alternate(i):
                cid = f"bench-{i}"
                add = run([plugin(impl, "host-local")], cni_env(impl, "ADD", cid), confs[impl], rss=rss)
                dele = run([plugin(impl, "host-local")], cni_env(impl, "DEL", cid), confs[impl], rss=rss)
                both.add(impl, add, dele)
                adds.add(impl, add)
                dels.add(impl, dele)
        for row in (both, adds, dels):
            print_series(row)
            figures[row.label.strip()] = row.as_dict()
        print(f"  first ADD+DEL on the pre-populated dir: ours {first['ours']:.1f} ms, Go {first['go']:.1f} ms",
              flush=True)
        figures[f"host-local first ADD+DEL, {count} leases"] = first
        kept[count] = confs["ours"]
        for impl in IMPLS:
            if count not in (min(counts), max(counts)) or impl == "go":
                shutil.rmtree(os.path.join(workdir, f"leases-{count}-{impl}"), ignore_errors=True)
    if len(counts) > 1:
        # The target compares ours with itself at two sizes: run both in one loop, so
        # load that comes and goes on this machine hits both alike.
        low, high = min(counts), max(counts)
        ms = {low: [], high: []}
        for i in range(n):
            for count in (low, high) if i % 2 else (high, low):
                cid = f"scale-{i}"
                add = run([plugin("ours", "host-local")], cni_env("ours", "ADD", cid), kept[count])
                dele = run([plugin("ours", "host-local")], cni_env("ours", "DEL", cid), kept[count])
                ms[count].append((add.seconds + dele.seconds) * 1000)
        medians = {count: statistics.median(values) for count, values in ms.items()}
        ratio = medians[high] / medians[low]
        print(f"ours ADD+DEL at {high} leases / at {low}, alternating in one loop: {medians[high]:.2f} /"
              f" {medians[low]:.2f} ms = {ratio:.2f}x (target <= 1.5x)", flush=True)
        figures["host-local own scaling"] = {"low": low, "high": high, "low_median_ms": medians[low],
                                             "high_median_ms": medians[high], "ratio": ratio}


def parallel(argvs_envs, stdin):
    """Start every exec at once; (wall seconds, [Exec])."""
    started = time.perf_counter()
    procs = [(spawn(argv, env), time.perf_counter()) for argv, env in argvs_envs]
    for proc, _ in procs:     # at once, as a runtime does (a config fits the pipe buffer)
        feed(proc, stdin)
    execs = [reap(proc, None, t) for proc, t in procs]
    return time.perf_counter() - started, execs


def parallel_report(label, impl, wall, execs, figures, cpu_ms=None):
    """cpu_ms: what the whole burst took (parallel_cpu), shown per exec with the load average."""
    ips = [e.json["ips"][0]["address"] for e in execs if e.code == 0 and e.json and e.json.get("ips")]
    failures = sum(1 for e in execs if e.code != 0)
    duplicates = len(ips) - len(set(ips))
    cpu = f", CPU {cpu_ms / len(execs):5.2f} ms per exec (load {os.getloadavg()[0]:.1f})" if cpu_ms is not None else ""
    print(f"{label:<40} {impl:>5}: wall {wall * 1000:8.1f} ms, failures {failures}, duplicates {duplicates},"
          f" distinct {len(set(ips))}{cpu}", flush=True)
    errors = sorted({(e.stdout or e.stderr).decode(errors="replace")[:200] for e in execs if e.code != 0})
    for error in errors[:3]:
        print(f"    {impl} error: {error}")
    figures.setdefault(label, {})[impl] = {"wall_ms": wall * 1000, "failures": failures, "duplicates": duplicates,
                                          "distinct": len(set(ips))}
    if cpu_ms is not None:
        figures[label][impl].update(cpu_ms_per_exec=cpu_ms / len(execs), load=os.getloadavg()[0])


def bench_parallel(rounds, count, workdir, figures):
    subnet = ipaddress.ip_network("10.201.0.0/24")
    for r in range(rounds):
        for impl in alternate(r):
            data = os.path.join(workdir, f"parallel-{r}-{impl}")
            conf = host_local_conf(data, subnet)
            jobs = [([plugin(impl, "host-local")], cni_env(impl, "ADD", f"par-{k}")) for k in range(count)]
            wall, execs, cpu = parallel_cpu(jobs, conf)
            leases = [n for n in os.listdir(os.path.join(data, "benchnet")) if n[0].isdigit()]
            parallel_report(f"{count} parallel host-local ADDs, round {r + 1}", impl, wall, execs, figures, cpu)
            if len(leases) != sum(1 for e in execs if e.code == 0):
                print(f"    {impl}: {len(leases)} lease files for {sum(1 for e in execs if e.code == 0)} successes")
            shutil.rmtree(data, ignore_errors=True)


# -- macvlan in network namespaces ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def sh(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


class Namespaces:
    """A host netns (this process enters it) with a veth parent; pod netns on demand; all removed."""

    def __init__(self):
        self.host = f"{PREFIX}h"
        self.master = f"{PREFIX}m"
        self.pods = []
        self.home = None

    def __enter__(self):
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        sh("ip", "netns", "add", self.host)
        try:
            fd = os.open(f"/run/netns/{self.host}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
            sh("ip", "link", "set", "lo", "up")
            sh("ip", "link", "add", self.master, "type", "veth", "peer", "name", f"{PREFIX}p")
            sh("ip", "link", "set", self.master, "up")
            sh("ip", "link", "set", f"{PREFIX}p", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def pod(self):
        name = f"{PREFIX}p{len(self.pods)}"
        self.pods.append(name)
        sh("ip", "netns", "add", name)
        return name

    def drop(self, name):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if name in self.pods:
            self.pods.remove(name)

    def __exit__(self, *exc):
        if self.home is not None:
            setns(self.home)
            os.close(self.home)
            self.home = None
        for name in list(self.pods):
            self.drop(name)
        subprocess.run(["ip", "netns", "del", self.host], capture_output=True)


def macvlan_conf(impl, master, data_dir, subnet):
    return {"cniVersion": CNI_VERSION, "name": f"benchmv-{impl}", "type": "macvlan", "master": master,
            "mode": "bridge", "ipam": {"type": "host-local", "dataDir": data_dir,
                                       "ranges": [[{"subnet": str(subnet)}]]}}


def bench_macvlan(n, parallel_count, workdir, figures):
    subnets = {"ours": ipaddress.ip_network("10.210.0.0/16"), "go": ipaddress.ip_network("10.211.0.0/16")}
    rows = {verb: Series(f"macvlan+host-local {verb}") for verb in ("ADD", "CHECK", "DEL")}
    with Namespaces() as ns:
        confs = {impl: macvlan_conf(impl, ns.master, os.path.join(workdir, f"mv-{impl}"), subnets[impl])
                 for impl in IMPLS}
        for i in range(n + n // RSS_EVERY + 1):     # iteration 0 warms caches, not counted
            rss = i % RSS_EVERY == RSS_EVERY - 1
            for impl in alternate(i):
                pod = ns.pod()
                env = dict(cni_env(impl, "ADD", f"mv-{i}", netns=f"/run/netns/{pod}"))
                conf = confs[impl]
                add = run([plugin(impl, "macvlan")], env, json.dumps(conf).encode(), rss=rss)
                check_conf = dict(conf, prevResult=add.json) if add.code == 0 else conf
                check = run([plugin(impl, "macvlan")], dict(env, CNI_COMMAND="CHECK"), json.dumps(check_conf).encode(),
                            rss=rss)
                dele = run([plugin(impl, "macvlan")], dict(env, CNI_COMMAND="DEL"), json.dumps(check_conf).encode(),
                           rss=rss)
                if i:
                    for verb, e in (("ADD", add), ("CHECK", check), ("DEL", dele)):
                        rows[verb].add(impl, e)
                for verb, e in (("ADD", add), ("CHECK", check), ("DEL", dele)):
                    if e.code != 0 and (i == 0 or rows[verb].failures[impl] <= 2):
                        print(f"    {impl} {verb} failed: {(e.stdout or e.stderr).decode(errors='replace')[:300]}")
                ns.drop(pod)
        for verb, row in rows.items():
            print_series(row)
            figures[row.label] = row.as_dict()

        for r, impl in enumerate(IMPLS):
            pods = [ns.pod() for _ in range(parallel_count)]
            conf = json.dumps(dict(confs[impl], name=f"benchpar-{impl}")).encode()
            jobs = [([plugin(impl, "macvlan")], cni_env(impl, "ADD", f"mvpar-{k}", netns=f"/run/netns/{pod}"))
                    for k, pod in enumerate(pods)]
            wall, execs = parallel(jobs, conf)
            parallel_report(f"{parallel_count} parallel macvlan+host-local ADDs", impl, wall, execs, figures)
            jobs = [([plugin(impl, "macvlan")], dict(env, CNI_COMMAND="DEL")) for _, env in jobs]
            wall, execs = parallel(jobs, conf)
            fails = sum(1 for e in execs if e.code)
            print(f"{'  then as many parallel DELs':<40} {impl:>4}: wall {wall * 1000:8.1f} ms, failures {fails}")
            for pod in pods:
                ns.drop(pod)


# -- through underlayd ------------------------------------------------------------------------

AGENT_IMPLS = ("agent", "ours", "go")


def agent_impls():
    """The agent section's: with --base, the base build through its own underlayd too."""
    return AGENT_IMPLS + (("base",) if BASE else ())


def agent_header():
    return (f"{'operation':<40} {'agent':>8} {'p90':>7} {'no agent':>9} {'Go':>8} {'agent/Go':>9}"
            f" {'no agent/Go':>12}" + (f" {'base':>8} {'base/Go':>8}" if BASE else "") + "  failures")


def rotate(impls, i):
    k = i % len(impls)
    return impls[k:] + impls[:k]


def print_agent_series(series):
    fails = "" if not any(series.failures.values()) else \
        ", ".join(f"{impl} {count}" for impl, count in series.failures.items())
    base = f" {series.median('base'):>8.2f} {series.ratio('base'):>7.2f}x" if "base" in series.impls else ""
    print(f"{series.label:<40} {series.median('agent'):>8.2f} {series.p90('agent'):>7.2f}"
          f" {series.median('ours'):>9.2f} {series.median('go'):>8.2f} {series.ratio('agent'):>8.2f}x"
          f" {series.ratio('ours'):>11.2f}x{base}  {fails}", flush=True)


class AgentProcess:
    """dist/bin/underlayd (impl "base": --base's) on a socket of its own; its memory with its workers."""

    def __init__(self, workdir, *args, impl="agent"):
        workdir = os.path.join(workdir, "base-agent") if impl == "base" else workdir
        self.socket = os.path.join(workdir, "run", "underlay.sock")
        os.makedirs(workdir, exist_ok=True)
        self.log = open(os.path.join(workdir, "underlayd.log"), "wb")
        args = args or ("--dhcp-dir", os.path.join(workdir, "dhcp"))   # never the node's records
        self.proc = subprocess.Popen([plugin(impl, "underlayd"), "--socket", self.socket, *args],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"underlayd did not start (see {self.log.name})")
            time.sleep(0.01)

    def children_cpu_ms(self):
        """CPU of the agent's reaped workers so far (cutime + cstime, clock ticks)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[13]) + int(fields[14])) * 1000 / os.sysconf("SC_CLK_TCK")

    def own_cpu_ms(self):
        """CPU of the agent's own process so far (its loop and its forks: /proc/PID/schedstat, ns)."""
        with open(f"/proc/{self.proc.pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e6

    def cpu_ms(self):
        """What a request costs the agent's side: its reaped workers' CPU and the agent's own."""
        return self.children_cpu_ms() + self.own_cpu_ms()

    def pids(self):
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [self.proc.pid] + [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return [self.proc.pid]

    def memory(self):
        """(PSS KiB, RSS KiB, processes) of the agent and its workers."""
        pss = rss = count = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    fields = dict(line.split()[:2] for line in f if line.split()[0] in ("Pss:", "Rss:"))
            except (FileNotFoundError, ProcessLookupError):
                continue
            pss += int(fields.get("Pss:", 0))
            rss += int(fields.get("Rss:", 0))
            count += 1
        return pss, rss, count

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Sampler:
    """Peak memory of the agent's process tree while a burst runs (a thread, every 0.2 s: reading
    smaps_rollup takes each process's mmap lock, and more often slowed the agent's forks down)."""

    def __init__(self, agent):
        import threading
        self.agent, self.peak, self.done = agent, (0, 0, 0), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done.is_set():
            sample = self.agent.memory()
            if sample[0] > self.peak[0]:
                self.peak = sample
            self.done.wait(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def print_memory(label, sample, figures):
    pss, rss, count = sample
    print(f"{label:<40} PSS {pss / 1024:6.1f} MiB, RSS {rss / 1024:6.1f} MiB, {count} processes", flush=True)
    figures[label] = {"pss_kib": pss, "rss_kib": rss, "processes": count}


def bench_thin(n, figures):
    """What the thin exec costs against doing nothing: a bare interpreter, the frozen bundle's VERSION,
    the compiled client's, a hand-off whose worker has nothing to do (stdin fails to decode), and
    that without the agent (the client execs the bundle)."""
    bundle = [os.path.join(OURS, ".underlay", "underlay"), "host-local"]
    rows = {
        "python3 -I -S -c pass": (["/usr/bin/python3", "-I", "-S", "-c", "pass"], {}, b""),
        "the bundle's VERSION (frozen, no import)": (bundle, cni_env("ours", "VERSION"), b""),
        "ours VERSION (the compiled client)": ([plugin("ours", "host-local")], cni_env("ours", "VERSION"), b""),
        "thin hand-off, worker does ~nothing": ([plugin("ours", "host-local")], cni_env("agent", "ADD"), b"{"),
        "  the same without the agent": ([plugin("ours", "host-local")], cni_env("ours", "ADD"), b"{"),
        "Go host-local, the same": ([plugin("go", "host-local")], cni_env("go", "ADD"), b"{"),
    }
    ms = {label: [] for label in rows}
    for i in range(n):
        for label in rotate(list(rows), i):
            argv, env, stdin = rows[label]
            ms[label].append(run(argv, env, stdin).seconds * 1000)
    for label, values in ms.items():
        print(f"{label:<40} {statistics.median(values):>8.2f} ms", flush=True)
        figures[label] = {"median_ms": statistics.median(values), "n": len(values)}


def bench_agent(n, parallel_count, workdir, figures):
    global AGENT_SOCKET, BASE_SOCKET
    impls = agent_impls()
    agents = {"agent": AgentProcess(workdir)}
    AGENT_SOCKET = agents["agent"].socket
    if BASE:
        agents["base"] = AgentProcess(workdir, impl="base")
        BASE_SOCKET = agents["base"].socket
    agent = agents["agent"]
    try:
        time.sleep(0.5)
        print_memory("underlayd idle (agent + spares)", agent.memory(), figures)
        bench_thin(n, figures)
        print()
        print(agent_header())
        subnet = ipaddress.ip_network("10.202.0.0/16")
        confs = {impl: host_local_conf(os.path.join(workdir, f"agent-hl-{impl}"), subnet) for impl in impls}
        rows = {verb: Series(f"host-local {verb}", impls) for verb in ("ADD", "DEL")}
        for i in range(n):
            for impl in rotate(impls, i):
                for verb in ("ADD", "DEL"):
                    rows[verb].add(impl, run([plugin(impl, "host-local")], cni_env(impl, verb, f"ag-{i}"), confs[impl]))
        for row in rows.values():
            print_agent_series(row)
            figures["agent: " + row.label] = row.as_dict()

        subnets = {"agent": "10.212.0.0/16", "ours": "10.213.0.0/16", "go": "10.214.0.0/16", "base": "10.215.0.0/16"}
        with Namespaces() as ns:
            confs = {impl: macvlan_conf(impl, ns.master, os.path.join(workdir, f"agent-mv-{impl}"),
                                        ipaddress.ip_network(subnets[impl])) for impl in impls}
            rows = {verb: Series(f"macvlan+host-local {verb}", impls) for verb in ("ADD", "CHECK", "DEL")}
            for i in range(n + 1):     # iteration 0 warms caches, not counted
                for impl in rotate(impls, i):
                    pod = ns.pod()
                    env = cni_env(impl, "ADD", f"agmv-{i}", netns=f"/run/netns/{pod}")
                    conf = confs[impl]
                    add = run([plugin(impl, "macvlan")], env, json.dumps(conf).encode())
                    check_conf = dict(conf, prevResult=add.json) if add.code == 0 else conf
                    check = run([plugin(impl, "macvlan")], dict(env, CNI_COMMAND="CHECK"),
                                json.dumps(check_conf).encode())
                    dele = run([plugin(impl, "macvlan")], dict(env, CNI_COMMAND="DEL"), json.dumps(check_conf).encode())
                    for verb, e in (("ADD", add), ("CHECK", check), ("DEL", dele)):
                        if i:
                            rows[verb].add(impl, e)
                        if e.code != 0 and rows[verb].failures[impl] <= 2:
                            print(f"    {impl} {verb} failed: {(e.stdout or e.stderr).decode(errors='replace')[:300]}")
                    ns.drop(pod)
            for row in rows.values():
                print_agent_series(row)
                figures["agent: " + row.label] = row.as_dict()
            cpu_per_operation(n, ns, confs, agents, impls, rows, figures)

            # two rounds, the second in reverse order: one burst is at the mercy of the machine's noise
            for r, impl in enumerate(impls + impls[::-1]):
                round_ = f"round {r // len(impls) + 1}"
                pods = [ns.pod() for _ in range(parallel_count)]
                conf = json.dumps(dict(confs[impl], name=f"agentpar-{impl}")).encode()
                jobs = [([plugin(impl, "macvlan")], cni_env(impl, "ADD", f"agpar-{k}", netns=f"/run/netns/{pod}"))
                        for k, pod in enumerate(pods)]
                with Sampler(agents.get(impl, agent)) as sampler:
                    wall, execs, cpu = parallel_cpu(jobs, conf, agents.get(impl))
                parallel_report(f"{parallel_count} parallel macvlan ADDs, {round_}", impl, wall, execs, figures, cpu)
                if impl in agents:
                    print_memory(f"underlayd{' (base)' if impl == 'base' else ''} peak during {parallel_count} ADDs,"
                                 f" {round_}", sampler.peak, figures)
                jobs = [([plugin(impl, "macvlan")], dict(env, CNI_COMMAND="DEL")) for _, env in jobs]
                wall, execs, cpu = parallel_cpu(jobs, conf, agents.get(impl))
                parallel_report(f"  then {parallel_count} parallel DELs, {round_}", impl, wall, execs, figures, cpu)
                for pod in pods:
                    ns.drop(pod)
        time.sleep(0.5)
        print_memory("underlayd idle after the bursts", agent.memory(), figures)
    finally:
        AGENT_SOCKET = BASE_SOCKET = None
        for each in agents.values():
            each.stop()


CPU_BLOCK = 5   # operations of a verb in a row, per implementation and round, for the CPU rows


def cpu_per_operation(n, ns, confs, agents, impls, rows, figures):
    """CPU per macvlan + host-local ADD, CHECK and DEL: the exec and the children it waited for and,
    through an agent, the worker and the agent's own (its loop, the fork). In rounds, the
    implementations in turn (the load changes: a CPU figure is not load-free), each does CPU_BLOCK
    ADDs, then as many CHECKs and DELs, the agent's side read around each block: its workers' CPU is
    in clock ticks (10 ms), so n operations in blocks of CPU_BLOCK hold to ~4 ms / sqrt(n CPU_BLOCK)
    (read around each operation, a verb's mean swung by 1-2 ms at 20)."""
    total = {verb: {impl: 0.0 for impl in impls} for verb in rows}
    own = {verb: {impl: 0.0 for impl in agents} for verb in rows}
    rounds = max(1, n // CPU_BLOCK)
    for r in range(rounds):
        for impl in rotate(impls, r):
            served = agents.get(impl)
            pods = [ns.pod() for _ in range(CPU_BLOCK)]
            results = {}
            for verb in rows:
                before = served.cpu_ms() if served else 0.0
                own_before = served.own_cpu_ms() if served else 0.0
                for k, pod in enumerate(pods):
                    conf = dict(confs[impl], prevResult=results[k]) if k in results else confs[impl]
                    e = run([plugin(impl, "macvlan")], cni_env(impl, verb, f"agcpu-{r}-{k}", netns=f"/run/netns/{pod}"),
                            json.dumps(conf).encode())
                    if verb == "ADD" and e.code == 0:
                        results[k] = e.json
                    total[verb][impl] += e.cpu_ms
                if served:
                    time.sleep(0.1)   # the last worker reaped
                    total[verb][impl] += served.cpu_ms() - before
                    own[verb][impl] += served.own_cpu_ms() - own_before
            for pod in pods:
                ns.drop(pod)
    count = rounds * CPU_BLOCK
    print(f"CPU per operation ({count} of each, in blocks of {CPU_BLOCK}; user+system of the exec, its children and,"
          " with the agent, the worker and the agent's own: its loop, the fork; mean ms):")
    for verb, row in rows.items():
        mine = {impl: total[verb][impl] / count for impl in impls}
        mine_own = {impl: own[verb][impl] / count for impl in agents}
        go = mine["go"]
        base = f"  base {mine['base']:6.1f} (own {mine_own['base']:4.2f}) base/Go {mine['base'] / go:5.2f}x" \
            if "base" in mine else ""
        print(f"  {row.label:<38} agent {mine['agent']:6.1f} (own {mine_own['agent']:4.2f})"
              f"  no agent {mine['ours']:6.1f}  Go {go:6.1f}  agent/Go {mine['agent'] / go:5.2f}x"
              f"  no agent/Go {mine['ours'] / go:5.2f}x{base}", flush=True)
        figures["agent: " + row.label]["cpu_mean_ms"] = mine
        figures["agent: " + row.label]["agent_own_cpu_mean_ms"] = mine_own


def parallel_cpu(jobs, stdin, agent=None):
    """parallel() and the CPU it took: every exec's and, through an agent, its workers' and its own
    (read once it has reaped them); (wall seconds, [Exec], CPU ms)."""
    before = agent.cpu_ms() if agent else 0.0
    wall, execs = parallel(jobs, stdin)
    if agent:
        time.sleep(0.2)
    return wall, execs, sum(e.cpu_ms for e in execs) + (agent.cpu_ms() - before if agent else 0.0)


# -- cluster-access ---------------------------------------------------------------------------

def bench_cluster_access(n, workdir, figures):
    """The chain macvlan+host-local[+cluster-access] as libcni runs it: ADD in order (each exec given the
    result so far), DEL in reverse; the figure is the whole chain's wall time, per variant."""
    global AGENT_SOCKET
    agent = AgentProcess(workdir)
    AGENT_SOCKET = agent.socket
    variants = [(impl, access) for impl in ("agent", "ours") for access in (False, True)]
    ms = {(v, verb): [] for v in variants for verb in ("ADD", "DEL")}
    failures = {v: 0 for v in variants}
    try:
        with Namespaces() as ns:
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:   # the bench's node (we are in it) forwards
                f.write("1")
            sh("ip", "addr", "add", "10.215.255.254/16", "dev", ns.master)
            confs = {impl: macvlan_conf(impl, ns.master, os.path.join(workdir, f"ca-{impl}"),
                                        ipaddress.ip_network("10.215.0.0/16")) for impl in ("agent", "ours")}
            access = {"cniVersion": CNI_VERSION, "type": "cluster-access", "mode": "primary",
                      "serviceCIDRs": ["10.96.0.0/12"]}
            for i in range(n + 1):     # iteration 0 warms caches, not counted
                for impl, with_access in rotate(variants, i):
                    pod = ns.pod()
                    env = cni_env(impl, "ADD", f"ca-{i}", netns=f"/run/netns/{pod}")
                    chain = [("macvlan", confs[impl])] + \
                        ([("cluster-access", dict(access, name=confs[impl]["name"]))] if with_access else [])
                    result, execs = None, {"ADD": [], "DEL": []}
                    for name, conf in chain:
                        e = run([plugin(impl, name)], env, json.dumps(dict(conf, prevResult=result) if result
                                                                      else conf).encode())
                        execs["ADD"].append(e)
                        result = e.json if e.code == 0 else result
                    for name, conf in reversed(chain):
                        execs["DEL"].append(run([plugin(impl, name)], dict(env, CNI_COMMAND="DEL"),
                                                json.dumps(dict(conf, prevResult=result)).encode()))
                    bad = [e for verb in execs.values() for e in verb if e.code != 0]
                    if bad:
                        failures[(impl, with_access)] += 1
                        print(f"    {impl} failed: {(bad[0].stdout or bad[0].stderr).decode(errors='replace')[:300]}")
                    elif i:
                        for verb in ("ADD", "DEL"):
                            ms[((impl, with_access), verb)].append(sum(e.seconds for e in execs[verb]) * 1000)
                    ns.drop(pod)
        print(f"{'chain':<44} {'ADD med':>8} {'DEL med':>8}  failures")
        for impl, with_access in variants:
            label = (f"macvlan+host-local{' + cluster-access' if with_access else ''}, "
                     f"{'agent' if impl == 'agent' else 'no agent'}")
            add, dele = (statistics.median(ms[((impl, with_access), verb)] or [float("nan")]) for verb in ("ADD", "DEL"))
            print(f"{label:<44} {add:>8.2f} {dele:>8.2f}  {failures[(impl, with_access)] or ''}", flush=True)
            figures[f"cluster-access: {label}"] = {"add_median_ms": add, "del_median_ms": dele,
                                                   "n": len(ms[((impl, with_access), 'ADD')]),
                                                   "failures": failures[(impl, with_access)]}
    finally:
        AGENT_SOCKET = None
        agent.stop()


# -- conflict and gateway detection ---------------------------------------------------------

DETECTIONS = {"without": {}, "conflictDetection": {"conflictDetection": True},
              "gatewayDetection": {"gatewayDetection": True},
              "both": {"conflictDetection": True, "gatewayDetection": True}}


def bench_detection(n, workdir, figures):
    """ADD (and DEL) through underlayd with each detection and without, default probe times, IPv4."""
    global AGENT_SOCKET
    agent = AgentProcess(workdir)
    AGENT_SOCKET = agent.socket
    try:
        with Namespaces() as ns:
            sh("ip", "addr", "add", "10.215.0.1/16", "dev", f"{PREFIX}p")   # the gateway, beside the master
            base = macvlan_conf("agent", ns.master, os.path.join(workdir, "detection"),
                                ipaddress.ip_network("10.215.0.0/16"))
            ms = {label: {"ADD": [], "DEL": []} for label in DETECTIONS}
            for i in range(n + 1):     # iteration 0 warms caches, not counted
                for label in rotate(list(DETECTIONS), i):
                    pod = ns.pod()
                    conf = json.dumps(dict(base, **DETECTIONS[label])).encode()
                    env = cni_env("agent", "ADD", f"det-{i}", netns=f"/run/netns/{pod}")
                    for verb in ("ADD", "DEL"):
                        e = run([plugin("ours", "macvlan")], dict(env, CNI_COMMAND=verb), conf)
                        if e.code != 0:
                            print(f"    {label} {verb} failed: {(e.stdout or e.stderr).decode(errors='replace')[:300]}")
                        elif i:
                            ms[label][verb].append(e.seconds * 1000)
                    ns.drop(pod)
        print(f"\n{'macvlan+host-local through underlayd':<40} {'ADD':>8} {'+ vs without':>13} {'DEL':>8}")
        without = statistics.median(ms["without"]["ADD"])
        for label, verbs in ms.items():
            add, dele = statistics.median(verbs["ADD"]), statistics.median(verbs["DEL"])
            print(f"  {label:<38} {add:>8.2f} {add - without:>+13.2f} {dele:>8.2f}", flush=True)
            figures[f"detection: {label}"] = {"add_median_ms": add, "del_median_ms": dele, "n": len(verbs["ADD"])}
    finally:
        AGENT_SOCKET = None
        agent.stop()


# -- main -----------------------------------------------------------------------------------

def describe():
    ours = run([plugin("ours", "host-local")], {"CNI_COMMAND": "VERSION"}).json or {}
    go = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"],
                        capture_output=True, text=True).stdout
    size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(OURS) for f in files)
    print(f"ours: {OURS} underlay {ours.get('underlay', {})}, {size / 1e6:.2f} MB on disk (limit 21 MB: tests/build/test_bundle.py SIZE_LIMIT)")
    print(f"Go:   {GO} containernetworking-plugins {go or '?'}")
    print(f"host: {platform.node()} {platform.release()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    return {"ours_build": ours.get("underlay"), "go_version": go, "size_bytes": size}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="version,macvlan,leases,parallel,agent,cluster-access,detection")
    parser.add_argument("--iterations", type=int, default=40, help="per measured operation (default 40)")
    parser.add_argument("--lease-iterations", type=int, default=20)
    parser.add_argument("--leases", default=",".join(map(str, LEASE_COUNTS)))
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the parallel host-local section")
    parser.add_argument("--dhcp-leases", type=int, default=200, help="leases one agent renews (dhcp; 0: none)")
    parser.add_argument("--cluster-pods", type=int, default=1000, help="of the cluster sections (default 1000)")
    parser.add_argument("--cluster-nodes", type=int, default=10, help="of the cluster sections (default 10)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--base", help="agent section: another build's dist/bin (e.g. of the commit before a"
                                       " change) through its own underlayd, alternately with this one in one run")
    args = parser.parse_args()
    global BASE
    BASE = os.path.abspath(args.base) if args.base else None
    sections = args.sections.split(",")
    if "cluster" in sections or "cluster-agents" in sections:
        import cluster_bench                # beside this script; from dist/bin when built, else from source
        cluster = {}
        parts = (["exec", "scale", "in-process", "round-trips"] if "cluster" in sections else []) + \
            (["agents"] if "cluster-agents" in sections else [])
        cluster_bench.run(args.iterations, args.cluster_pods, args.cluster_nodes, cluster, parts)
        sections = [s for s in sections if s not in ("cluster", "cluster-agents")]
        if not sections:
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"cluster": cluster}, f, indent=2)
            return
    else:
        cluster = {}

    if not os.access(TIME, os.X_OK):
        sys.exit(f"bench: {TIME} is missing (apt-get install time)")
    for impl in IMPLS:
        for name in ("macvlan", "host-local"):
            if not os.access(plugin(impl, name), os.X_OK):
                sys.exit(f"bench: {plugin(impl, name)} is missing "
                         f"({'make build' if impl == 'ours' else 'apt-get install containernetworking-plugins'})")
    served = {"agent", "cluster-access", "detection", "dhcp"}
    if served & set(sections) and not os.access(plugin("ours", "underlayd"), os.X_OK):
        sys.exit(f"bench: {plugin('ours', 'underlayd')} is missing (make build)")
    if ({"macvlan"} | served) & set(sections) and os.geteuid() != 0:
        sys.exit("bench: the macvlan section needs root (network namespaces); or pass --sections")

    figures = {"setup": describe(), **({"cluster": cluster} if cluster else {})}
    print("times in ms (median, p90 of the exec as a runtime sees it); RSS: median peak per exec\n")
    print(HEADER)
    workdir = tempfile.mkdtemp(prefix="underlay-bench-")
    try:
        if "version" in sections:
            bench_version(args.iterations * 5, figures)
        if "macvlan" in sections:
            bench_macvlan(args.iterations, args.parallel, workdir, figures)
        if "leases" in sections:
            bench_leases(args.lease_iterations, [int(c) for c in args.leases.split(",")], workdir, figures)
        if "parallel" in sections:
            bench_parallel(args.rounds, args.parallel, workdir, figures)
        if "agent" in sections:
            print("\nthe same plugins through underlayd (agent), without it (no agent) and Go, in one loop")
            bench_agent(args.iterations, args.parallel, workdir, figures)
        if "cluster-access" in sections:
            print("\nmacvlan+host-local with and without cluster-access (primary mode), through underlayd and not")
            bench_cluster_access(args.iterations, workdir, figures)
        if "detection" in sections:
            bench_detection(args.iterations, workdir, figures)
        if "dhcp" in sections:
            import dhcp_bench                  # beside this script
            print("\nmacvlan + dhcp: ours through underlayd, Go + the reference dhcp daemon, one Kea4, in one loop")
            dhcp_bench.run(sys.modules[__name__], args.iterations, args.dhcp_leases, workdir, figures)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
