"""The reliability scenarios, sized by their caller: the tests run them small,
soak.py at full size. Each returns its figures and raises AssertionError when
an invariant breaks.
"""

import ipaddress
import itertools
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.reliability.killpoint import POINTS
from tests.reliability.node import TEMP_LINK, Audit

ADD_POINTS = [p for p in POINTS if p.startswith("add:")]
DEL_POINTS = [p for p in POINTS if p.startswith("del:")]


def address(result, index=0):
    return result["ips"][index]["address"].split("/")[0]


def ms(seconds):
    return round(seconds * 1000)


# -- 1. concurrency ------------------------------------------------------------------

def parallel_rounds(node, pods, rounds, networks=(("rel", "10.77.0.0/22"),)):
    """`pods` ADDs at once per network (every process started before any is waited for),
    then as many DELs, `rounds` times: every ADD succeeds, all addresses distinct,
    nothing left after the DELs."""
    confs = [(node.conf(net, subnet), f"net{i}" if i else "eth0") for i, (net, subnet) in enumerate(networks)]
    names = [net for net, _ in networks]
    ns = node.add_pods(pods)
    figures = {"pods": pods, "networks": len(networks), "rounds": rounds, "add_wall_ms": [], "del_wall_ms": [],
               "slowest_exec_ms": 0}
    for r in range(rounds):
        started = time.monotonic()
        calls = {(conf["name"], f"r{r}p{i}", ifname, pod): node.start("ADD", conf, f"r{r}p{i}", pod, ifname)
                 for i, pod in enumerate(ns) for conf, ifname in confs}
        results = {key: call.wait() for key, call in calls.items()}
        figures["add_wall_ms"].append(ms(time.monotonic() - started))
        figures["slowest_exec_ms"] = max([figures["slowest_exec_ms"]] + [ms(c.elapsed) for c in calls.values()])
        failed = {k: v for k, v in results.items() if not v.ok}
        assert not failed, f"round {r}: {len(failed)} ADDs failed: {list(failed.items())[:3]}"
        for net in names:
            ips = [address(v.json) for k, v in results.items() if k[0] == net]
            assert len(set(ips)) == len(ips) == pods, f"round {r}, {net}: duplicate addresses {sorted(ips)}"
        expected = {(net, cid, ifname): pod for net, cid, ifname, pod in results}
        Audit(node, names, expected).assert_clean(f"round {r} after the ADDs")

        started = time.monotonic()
        calls = {key: node.start("DEL", conf, key[1], key[3], key[2])
                 for key in results for conf, _ in confs if conf["name"] == key[0]}
        failed = {k: c.wait() for k, c in calls.items() if not c.wait().ok}
        figures["del_wall_ms"].append(ms(time.monotonic() - started))
        assert not failed, f"round {r}: {len(failed)} DELs failed: {list(failed.items())[:3]}"
        Audit(node, names, {}).assert_clean(f"round {r} after the DELs")
    return figures


class Runtime:
    """What a runtime knows: the attachments whose ADD started and whose DEL has not finished.

    GC releases whatever its list leaves out, so no ADD may start between taking the
    list and the GC's end (CRI-O's ocicni blocks every pod operation during GC); ADDs
    already running, DELs and CHECKs go on meanwhile."""

    def __init__(self):
        self.lock = threading.Lock()
        self.gc_gate = threading.Lock()
        self.live = {}      # (cid, ifname) -> pod
        self.results = {}   # (cid, ifname) -> ADD result, once it succeeded

    def begin(self, cid, ifname, pod):
        with self.gc_gate, self.lock:
            self.live[(cid, ifname)] = pod

    def added(self, cid, ifname, result):
        with self.lock:
            self.results[(cid, ifname)] = result

    def deleted(self, cid, ifname):
        with self.lock:
            self.live.pop((cid, ifname), None)
            self.results.pop((cid, ifname), None)

    def valid(self):
        with self.lock:
            return set(self.live)


