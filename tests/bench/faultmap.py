#!/usr/bin/env python3
"""Where the page faults of underlayd and its workers land, by address. A script, not a test: it
prints, asserts nothing.

  make build && sudo .venv/bin/python tests/bench/faultmap.py [--bin DIR] [--requests 40] [--burst 64]
                                                              [--writers] [--objects]

It starts DIR/underlayd (default dist/bin) on a socket of its own, records `perf record -e
exceptions:page_fault_user` on it and its children (with accept4 to split each worker's life),
and runs --requests served macvlan + host-local ADDs and DELs one at a time (a warm spare each),
then --burst ADDs at once (spares find a caller queued: no warm-up). Each fault is put in the
region of the agent's /proc/PID/maps it hits (a worker is a copy of it; "new": mapped after the
fork) and counted per process, by role and phase:
  agent          underlayd's own process (its loop, its forks): per fork of a worker
  warm-up        a worker before its last accept4 (prepare: the sample read, the rehearsal)
  served         from there to its exit (what a caller waits for)
  burst ...      the same of the workers forked for the burst
and by kind: cow (a write to a page present but shared: a copy), write (to a page not present:
a new page), read (a page not present: a file's, whose page table entry fork does not copy).
--writers (perf record -g) adds the function whose write faulted (the first user frame; libpython's
static functions show as the nearest exported symbol + offset). --objects runs the agent from
source (.venv's python, the same code unfrozen), which dumps the address, size and type of every
object it can reach after the run: each copy-on-write fault on the heap is put on the object it
hit ("no object": a free block, a dict's keys, a list's items, malloc's own words).
"""

import argparse
import bisect
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

bench.PREFIX = f"fm{os.getpid() % 0x10000:x}"
ROLES = ("agent", "warm-up", "served", "burst warm-up", "burst served")
# --objects: the agent from source, dumping its objects on SIGUSR2 (code objects' constants and names too)
DUMPER = r"""
import gc, os, signal, sys, types
sys.path.insert(0, {root!r})
def dump(*_):
    seen, out, todo = set(), [], list(gc.get_objects()) + list(sys.modules.values())
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        out.append(f"{{id(o)}} {{sys.getsizeof(o)}} {{type(o).__name__}}\n")
        todo.extend(gc.get_referents(o))
        if isinstance(o, types.CodeType):
            todo.extend((*o.co_consts, *o.co_names, *o.co_varnames, o.co_code, o.co_linetable, o.co_exceptiontable))
    with open({path!r} + ".tmp", "w") as f:
        f.writelines(out)
    os.rename({path!r} + ".tmp", {path!r})
signal.signal(signal.SIGUSR2, dump)
from cni.agent import main
main()
"""
HEADER = re.compile(r"\s*(\d+)\s+([\d.]+):\s+(\S+?):?\s+(.*)")


def regions(pid):
    """[(start, end, name)] of /proc/PID/maps, sorted; a small anonymous mapping right after a
    file's is its .bss (pymalloc's arenas, 1 MiB each, are anonymous mappings too)."""
    out, after = [], None
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            perms, path = fields[1], (fields[5] if len(fields) > 5 else "")
            if path:
                name = f"{os.path.basename(path)} {perms}"
                after = (end, os.path.basename(path))
            elif after and after[0] == start and end - start < 512 << 10:
                name = f"{after[1]} .bss"
            else:
                name = "anon (pymalloc's arenas, mmap'd blocks)" if end - start >= 512 << 10 else f"anon {perms}"
            out.append((start, end, name))
    return sorted(out)


def region_of(regions_, address):
    i = bisect.bisect_right(regions_, (address, float("inf"))) - 1
    if i >= 0 and regions_[i][0] <= address < regions_[i][1]:
        return regions_[i][2]
    return "new (mapped after the fork)"


def kind(code):
    """The x86 page fault error code: bit 0 the page was present, bit 1 a write."""
    if code & 1 and code & 2:
        return "cow"
    return "write" if code & 2 else "read"


