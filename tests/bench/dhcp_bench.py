"""The dhcp section of tests/bench/bench.py: macvlan + our `dhcp` through underlayd against Debian's Go
macvlan + the reference `dhcp` with its daemon (`/usr/lib/cni/dhcp daemon`, a socket of its own), one
Kea4 server (tests/lan.py) answering both, alternately in one loop: ADD and DEL as a runtime sees them.
Then --dhcp-leases pods held by one agent on a short lease: the renewals done on schedule within one
lease time, and the agent's memory (PSS/RSS of the agent and its workers) while it holds them.

Figures, not assertions; compare the ratios (README "DHCP").
"""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.lan import Kea4, Lan  # noqa: E402  (after the path: run as a script)

POOL = ("10.88.0.10", "10.88.0.250")


class WideKea4(Kea4):
    """Kea4 on 10.88.0.0/16, a pool of 4 000 addresses: room for --dhcp-leases up to that."""

    def config(self):
        conf = super().config()
        subnet = conf["Dhcp4"]["subnet4"][0]
        subnet["subnet"], subnet["pools"] = "10.88.0.0/16", [{"pool": "10.88.16.0 - 10.88.31.159"}]
        return conf


def sh(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        found = re.search(rf"^{name} (\S+)$", response.read().decode(), re.M)
    return float(found.group(1)) if found else None


def wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


class ReferenceDaemon:
    """`/usr/lib/cni/dhcp daemon -socketpath ...`: what the reference dhcp IPAM needs running."""

    def __init__(self, go_dir, workdir):
        self.socket = os.path.join(workdir, "cni-dhcp.sock")
        self.log = open(os.path.join(workdir, "cni-dhcp.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(go_dir, "dhcp"), "daemon", "-socketpath", self.socket],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        wait(lambda: os.path.exists(self.socket) or self.proc.poll() is not None, 30, "the reference dhcp daemon")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the reference dhcp daemon exited (see {self.log.name})")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run(bench, n, leases, workdir, figures):
    """`bench` is tests/bench/bench.py (its exec timing, series, namespaces, agent process)."""
    with bench.Namespaces() as ns:
        lan_ns = f"{bench.PREFIX}l"
        peer = f"{bench.PREFIX}p"
        sh("ip", "netns", "add", lan_ns)
        try:
            sh("ip", "link", "set", peer, "netns", lan_ns)
            sh("ip", "netns", "exec", lan_ns, "ip", "addr", "add", "10.88.0.1/16", "dev", peer)
            sh("ip", "netns", "exec", lan_ns, "ip", "link", "set", peer, "up")
            lan = Lan(lan_ns, peer, ns.host, ns.master)
            side_by_side(bench, ns, lan, n, workdir, figures)
            if leases:
                many(bench, ns, lan, leases, workdir, figures)
        finally:
            subprocess.run(["ip", "netns", "del", lan_ns], capture_output=True)


def side_by_side(bench, ns, lan, n, workdir, figures):
    server = Kea4(lan, os.path.join(workdir, "kea"), valid_lifetime=3600, pool=POOL).start()
    agent = bench.AgentProcess(workdir, "--dhcp-dir", os.path.join(workdir, "dhcp"), "--heal-every", "0")
    daemon = ReferenceDaemon(bench.GO, workdir)
    bench.AGENT_SOCKET = agent.socket
    try:
        confs = {
            "agent": {"cniVersion": bench.CNI_VERSION, "name": "benchdhcp", "type": "macvlan", "master": ns.master,
                      "mode": "bridge", "ipam": {"type": "dhcp"}},
            "go": {"cniVersion": bench.CNI_VERSION, "name": "benchdhcp", "type": "macvlan", "master": ns.master,
                   "mode": "bridge", "ipam": {"type": "dhcp", "daemonSocketPath": daemon.socket}},
        }
        impls = ("agent", "go")
        rows = {verb: bench.Series(f"macvlan+dhcp {verb}", impls) for verb in ("ADD", "DEL")}
        for i in range(n + 1):      # iteration 0 warms caches, not counted
            for impl in bench.rotate(list(impls), i):
                pod = ns.pod()
                env = bench.cni_env(impl, "ADD", f"dh-{impl}-{i}", netns=f"/run/netns/{pod}", ifname="net1")
                conf = json.dumps(confs[impl]).encode()
                add = bench.run([bench.plugin(impl, "macvlan")], env, conf)
                dele = bench.run([bench.plugin(impl, "macvlan")], dict(env, CNI_COMMAND="DEL"), conf)
                for verb, e in (("ADD", add), ("DEL", dele)):
                    if i:
                        rows[verb].add(impl, e)
                    if e.code != 0 and rows[verb].failures[impl] <= 2:
                        print(f"    {impl} {verb} failed: {(e.stdout or e.stderr).decode(errors='replace')[:300]}")
                ns.drop(pod)
        print(f"{'operation':<40} {'ours (agent)':>12} {'p90':>7} {'Go+daemon':>10} {'p90':>7} {'ours/Go':>8}"
              "  failures")
        for row in rows.values():
            fails = ", ".join(f"{k} {v}" for k, v in row.failures.items() if v)
            print(f"{row.label:<40} {row.median('agent'):>12.2f} {row.p90('agent'):>7.2f} {row.median('go'):>10.2f}"
                  f" {row.p90('go'):>7.2f} {row.ratio('agent'):>7.2f}x  {fails}", flush=True)
            figures["dhcp: " + row.label] = row.as_dict()
    finally:
        bench.AGENT_SOCKET = None
        daemon.stop()
        agent.stop()
        server.kill()


def many(bench, ns, lan, count, workdir, figures):
    """`count` pods on one agent, on a lease long enough to ADD them all before the first T1: every lease
    renewed on schedule (at T1, none expired)?"""
    lease = max(40, count // 10)
    port = bench_port()
    agent = bench.AgentProcess(workdir, "--dhcp-dir", os.path.join(workdir, "dhcp-many"), "--heal-every", "0",
                               "--metrics", f"127.0.0.1:{port}")
    server = WideKea4(lan, os.path.join(workdir, "kea-many"), valid_lifetime=lease, renew_timer=lease // 2,
                      rebind_timer=lease * 7 // 8).start()
    bench.AGENT_SOCKET = agent.socket
    pods = []
    try:
        idle = agent.memory()
        conf = json.dumps({"cniVersion": bench.CNI_VERSION, "name": "benchmany", "type": "macvlan",
                           "master": ns.master, "mode": "bridge", "ipam": {"type": "dhcp"}}).encode()
        pods = [ns.pod() for _ in range(count)]
        jobs = [([bench.plugin("agent", "macvlan")], bench.cni_env("agent", "ADD", f"many-{k}",
                                                                    netns=f"/run/netns/{pod}", ifname="net1"))
                for k, pod in enumerate(pods)]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            execs = list(pool.map(lambda job: bench.run(job[0], job[1], conf), jobs))
        held = sum(1 for e in execs if e.code == 0)
        added = time.monotonic() - started
        holding = agent.memory()
        wait(lambda: (metric(port, "underlay_dhcp_renewals_total") or 0) >= held, lease,
             f"{held} renewals within one lease time")
        took = time.monotonic() - started
        print(f"{count} leases held by one agent: {held} granted in {added:.1f} s; all renewed {took:.1f} s after "
              f"the first ADD (T1 {lease // 2} s, lease {lease} s); expiries "
              f"{metric(port, 'underlay_dhcp_expiries_total'):.0f}", flush=True)
        bench.print_memory("underlayd idle, no lease", idle, figures)
        bench.print_memory(f"underlayd holding {held} leases", holding, figures)
        figures[f"dhcp: {count} leases renewed"] = {"held": held, "added_in_s": added, "all_renewed_after_s": took,
                                                     "t1_s": lease // 2}
    finally:
        bench.AGENT_SOCKET = None
        for pod in pods:
            ns.drop(pod)
        agent.stop()
        server.kill()


def bench_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit("run it through tests/bench/bench.py --sections dhcp")
