"""The DHCP renewer: every lease the dhcp IPAM acquired on this node, kept (README "DHCP").

The leases are the records in --dhcp-dir (ipam/dhcp/records.py): loaded at start, at every
healing interval (a lost report loses nothing) and when a worker reports one ("L": held, "F":
forgotten). Each lease is a small state machine walked by the agent's loop, never blocking:
renew at T1 (unicast to its server), rebind at T2 (broadcast), each one client.Exchange whose
socket fds() names and whose timer due() gives. An ACK rewrites the record (under the records'
lock, only if it still exists: a DEL that removed it wins, and the renewed lease is released).
At expiry the address is removed from the pod's interface (a client must not use an expired
address), logged and counted; then the lease is asked back (INIT-REBOOT) at a backoff, and the
address and its routes put back when granted.

The renewer holds an fd of each lease's pod netns: a netns whose runtime deleted it without a DEL
(its path is certainly gone: healing's judgement, at every scan) still exists while we hold it,
interface and address included, so its lease is released from the leased address as DEL would
(DHCPRELEASE), then forgotten and the fd let go, the netns with it.
"""

import math
import os
import resource
import time

from cni.agent.healing import netns_certainly_gone
from cni.agent.service import log
from cni.net import netlink, netns
from ipam.dhcp import client, plugin, records

RETRY_MIN = 2.0                  # seconds: never retry a renew or rebind sooner
REBOOT_BACKOFF = (1, 2, 4, 8, 16, 32, 60)   # seconds between attempts to get an expired lease back
LOCK_RETRY = 0.05                # the records' lock was held (a worker writing): try again this soon


def monotonic_at(wall, now):
    """time.monotonic() of the wall-clock time `wall`, `now` being time.monotonic() now."""
    return now + (wall - time.time())


class Held:
    """One lease the agent keeps: its record's name, its Lease and Options, the exchange in flight."""

    def __init__(self, name, lease, options):
        self.name, self.lease, self.options = name, lease, options
        self.exchange = None
        self.kind = None           # of the exchange in flight: "renew", "rebind", "reboot"
        self.expired = False       # its address is off the pod's interface
        self.attempts = 0          # reboots tried since it expired
        self.next = 0.0            # monotonic: when to look at it next (0: at once)
        self.unwritten = None      # a renewed Lease whose record could not be written yet (lock held)
        try:
            self.netns_fd = netns.open_netns(lease.netns)   # held: see the module's doc
        except netns.NetnsError:
            self.netns_fd = None

    def due(self):
        return self.exchange.due() if self.exchange is not None else self.next

    def close(self):
        if self.exchange is not None:
            self.exchange.close()
            self.exchange = None

    def let_go(self):
        self.close()
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None


