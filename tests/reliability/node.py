"""A node for reliability runs: a "host" netns with a veth master, pod namespaces,
one dataDir, and the macvlan plugin exec'd as a runtime execs it, many at once.

Used by the tests in this directory (small sizes) and by soak.py (full sizes).
Everything it creates has a unique name and is removed by close(), which also
kills every plugin process still running.
"""

import json
import os
import re
import subprocess
import sys
import time

from ipam.stores.disk import DiskStore
from tests import netns as nsutil
from tests import plugins
from tests.plugins import Outcome, plugin_argv, plugin_env

KILLPOINT = [sys.executable, "-m", "tests.reliability.killpoint", "cni.plugins.macvlan"]
TEMP_LINK = re.compile(r"^ul[0-9a-f]{10}$")


def assert_killed(out, point=""):
    """A run killed at a point: SIGKILL of the exec'd plugin, or, through underlayd, of its worker."""
    if plugins.AGENT_SOCKET:
        # the worker serving it was killed there; the plugin executable answers for it
        assert out.cni_code == 11 and "ended without an answer" in out.json["msg"], f"{point} not reached: {out}"
    else:
        assert out.code == -9, f"{point} was not reached: {out}"


class Call:
    """One plugin process: started at once, waited for (or killed) later."""

    def __init__(self, node, argv, env, stdin):
        self.node = node
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        node.procs.add(self.proc)
        # written now, as a runtime does (a config fits the pipe buffer): a kill after a delay
        # must find the plugin at work, not waiting for its input
        try:
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.stdin = None
        self.outcome = None
        self.elapsed = None

    @property
    def pid(self):
        return self.proc.pid

    def kill(self):
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    def wait(self, timeout=120):
        if self.outcome is None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            finally:
                if self.proc.returncode is None:
                    self.kill()
                    self.proc.wait()
                self.node.procs.discard(self.proc)
            self.elapsed = time.monotonic() - self.started
            self.outcome = Outcome(subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err))
            assert "Traceback" not in self.outcome.stderr, self.outcome
        return self.outcome

    @property
    def killed(self):
        return self.wait().code == -9


class Node:
    def __init__(self, data_dir, state_dir):
        self.data_dir = str(data_dir)
        self.state_dir = str(state_dir)
        self.procs = set()
        self.pods = []
        self.host = None
        try:
            self.host = nsutil.add_netns(nsutil.unique("ulh"))
            self.master, _ = nsutil.add_parent(self.host)
        except BaseException:
            self.close()
            raise

    def close(self):
        for proc in list(self.procs):
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs.clear()
        for pod in self.pods:
            nsutil.del_netns(pod)
        self.pods = []
        if self.host:
            nsutil.del_netns(self.host)
            self.host = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_pods(self, count):
        made = []
        for _ in range(count):
            name = nsutil.unique("ulp")
            self.pods.append(name)  # recorded first: removed even if `ip` fails half way
            nsutil.add_netns(name)
            made.append(name)
        return made

    def remove_pod(self, pod):
        nsutil.del_netns(pod)
        self.pods.remove(pod)

    def conf(self, network="rel", subnet="10.77.0.0/22", version="1.1.0", **ipam):
        section = {"type": "host-local", "dataDir": self.data_dir, "ranges": [[{"subnet": subnet}]]}
        section.update(ipam)
        return {"cniVersion": version, "name": network, "type": "macvlan", "master": self.master,
                "stateDir": self.state_dir, "ipam": section}

    # -- running the plugin ---------------------------------------------------------

    def start(self, command, conf, cid="", pod=None, ifname="eth0", kill_at=None, fail_at=None, stop_at=None,
              env=None):
        """Start macvlan `command` in the host netns; kill_at/stop_at run it under killpoint.py."""
        argv = KILLPOINT if (kill_at or fail_at or stop_at) else plugin_argv("macvlan")
        extra = {"UNDERLAY_KILL_AT": kill_at or stop_at, "UNDERLAY_FAIL_AT": fail_at,
                 "UNDERLAY_STOP": "1" if stop_at else None, **(env or {})}
        env = plugin_env(command, container_id=cid, netns=nsutil.netns_path(pod) if pod else "",
                         ifname=ifname if command not in ("GC", "STATUS") else "",
                         extra={k: v for k, v in extra.items() if v})
        return Call(self, ["ip", "netns", "exec", self.host] + argv, env, json.dumps(conf).encode())

    def run(self, command, conf, cid="", pod=None, ifname="eth0", **kw):
        return self.start(command, conf, cid, pod, ifname, **kw).wait()

    def gc(self, conf, valid):
        """GC with the attachments `valid` = {(cid, ifname), ...}."""
        attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in sorted(valid)]
        return self.run("GC", dict(conf, **{"cni.dev/valid-attachments": attachments}))

    def check(self, conf, cid, pod, ifname, result):
        return self.run("CHECK", dict(conf, prevResult=result), cid, pod, ifname)

    # -- what is on the node ---------------------------------------------------------

    def pod_links(self, pod):
        """{link name: [address, ...]} in a pod, loopback left out."""
        out = nsutil.sh("ip", "-j", "addr", "show", ns=pod).stdout
        return {link["ifname"]: [a["local"] for a in link.get("addr_info", []) if a.get("scope") == "global"]
                for link in json.loads(out) if link["ifname"] != "lo"}

    def net_dir(self, network):
        return os.path.join(self.data_dir, network)

    def lease_files(self, network):
        """{ip: raw content} of every file in the network directory named like an address."""
        path = self.net_dir(network)
        if not os.path.isdir(path):
            return {}
        out = {}
        for entry in os.scandir(path):
            if entry.name[:1].isalnum() and ("." in entry.name or ":" in entry.name) \
                    and not entry.name.startswith("last_reserved_ip."):
                try:
                    with open(entry.path, "rb") as f:
                        out[entry.name] = f.read()
                except FileNotFoundError:
                    pass  # released meanwhile by a plugin running now
        return out


