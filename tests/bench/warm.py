#!/usr/bin/env python3
"""The warm path: macvlan + host-local verbs run in-process in a forked child
per request (as underlayd will), side by side with Debian's Go plugins exec'd
alternately in the same loop. A script, not a test: it prints, asserts nothing.

  sudo /work/venv/bin/python tests/bench/warm.py [--iterations 40] [--profile ADD]

This process imports everything once, makes a "host" netns with a veth master
and enters it; per iteration a fresh pod netns, then ADD, CHECK, DEL each in
a fork of this process (dispatch.run with the request's env and stdin). Per
verb it reports:
  fork->exit  what the parent sees from fork() to the child reaped
  work        dispatch.run inside the child
  cpu         CPU time of dispatch.run in the child (user + system; waiting for the disk or a lock is not in it)
  faults      minor page faults in it (copy-on-write of the warm parent's pages, mostly)
  rt          netlink requests sent (each waits for its reply)
  objs        pyroute2 message objects built (nlmsg_base instances)
Go is the exec of /usr/lib/cni/macvlan (+ host-local) as a runtime sees it.
--profile VERB prints a cProfile of that verb from one extra iteration.
"""

import argparse
import ipaddress
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.bench.bench import GO, setns, sh  # noqa: E402

PREFAULT = False
PREFIX = f"ulnw{os.getpid() % 0x1000:x}"
CNI_VERSION = "1.0.0"          # the newest the Debian Go plugins speak
VERBS = ("ADD", "CHECK", "DEL")


def warm_imports():
    """Everything a request touches, imported once (the agent's job)."""
    import importlib
    import pkgutil

    import cni
    import ipam
    for package in (cni, ipam):   # the lazily imported ones too (results, oplog, ...)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    import cni.plugins.macvlan
    import ipam.host_local
    from cni import config, registry
    from cni.errors import CniError
    for schema in ("macvlan", "host-local"):
        try:
            config.validate(schema, {})
        except CniError:
            pass
    registry.in_process_ipam("host-local")
    return cni.plugins.macvlan.VERBS, ipam.host_local


class Counters:
    """Netlink requests sent and pyroute2 objects built, counted in the child only."""

    def __init__(self):
        self.sends = 0
        self.objects = 0

    def install(self):
        from cni.net import netlink
        counters = self

        class CountingSocket:
            def __init__(self, sock):
                self._sock = sock

            def send(self, data, *a):
                counters.sends += 1
                return self._sock.send(data, *a)

            def sendmsg(self, *a):
                counters.sends += 1
                return self._sock.sendmsg(*a)

            def __getattr__(self, name):
                return getattr(self._sock, name)

        init = netlink.Netlink.__init__

        def counting_init(nl, *a, **kw):
            init(nl, *a, **kw)
            nl.sock = CountingSocket(nl.sock)
        netlink.Netlink.__init__ = counting_init

        if "pyroute2.netlink" not in sys.modules:   # not imported by the code measured: nothing to count
            return
        from pyroute2.netlink import nlmsg_base
        base_init = nlmsg_base.__init__

        def counting_base_init(msg, *a, **kw):
            counters.objects += 1
            base_init(msg, *a, **kw)
        nlmsg_base.__init__ = counting_base_init


def in_child(verbs, env, stdin, profile=False):
    """fork; run one request in the child; (result dict from the child, fork->exit seconds)."""
    from cni import dispatch, registry
    r, w = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            counters = Counters()
            counters.install()
            out, err = io.StringIO(), io.StringIO()
            if profile:
                import cProfile
                import pstats
                prof = cProfile.Profile()
                prof.enable()
            if PREFAULT:
                import gc
                gc.collect()   # a spare worker's idle time: copy the pages a collection touches now
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0, c0 = time.perf_counter(), time.process_time()
            rc = dispatch.run(registry.EXECUTABLES["macvlan"], verbs, env=env, stdin=stdin, stdout=out, stderr=err)
            work, cpu = time.perf_counter() - t0, time.process_time() - c0
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            if profile:
                prof.disable()
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats(os.environ.get("WARM_SORT", "cumulative")).print_stats(45)
                sys.stderr.write(text.getvalue())
            report = {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "work": work,
                      "cpu": cpu, "faults": faults,
                      "sends": counters.sends, "objects": counters.objects}
            os.write(w, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    wall = time.perf_counter() - started
    report = json.loads(b"".join(chunks)) if chunks else {"rc": -1, "stdout": "", "stderr": "child died"}
    return report, wall


def go_exec(env, stdin):
    started = time.perf_counter()
    proc = subprocess.run([os.path.join(GO, "macvlan")], input=stdin, env=env, capture_output=True)
    return proc, time.perf_counter() - started


def env_of(impl, command, cid, pod):
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
            "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
            "CNI_PATH": GO if impl == "go" else os.path.join(ROOT, "dist", "bin")}