def mixed_traffic(node, pods, ops, workers, seed=1):
    """ADD, DEL, CHECK and GC (with the attachments really live) at once on one network."""
    conf = node.conf()
    rng = random.Random(seed)
    slots = node.add_pods(pods)
    free = list(slots)
    attached = []          # (cid, pod)
    runtime = Runtime()
    pick = threading.Lock()
    counts = {"ADD": 0, "DEL": 0, "CHECK": 0, "GC": 0}
    failures = []
    serial = iter(range(10 ** 9))

    def one(_):
        with pick:
            verb = rng.choice(["ADD", "ADD"] * bool(free) + ["DEL", "DEL", "CHECK"] * bool(attached) + ["GC"])
            if verb == "ADD":
                pod, cid = free.pop(rng.randrange(len(free))), f"m{next(serial)}"
            elif verb == "DEL":
                cid, pod = attached.pop(rng.randrange(len(attached)))
            elif verb == "CHECK":
                cid, pod = rng.choice(attached)
                attached.remove((cid, pod))  # not deleted while checked: one operation per container
            counts[verb] += 1
        if verb == "ADD":
            runtime.begin(cid, "eth0", pod)
            out = node.run("ADD", conf, cid, pod)
            if out.ok:
                runtime.added(cid, "eth0", out.json)
            with pick:
                (attached.append((cid, pod)) if out.ok else free.append(pod))
        elif verb == "DEL":
            out = node.run("DEL", conf, cid, pod)
            runtime.deleted(cid, "eth0")
            with pick:
                free.append(pod)
        elif verb == "CHECK":
            out = node.check(conf, cid, pod, "eth0", runtime.results[(cid, "eth0")])
            with pick:
                attached.append((cid, pod))
        else:
            with runtime.gc_gate:
                out = node.gc(conf, runtime.valid())
        if not out.ok:
            failures.append((verb, out))

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(ops)))
    wall = time.monotonic() - started
    assert not failures, f"{len(failures)} operations failed: {failures[:3]}"
    expected = {("rel", cid, "eth0"): pod for cid, pod in attached}
    Audit(node, ["rel"], expected).assert_clean("after the mixed traffic")
    ips = [address(runtime.results[(cid, "eth0")]) for cid, _ in attached]
    assert len(set(ips)) == len(ips)
    for cid, pod in attached:
        assert node.run("DEL", conf, cid, pod).ok
    Audit(node, ["rel"], {}).assert_clean("after deleting the survivors")
    return dict(counts, ops=ops, workers=workers, failures=len(failures), wall_s=round(wall, 1),
                live_at_end=len(attached))


# -- 2. crash safety -----------------------------------------------------------------------

