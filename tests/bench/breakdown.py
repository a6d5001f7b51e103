#!/usr/bin/env python3
"""Where the time of one served macvlan + host-local ADD, CHECK and DEL goes, from the runtime's
exec of the compiled client to its reap; Go's exec broken down the same way where strace can.
A script, not a test: it prints, asserts nothing.

  make build && sudo .venv/bin/python tests/bench/breakdown.py [--iterations 40] [--strace 8] [--base DIR]

It starts dist/bin/underlayd on a socket of its own, makes a "host" netns with a veth parent
(names pf...), and per iteration a fresh pod netns and the three verbs, for each of:
  traced   ours through the agent with UNDERLAY_TRACE_PHASES set: the compiled client
           (cni/handoff.c) and the worker (cni/agent/phases.py) each append a line of
           CLOCK_MONOTONIC marks; the plugin's spans (config, IPAM, fsync, each netlink
           round trip, the result) are the worker's
  ours     the same untraced: what tracing costs is the difference
  go       Debian's Go macvlan (+ host-local), exec'd
and, with --base DIR (another build's dist/bin, e.g. of the commit before a change), "base traced"
and "base" the same through that build's own underlayd: before and after in one run,
alternately (who goes first rotates), medians. The phases of ours, in order, add up to the
exec as the runtime sees it:
  client start           posix_spawn() until the client's main()
  connect                its socket() + connect() (+ the listener's SO_PEERCRED)
  read stdin             the config (already in the pipe)
  make request           building argv, env, stdin, opening 4 of its 6 fds and checking the bundle
                         is beside it (before 4105bbd: first thing in main), while the spare wakes
  worker ready           until the spare's b"R" arrives (a spare waits in accept())
  hand-off               sending the request (before 1cb69b3: building it too)
  worker receives        until the worker has parsed it
  caller's context       setns mnt + net, chroot, cwd, umask, fds, environment
  plugin                 main() of the plugin, split into the spans below; "python" is the rest
  answer                 flushing, sending b"X<code>"
  answer to client       until the client has it
  worker exit            until the client sees EOF (the worker's exit closes the connection)
  client exit + reap     the client's exit until waitpid() returns
Go under `strace -f -ttt -T` (--strace N iterations, apart: strace slows every syscall, so its
figures are larger than the untraced ones; read the shares): runtime start (execve to the read
of stdin), IPAM exec (host-local's fork+exec to its reap), netlink round trips, the rest.
"""

import argparse
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

bench.PREFIX = f"pf{os.getpid() % 0x10000:x}"   # this script's netns and links
VERBS = ("ADD", "CHECK", "DEL")
IMPLS = ("traced", "ours", "go")
CHAIN = [   # (phase, from mark, to mark): ("spawn", "reaped" are this script's; c: client's, w: worker's)
    ("client start", "spawn", "c:main"),
    ("connect", "c:main", "c:connected"),
    ("read stdin", "c:connected", "c:stdin read"),
    ("make request", "c:stdin read", "c:request made"),
    ("worker ready", ("c:request made", "c:stdin read"), "c:ready received"),   # a build before the mark: the latter
    ("hand-off", "c:ready received", "c:request sent"),
    ("worker receives", "c:request sent", "w:request received"),
    ("caller's context", "w:request received", "w:context taken on"),
    ("(trace set-up)", "w:context taken on", "w:plugin start"),
    ("plugin", "w:plugin start", "w:plugin done"),
    ("answer", "w:plugin done", "w:answer sent"),
    ("answer to client", "w:answer sent", "c:answer received"),
    ("worker exit", "c:answer received", "c:connection closed"),
    ("client exit + reap", "c:connection closed", "reaped"),
]


def exec_timed(argv, env, stdin):
    """(spawn, reaped monotonic seconds, exit code, stdout) of one exec as a runtime makes it:
    stdin already in its pipe, stdout read to EOF, then waitpid()."""
    r, w = os.pipe()
    os.write(w, stdin)
    os.close(w)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    spawn = time.monotonic()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    for fd in (r, out_w, err_w):
        os.close(fd)
    out = b""
    while chunk := os.read(out_r, 1 << 16):
        out += chunk
    _, status = os.waitpid(pid, 0)
    reaped = time.monotonic()
    err = b""
    while chunk := os.read(err_r, 1 << 16):
        err += chunk
    os.close(out_r)
    os.close(err_r)
    return spawn, reaped, os.waitstatus_to_exitcode(status), out or err