def run(args, workdir):
    """Start the agent, record while the requests run; (agent pid, perf.data, its regions, burst start)."""
    sock = os.path.join(workdir, "run", "underlay.sock")
    log = open(os.path.join(workdir, "underlayd.log"), "wb")
    argv = [os.path.join(args.bin, "underlayd")]
    if args.objects:
        script = os.path.join(workdir, "agent.py")
        with open(script, "w") as f:
            f.write(DUMPER.format(root=bench.ROOT, path=os.path.join(workdir, "objects.txt")))
        argv = [os.path.join(bench.ROOT, ".venv", "bin", "python"), script]
    agent = subprocess.Popen(argv + ["--socket", sock, "--dhcp-dir", os.path.join(workdir, "dhcp")],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    while not os.path.exists(sock):
        if agent.poll() is not None:
            sys.exit(f"faultmap: underlayd did not start (see {log.name})")
        time.sleep(0.01)
    time.sleep(0.5)
    agent_regions = regions(agent.pid)
    data = os.path.join(workdir, "perf.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-o", data, *(["-g"] if args.writers else []),
                             "-e", "exceptions:page_fault_user", "-e", "syscalls:sys_enter_accept4", "-p", str(agent.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    bench.AGENT_SOCKET = sock
    macvlan = os.path.join(args.bin, "macvlan")
    burst_start = float("inf")
    try:
        with bench.Namespaces() as ns:
            conf = json.dumps(bench.macvlan_conf("fm", ns.master, os.path.join(workdir, "mv"), "10.231.0.0/16")).encode()
            for i in range(args.requests):
                pod = ns.pod()
                env = dict(bench.cni_env("agent", "ADD", f"fm-{i}", netns=f"/run/netns/{pod}"), CNI_PATH=args.bin)
                for verb in ("ADD", "DEL"):
                    time.sleep(0.05)   # the spare warms up
                    bench.run([macvlan], dict(env, CNI_COMMAND=verb), conf)
                ns.drop(pod)
            time.sleep(0.2)
            if args.burst:
                pods = [ns.pod() for _ in range(args.burst)]
                burst_start = time.monotonic()
                bench.parallel([([macvlan], dict(bench.cni_env("agent", "ADD", f"fmb-{k}", netns=f"/run/netns/{pod}"),
                                                 CNI_PATH=args.bin)) for k, pod in enumerate(pods)], conf)
                time.sleep(0.3)
                for pod in pods:
                    ns.drop(pod)
    finally:
        time.sleep(0.3)
        perf.send_signal(signal.SIGINT)
        perf.wait()
        if args.objects:
            agent.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 120
            while not os.path.exists(os.path.join(workdir, "objects.txt")) and time.monotonic() < deadline:
                time.sleep(0.1)
        agent.terminate()
        agent.wait()
        log.close()
    return agent.pid, data, agent_regions, burst_start


def samples(data, writers):
    """(pid, time, event, fields, writer) of each recorded event."""
    fields = "pid,time,event,trace" + (",ip,sym,dso" if writers else "")
    out = subprocess.run(["perf", "script", "-i", data, "-F", fields], capture_output=True, text=True).stdout
    for block in out.split("\n\n") if writers else out.splitlines():
        lines = block.strip().splitlines()
        match = HEADER.match(lines[0]) if lines else None
        if not match:
            continue
        user = [line.split(None, 1)[1] for line in lines[1:] if "kernel.kallsyms" not in line and " " in line.strip()]
        writer = re.sub(r"\(/.*/", "(", user[0]) if user else "?"
        yield int(match.group(1)), float(match.group(2)), match.group(3), match.group(4), writer


def load_objects(path):
    with open(path) as f:
        return sorted((int(a), int(s), t) for a, s, t in (line.split() for line in f))


def object_at(objects, address):
    i = bisect.bisect_right(objects, (address, float("inf"), "")) - 1
    while i >= 0 and objects[i][0] > address - (1 << 16):
        start, size, name = objects[i]
        if start <= address < start + size:
            return name
        i -= 1
    return "(no object)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default=bench.OURS)
    parser.add_argument("--requests", type=int, default=40, help="ADDs and DELs one at a time")
    parser.add_argument("--burst", type=int, default=64, help="ADDs at once, after them (0: none)")
    parser.add_argument("--writers", action="store_true", help="also by the function whose write faulted")
    parser.add_argument("--objects", action="store_true", help="the agent from source: faults by the object hit")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)
    workdir = tempfile.mkdtemp(prefix=f"{bench.PREFIX}-")
    agent_pid, data, agent_regions, burst_start = run(args, workdir)
    objects = load_objects(os.path.join(workdir, "objects.txt")) if args.objects else None
    tables = {name: collections.Counter() for name in ("region", "writer", "object")}
    totals, processes = collections.Counter(), collections.Counter()
    events = collections.defaultdict(list)
    for pid, t, event, fields, writer in samples(data, args.writers):
        events[pid].append((t, event, fields, writer))
    forks = len(events) - 1
    for pid, evs in events.items():
        served_from = max((t for t, event, _, _ in evs if event.endswith("accept4")), default=None)
        burst = "burst " if pid != agent_pid and evs[0][0] >= burst_start else ""
        roles = set()
        for t, event, fields, writer in evs:
            if not event.endswith("page_fault_user"):
                continue
            values = dict(kv.split("=", 1) for kv in fields.split())
            address, k = int(values["address"], 16), kind(int(values["error_code"], 16))
            role = "agent" if pid == agent_pid else burst + ("warm-up" if served_from is None or t < served_from else "served")
            roles.add(role)
            region = region_of(agent_regions, address)
            totals[(role, k)] += 1
            tables["region"][(role, f"{k:<5}  {region}")] += 1
            if k == "cow":
                tables["writer"][(role, writer)] += 1
                if objects is not None:
                    heap = region.startswith(("anon", "[heap]"))
                    tables["object"][(role, object_at(objects, address) if heap else region)] += 1
        processes.update(roles)
    processes["agent"] = forks   # the agent's faults are shown per fork
    print(f"{args.requests} ADDs and DELs one at a time, then {args.burst} ADDs at once; {forks} workers forked;"
          f" load average {os.getloadavg()[0]:.1f}. Faults per process (the agent's: per fork):")
    for role in ROLES:
        n = processes[role] or 1
        print(f"  {role:<14} ({processes[role]:>3}): " + ", ".join(f"{k} {totals[(role, k)] / n:6.1f}"
                                                             for k in ("cow", "write", "read")))
    for table, title in (("region", "by region"), ("writer", "copy-on-write, by the function that wrote"),
                         ("object", "copy-on-write, by the object hit (else the region)")):
        if not tables[table]:
            continue
        for role in ROLES:
            n = processes[role] or 1
            rows = sorted(((v, key) for (r, key), v in tables[table].items() if r == role), reverse=True)
            print(f"\n{role}, {title}:")
            for v, key in rows[:args.top]:
                print(f"  {v / n:7.1f}  {key}")


if __name__ == "__main__":
    main()