class CrashRun:
    """Operations killed with SIGKILL, either at a named step (killpoint.py) or after a
    random delay spread over an exec's measured duration; the runtime then recovers as
    kubelet does: DEL after an ADD that failed, DEL again until a DEL succeeds."""

    def __init__(self, node, ops, lanes, slots_per_lane, seed=7):
        self.node = node
        self.conf = node.conf("crash", "10.78.0.0/24")
        self.ops = ops
        self.lanes = lanes
        self.slots = [node.add_pods(slots_per_lane) for _ in range(lanes)]
        self.rng = random.Random(seed)
        self.runtime = Runtime()
        self.lock = threading.Lock()
        self.figures = {"operations": {"ADD": 0, "DEL": 0}, "killed": 0, "killed_at": {},
                        "killed_by_delay": {"ADD": {}, "DEL": {}, "GC": {}},
                        "not_killed": {"planned": 0, "point_not_reached": {}, "finished_before_the_delay": 0},
                        "recovery_dels": 0, "recovery_dels_killed": 0, "gcs": 0, "gcs_killed": 0,
                        "unexpected_failures": 0, "bad_lease_files_seen": 0}
        self.serial = iter(range(10 ** 9))
        self.rotation = {"ADD": itertools.cycle(ADD_POINTS), "DEL": itertools.cycle(DEL_POINTS)}
        self.durations = {}   # verb -> recent durations of unkilled execs: the random delays follow the load

    def count(self, *path):
        with self.lock:
            where = self.figures
            for key in path[:-1]:
                where = where[key]
            where[path[-1]] = where.get(path[-1], 0) + 1

    def measure(self):
        """The first durations of unkilled ADD and DEL execs: the random delays start from them."""
        pod = self.slots[0][0]
        adds, dels = [], []
        for i in range(3):
            add = self.node.start("ADD", self.conf, f"probe{i}", pod)
            assert add.wait().ok, add.outcome
            delete = self.node.start("DEL", self.conf, f"probe{i}", pod)
            assert delete.wait().ok, delete.outcome
            adds.append(add.elapsed)
            dels.append(delete.elapsed)
        self.durations = {"ADD": adds, "DEL": dels, "GC": list(dels)}

    def delay(self, verb):
        """A random delay over 1.2x a recent exec of this verb: every step gets hit, some execs finish."""
        return ("delay", self.rng.uniform(0, 1.2 * statistics.median(self.durations[verb][-15:])))

    def plan(self, verb):
        """How an operation dies: at the next named step in turn, after a random delay, or (some
        ADDs) not at all, so that pods get attached and DELs have something to be killed in."""
        with self.lock:
            roll = self.rng.random()
            if verb == "ADD" and roll < 0.3:
                return None
            if roll < 0.65:
                return ("point", next(self.rotation[verb]))
            return self.delay(verb)

    def call(self, verb, cid, pod, how, conf=None):
        """Run verb with a kill: ("point", name), ("delay", seconds) or None; the outcome."""
        conf = conf or self.conf
        if how is not None and how[0] == "point":
            fail = "configure" if "rollback" in how[1] else None
            call = self.node.start(verb, conf, cid, pod, kill_at=how[1], fail_at=fail)
        else:
            call = self.node.start(verb, conf, cid, pod)
            if how is not None:
                time.sleep(how[1])
                call.kill()
        out = call.wait()
        if out.code == -9:
            self.count("killed")
            if how[0] == "point":
                self.count("killed_at", how[1])
            else:
                self.count("killed_by_delay", verb, self.stage(cid, pod) if pod else "anywhere")
        elif how is None:
            self.count("not_killed", "planned")
            with self.lock:
                self.durations[verb].append(call.elapsed)
        elif how[0] == "point":
            self.count("not_killed", "point_not_reached", how[1])
        else:
            self.count("not_killed", "finished_before_the_delay")
        self.check_lease_files()
        return out

    def stage(self, cid, pod):
        """Where a kill after a random delay landed, read from what it left."""
        links = self.node.pod_links(pod)
        leased = any(c.startswith(f"{cid}\r\n".encode()) for c in self.node.lease_files("crash").values())
        if any(TEMP_LINK.match(name) for name in links):
            return "link under its temporary name"
        if "eth0" not in links:
            return "lease, no link" if leased else "no link, no lease"
        if not leased:
            return "link, no lease"
        return "link and lease, address set" if links["eth0"] else "link and lease, no address"

    def check_lease_files(self):
        bad = Audit.lease_file_problems(self.node, ["crash"])
        if bad:
            with self.lock:
                self.figures["bad_lease_files_seen"] += len(bad)

    def recover(self, cid, pod):
        """kubelet's teardown: DEL until one succeeds; the first attempts may be killed too."""
        for attempt in range(10):
            how = None
            if attempt < 2:
                with self.lock:
                    how = self.rng.choice([("point", "rebuild"), None, self.delay("DEL")])
            self.count("recovery_dels")
            out = self.call("DEL", cid, pod, how)
            if out.code == -9:
                self.count("recovery_dels_killed")
                continue
            assert out.ok, f"recovery DEL of {cid}: {out}"
            self.runtime.deleted(cid, "eth0")
            return
        raise AssertionError(f"recovery DEL of {cid} never succeeded")

    def lane(self, index, ops):
        state = {pod: None for pod in self.slots[index]}   # pod -> cid attached, or None
        for i in range(ops):
            with self.lock:
                pod = self.rng.choice(self.slots[index])
            cid = state[pod]
            verb = "ADD" if cid is None else "DEL"
            how = self.plan(verb)
            self.count("operations", verb)
            if verb == "ADD":
                cid = f"k{next(self.serial)}"
                self.runtime.begin(cid, "eth0", pod)
            out = self.call(verb, cid, pod, how)
            if verb == "ADD" and out.ok:
                self.runtime.added(cid, "eth0", out.json)
                state[pod] = cid
                continue
            injected = how is not None and how[0] == "point" and "rollback" in how[1]
            if out.code != -9 and not out.ok and not injected:
                self.count("unexpected_failures")
            # a failed ADD, or a DEL killed or not: DEL until one succeeds
            self.recover(cid, pod)
            state[pod] = None
            if i % 25 == 24:
                self.gc(killed=True)

    def gc(self, killed):
        with self.runtime.gc_gate:
            valid = [{"containerID": cid, "ifname": ifname} for cid, ifname in sorted(self.runtime.valid())]
            conf = dict(self.conf, **{"cni.dev/valid-attachments": valid})
            if killed:
                self.count("gcs")
                with self.lock:
                    how = self.delay("GC")
                if self.call("GC", "", None, how, conf).code == -9:
                    self.count("gcs_killed")
                    return
            out = self.call("GC", "", None, None, conf)
            assert out.ok, out

    def run(self):
        self.measure()
        started = time.monotonic()
        share = [self.ops // self.lanes + (1 if i < self.ops % self.lanes else 0) for i in range(self.lanes)]
        with ThreadPoolExecutor(self.lanes) as pool:
            for future in [pool.submit(self.lane, i, n) for i, n in enumerate(share)]:
                future.result()
        self.figures["wall_s"] = round(time.monotonic() - started, 1)
        self.figures["median_exec_ms"] = {verb: ms(statistics.median(d)) for verb, d in self.durations.items()}
        live = {("crash", cid, ifname): pod for (cid, ifname), pod in self.runtime.live.items()}
        before = Audit(self.node, ["crash"], live)
        self.figures["before_gc"] = before.counts()
        self.gc(killed=False)
        after = Audit(self.node, ["crash"], live)
        self.figures["after_gc"] = after.counts()
        after.assert_clean("after the kills, the recovery DELs and a GC")
        assert self.figures["unexpected_failures"] == 0, self.figures
        assert self.figures["bad_lease_files_seen"] == 0, self.figures
        ips = [address(self.runtime.results[key]) for key in self.runtime.live]
        assert len(set(ips)) == len(ips), f"duplicate addresses among live pods: {sorted(ips)}"
        self.following_add()
        return self.figures

    def following_add(self):
        """The store still works: ADD, CHECK, STATUS and DEL on a fresh pod."""
        pod = self.node.add_pods(1)[0]
        out = self.node.run("ADD", self.conf, "after-crash", pod)
        assert out.ok, out
        ip = ipaddress.ip_address(address(out.json))
        assert ip in ipaddress.ip_network("10.78.0.0/24")
        assert self.node.check(self.conf, "after-crash", pod, "eth0", out.json).ok
        assert self.node.run("STATUS", self.conf).ok
        assert self.node.run("DEL", self.conf, "after-crash", pod).ok


# -- 3. bounded lock waits ---------------------------------------------------------------------

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def lock_waits(node, timeouts, tries=3):
    """A helper process holds the network's lock and sleeps: how long each verb takes to
    answer code 11, per lockTimeout."""
    import os
    import subprocess
    import sys
    conf = node.conf("locked")
    pod, = node.add_pods(1)
    added = node.run("ADD", conf, "c0", pod)
    assert added.ok, added
    helper = subprocess.Popen([sys.executable, "-c", HOLD, os.path.join(node.net_dir("locked"), "lock")],
                              stdout=subprocess.PIPE, text=True)
    figures = {}
    try:
        assert helper.stdout.readline() == "locked\n"
        for timeout in timeouts:
            c = dict(conf, ipam=dict(conf["ipam"], lockTimeout=timeout))
            for verb, cid, ifname in (("ADD", "c1", "net1"), ("DEL", "c0", "eth0"), ("GC", "", "")):
                times = []
                for _ in range(tries):
                    call = node.start(verb, c, cid, pod if cid else None, ifname)
                    out = call.wait()
                    assert out.cni_code == 11 and f"held by pid {helper.pid}" in out.json["msg"], out
                    times.append(call.elapsed)
                figures[f"{verb} lockTimeout={timeout:g}s"] = f"code 11 after {ms(min(times))}-{ms(max(times))} ms"
    finally:
        helper.kill()
        helper.wait()
    assert node.run("DEL", conf, "c0", pod).ok
    Audit(node, ["locked"], {}).assert_clean("after the lock was released")
    return figures


# -- 4. healing ------------------------------------------------------------------------------------

def reboot_healing(node, pods, gone):
    """`pods` attached, `gone` of their netns removed (as a reboot removes them all), the boot ID
    recorded with the store rewritten: the next operation releases exactly the dead pods' leases.
    Then pods whose DEL never came: GC with the attachments really live releases theirs."""
    import os
    import uuid
    from ipam.stores.disk import INDEX_DIR, STAMP
    conf = node.conf("heal", "10.79.0.0/22")
    slots = node.add_pods(pods)
    calls = [node.start("ADD", conf, f"h{i}", pod) for i, pod in enumerate(slots)]
    assert all(c.wait().ok for c in calls)
    for pod in slots[:gone]:
        node.remove_pod(pod)
    alive = {("heal", f"h{i}", "eth0"): pod for i, pod in enumerate(slots) if i >= gone}
    normal = node.start("STATUS", conf)
    assert normal.wait().ok
    stamp = os.path.join(node.net_dir("heal"), INDEX_DIR, STAMP)
    with open(stamp) as f:
        fmt, mtime, _ = f.read().split()
    with open(stamp, "w") as f:
        f.write(f"{fmt} {mtime} {uuid.uuid4()}")
    first = node.start("STATUS", conf)
    assert first.wait().ok
    Audit(node, ["heal"], alive).assert_clean("after the simulated reboot")
    figures = {"attached": pods, "netns_gone": gone, "released_after_reboot": pods - len(node.lease_files("heal")),
               "status_ms": ms(normal.elapsed), "first_status_after_reboot_ms": ms(first.elapsed)}
    # the live pods' DEL never comes (Multus): the runtime's GC lists none of half of them
    forgotten = sorted(alive)[: len(alive) // 2]
    for key in forgotten:
        node.remove_pod(alive.pop(key))
    assert node.gc(conf, {(cid, ifname) for _, cid, ifname in alive}).ok
    Audit(node, ["heal"], alive).assert_clean("after GC")
    figures.update(del_never_came=len(forgotten), leases_after_gc=len(node.lease_files("heal")))
    return figures
