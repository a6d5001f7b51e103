"""Hostile-input harness: run a plugin on one input and check what every answer must be.

Every invocation must end in one of two ways: exit 0 with a valid result (ADD)
or nothing (the other verbs), or exit 1 with a CNI error JSON whose code is one
the spec or underlay defines. Never a traceback, never a hang, never a code
999 (an internal error is a bug to fix), never a half-done state: a failed
verb leaves the leases as they were, a successful ADD is undone by its DEL,
and nothing appears outside the sandbox.

The sandbox is a temporary directory on tmpfs (the plugins fsync each lease)
plus a network namespace of its own that the calling thread enters, so the
in-process plugins' netlink sockets only ever see that namespace.
"""

import io
import ipaddress
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading

from cni import contract, dispatch, errors, registry
from cni.net import netlink, netns
from ipam.dhcp import plugin as dhcp
from ipam.stores.lease_files import is_ip
from tests import netns as nsutil

PLUGINS = {name: registry.EXECUTABLES[name]
           for name in ("host-local", "macvlan", "ipvlan", "cluster-access", "dhcp", "cluster-ipam")}
# Codes a plugin may answer with; 999 is underlay's "internal error", i.e. a bug.
SPEC_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103})
# Places outside the sandbox the plugins would write to with a default dataDir or stateDir.
WATCHED = ("/var/lib/cni/networks", "/var/lib/cni/underlay", "/var/lib/cni/underlay/links",
           "/var/lib/cni/cluster-ipam", "/var/lib/cni/dhcp")