def read_trace(path, wait=2.0):
    """The client's and the worker's lines (the worker writes after answering: wait for it)."""
    deadline = time.monotonic() + wait
    while True:
        lines = []
        if os.path.exists(path):
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
        if {line["who"] for line in lines} >= {"client", "worker"} or time.monotonic() > deadline:
            os.unlink(path) if os.path.exists(path) else None
            return {line["who"]: line for line in lines}
        time.sleep(0.005)


def exclusive(spans):
    """{name: (seconds not inside a nested span, count)}; spans nest (fsync inside IPAM)."""
    spans = sorted((s for s in spans if s[2] is not None), key=lambda s: (s[1], -s[2]))
    totals = {}
    for i, (name, start, end) in enumerate(spans):
        inner = [s for s in spans[i + 1:] if s[1] >= start and s[2] <= end]
        direct = [s for s in inner if not any(o is not s and o[1] <= s[1] and s[2] <= o[2] for o in inner)]
        own = (end - start) - sum(s[2] - s[1] for s in direct)
        seconds, count = totals.get(name, (0.0, 0))
        totals[name] = (seconds + own, count + 1)
    return totals


def phases_of(spawn, reaped, trace):
    marks = {"spawn": spawn, "reaped": reaped}
    for who in ("client", "worker"):
        for name, t in trace.get(who, {}).get("marks", []):
            marks[f"{who[0]}:{name}"] = t
    out = {}
    for phase, start, end in CHAIN:
        start = next((mark for mark in start if mark in marks), None) if isinstance(start, tuple) else start
        if start in marks and end in marks:
            out[phase] = (marks[end] - marks[start]) * 1000
    spans = exclusive(trace.get("worker", {}).get("spans", []))
    inside = 0.0
    for name, (seconds, count) in spans.items():
        out[f"  {name}"] = seconds * 1000
        out[f"  {name} #"] = count
        inside += seconds * 1000
    if "plugin" in out:
        out["  python (the rest of the plugin)"] = out["plugin"] - inside
    return out


# -- Go under strace -------------------------------------------------------------------------

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+) (.*?)(?: <(\d+\.\d+)>)?$")


def go_strace(env, stdin, workdir):
    """Go's exec under strace -f: {phase: ms} from its syscall log."""
    log = os.path.join(workdir, "go.strace")
    argv = ["/usr/bin/strace", "-f", "-ttt", "-T", "-qq", "-o", log, os.path.join(bench.GO, "macvlan")]
    spawn, reaped, code, out = exec_timed(argv, env, stdin)
    events = []
    with open(log) as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                events.append((int(m.group(1)), float(m.group(2)), m.group(3), float(m.group(4) or 0)))
    os.unlink(log)
    if not events:
        return None, code, out
    main_pid = events[0][0]
    start = events[0][1]
    end = max(t + d for _, t, _, d in events)
    read0 = next((t for pid, t, call, _ in events if pid == main_pid and call.startswith("read(0,")), start)
    ipam_pids = {pid for pid, _, call, _ in events if call.startswith("execve(") and "host-local" in call
                 and pid != main_pid}
    ipam = [t for pid, t, _, _ in events if pid in ipam_pids]
    ipam_ms = (max(ipam) - min(ipam)) * 1000 if ipam else 0.0
    nl_fds = {}
    for pid, t, call, d in events:
        m = re.match(r"socket\(AF_NETLINK.*\) = (\d+)", call)
        if m and pid not in ipam_pids:
            nl_fds[m.group(1)] = True
    trips, trip_ms, sending = 0, 0.0, None
    for pid, t, call, d in events:
        if pid in ipam_pids:
            continue
        m = re.match(r"(sendto|sendmsg|recvfrom|recvmsg)\((\d+),", call)
        if not m or m.group(2) not in nl_fds:
            continue
        if m.group(1).startswith("send"):
            trips += 1
            sending = t
        elif sending is not None:
            trip_ms += (t + d - sending) * 1000
            sending = None
    total = (end - start) * 1000
    return {"strace'd exec (slowed)": total, "runtime start (execve to read stdin)": (read0 - start) * 1000,
            "IPAM exec (host-local fork+exec+run+exit)": ipam_ms, "netlink round trips": trip_ms,
            "netlink round trips #": trips,
            "the rest (Go code, other syscalls)": total - (read0 - start) * 1000 - ipam_ms - trip_ms}, code, out


