"""dhcp IPAM: the pod's addresses from the LAN's own DHCP server(s), leases renewed by underlayd.

The reference dhcp IPAM's config, as it is (`request`, `provide` with `value` or `fromArg`,
`timeout`, `broadcast`; `daemonSocketPath` is accepted and ignored with a warning: no daemon is
needed), plus `families` (["ipv4"] default, ["ipv6"], both) and `prefixLength6`.

Served by underlayd only (README "DHCP"): ADD's exchange runs in the worker serving the
invocation (ipam/dhcp/client.py, blocking, bounded by `timeout`); the lease record is written
(ipam/dhcp/records.py, relative to the agent's dhcp dir fd) and reported to the agent before ADD
answers; the agent's renewer (cni/agent/dhcp.py) renews it at T1, rebinds at T2 and heals it.
The agent sets the hook (`serve_from_agent`) before it forks its workers; without it nobody
would renew a lease, so ADD refuses at once with code 11 (try again: the agent is a node
DaemonSet that may be starting) and STATUS answers 50.

The client identity is stable for the attachment (network, container ID, ifname): the client id
and IAID are derived from them (the client makes its DUID-UUID of the id, v4 option 61 per RFC
4361). ipvlan children share their parent's MAC, so servers tell them apart by it.
"""

import ipaddress
import os
import re
import time

from cni import config as netconf
from cni import dispatch, registry
from cni.errors import (ERR_CHECK_FAILED, ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_IO, ERR_LINK, ERR_NO_ADDRESS,
                        ERR_NOT_AVAILABLE, ERR_TRY_AGAIN, CniError)
from cni.net import iface, netlink, netns
from ipam import verbs

# ipam.dhcp's client, records and wire4 are imported in the functions that use them: they bring
# dataclasses and uuid (~15 ms), which an exec for VERSION or the about line must not pay
# (tests/build/test_bundle.py DENY_ALWAYS). underlayd has them imported before it forks.
DEFAULT_DIR = "/var/lib/cni/dhcp"     # underlayd's default --dhcp-dir: the lease records

DEFAULT_TIMEOUT = 10.0     # seconds, as the reference daemon's -timeout
MAX_TIMEOUT = 300.0
FAMILIES = {"ipv4": 4, "ipv6": 6}
OPTION_HOSTNAME = 12      # DHCPv4 option (RFC 2132): the client's hostname

# Set in underlayd before it forks its workers (serve_from_agent): (dhcp dir fd, report function).
AGENT = None


def serve_from_agent(dir_fd, report):
    """underlayd: its workers serve the dhcp IPAM with this dir fd and report(line) to the renewer."""
    global AGENT
    AGENT = (dir_fd, report)


class DhcpConfig:
    """The ipam section as the verbs read it, checked: code 7 naming the field."""

    def __init__(self, config, request):
        netconf.validate("dhcp", config, request)
        ipam = config["ipam"]
        if "daemonSocketPath" in ipam:
            request.warnings.append("ipam.daemonSocketPath is ignored: underlayd serves the dhcp IPAM, "
                                    "no dhcp daemon is needed")
        self.families = [FAMILIES[f] for f in ipam.get("families") or ["ipv4"]]
        self.timeout = parse_timeout(ipam.get("timeout", DEFAULT_TIMEOUT), "ipam.timeout")
        self.broadcast = ipam.get("broadcast", True)
        self.prefixlen6 = ipam.get("prefixLength6", 64)
        self.request_codes = tuple(option_code(r["option"], f"ipam.request[{i}].option")
                                   for i, r in enumerate(ipam.get("request") or []))
        if any(r.get("skipDefault") for r in ipam.get("request") or []):
            request.warnings.append("ipam.request: skipDefault is ignored: the options the result is made of "
                                    "(mask, routers, routes, DNS, lease times) are always asked for")
        self.hostname = None
        send = []
        for i, p in enumerate(ipam.get("provide") or []):
            field = f"ipam.provide[{i}]"
            code = option_code(p["option"], f"{field}.option")
            value = provided_value(p, field, request)
            if value is None:
                continue
            if code == OPTION_HOSTNAME:
                self.hostname = check_hostname(value, field)
            else:   # a dhcp-client-identifier (61) too: sent as it is, instead of the derived one
                send.append((code, value.encode()))
        self.send = tuple(send)

    def options(self, family):
        """What the client sends: the config's options are DHCPv4 option codes (the reference's); DHCPv6
        gets the hostname (FQDN option) and the prefix length only."""
        from ipam.dhcp import client
        if family == 4:
            return client.Options(request=self.request_codes, send=self.send, broadcast=self.broadcast,
                                  prefixlen6=self.prefixlen6)
        return client.Options(broadcast=self.broadcast, prefixlen6=self.prefixlen6)