HANG_SECONDS = 20
PYTHON_ERROR = re.compile(r"\b(TypeError|ValueError|KeyError|AttributeError|IndexError|RecursionError)\b")


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so dispatch.run cannot turn it into an answer."""


def verbs_of(plugin):
    return dispatch.plugin_module(PLUGINS[plugin]).VERBS


class Outcome:
    def __init__(self, code, stdout, stderr):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        try:
            self.json = json.loads(stdout) if stdout.strip() else None
        except ValueError:
            self.json = None

    @property
    def ok(self):
        return self.code == 0

    @property
    def cni_code(self):
        return None if self.ok or not isinstance(self.json, dict) else self.json.get("code")

    def __repr__(self):
        return f"<exit {self.code} stdout={self.stdout.strip()[:2000]!r} stderr={self.stderr.strip()[-2000:]!r}>"


def watchdog(seconds=HANG_SECONDS):
    """A context manager raising Hang in the main thread after `seconds`."""
    class Watch:
        def __enter__(self):
            def fire(signum, frame):
                raise Hang(f"no answer within {seconds}s")
            self.old = signal.signal(signal.SIGALRM, fire)
            signal.setitimer(signal.ITIMER_REAL, seconds)

        def __exit__(self, *exc):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
    return Watch()


def invoke(plugin, env, stdin):
    """Run a plugin in this process as dispatch.run does for an exec; never raises for the plugin."""
    out, err = io.StringIO(), io.StringIO()
    with watchdog():
        code = dispatch.run(PLUGINS[plugin], verbs_of(plugin), env=dict(env), stdin=stdin,
                            stdout=out, stderr=err)
    return Outcome(code, out.getvalue(), err.getvalue())


# -- what an answer must look like ----------------------------------------------------

def check_answer(outcome, command):
    """Assert the answer is a valid result, nothing, or a CNI error with a spec code."""
    assert outcome.code in (0, 1), outcome
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout, outcome
    if command in ("", None):
        assert outcome.ok and outcome.stdout == "" and outcome.stderr.startswith("CNI "), outcome
        return
    if command == "VERSION":
        assert outcome.ok and outcome.json["supportedVersions"] == list(contract.SUPPORTED_VERSIONS), outcome
        return
    # stderr carries only warnings (an unusable logFile, unknown keys), never a result or a trace
    assert all(line.startswith("underlay: logFile") or ": warning: " in line
               for line in outcome.stderr.splitlines()), outcome
    assert len(outcome.stderr) < 10_000, outcome   # however hostile the keys, a few clipped lines
    assert outcome.stdout.count("\n") <= 1, outcome
    if not outcome.ok:
        check_error(outcome)
    elif command == "ADD":
        check_result(outcome)
    else:
        assert outcome.stdout == "", outcome


def check_error(outcome):
    error = outcome.json
    assert isinstance(error, dict), outcome
    assert set(error) == {"cniVersion", "code", "msg", "details"}, outcome
    assert isinstance(error["msg"], str) and error["msg"], outcome
    assert isinstance(error["details"], str), outcome
    assert error["cniVersion"] in contract.SUPPORTED_VERSIONS, outcome
    assert error["code"] != errors.ERR_INTERNAL, f"internal error (a bug): {outcome}"
    assert error["code"] in SPEC_CODES, outcome
    # a Python exception's text is a traceback's tail: the message names the field instead
    assert not PYTHON_ERROR.search(error["msg"]), f"Python's words, not a field: {outcome}"


def check_result(outcome):
    result = outcome.json
    assert isinstance(result, dict), outcome
    version = result.get("cniVersion")
    assert version in contract.SUPPORTED_VERSIONS, outcome
    if contract.version_key(version) < (0, 3, 0):
        assert set(result) <= {"cniVersion", "ip4", "ip6", "dns"}, outcome
        for family in ("ip4", "ip6"):
            if family in result:
                ip = ipaddress.ip_interface(result[family]["ip"])
                assert str(ip.version) == family[2], outcome
                if "gateway" in result[family]:
                    ipaddress.ip_address(result[family]["gateway"])
        return
    assert set(result) <= {"cniVersion", "interfaces", "ips", "routes", "dns"}, outcome
    assert isinstance(result.get("dns", {}), dict), outcome
    interfaces = result.get("interfaces", [])
    for ip in result.get("ips", []):
        ipaddress.ip_interface(ip["address"])
        if "gateway" in ip:
            ipaddress.ip_address(ip["gateway"])
        if "interface" in ip:
            assert 0 <= ip["interface"] < len(interfaces), outcome
        if contract.version_key(version) < (1, 0, 0):
            assert ip["version"] == str(ipaddress.ip_interface(ip["address"]).version), outcome
        else:
            assert "version" not in ip, outcome
    for route in result.get("routes", []):
        ipaddress.ip_network(route["dst"], strict=False)
        if route.get("gw"):
            ipaddress.ip_address(route["gw"])


def result_addresses(outcome):
    result = outcome.json
    if "ips" in result:
        return sorted(str(ipaddress.ip_interface(ip["address"]).ip) for ip in result["ips"])
    return sorted(str(ipaddress.ip_interface(result[f]["ip"]).ip) for f in ("ip4", "ip6") if f in result)


# -- the sandbox --------------------------------------------------------------------


class Sandbox:
    """A tmpfs directory and a network namespace the calling thread works in."""

    def __init__(self, netns_too=True, pod=False, pod_eth0=False):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.root = tempfile.mkdtemp(prefix="ulhostile", dir=base)
        os.chmod(self.root, 0o700)
        self.data = os.path.join(self.root, "data")
        self.state = os.path.join(self.root, "state")
        self.bin = os.path.join(self.root, "bin")
        self.cwd = os.path.join(self.root, "cwd")
        self.not_netns = os.path.join(self.root, "not-a-netns")
        self.pod = self.not_netns     # what CNI_NETNS usually is; a real pod netns in with_pod()
        self.masters = ["m1"]         # the usual master; a real veth in with_pod()
        self.fifo = os.path.join(self.root, "fifo")
        self.etcd = None              # cluster-ipam's etcd (a client URL), when start_etcd() made one
        self.etcd_cluster = None
        for d in (self.bin, self.cwd):
            os.mkdir(d, 0o700)
        with open(self.not_netns, "w"):
            pass
        os.mkfifo(self.fifo, 0o600)
        self.dhcp = os.path.join(self.root, "dhcp")   # the dhcp IPAM's records without underlayd
        os.mkdir(self.dhcp, 0o700)
        self.netns_name = nsutil.unique("ulz") if netns_too or pod else None
        self.pod_name = nsutil.unique("ulq") if pod else None
        self.pod_eth0 = pod_eth0      # the pod has eth0 (a veth from the "host"), as a main plugin left it
        self.pod_baseline = ["lo"]
        self.home_fd = self.ns_fd = None
        self.old_cwd = None

    def __enter__(self):
        assert threading.current_thread() is threading.main_thread(), "setns and SIGALRM need the main thread"
        self.old_cwd = os.getcwd()
        os.chdir(self.cwd)   # a relative path in a config must not land in the checkout
        self.outside = self.outside_state()
        self.old_dhcp_dir, dhcp.DEFAULT_DIR = dhcp.DEFAULT_DIR, self.dhcp
        if self.netns_name:
            nsutil.add_netns(self.netns_name)
            self.ns_fd = os.open(nsutil.netns_path(self.netns_name), os.O_RDONLY | os.O_CLOEXEC)
            if self.pod_name:
                # a veth master "m1" in the plugins' "host" netns and a real pod netns
                nsutil.add_parent(self.netns_name, "m1", "p1")
                nsutil.add_netns(self.pod_name)
                self.pod = nsutil.netns_path(self.pod_name)
                if self.pod_eth0:
                    self.add_pod_eth0()
            self.home_fd = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)
            netns.setns(self.ns_fd)
        return self

    def start_etcd(self, make):
        """An etcd member inside the sandbox's netns (started from it), where the plugins reach it;
        `make` is tests/etcd.py's etcd_cluster factory. Stopped with the sandbox."""
        self.etcd_cluster = make()
        self.etcd = self.etcd_cluster.endpoints[0]
        return self

    def add_pod_eth0(self):
        """eth0 in the pod, 10.1.0.5/24 and fd00::5/64, default route through it (what macvlan would
        leave for a chained plugin), its peer in the "host" netns; the "host" forwards (a netns of
        its own: cluster-access's primary mode requires it)."""
        peer = nsutil.unique("fzc")
        nsutil.sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", self.pod_name,
                  ns=self.netns_name)
        # no link-local addresses: their routes would come a moment after the link is up
        nsutil.sh("ip", "link", "set", peer, "addrgenmode", "none", "up", ns=self.netns_name)
        for argv in (("ip", "link", "set", "eth0", "addrgenmode", "none"),
                     ("ip", "addr", "add", "10.1.0.5/24", "dev", "eth0"),
                     ("ip", "addr", "add", "fd00::5/64", "dev", "eth0", "nodad"),
                     ("ip", "link", "set", "eth0", "up"),
                     ("ip", "route", "add", "default", "via", "10.1.0.1", "dev", "eth0")):
            nsutil.sh(*argv, ns=self.pod_name)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            nsutil.sh("sysctl", "-qw", key, ns=self.netns_name)
        self.pod_baseline = ["eth0", "lo"]

    def __exit__(self, *exc):
        if self.etcd_cluster is not None:
            self.etcd_cluster.close()
        try:
            if self.home_fd is not None:
                netns.setns(self.home_fd)
                os.close(self.home_fd)
                os.close(self.ns_fd)
        finally:
            dhcp.DEFAULT_DIR = self.old_dhcp_dir
            os.chdir(self.old_cwd)
            for name in (self.pod_name, self.netns_name):
                if name:
                    nsutil.del_netns(name)
            shutil.rmtree(self.root, ignore_errors=True)

    # -- what the checks compare ------------------------------------------------

    def leases(self):
        """{(directory, ip): content} of every lease-like file anywhere in the sandbox."""
        found = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if is_ip(name):
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode):
                        with open(path, "rb") as f:
                            found[(os.path.relpath(dirpath, self.root), name)] = f.read()
        found.update(self.etcd_leases())
        return found

    def etcd_leases(self):
        """{("etcd", key): owner} of every lease and attachment record in etcd, under any prefix (the
        owner as the first line, as a lease file's). Sticky holds and conflict records are not leases."""
        if self.etcd is None:
            return {}
        from ipam import etcd
        found = {}
        with etcd.Client([self.etcd]) as client:
            for kv in client.range(""):
                key = kv.key.decode(errors="replace")
                if "/attachments/" in key:
                    owner = key.split("/")[-2].rpartition("@")[0]   # .../<cid>@<ifname>/<ip>
                elif "/ips/" in key:
                    lease = json.loads(kv.value)
                    if "containerID" not in lease:
                        continue
                    owner = lease["containerID"]
                else:
                    continue
                found[("etcd", key)] = f"{owner}\r\n".encode() + kv.value
        return found

    def links(self):
        with netlink.Netlink() as nl:
            return sorted(link.name for link in nl.links())

    def routing(self):
        """Routes and rules of the "host" netns and of the pod (with pod_eth0): a chained plugin's
        work, which a failed verb, or an ADD and its DEL, must leave as they were."""
        if not self.pod_eth0:
            return None

        def table(nl):   # link-local routes come when the kernel gets round to them: not ours
            return sorted(repr(r) for r in nl.routes() if not r["dst"].startswith("fe80:")) + \
                sorted(map(repr, nl.rules()))
        pod_fd = os.open(self.pod, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with netns.entered(pod_fd):
                with netlink.Netlink() as nl:
                    pod = table(nl)
        finally:
            os.close(pod_fd)
        with netlink.Netlink() as nl:
            return pod, table(nl)

    def pod_links(self):
        return sorted(nsutil.links(self.pod_name)) if self.pod_name else []

    def outside_state(self):
        state = {"cwd": sorted(os.listdir(self.cwd)) if os.path.isdir(self.cwd) else None,
                 "root": sorted(os.listdir(self.root))}
        for path in WATCHED:
            state[path] = sorted(os.listdir(path)) if os.path.isdir(path) else None
        return state

    def check_outside(self, what, stdin=b""):
        """Nothing new in the sandbox root or the plugins' cwd, and nothing of this case in the
        default directories. Other tests on the machine write there too: only this case's
        network name, and the records of this sandbox's netns, count as ours."""
        now = self.outside_state()
        allowed_root = set(self.outside["root"]) | {"data", "state", "data2", "log", "x.log"}
        assert set(now["root"]) <= allowed_root, f"{what}: new entries in the sandbox root: {now['root']}"
        assert now["cwd"] == self.outside["cwd"], f"{what}: written to the plugin's cwd: {now['cwd']}"
        ours = set()
        try:
            name = json.loads(stdin).get("name")
            if isinstance(name, str):
                ours.add(name)
        except (ValueError, AttributeError, RecursionError):
            pass
        if self.ns_fd is not None:
            st = os.fstat(self.ns_fd)
            ours.add(f"{st.st_dev}-{st.st_ino}")
        for key in WATCHED:
            new = set(now[key] or []) - set(self.outside[key] or [])
            assert not new & ours, f"{what}: created {sorted(new & ours)} in {key}"
        self.outside = now


def owner_of(content):
    return content.decode(errors="replace").split("\r\n")[0].strip()


def exercise(sandbox, plugin, env, stdin, links_may_change=False):
    """Run one case and every check; return the Outcome. A successful ADD is undone by DEL."""
    command = env.get("CNI_COMMAND")
    before = sandbox.leases()
    links_before = None if links_may_change else sandbox.links()
    routing_before = sandbox.routing()
    outcome = invoke(plugin, env, stdin)
    what = f"{plugin} {command} env={env!r} stdin={stdin[:1000]!r} ({len(stdin)} bytes)"
    check_answer(outcome, command)
    after = sandbox.leases()
    added = {k: v for k, v in after.items() if before.get(k) != v}
    removed = {k: v for k, v in before.items() if k not in after}
    if not outcome.ok or command not in ("ADD", "DEL", "GC"):
        assert after == before, f"{what}: leases changed by {outcome}: +{added} -{removed}"
    elif command == "ADD":
        assert not removed, f"{what}: ADD removed leases {removed}"
        assert all(owner_of(v) == env["CNI_CONTAINERID"] for v in added.values()), f"{what}: {added}"
        if plugin == "host-local":
            assert sorted(ip for _, ip in added) == result_addresses(outcome), f"{what}: {added} vs {outcome}"
        undo = invoke(plugin, dict(env, CNI_COMMAND="DEL"), stdin)
        check_answer(undo, "DEL")
        assert undo.ok, f"{what}: DEL after a successful ADD failed: {undo}"
        now = sandbox.leases()
        assert set(now) <= set(before), f"{what}: DEL left {set(now) - set(before)}"
        # DEL releases every lease of the attachment in that network, older ones too
        gone = {k: v for k, v in before.items() if k not in now}
        assert all(owner_of(v) == env["CNI_CONTAINERID"] for v in gone.values()), f"{what}: DEL took {gone}"
    elif command == "DEL":
        assert not added, f"{what}: DEL added leases {added}"
        assert all(owner_of(v) == env["CNI_CONTAINERID"] for v in removed.values()), f"{what}: {removed}"
    elif command == "GC":
        assert not added, f"{what}: GC added leases {added}"
    if links_before is not None:
        assert sandbox.links() == links_before, f"{what}: links changed"
    if sandbox.pod_name:
        assert sandbox.pod_links() == sandbox.pod_baseline, f"{what}: left {sandbox.pod_links()} in the pod netns"
    routing_after = sandbox.routing()
    assert routing_after == routing_before, f"{what}: routes or rules changed: " \
        f"{[r for r in routing_after[0] + routing_after[1] if r not in routing_before[0] + routing_before[1]]} " \
        f"{[r for r in routing_before[0] + routing_before[1] if r not in routing_after[0] + routing_after[1]]}"
    sandbox.check_outside(what, stdin)
    return outcome