class Renewer:
    """The Service (cni/agent/service.py) that keeps every lease of the dhcp dir renewed."""

    def __init__(self, options, children, reports, metrics):
        self.options, self.metrics = options, metrics
        try:
            self.dir_fd = records.open_dir(options.dhcp_dir)
        except OSError as e:
            raise SystemExit(f"underlayd: --dhcp-dir {options.dhcp_dir}: {e.strerror or e}") from None
        self.held = {}             # record name -> Held
        raise_fd_limit()           # a netns fd per lease
        self.next_scan = 0.0
        reports.on("L", self.reported_held)
        reports.on("F", self.reported_forgotten)
        metrics.dhcp_held = lambda: len(self.held)
        children.agent_only.append(self.private_fds)

    def private_fds(self):
        """The pod netns fds and exchange sockets: the agent's alone (a worker keeps the dir fd)."""
        return [fd for h in self.held.values() for fd in
                (h.netns_fd, h.exchange.fileno() if h.exchange is not None else None) if fd is not None]

    def serve_workers(self, report):
        """The workers forked from now on serve the dhcp IPAM with our dir fd and report pipe."""
        plugin.serve_from_agent(self.dir_fd, report)

    # -- the records -------------------------------------------------------------

    def scan(self, now):
        """Load every record not held yet (a report lost), drop those gone (a DEL's report lost), heal
        those whose pod netns is gone."""
        try:
            names = set(records.names(self.dir_fd))
        except OSError as e:
            log(f"dhcp: cannot list {self.options.dhcp_dir}: {e.strerror or e}")
            return
        for name in set(self.held) - names:
            self.drop(name)
        for name in sorted(names):
            if name not in self.held:
                self.load(name, now)
        for held in list(self.held.values()):
            if netns_certainly_gone(held.lease.netns):
                self.heal(held)

    def load(self, name, now):
        try:
            record = records.read(self.dir_fd, name)
        except (OSError, ValueError) as e:
            log(f"dhcp: {e}; not renewed")
            return
        if record is None:
            self.drop(name)
            return
        self.drop(name)
        self.held[name] = Held(name, *record)
        self.step(self.held[name], now)

    def drop(self, name):
        held = self.held.pop(name, None)
        if held is not None:
            held.let_go()

    def reported_held(self, pid, name):
        self.load(name, time.monotonic())

    def reported_forgotten(self, pid, name, sent="1"):
        """DEL or GC forgot it; a release their worker could not send (the netns path gone) we send from
        the netns we hold."""
        held = self.held.get(name)
        if sent == "0" and held is not None:
            log(f"dhcp: released {held.lease.address} of {who(held.lease)}: its DEL found the netns gone")
            self.release(held, held.lease)
        else:
            self.metrics.dhcp["releases"] += 1
        self.drop(name)

    # -- the service -------------------------------------------------------------

    def fds(self):
        return [h.exchange.fileno() for h in self.held.values() if h.exchange is not None]

    def due(self):
        return min([self.next_scan] + [h.due() for h in self.held.values()])

    def run(self, ready, now):
        if now >= self.next_scan:
            self.next_scan = now + self.options.heal_every if self.options.heal_every else math.inf
            self.scan(now)
        for held in list(self.held.values()):
            if held.exchange is not None and held.exchange.fileno() in ready:
                self.answer(held, now)
            if self.held.get(held.name) is held and held.due() <= now:
                self.step(held, now)

    def stop(self):
        for held in self.held.values():
            held.let_go()   # the leases stay: a restarted agent renews them from their records

    # -- one lease ---------------------------------------------------------------

    def step(self, held, now):
        """Its time has come: an exchange timed out or is due a retransmit, or the next one is due."""
        if held.unwritten is not None:
            self.granted(held, held.unwritten, now)
            return
        if held.exchange is not None:
            if held.exchange.timer(now):
                return   # retransmitted (or not yet time)
            kind = held.kind
            held.close()
            self.gave_up(held, kind, now)
            return
        lease, wall = held.lease, time.time()
        if held.expired:
            self.start(held, "reboot", now)
        elif wall >= lease.expires_at():
            self.expire(held, now)
        elif wall >= lease.rebind_at():
            self.start(held, "rebind", now)
        elif wall >= lease.renew_at():
            self.start(held, "renew", now)
        else:
            held.next = monotonic_at(lease.renew_at(), now)

    def start(self, held, kind, now):
        lease = held.lease
        if held.netns_fd is None:
            try:
                held.netns_fd = netns.open_netns(lease.netns)
            except netns.NetnsError as e:
                if netns_certainly_gone(lease.netns):
                    self.heal(held)
                else:
                    log(f"dhcp: {lease.address} of {who(lease)}: {e}; trying again later")
                    self.retry_later(held, kind, now)
                return
        try:
            held.exchange = client.Exchange(held.netns_fd, lease, kind, held.options, now)
            held.kind = kind
        except (client.DhcpError, OSError) as e:
            log(f"dhcp: cannot {kind} {lease.address} of {who(lease)}: {getattr(e, 'msg', None) or e}")
            self.retry_later(held, kind, now)

    def answer(self, held, now):
        try:
            renewed = held.exchange.readable()
        except client.Declined as e:
            kind = held.kind
            held.close()
            log(f"dhcp: the server refused to {kind} {held.lease.address} of {who(held.lease)}: {e.msg}")
            if kind == "reboot":
                self.retry_later(held, kind, now)
            else:
                self.expire(held, now)   # NAK: the lease is no longer ours
            return
        except (client.DhcpError, OSError) as e:
            log(f"dhcp: {held.kind} of {held.lease.address}: {getattr(e, 'msg', None) or e}")
            return
        if renewed is not None:
            kind = held.kind
            held.close()
            self.metrics.dhcp[{"renew": "renewals", "rebind": "rebinds", "reboot": "reacquired"}[kind]] += 1
            self.granted(held, renewed, now)

    def granted(self, held, renewed, now):
        """An ACK: the record rewritten (if DEL has not removed it meanwhile), the address back if it was
        taken off."""
        old = held.lease
        for field in ("netns", "container_id", "network", "ifname", "hostname"):
            setattr(renewed, field, getattr(old, field))
        try:
            with records.locked(self.dir_fd, timeout=None):
                if records.read(self.dir_fd, held.name) is None:
                    forgotten = True
                else:
                    forgotten = False
                    records.write(self.dir_fd, held.name, renewed, held.options)
        except BlockingIOError:
            held.unwritten, held.next = renewed, now + LOCK_RETRY
            return
        except (OSError, ValueError) as e:
            log(f"dhcp: cannot write the record of {renewed.address} ({who(renewed)}): {e}")
            forgotten = False
        held.unwritten = None
        if forgotten:   # DEL or GC removed it while we renewed: give back what we just got
            self.release(held, renewed)
            self.drop(held.name)
            return
        held.lease = renewed
        if held.expired:
            held.expired, held.attempts = False, 0
            self.restore(held)
        held.next = monotonic_at(renewed.renew_at(), now)

    def gave_up(self, held, kind, now):
        """No answer to this attempt: try again (at half the time left, RFC 2131 4.4.5), or move on."""
        if kind == "reboot":
            self.retry_later(held, "reboot", now)
            return
        lease, wall = held.lease, time.time()
        until = lease.rebind_at() if wall < lease.rebind_at() else lease.expires_at()
        held.next = monotonic_at(min(until, wall + max(RETRY_MIN, (until - wall) / 2)), now)

    def retry_later(self, held, kind, now):
        if kind == "reboot" or held.expired:
            held.next = now + REBOOT_BACKOFF[min(held.attempts, len(REBOOT_BACKOFF) - 1)]
            held.attempts += 1
        else:
            self.gave_up(held, kind, now)

    def expire(self, held, now):
        """Expired (or refused): the address off the pod's interface, logged, counted; then ask it back."""
        lease = held.lease
        self.metrics.dhcp["expiries"] += 1
        log(f"dhcp: the lease of {lease.address} ({who(lease)}) expired unrenewed: removed from "
            f"{lease.ifname}; asking for it again")
        try:
            with pod_netlink(held) as nl:
                link = nl.find_link(lease.ifname)
                if link is not None:
                    nl.delete_address(link.index, lease.address, lease.prefixlen)
        except (netns.NetnsError, netlink.NetlinkError, OSError) as e:
            if netns_certainly_gone(lease.netns):
                self.heal(held)
                return
            log(f"dhcp: cannot remove {lease.address} from {lease.ifname}: {e}")
        held.expired, held.attempts = True, 0
        self.start(held, "reboot", now)

    def restore(self, held):
        """Granted again after it expired: the address and the lease's routes back on the interface."""
        lease = held.lease
        result = plugin.add_result([lease])
        gateway = result["ips"][0].get("gateway")
        try:
            with pod_netlink(held) as nl:
                link = nl.find_link(lease.ifname)
                if link is None:
                    return
                try:
                    nl.add_address(link.index, lease.address, lease.prefixlen)
                except netlink.NetlinkError as e:
                    if e.errno != 17:   # EEXIST
                        raise
                for route in result["routes"]:
                    try:
                        nl.add_route(route["dst"], link.index, gw=route.get("gw") or gateway)
                    except netlink.NetlinkError as e:
                        if e.errno != 17:
                            raise
            log(f"dhcp: {lease.address} granted again to {who(lease)}: back on {lease.ifname}")
        except (netns.NetnsError, netlink.NetlinkError, OSError) as e:
            log(f"dhcp: cannot put {lease.address} back on {lease.ifname}: {e}")

    def heal(self, held):
        """Its pod netns is gone (a missed DEL): released from the netns we still hold, and forgotten."""
        lease = held.lease
        try:
            with records.locked(self.dir_fd, timeout=None):
                records.remove(self.dir_fd, held.name)
        except BlockingIOError:
            held.next = time.monotonic() + LOCK_RETRY
            return
        log(f"dhcp: healing: released {lease.address} of {who(lease)}: its netns {lease.netns} is gone")
        self.release(held, lease)
        self.drop(held.name)

    def release(self, held, lease):
        """DHCPRELEASE from the pod's netns (while we hold it), best effort: a server that never hears it
        lets the lease expire."""
        self.metrics.dhcp["releases"] += 1
        if held.netns_fd is None:
            return
        try:
            client.release(held.netns_fd, lease)
        except (client.DhcpError, OSError) as e:
            log(f"dhcp: DHCPRELEASE of {lease.address} ({who(lease)}): {getattr(e, 'msg', None) or e}")


def who(lease):
    return f"{lease.network} {lease.container_id[:12]}/{lease.ifname}"


def pod_netlink(held):
    """A netlink socket in the lease's pod netns (opened there, used from here)."""
    if held.netns_fd is None:
        raise netns.NetnsNotFound(f"network namespace {held.lease.netns} is not open")
    with netns.entered(held.netns_fd):
        return netlink.Netlink()


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
