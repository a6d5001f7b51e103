"""A LAN for DHCP tests: a server netns on the test's master, and real DHCP servers in it.

`lan` (fixture) moves the master's veth peer into a fresh netns `dwl...` (the LAN side: what a
macvlan child of the master reaches), addresses it (10.88.0.1/24, 2001:db8:88::1/64, no DAD so the
servers can bind at once) and removes the netns at teardown. `kea4`, `kea6` and `dnsmasq` (factory
fixtures) start a real server there with its config, leases and log in the test's tmp dir, wait
until it is ready (its log says so; never a fixed sleep), and always stop it. A Server can be
stopped, killed (-9) and started again on the same lease file, and reads back its leases.

Debian packages: kea-dhcp4-server, kea-dhcp6-server, dnsmasq-base (build/apt-packages.txt).
dnsmasq's lease time cannot be under 2 minutes (it raises anything shorter to 2 min): renewal tests
use Kea, whose lifetimes may be a few seconds.
"""

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
from typing import NamedTuple, Optional

import pytest

from tests import netns as nsutil

SUBNET4, SERVER4, POOL4 = "10.88.0.0/24", "10.88.0.1", ("10.88.0.100", "10.88.0.199")
SUBNET6, SERVER6, POOL6 = "2001:db8:88::/64", "2001:db8:88::1", ("2001:db8:88::100", "2001:db8:88::1ff")
ROUTER4, DNS4, DNS6, DOMAIN = "10.88.0.1", "10.88.0.53", "2001:db8:88::53", "lan.test"
READY_TIMEOUT = 20.0   # a bound on a hung server, not a speed expectation


class Lan(NamedTuple):
    ns: str          # the LAN netns
    ifname: str      # its interface, the master's peer
    host_ns: str
    master: str


def peer_of(ns, link):
    """The name of a veth's peer in the same netns (`ip` names it as the link's "link")."""
    peer = nsutil.link_json(ns, link).get("link")
    if not peer:
        raise RuntimeError(f"no veth peer of {link} in {ns}")
    return peer


@pytest.fixture
def lan(host_ns, master):
    with lan_on(host_ns, master) as made:
        yield made


@contextlib.contextmanager
def lan_on(host_ns, master):
    """The LAN behind `master`, a veth in `host_ns` (None: the root netns, for clients whose pods
    live there: podman, containerd)."""
    name = nsutil.unique("dwl")
    nsutil.add_netns(name)
    try:
        peer = peer_of(host_ns, master)
        nsutil.sh("ip", "link", "set", peer, "netns", name, ns=host_ns)
        nsutil.sh("ip", "link", "set", peer, "addrgenmode", "eui64", ns=name)   # a root_master's has none
        for key in ("accept_dad", "dad_transmits"):
            nsutil.sh("sysctl", "-qw", f"net.ipv6.conf.{peer}.{key}=0", ns=name)
        nsutil.sh("ip", "addr", "add", f"{SERVER4}/24", "dev", peer, ns=name)
        nsutil.sh("ip", "addr", "add", f"{SERVER6}/64", "dev", peer, "nodad", ns=name)
        nsutil.sh("ip", "link", "set", peer, "up", ns=name)
        # Kea6 binds the link-local address at start: it appears when the kernel's link watch sees the carrier
        wait_for(lambda: usable_link_local(name, peer), what=f"a link-local address on {peer}")
        yield Lan(name, peer, host_ns, master)
    finally:
        nsutil.del_netns(name)


def usable_link_local(ns, ifname):
    out = nsutil.sh("ip", "-6", "-j", "addr", "show", "dev", ifname, "scope", "link", ns=ns).stdout
    return any(not a.get("tentative") for link in json.loads(out or "[]") for a in link.get("addr_info", []))


class ServerLease(NamedTuple):
    address: str
    client_id: str       # hex without separators (v4 option 61 / v6 DUID), "" when none
    hwaddr: str
    expires: float       # wall clock
    hostname: str
    iaid: Optional[int] = None
    state: str = "0"     # Kea: 0 default, 1 declined, 2 expired-reclaimed


class SocketFailed(RuntimeError):
    pass


