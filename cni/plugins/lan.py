"""What ADD asks and tells the pod's LAN (cni/net/neighbours.py does the frames).

- conflictDetection: before the addresses are configured (link up, no address yet),
  probe each; an address somebody answers for is held by our IPAM as a conflict
  (dispatch.hold_ipam_conflict) and IPAM is asked again, up to MAX_CONFLICTS.
- gatewayDetection: after, each address's gateway must answer within the bound.
- announcements, always: IPv4 by the kernel (arp_notify) as the link comes up with its
  addresses, or, when conflictDetection brought it up before them, by our gratuitous
  ARP; IPv6 by our unsolicited neighbour advertisement (the kernel sends none).

The probes and the gateway checks need packet sockets, opened only when a detection
asks for them: closing one waits for an RCU grace period (~10 ms on a busy node),
which an ADD without detection does not pay. ipvlan children share the master's MAC,
and the kernel hands a frame it cannot match to a child's address (a reply to a probe
goes to 0.0.0.0) to the master: for ipvlan the answers are heard on the master too
(Kind.hears_on_master).
"""

import contextlib
import ipaddress

from cni import dispatch
from cni.errors import ERR_INVALID_CONFIG, ERR_LINK, ERR_NO_ADDRESS, ERR_NO_GATEWAY, CniError
from cni.net import iface, neighbours, netns, parents

# Conflicts one ADD accepts (each costs a probe time) before it fails with code 101: a range with
# more addresses taken by others than this is misconfigured, and a pod start should not crawl through it.
MAX_CONFLICTS = 8
CONFLICT_PROBE_MS = 300    # conf/schema/macvlan.json conflictProbeTime says why
GATEWAY_PROBE_MS = 2000    # ... and gatewayProbeTime


class Settings:
    def __init__(self, config):
        self.conflicts = bool(config.get("conflictDetection"))
        self.conflict_ms = config.get("conflictProbeTime") or CONFLICT_PROBE_MS
        self.gateways = bool(config.get("gatewayDetection"))
        self.gateway_ms = config.get("gatewayProbeTime") or GATEWAY_PROBE_MS

    def refuse_without_l2(self, mode):
        """ipvlan l3/l3s: the child sends no ARP or neighbour discovery, so there is nobody to ask."""
        for key, on in (("conflictDetection", self.conflicts), ("gatewayDetection", self.gateways)):
            if on:
                raise CniError(ERR_INVALID_CONFIG, f"{key}: ipvlan mode {mode} children send no ARP or neighbour "
                                                   "discovery on the LAN (the node routes for them), so nothing can "
                                                   f"be asked; use mode l2, or remove {key}")


def ip_of(ip):
    return ipaddress.ip_interface(ip["address"]).ip


class Neighbours:
    """One ADD's questions to the LAN and its announcements; close() (or `with`) closes its sockets."""

    def __init__(self, kind, conf, request, pod, pod_fd, link, master):
        self.kind, self.conf, self.request = kind, conf, request
        self.pod, self.pod_fd, self.link, self.master = pod, pod_fd, link, master
        self.send, self.on_master = {}, {}
        self.up_before_addresses = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        neighbours.close_ports(self.send)
        neighbours.close_ports(self.on_master)

    def ports(self, result):
        """The packet sockets on the pod's interface, opened on first use (the link is up by then),
        and the master's for ipvlan."""
        if not self.send:
            versions = {ip_of(ip).version for ip in result["ips"]}
            mac = self.link.mac
            try:
                with netns.entered(self.pod_fd):
                    self.send = neighbours.open_ports(self.request.ifname, mac, versions)
                if self.kind.hears_on_master:
                    with netns.entered(self.pod_fd) if self.conf.link_in_container else contextlib.nullcontext():
                        self.on_master = neighbours.open_ports(self.master.name, mac, versions)
            except OSError as e:
                raise CniError(ERR_LINK, f"opening a packet socket to ask the LAN: {e.strerror}") from None
        return self.send, list(self.send.values()) + list(self.on_master.values())

    def unused_addresses(self, result, ask_ipam):
        """The IPAM result with no address anybody on the LAN answers for. A conflicting address is
        held by the IPAM (with the MAC that answered) and the IPAM asked again (`ask_ipam()`: DEL of
        this attachment's lease, ADD); an IPAM that cannot hold it fails the ADD (the caller's undo
        releases the lease)."""
        if not result["ips"]:
            return result
        with netns.entered(self.pod_fd):
            iface.up(self.pod, self.link, self.request.ifname, result)   # probes go out before the addresses exist
        self.up_before_addresses = True
        settings, held = self.conf.lan, []
        while True:
            send, hear = self.ports(result)
            found = neighbours.conflicts(send, hear, [ip_of(ip) for ip in result["ips"]], settings.conflict_ms / 1000)
            if not found:
                return result
            for address, mac in found.items():
                if not dispatch.hold_ipam_conflict(self.request, str(address), mac):
                    raise CniError(ERR_NO_ADDRESS, f"conflictDetection: {address} is in use on the LAN by {mac}; "
                                                   f"{ipam_name(self.request)} cannot hold it as a conflict, so its "
                                                   "lease was released: free the address or take it out of the range")
                held.append((address, mac))
            if len(held) >= MAX_CONFLICTS:
                raise CniError(ERR_NO_ADDRESS, f"conflictDetection: {len(held)} addresses in use on the LAN "
                                               f"(the most one ADD tries): {listed(held)}; held as conflicts")
            try:
                result = ask_ipam()
            except CniError as e:   # its code kept: 101 when the range ran out, another for another failure
                raise CniError(e.code, f"{e.msg}; conflictDetection held {listed(held)} as conflicts",
                               e.details) from None

    def check_gateways(self, result):
        """Every address's gateway answers within the bound, else code 104 naming it and the master."""
        pairs = [(ip_of(ip), ipaddress.ip_address(ip["gateway"])) for ip in result["ips"] if ip.get("gateway")]
        if not pairs:
            return
        send, hear = self.ports(result)
        missing = neighbours.unanswered_gateways(send, hear, pairs, self.conf.lan.gateway_ms / 1000)
        if missing:
            raise gateway_error(missing, self.master.name, self.conf.vlan, self.conf.lan.gateway_ms)

    def announce(self, result):
        """Every address told to the LAN, so neighbours that cached another MAC for it switch now."""
        addresses = [ip_of(ip) for ip in result["ips"]]
        if self.up_before_addresses:   # arp_notify saw the link come up without them
            neighbours.announce(self.send, [a for a in addresses if a.version == 4])
        ipv6 = [a for a in addresses if a.version == 6]
        if ipv6:
            with netns.entered(self.pod_fd):
                neighbours.advertise(self.link.index, self.link.mac, ipv6)


def gateway_error(missing, master, vlan, ms):
    names = ", ".join(str(g) for g in missing)
    if vlan is None and parents.vlan_of(master):
        vlan = parents.vlan_of(master)[1]
    where = f"master {master}" + (f" (VLAN {vlan})" if vlan is not None else "")
    cause = "the wrong master, or the VLAN not trunked to its switch port" if vlan is not None else "the wrong master"
    return CniError(ERR_NO_GATEWAY, f"gatewayDetection: gateway {names} did not answer within {ms} ms on {where}: "
                                    f"likely {cause} (or the gateway is down)")


def ipam_name(request):
    kind = (request.config.get("ipam") or {}).get("type")
    return f"IPAM {kind}" if kind else "a chained plugin's result (no IPAM)"


def listed(held):
    return ", ".join(f"{address} ({mac})" for address, mac in held)
