"""Metrics: Prometheus text from the agent's counters (fed by its children's reports) and the
pools (cni/agent/pools.py), served at --metrics HOST:PORT and written to --textfile."""

import math
import os
import signal
import socket
import time

from cni.agent import pools
from cni.agent.service import log

TEXTFILE_EVERY = 15.0    # seconds between --textfile writes

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.started = time.time()
        self.requests = {}     # (plugin, verb, CNI code) -> count
        self.latency = {}      # (plugin, verb) -> [count per bucket..., +Inf count, sum]
        self.killed = 0        # workers that died mid-request (the caller got code 11)
        self.refused = 0       # non-root peers
        self.abandoned = 0     # callers that gave up before sending (nothing done)
        self.healed = {}       # network -> addresses released by healing
        self.heal_runs = 0
        self.dhcp = {"renewals": 0, "rebinds": 0, "reacquired": 0, "expiries": 0, "releases": 0}
        self.dhcp_held = lambda: 0   # the renewer's count of the leases it keeps

    def listen(self, reports):
        """Count what the children report: an invocation served (logged too), a refused peer, a caller
        that gave up, addresses healed."""
        reports.on("D", self.served)
        reports.on("N", self.refused_peer)
        reports.on("A", self.caller_gave_up)
        reports.on("H", self.heal_released)

    def served(self, pid, plugin, verb, code, cni_code, seconds, trace):
        self.observe(plugin, verb, int(cni_code), float(seconds))
        log(f"served {plugin} {verb} exit {code} in {float(seconds) * 1000:.1f} ms (worker {pid}"
            + (f", trace {trace})" if trace != "-" else ")"))

    def refused_peer(self, pid):
        self.refused += 1

    def caller_gave_up(self, pid):
        self.abandoned += 1

    def heal_released(self, pid, network, count):
        self.healed[network] = self.healed.get(network, 0) + int(count)

    def observe(self, plugin, verb, cni_code, seconds):
        key = (plugin, verb, cni_code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.setdefault((plugin, verb), [0] * (len(BUCKETS) + 1) + [0.0])
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                hist[i] += 1
        hist[len(BUCKETS)] += 1
        hist[-1] += seconds

    def render(self, busy, idle, options):
        out = []

        def family(name, kind, text):
            out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")

        family("underlay_agent_requests_total", "counter",
               "CNI invocations served by underlayd, by plugin, verb and CNI result code (0: success)")
        for (plugin, verb, code), count in sorted(self.requests.items()):
            out.append(f'underlay_agent_requests_total{{plugin="{plugin}",verb="{verb}",code="{code}"}} {count}\n')
        family("underlay_agent_request_duration_seconds", "histogram",
               "time a worker spent on one invocation, from its request to its exit code")
        for (plugin, verb), hist in sorted(self.latency.items()):
            labels = f'plugin="{plugin}",verb="{verb}"'
            for bound, count in zip(BUCKETS, hist):
                out.append(f'underlay_agent_request_duration_seconds_bucket{{{labels},le="{bound:g}"}} {count}\n')
            out.append(f'underlay_agent_request_duration_seconds_bucket{{{labels},le="+Inf"}} {hist[len(BUCKETS)]}\n')
            out.append(f"underlay_agent_request_duration_seconds_sum{{{labels}}} {hist[-1]:.6f}\n")
            out.append(f"underlay_agent_request_duration_seconds_count{{{labels}}} {hist[len(BUCKETS)]}\n")
        for name, value, text in (
                ("underlay_agent_workers_killed_total", self.killed,
                 "workers that died mid-request (their caller answered code 11; DEL undoes what they did)"),
                ("underlay_agent_refused_total", self.refused, "connections refused: the peer was not root"),
                ("underlay_agent_abandoned_total", self.abandoned,
                 "callers that gave up (UNDERLAY_AGENT_TIMEOUT) before a worker started their request")):
            family(name, "counter", text)
            out.append(f"{name} {value}\n")
        family("underlay_heal_releases_total", "counter",
               "addresses released by healing: their lease's pod netns was gone (a missed DEL)")
        for network, count in sorted(self.healed.items()):
            out.append(f'underlay_heal_releases_total{{network="{pools.label(network)}"}} {count}\n')
        family("underlay_heal_runs_total", "counter", "healing runs started")
        out.append(f"underlay_heal_runs_total {self.heal_runs}\n")
        family("underlay_dhcp_leases", "gauge", "DHCP leases the agent keeps renewed (the dhcp IPAM's)")
        out.append(f"underlay_dhcp_leases {self.dhcp_held()}\n")
        for key, text in (("renewals", "DHCP leases renewed at T1 (unicast to their server)"),
                          ("rebinds", "DHCP leases rebound after T2 (broadcast to any server)"),
                          ("expiries", "DHCP leases that expired unrenewed (or were refused): their address was "
                                       "removed from the pod"),
                          ("reacquired", "expired DHCP leases granted again: their address put back"),
                          ("releases", "DHCP leases released and forgotten (DEL, GC, healing)")):
            family(f"underlay_dhcp_{key}_total", "counter", text)
            out.append(f"underlay_dhcp_{key}_total {self.dhcp[key]}\n")
        family("underlay_agent_workers", "gauge", "worker processes: busy serving, or idle spares")
        out.append(f'underlay_agent_workers{{state="busy"}} {busy}\nunderlay_agent_workers{{state="idle"}} {idle}\n')
        family("underlay_agent_workers_limit", "gauge", "invocations served at once (--workers)")
        out.append(f"underlay_agent_workers_limit {options.workers}\n")
        family("underlay_agent_start_time_seconds", "gauge", "when this agent started (Unix time)")
        out.append(f"underlay_agent_start_time_seconds {self.started:.3f}\n")
        return "".join(out)


def serve_http(conn, body, options):
    """In a forked child: answer one HTTP request (GET /metrics or /healthz) and exit.
    body: the agent's counters as they were at accept; the pools are read here."""
    conn.settimeout(5)
    request = b""
    try:
        while b"\r\n\r\n" not in request and len(request) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        line = request.split(b"\r\n", 1)[0].split()
        path = line[1].split(b"?")[0] if len(line) >= 2 and line[0] in (b"GET", b"HEAD") else None
        if path == b"/metrics":
            payload = (body + pools.pool_metrics(options)).encode()
            status, kind = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
        elif path == b"/healthz":
            status, payload, kind = "200 OK", b"ok\n", "text/plain"
        else:
            status, payload, kind = "404 Not Found", b"not found: try /metrics\n", "text/plain"
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n").encode()
        conn.sendall(head + (payload if line and line[0] != b"HEAD" else b""))
    except (OSError, IndexError):
        pass
    os._exit(0)


def metrics_listener(address):
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        raise SystemExit(f"underlayd: --metrics {host}:{port}: {e.strerror or e}") from None
    listener.listen(16)
    listener.setblocking(False)
    return listener


def write_textfile(path, text):
    """node-exporter's textfile collector: written whole (temporary file, then rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)
    except OSError as e:
        log(f"--textfile {path}: {e.strerror or e}")


class Scrapes:
    """--metrics: each scrape is answered by a fork holding a snapshot of the counters (`page()`):
    a slow client never holds up the agent's loop."""

    def __init__(self, listener, page, options):
        self.listener, self.page, self.options = listener, page, options

    def fds(self):
        return [self.listener.fileno()]

    def due(self):
        return math.inf

    def run(self, ready, now):
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        body = self.page()
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                serve_http(conn, body, self.options)
            finally:
                os._exit(1)
        conn.close()

    def stop(self):
        pass


class Textfile:
    """--textfile: written every TEXTFILE_EVERY seconds, one write at a time, in a child (the pools
    take store locks, never in the agent's loop); the last figures once the agent stops."""

    def __init__(self, options, children, page):
        self.options, self.children, self.page = options, children, page
        self.next = 0.0
        self.writer = None

    def fds(self):
        return ()

    def due(self):
        return self.next

    def run(self, ready, now):
        self.next = now + TEXTFILE_EVERY
        if self.writer is not None:
            return
        body, path, options = self.page(), self.options.textfile, self.options
        self.writer = self.children.fork(lambda: write_textfile(path, body + pools.pool_metrics(options)), self.done)

    def done(self, pid, status):
        self.writer = None

    def stop(self):
        # the workers have drained (cni/agent/server.py stops first): their reports are counted
        write_textfile(self.options.textfile, self.page() + pools.pool_metrics(self.options))