def conf_of(impl, master, data_dir, subnet):
    return {"cniVersion": CNI_VERSION, "name": f"warm-{impl}", "type": "macvlan", "master": master,
            "mode": "bridge", "ipam": {"type": "host-local", "dataDir": data_dir,
                                       "ranges": [[{"subnet": str(subnet)}]]}}


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--profile", choices=VERBS)
    parser.add_argument("--prefault", action="store_true",
                        help="the child runs gc.collect() before the request (as a spare worker forked ahead "
                             "could while idle): fewer copy-on-write faults in `work`; fork->exit then includes it")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("warm: needs root (network namespaces)")
    verbs, _ = warm_imports()
    global PREFAULT
    PREFAULT = args.prefault

    host, master, peer = f"{PREFIX}h", f"{PREFIX}m", f"{PREFIX}p"
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    pods = []
    ours = {v: {"wall": [], "work": [], "cpu": [], "faults": [], "sends": [], "objects": []} for v in VERBS}
    go = {v: [] for v in VERBS}
    failures = {"ours": 0, "go": 0}
    subnets = {"ours": ipaddress.ip_network("10.212.0.0/16"), "go": ipaddress.ip_network("10.213.0.0/16")}
    try:
        sh("ip", "netns", "add", host)
        fd = os.open(f"/run/netns/{host}", os.O_RDONLY | os.O_CLOEXEC)
        setns(fd)
        os.close(fd)
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", master, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", master, "up")
        sh("ip", "link", "set", peer, "up")
        confs = {impl: conf_of(impl, master, os.path.join(workdir, impl), subnets[impl]) for impl in ("ours", "go")}
        total = args.iterations + 1 + (1 if args.profile else 0)
        for i in range(total):          # iteration 0 warms caches and is not counted
            profile = args.profile if i == total - 1 and args.profile else None
            for impl in (("ours", "go") if i % 2 == 0 else ("go", "ours")):
                if profile and impl == "go":
                    continue
                pod = f"{PREFIX}p{i}{impl[0]}"
                sh("ip", "netns", "add", pod)
                pods.append(pod)
                conf = confs[impl]
                stdin = json.dumps(conf).encode()
                prev = None
                for verb in VERBS:
                    env = env_of(impl, verb, f"warm-{i}", pod)
                    body = json.dumps(dict(conf, prevResult=prev)).encode() if prev else stdin
                    if impl == "ours":
                        report, wall = in_child(verbs, env, body, profile=profile == verb)
                        ok, out = report["rc"] == 0, report["stdout"]
                        if ok and 0 < i and not profile:
                            row = ours[verb]
                            row["wall"].append(wall * 1000)
                            row["work"].append(report["work"] * 1000)
                            row["cpu"].append(report["cpu"] * 1000)
                            row["faults"].append(report["faults"])
                            row["sends"].append(report["sends"])
                            row["objects"].append(report["objects"])
                        if report.get("stderr") and profile == verb:
                            print(report["stderr"])
                    else:
                        proc, wall = go_exec(env, body)
                        ok, out = proc.returncode == 0, proc.stdout.decode()
                        if ok and 0 < i:
                            go[verb].append(wall * 1000)
                    if not ok:
                        failures[impl] += 1
                        if failures[impl] <= 3:
                            print(f"  {impl} {verb} failed: {out[:300]}", flush=True)
                    if verb == "ADD" and ok:
                        prev = json.loads(out)
                subprocess.run(["ip", "netns", "del", pod], capture_output=True)
                pods.remove(pod)
    finally:
        setns(home)
        os.close(home)
        for pod in pods:
            subprocess.run(["ip", "netns", "del", pod], capture_output=True)
        subprocess.run(["ip", "netns", "del", host], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nwarm macvlan + host-local, {args.iterations} iterations, medians in ms "
          f"(ours: fork of a warm process per request; Go: exec)")
    print(f"{'verb':<6} {'fork->exit':>10} {'work':>7} {'cpu':>6} {'faults':>6} {'rt':>4} {'objs':>5} {'Go exec':>8} "
          f"{'fork->exit/Go':>14} {'work/Go':>8}")
    for verb in VERBS:
        row = ours[verb]
        wall, work, g = median(row["wall"]), median(row["work"]), median(go[verb])
        print(f"{verb:<6} {wall:>10.2f} {work:>7.2f} {median(row['cpu']):>6.1f} {median(row['faults']):>6.0f} {median(row['sends']):>4.0f} {median(row['objects']):>5.0f} "
              f"{g:>8.2f} {wall / g:>13.2f}x {work / g:>7.2f}x")
    if any(failures.values()):
        print(f"failures: ours {failures['ours']}, Go {failures['go']}")


if __name__ == "__main__":
    main()