class Server:
    """One real server process in the LAN netns. Subclasses give argv(), ready_line, leases()."""

    ready_line = ""

    def __init__(self, lan, workdir, name):
        self.lan, self.dir, self.name = lan, workdir, name
        os.makedirs(workdir, exist_ok=True)
        self.log = os.path.join(workdir, f"{name}.log")
        self.proc = None

    def env(self):
        return dict(os.environ, KEA_PIDFILE_DIR=self.dir, KEA_LOCKFILE_DIR=self.dir)

    def start(self):
        """Start and wait until ready. Kea6 now and then meets the LAN's link-local address unusable
        for a moment after the link came up (EADDRNOTAVAIL at bind, logged, then deaf): tried again."""
        for attempt in range(3):
            try:
                return self._start()
            except SocketFailed as e:
                print(e)   # shown with a failing test: what the LAN looked like
                self.kill()
                if attempt == 2:
                    raise

    def _start(self):
        assert self.proc is None, f"{self.name} already running"
        offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        out = open(os.path.join(self.dir, f"{self.name}.out"), "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.lan.ns] + self.argv(), stdout=out,
                                     stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        out.close()
        self.wait_ready(offset)
        return self

    def wait_ready(self, offset):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.output()}")
            if os.path.exists(self.log):
                with open(self.log, errors="replace") as f:
                    f.seek(offset)
                    text = f.read()
                if self.ready_line in text:
                    if "DHCPSRV_OPEN_SOCKET_FAIL" in text:   # started, but deaf on the LAN
                        raise SocketFailed(f"{self.name} could not open its socket: "
                                           f"{nsutil.sh('ip', 'addr', ns=self.lan.ns).stdout}")
                    return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.name} not ready within {READY_TIMEOUT} s: {self.output()}")

    def output(self):
        parts = []
        for path in (os.path.join(self.dir, f"{self.name}.out"), self.log):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    parts.append(f.read()[-2000:])
        return "\n".join(parts)

    def stop(self):
        """SIGTERM and wait (the server writes what it must)."""
        self._end(signal.SIGTERM)

    def kill(self):
        """kill -9: nothing written on the way out."""
        self._end(signal.SIGKILL)

    def _end(self, sig):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def leased(self, now=None):
        """{address: ServerLease} the server holds now (unexpired, not released)."""
        now = time.time() if now is None else now
        return {lease.address: lease for lease in self.leases() if lease.expires > now}


def _hex(text):
    return text.replace(":", "").lower()


class Kea(Server):
    family = 4

    def __init__(self, lan, workdir, valid_lifetime=60, renew_timer=None, rebind_timer=None, routes121=None,
                 authoritative=False, pool=None, extra=None):
        super().__init__(lan, workdir, f"kea{self.family}")
        self.leasefile = os.path.join(workdir, f"kea{self.family}.leases.csv")
        self.config_file = os.path.join(workdir, f"kea{self.family}.json")
        self.settings = dict(valid_lifetime=valid_lifetime, renew_timer=renew_timer, rebind_timer=rebind_timer,
                             routes121=routes121, authoritative=authoritative, pool=pool, extra=extra or {})
        with open(self.config_file, "w") as f:
            json.dump(self.config(), f, indent=1)

    def argv(self):
        return [f"/usr/sbin/kea-dhcp{self.family}", "-c", self.config_file]

    def common(self):
        s = self.settings
        conf = {"interfaces-config": {"interfaces": [self.lan.ifname]},
                "lease-database": {"type": "memfile", "persist": True, "name": self.leasefile, "lfc-interval": 0},
                "valid-lifetime": s["valid_lifetime"],
                "loggers": [{"name": f"kea-dhcp{self.family}", "severity": "DEBUG", "debuglevel": 10,
                             "output_options": [{"output": self.log, "flush": True}]}]}
        if s["renew_timer"] is not None:
            conf["renew-timer"] = s["renew_timer"]
        if s["rebind_timer"] is not None:
            conf["rebind-timer"] = s["rebind_timer"]
        conf.update(s["extra"])
        return conf


class Kea4(Kea):
    family = 4
    ready_line = "DHCP4_STARTED"

    def config(self):
        s = self.settings
        first, last = s["pool"] or POOL4
        options = [{"name": "routers", "data": ROUTER4}, {"name": "domain-name-servers", "data": DNS4},
                   {"name": "domain-name", "data": DOMAIN}]
        if s["routes121"]:
            from ipam.dhcp.wire4 import encode_classless_routes
            options.append({"code": 121, "space": "dhcp4", "csv-format": False, "always-send": True,
                            "data": encode_classless_routes(s["routes121"]).hex()})
        conf = self.common()
        conf["interfaces-config"]["dhcp-socket-type"] = "raw"
        conf.update({"authoritative": s["authoritative"],
                     "subnet4": [{"id": 1, "subnet": SUBNET4, "pools": [{"pool": f"{first} - {last}"}],
                                  "option-data": options}]})
        return {"Dhcp4": conf}

    def leases(self):
        """Every lease row's latest state (memfile appends a row per change)."""
        rows = {}
        for row in _csv_rows(self.leasefile):
            rows[row["address"]] = ServerLease(row["address"], _hex(row["client_id"]), row["hwaddr"].lower(),
                                               _expiry(row), row["hostname"], None, row.get("state", "0"))
        return list(rows.values())