def load_config(request):
    """The config, checked: for a main plugin to load before it changes anything."""
    return DhcpConfig(request.config, request)


DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h))+")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_timeout(value, field):
    """Seconds, or a Go duration as the reference daemon's -timeout takes ("10s", "1m30s", "500ms")."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and DURATION.fullmatch(value):
        seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)", value))
    if seconds is None or not 0 < seconds <= MAX_TIMEOUT:
        raise CniError(ERR_INVALID_CONFIG, f"{field}: {value!r} must be a number of seconds or a duration "
                                           f"(\"10s\", \"500ms\") in (0, {MAX_TIMEOUT:g}s]")
    return seconds


def option_code(option, field):
    """A DHCPv4 option by the reference's names (and RFC 2132's), or its number 1-254."""
    from ipam.dhcp import wire4
    try:
        return wire4.option_code(option)
    except ValueError as e:
        raise CniError(ERR_INVALID_CONFIG, f"{field}: {e} (a number 1-254 or a name such as host-name, "
                                           "routers, classless-static-routes)") from None


def provided_value(provide, field, request):
    """The value of a `provide` entry: its value, or its CNI_ARGS key's (None, with a warning, when the
    runtime did not pass that key: the option is then not sent)."""
    if ("value" in provide) == ("fromArg" in provide):
        raise CniError(ERR_INVALID_CONFIG, f"{field}: give exactly one of value and fromArg")
    if "value" in provide:
        return provide["value"]
    value = request.args.get(provide["fromArg"])
    if not isinstance(value, str) or not value:
        request.warnings.append(f"{field}.fromArg: CNI_ARGS has no {provide['fromArg']}: option "
                                f"{provide['option']} is not sent")
        return None
    return value


def check_hostname(name, field):
    if len(name) > 253 or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?", name):
        raise CniError(ERR_INVALID_CONFIG, f"{field}: host-name {netconf.clipped(name)} is not a host name")
    return name


# --------------------------------------------------------------------------
# Where the records are, who we are

def served():
    """(dir fd, report) of the agent serving this invocation; code 11 when none does."""
    if AGENT is None:
        raise CniError(ERR_TRY_AGAIN, "the dhcp IPAM is served by underlayd, which is not running on this node "
                                      "(or this plugin was not handed to it): no lease could be renewed. "
                                      "Start underlayd (the node DaemonSet) and try again")
    return AGENT


def records_dir():
    """(dir fd, report, owned) for DEL and GC: the agent's, else the default dir when it
    exists (without the agent, DEL still releases and forgets what it can); None: no records."""
    if AGENT is not None:
        return AGENT[0], AGENT[1], False
    try:
        fd = os.open(DEFAULT_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    return fd, (lambda line: None), True


def identity(request, conf, mac):
    """Who asks, stable for the attachment: the same IAID and DUID on every ADD of it (a retried ADD gets
    the same lease), whatever the MAC (ipvlan children share their parent's)."""
    from ipam.dhcp import client, records
    digest = records.attachment_digest(request.network, request.container_id, request.ifname)
    return client.Identity(mac=mac, client_id=digest[4:20], iaid=int.from_bytes(digest[:4], "big"),
                           hostname=conf.hostname)


def pod_link(nl, request):
    link = nl.find_link(request.ifname)
    if link is None:
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME: no interface {request.ifname} in {request.netns}")
    return link


def family_name(family):
    return f"IPv{family}"


# --------------------------------------------------------------------------
# Verbs

def cmd_add(request):
    from ipam.dhcp import records
    conf = request.ipam_config or load_config(request)
    dir_fd, report = served()
    pod_fd = iface.open_pod_netns(request)
    try:
        with iface.pod_socket(pod_fd) as nl:
            link = pod_link(nl, request)
            brought_up = not link.up
            leases, written = [], []
            try:
                if brought_up:   # DHCP needs the link up; the main plugin adds the addresses after us
                    with netns.entered(pod_fd):
                        iface.prepare(request.ifname, 6 in conf.families)
                    nl.set_link(link.index, up=True)
                for family in conf.families:
                    lease = acquire(pod_fd, request, conf, family, link.mac)
                    leases.append(lease)
                try:
                    with records.locked(dir_fd):
                        for lease in leases:
                            name = records.record_name(request.network, request.container_id, request.ifname,
                                                       lease.family)
                            records.write(dir_fd, name, lease, conf.options(lease.family))
                            written.append(name)
                except OSError as e:
                    raise CniError(ERR_IO, f"cannot write the lease record in underlayd's --dhcp-dir: "
                                           f"{e.strerror or e}") from None
            except BaseException:
                undo_add(dir_fd, pod_fd, nl, link, leases, written, brought_up)
                raise
            for name in written:
                report(f"L {os.getpid()} {name}")
    except netlink.NetlinkError as e:
        raise CniError(ERR_LINK, str(e)) from None
    finally:
        os.close(pod_fd)
    return add_result(leases)


def acquire(pod_fd, request, conf, family, mac):
    """One lease of `family`, as the attachment's: code 11 when no server answers in time, 101 when the
    server refuses."""
    from ipam.dhcp import client
    try:
        lease = client.acquire(pod_fd, request.ifname, family, identity(request, conf, mac),
                               conf.options(family), conf.timeout)
    except client.NoAnswer as e:
        raise CniError(ERR_TRY_AGAIN, f"{e.msg} (ipam.timeout)") from None
    except client.Declined as e:
        raise CniError(ERR_NO_ADDRESS, f"the DHCP server refused a lease on {request.ifname} "
                                       f"({family_name(family)}): {e.msg}") from None
    except client.DhcpError as e:
        raise CniError(ERR_IO, f"DHCP on {request.ifname} ({family_name(family)}): {e.msg}") from None
    except OSError as e:
        raise CniError(ERR_IO, f"DHCP on {request.ifname} ({family_name(family)}): {e.strerror or e}") from None
    lease.netns, lease.container_id, lease.network, lease.ifname = (request.netns, request.container_id,
                                                                    request.network, request.ifname)
    return lease


def undo_add(dir_fd, pod_fd, nl, link, leases, written, brought_up):
    """A failed ADD leaves nothing behind: records removed, leases released, the link as it was."""
    from ipam.dhcp import records
    try:
        with records.locked(dir_fd):
            for name in written:
                records.remove(dir_fd, name)
    except (OSError, CniError):
        pass
    for lease in leases:
        release_quietly(pod_fd, lease)
    if brought_up:
        try:
            nl.set_link(link.index, up=False)
        except netlink.NetlinkError:
            pass


def release_quietly(pod_fd, lease):
    """DHCPRELEASE, best effort (a server that never hears it lets the lease expire); whether it was sent."""
    from ipam.dhcp import client
    try:
        client.release(pod_fd, lease)
        return True
    except (client.DhcpError, OSError):
        return False


def add_result(leases):
    """Addresses with the server's prefix; the gateway is the first router (v4), its default route via
    it; classless static routes (option 121, which replaces option 3 when present: RFC 3442); DNS."""
    ips, routes, dns = [], [], {}
    for lease in leases:
        ip = {"address": f"{lease.address}/{lease.prefixlen}"}
        gateway = lease.routers[0] if lease.routers else None
        if lease.routes:
            routes += [dict(r) for r in lease.routes]
            gateway = next((r["gw"] for r in lease.routes if r.get("gw") and r["dst"].endswith("/0")), None)
        elif gateway is not None:
            routes.append({"dst": "0.0.0.0/0" if lease.family == 4 else "::/0", "gw": gateway})
        if gateway is not None:
            ip["gateway"] = gateway
        ips.append(ip)
        for key, value in (lease.dns or {}).items():
            if isinstance(value, list):
                dns.setdefault(key, [])
                dns[key] += [v for v in value if v not in dns[key]]
            elif value:
                dns.setdefault(key, value)
    return {"ips": ips, "routes": routes, "dns": dns}


def attachment_records(dir_fd, request):
    """[(name, Lease)] held for this attachment, either family; a record that cannot be read is
    removed (nothing renews it)."""
    from ipam.dhcp import records
    found = []
    for family in (4, 6):
        name = records.record_name(request.network, request.container_id, request.ifname, family)
        try:
            record = records.read(dir_fd, name)
        except ValueError:
            record = None
            with records.locked(dir_fd):
                records.remove(dir_fd, name)
        if record is not None:
            found.append((name, record[0]))
    return found


def forget(dir_fd, report, name, lease):
    """Remove the record (under the lock: a renewal in flight cannot write it back), release, and tell
    the agent whether the release was sent: when the pod netns path is gone already (the runtime removed
    it before DEL), the agent, which holds the netns while it keeps the lease, sends it from there."""
    from ipam.dhcp import records
    with records.locked(dir_fd):
        records.remove(dir_fd, name)
    sent = False
    try:
        pod_fd = netns.open_netns(lease.netns)
    except netns.NetnsError:
        pod_fd = None
    if pod_fd is not None:
        try:
            sent = release_quietly(pod_fd, lease)
        finally:
            os.close(pod_fd)
    report(f"F {os.getpid()} {name} {int(sent)}")


def cmd_del(request):
    where = records_dir()
    if where is None:
        return
    dir_fd, report, owned = where
    try:
        for name, lease in attachment_records(dir_fd, request):
            forget(dir_fd, report, name, lease)
    finally:
        if owned:
            os.close(dir_fd)


def cmd_check(request):
    conf = request.ipam_config or load_config(request)
    dir_fd, _ = served()
    held = {lease.family: lease for _, lease in attachment_records(dir_fd, request)}
    who = f"{request.container_id}/{request.ifname}"
    now = time.time()
    for family in conf.families:
        lease = held.get(family)
        if lease is None:
            raise CniError(ERR_CHECK_FAILED, f"no {family_name(family)} DHCP lease is held for {who}")
        if lease.expires_at() <= now:
            raise CniError(ERR_CHECK_FAILED, f"the {family_name(family)} DHCP lease of {who} ({lease.address}) "
                                             "has expired")
    pod_fd = iface.open_pod_netns(request)
    try:
        with iface.pod_socket(pod_fd) as nl:
            link = pod_link(nl, request)
            present = {ipaddress.ip_address(a) for a, _, _ in nl.addresses(link.index)}
    finally:
        os.close(pod_fd)
    for family in conf.families:
        if ipaddress.ip_address(held[family].address) not in present:
            raise CniError(ERR_CHECK_FAILED, f"{held[family].address}, leased to {who}, is not on "
                                             f"{request.ifname}")


def cmd_gc(request):
    from ipam.dhcp import records
    # a malformed list must not read as "nothing is valid": that would release every lease
    netconf.validate("dhcp", request.config, request)
    valid = verbs.ValidAttachments(request.valid_attachments())
    where = records_dir()
    if where is None:
        return
    dir_fd, report, owned = where
    try:
        for name in records.names(dir_fd):
            try:
                lease, _ = records.read(dir_fd, name) or (None, None)
            except ValueError:
                continue
            if lease is None or lease.network != request.network or valid.keeps(lease.container_id, lease.ifname):
                continue
            forget(dir_fd, report, name, lease)
    finally:
        if owned:
            os.close(dir_fd)


def cmd_status(request):
    load_config(request)
    if AGENT is None:
        raise CniError(ERR_NOT_AVAILABLE, "the dhcp IPAM is served by underlayd, which is not running on this node")


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def main():
    dispatch.main(registry.EXECUTABLES["dhcp"], VERBS)


if __name__ == "__main__":
    main()