LEASE = re.compile(rb"^(?P<cid>[a-zA-Z0-9][a-zA-Z0-9_.\-]*)\r\n(?P<ifname>[^\s/:]{1,15})$")


class Audit:
    """The invariants after a run, as counts (all must be 0) with the offending items."""

    def __init__(self, node, networks, expected):
        """expected: {(network, cid, ifname): pod} of the attachments the runtime holds as live."""
        self.leases = {}          # (network, ip) -> (cid, ifname)
        for network in networks:
            for ip, content in node.lease_files(network).items():
                m = LEASE.match(content)
                if m is not None:
                    self.leases[(network, ip)] = (m["cid"].decode(), m["ifname"].decode())
        self.bad_lease_files = self.lease_file_problems(node, networks)
        owners = {(net, cid, ifname) for (net, _), (cid, ifname) in self.leases.items()}
        self.leases_without_owner = sorted(k for k, v in self.leases.items() if (k[0],) + v not in expected)
        self.attachments_without_lease = sorted(k for k in expected if k not in owners)
        self.two_leases = sorted(o for o in owners if sum(1 for k, v in self.leases.items()
                                                          if (k[0],) + v == o) > 1)
        self.pods_seen = {}
        addresses = {}
        self.orphan_links = []
        wanted = {}
        for (net, cid, ifname), pod in expected.items():
            wanted.setdefault(pod, set()).add(ifname)
        for pod in node.pods:
            links = node.pod_links(pod)
            self.pods_seen[pod] = links
            for name, ips in links.items():
                if name not in wanted.get(pod, ()):
                    self.orphan_links.append((pod, name))
                for ip in ips:
                    addresses.setdefault(ip, []).append((pod, name))
        self.duplicate_ips = sorted((ip, where) for ip, where in addresses.items() if len(where) > 1)
        # an address on a pod link must be leased to that very attachment
        self.unleased_addresses = []
        for (net, cid, ifname), pod in expected.items():
            for ip in self.pods_seen.get(pod, {}).get(ifname, []):
                if self.leases.get((net, ip)) != (cid, ifname):
                    self.unleased_addresses.append((net, cid, ifname, ip))
        self.index_mismatches = self.check_index(node, networks)

    @staticmethod
    def lease_file_problems(node, networks):
        """Lease files that are empty, partial or not what host-local writes (reference #498)."""
        return [(network, ip, content) for network in networks
                for ip, content in node.lease_files(network).items() if LEASE.match(content) is None]

    def check_index(self, node, networks):
        """What a plugin would read from the index, against the lease files."""
        mismatches = []
        for network in networks:
            if not os.path.isdir(node.net_dir(network)):
                continue
            store = DiskStore(node.data_dir, network)
            with store:
                indexed = {(cid, ifname): sorted(ips) for (cid, ifname), ips in store.attachments().items()}
            on_disk = {}
            for (net, ip), owner in self.leases.items():
                if net == network:
                    on_disk.setdefault(owner, []).append(ip)
            on_disk = {k: sorted(v) for k, v in on_disk.items()}
            if indexed != on_disk:
                mismatches.append((network, indexed, on_disk))
        return mismatches

    COUNTS = ("duplicate_ips", "leases_without_owner", "attachments_without_lease", "two_leases",
              "orphan_links", "bad_lease_files", "unleased_addresses", "index_mismatches")

    def counts(self):
        return {name: len(getattr(self, name)) for name in self.COUNTS}

    def problems(self):
        return {name: getattr(self, name) for name in self.COUNTS if getattr(self, name)}

    def assert_clean(self, what=""):
        assert not self.problems(), f"{what}: {self.problems()}"