class Kea6(Kea):
    family = 6
    ready_line = "DHCP6_STARTED"
    SERVER_DUID = "000200000a2b0102030405"   # DUID-EN, fixed: the same server after a restart

    def config(self):
        s = self.settings
        first, last = s["pool"] or POOL6
        conf = self.common()
        conf.update({"server-id": {"type": "EN", "enterprise-id": 2603, "identifier": "0102030405",
                                   "persist": False},
                     "preferred-lifetime": s["valid_lifetime"],
                     "subnet6": [{"id": 1, "subnet": SUBNET6, "interface": self.lan.ifname,
                                  "pools": [{"pool": f"{first} - {last}"}],
                                  "option-data": [{"name": "dns-servers", "data": DNS6},
                                                  {"name": "domain-search", "data": DOMAIN}]}]})
        return {"Dhcp6": conf}

    def leases(self):
        rows = {}
        for row in _csv_rows(self.leasefile):
            rows[row["address"]] = ServerLease(row["address"], _hex(row["duid"]), row.get("hwaddr", "").lower(),
                                               _expiry(row), row["hostname"], int(row["iaid"]),
                                               row.get("state", "0"))
        return list(rows.values())


def _csv_rows(path):
    """Complete rows only: Kea may be half way through appending one."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        text = f.read()
    text = text[:text.rfind("\n") + 1]
    rows = []
    for row in csv.DictReader(text.splitlines()):
        try:
            int(row["valid_lifetime"]), float(row["expire"])
        except (KeyError, TypeError, ValueError):
            continue
        rows.append(row)
    return rows


def _expiry(row):
    """A row's expiry; a released or reclaimed lease (valid lifetime 0, state 2) has expired."""
    if int(row["valid_lifetime"]) == 0 or row.get("state") == "2":
        return 0.0
    return float(row["expire"])


class Dnsmasq(Server):
    """dnsmasq as DHCPv4 server only (port=0: no DNS). Its lease time is at least 2 minutes."""

    ready_line = "DHCP, IP range"

    def __init__(self, lan, workdir, lease_time="2m", routes121=None):
        super().__init__(lan, workdir, "dnsmasq")
        self.leasefile = os.path.join(workdir, "dnsmasq.leases")
        self.lease_time, self.routes121 = lease_time, routes121

    def argv(self):
        first, last = POOL4
        argv = ["/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                f"--interface={self.lan.ifname}", "--bind-interfaces", "--dhcp-authoritative",
                f"--dhcp-range={first},{last},255.255.255.0,{self.lease_time}",
                f"--dhcp-leasefile={self.leasefile}", f"--pid-file={self.dir}/dnsmasq.pid",
                f"--dhcp-option=option:router,{ROUTER4}", f"--dhcp-option=option:dns-server,{DNS4}",
                f"--dhcp-option=option:domain-name,{DOMAIN}", "--log-dhcp", f"--log-facility={self.log}"]
        if self.routes121:
            pairs = ",".join(f"{r['dst']},{r.get('gw', '0.0.0.0')}" for r in self.routes121)
            argv.append(f"--dhcp-option=option:classless-static-route,{pairs}")
        return argv

    def leases(self):
        """dnsmasq rewrites its file: `expiry mac ip hostname|* client-id|*` per held lease."""
        if not os.path.exists(self.leasefile):
            return []
        out = []
        with open(self.leasefile) as f:
            for line in f:
                fields = line.split()
                if len(fields) == 5:
                    expiry, mac, address, hostname, cid = fields
                    out.append(ServerLease(address, "" if cid == "*" else _hex(cid), mac.lower(), float(expiry),
                                           "" if hostname == "*" else hostname))
        return out


def _factory(cls, lan, tmp_path):
    started = []

    def make(**settings):
        server = cls(lan, str(tmp_path / f"{cls.__name__.lower()}{len(started)}"), **settings)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.kill()


@pytest.fixture
def kea4(lan, tmp_path):
    """kea4(valid_lifetime=..., renew_timer=..., rebind_timer=..., routes121=[...], authoritative=...)
    -> a running Kea4 on the LAN."""
    yield from _factory(Kea4, lan, tmp_path)


@pytest.fixture
def kea6(lan, tmp_path):
    yield from _factory(Kea6, lan, tmp_path)


@pytest.fixture
def dnsmasq(lan, tmp_path):
    yield from _factory(Dnsmasq, lan, tmp_path)


def wait_for(condition, timeout=20.0, what="the condition"):
    """Poll `condition()` until true (returned) or `timeout` (a bound on a hang, not a speed check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)