# -- the run ---------------------------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else float("nan")


class BaseAgent:
    """Another build's underlayd (--base DIR) on a socket of its own."""

    def __init__(self, bin_dir, workdir):
        run = os.path.join(workdir, "base-run")
        self.socket = os.path.join(run, "underlay.sock")
        self.log = open(os.path.join(workdir, "base-underlayd.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(bin_dir, "underlayd"), "--socket", self.socket],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the base underlayd did not start (see {self.log.name})")
            time.sleep(0.01)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--strace", type=int, default=8, help="iterations of Go under strace (0: none)")
    parser.add_argument("--base", help="another build's dist/bin, run alongside (before and after in one run)")
    parser.add_argument("--json", help="also write the medians to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("breakdown: needs root (network namespaces)")
    for path in (bench.plugin("ours", "macvlan"), bench.plugin("ours", "underlayd"), bench.plugin("go", "macvlan")):
        if not os.access(path, os.X_OK):
            sys.exit(f"breakdown: {path} is missing (make build; apt-get install containernetworking-plugins)")
    load_before = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix=f"{bench.PREFIX}-")
    agent = bench.AgentProcess(workdir)
    bench.AGENT_SOCKET = agent.socket
    base = BaseAgent(os.path.abspath(args.base), workdir) if args.base else None
    impls = IMPLS + (("base traced", "base") if base else ())
    trace_path = os.path.join(workdir, "phases.jsonl")
    phases = {impl: {verb: [] for verb in VERBS} for impl in impls}
    totals = {impl: {verb: [] for verb in VERBS} for impl in impls}
    go_phases = {verb: [] for verb in VERBS}
    failures = {impl: 0 for impl in impls}
    cold = {impl: {verb: 0 for verb in VERBS} for impl in impls}   # served by a spare not warmed up
    subnets = {"traced": "10.215.0.0/16", "ours": "10.216.0.0/16", "go": "10.217.0.0/16",
               "base traced": "10.218.0.0/16", "base": "10.219.0.0/16"}
    try:
        time.sleep(0.5)
        with bench.Namespaces() as ns:
            confs = {impl: bench.macvlan_conf(impl.replace(" ", "-"), ns.master,
                                              os.path.join(workdir, f"mv-{impl.replace(' ', '-')}"),
                                              ipaddress.ip_network(subnets[impl])) for impl in impls}
            for i in range(args.iterations + 1):      # iteration 0 warms caches, not counted
                for impl in bench.rotate(list(impls), i):
                    pod = ns.pod()
                    env = bench.cni_env("go" if impl == "go" else "agent", "ADD", f"pf-{i}",
                                        netns=f"/run/netns/{pod}")
                    argv = [bench.plugin("go" if impl == "go" else "ours", "macvlan")]
                    if impl.startswith("base"):
                        env.update(UNDERLAY_SOCKET=base.socket, CNI_PATH=os.path.abspath(args.base))
                        argv = [os.path.join(os.path.abspath(args.base), "macvlan")]
                    if impl.endswith("traced"):
                        env["UNDERLAY_TRACE_PHASES"] = trace_path
                    conf = confs[impl]
                    prev = None
                    for verb in VERBS:
                        body = json.dumps(dict(conf, prevResult=prev) if prev else conf).encode()
                        spawn, reaped, code, out = exec_timed(argv, dict(env, CNI_COMMAND=verb), body)
                        if code != 0:
                            failures[impl] += 1
                            if failures[impl] <= 3:
                                print(f"  {impl} {verb} failed: {out[:300]!r}", flush=True)
                        elif verb == "ADD":
                            prev = json.loads(out)
                        trace = read_trace(trace_path) if impl.endswith("traced") else None
                        if trace and i == 1 and trace.get("worker", {}).get("imported"):
                            print(f"  the {verb} worker imported: {' '.join(trace['worker']['imported'])}")
                        if i and code == 0:
                            totals[impl][verb].append((reaped - spawn) * 1000)
                            if trace:
                                phases[impl][verb].append(phases_of(spawn, reaped, trace))
                                marks = [name for name, _ in trace.get("worker", {}).get("marks", [])]
                                cold[impl][verb] += "warmed up" not in marks
                    ns.drop(pod)
            for i in range(args.strace):
                pod = ns.pod()
                env = bench.cni_env("go", "ADD", f"pf-s{i}", netns=f"/run/netns/{pod}")
                prev = None
                for verb in VERBS:
                    body = json.dumps(dict(confs["go"], prevResult=prev) if prev else confs["go"]).encode()
                    figures, code, out = go_strace(dict(env, CNI_COMMAND=verb), body, workdir)
                    if code == 0 and verb == "ADD":
                        prev = json.loads(out)
                    if code == 0 and figures:
                        go_phases[verb].append(figures)
                ns.drop(pod)
    finally:
        bench.AGENT_SOCKET = None
        agent.stop()
        if base:
            base.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    report = {"load": [load_before[0], load_after[0]], "iterations": args.iterations, "failures": failures,
              "served cold": cold}
    print(f"\none served macvlan + host-local verb, medians of {args.iterations} (ms); load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, {os.cpu_count()} CPUs")
    print(f"{'':<40}" + "".join(f"{verb:>9}" for verb in VERBS))
    rows = [("ours", "ours, exec to reap (untraced)"), ("go", "Go, exec to reap"), ("traced", "ours traced, exec to reap")]
    if base:
        rows += [("base", "base, exec to reap (untraced)"), ("base traced", "base traced, exec to reap")]
    for impl, label in rows:
        print(f"{label:<40}" + "".join(f"{median(totals[impl][verb]):>9.2f}" for verb in VERBS))
    for impl in ("traced", "base traced") if base else ("traced",):
        label = f"{impl}: served cold (of {args.iterations})"
        print(f"{label:<40}" + "".join(f"{cold[impl][verb]:>9}" for verb in VERBS))
    for impl in ("ours", "base") if base else ("ours",):
        print(f"{impl + '/Go (untraced)':<40}" + "".join(
            f"{median(totals[impl][verb]) / median(totals['go'][verb]):>8.2f}x" for verb in VERBS))
    for traced in ("traced", "base traced") if base else ("traced",):
        names = []
        for verb in VERBS:
            for row in phases[traced][verb]:
                names += [name for name in row if name not in names]
        ordered = [p for p, _, _ in CHAIN if p in names]
        spans = sorted(n for n in names if n.startswith("  ") and not n.endswith(" #"))
        print(f"\n{'ours' if traced == 'traced' else 'base'} traced, phase by phase (medians; the phases add up to "
              "about the exec's median)")
        for name in ordered[:ordered.index("plugin") + 1] + spans + ordered[ordered.index("plugin") + 1:]:
            cells = []
            for verb in VERBS:
                values = [row[name] for row in phases[traced][verb] if name in row]
                count = [row.get(name + " #") for row in phases[traced][verb] if name + " #" in row]
                cell = f"{median(values):.2f}" if values else "-"
                cells.append(cell + (f" ({median(count):.0f}x)" if count else ""))
            print(f"{name:<40}" + "".join(f"{cell:>14}" for cell in cells))
            report.setdefault(f"phases {traced}", {})[name.strip()] = {
                verb: median([row[name] for row in phases[traced][verb] if name in row]) for verb in VERBS}
    report["totals"] = {impl: {verb: median(totals[impl][verb]) for verb in VERBS} for impl in impls}
    if args.strace:
        print(f"\nGo under strace -f (slowed; {args.strace} iterations, medians, ms)")
        keys = []
        for verb in VERBS:
            for row in go_phases[verb]:
                keys += [k for k in row if k not in keys]
        for key in keys:
            values = {verb: median([row[key] for row in go_phases[verb] if key in row]) for verb in VERBS}
            print(f"{key:<40}" + "".join(f"{values[verb]:>9.2f}" if not key.endswith("#")
                                         else f"{values[verb]:>9.0f}" for verb in VERBS))
            report.setdefault("go_strace", {})[key] = values
    if any(failures.values()):
        print(f"failures: {failures}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
