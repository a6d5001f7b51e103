"""What ADD asks and tells the pod's LAN (cni/net/neighbours.py does the frames).

- conflictDetection: before the addresses are configured (link up, no address yet),
  probe each; an address somebody answers for is held by our IPAM as a conflict
  (dispatch.hold_ipam_conflict) and IPAM is asked again, up to MAX_CONFLICTS.
- gatewayDetection: after, each address's gateway must answer within the bound.
- announce: always, last: a gratuitous ARP / unsolicited NA per address.

ipvlan children share the master's MAC, and the kernel hands a frame it cannot match
to a child's address (a reply to a probe goes to 0.0.0.0) to the master: for ipvlan
the answers are heard on the master too (Kind.hears_on_master).
"""

import ipaddress

from cni import dispatch
from cni.errors import ERR_INVALID_CONFIG, ERR_NO_ADDRESS, ERR_NO_GATEWAY, CniError
from cni.net import neighbours, netns, parents

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


class Ports:
    """The raw sockets of one ADD: `send` on the pod's interface ({ethertype: Port}), `hear` the
    Ports answers come in on: those, and the master's for ipvlan. Opened in the namespaces the
    interfaces live in; closed with close()."""

    def __init__(self, kind, pod_fd, ifname, mac, master, master_fd, versions):
        with netns.entered(pod_fd):
            self.send = neighbours.open_ports(ifname, mac, versions)
        self.on_master = {}
        if kind.hears_on_master:
            try:
                if master_fd is None:
                    self.on_master = neighbours.open_ports(master.name, mac, versions)
                else:
                    with netns.entered(master_fd):
                        self.on_master = neighbours.open_ports(master.name, mac, versions)
            except OSError:
                self.close()
                raise
        self.hear = list(self.send.values()) + list(self.on_master.values())

    def close(self):
        neighbours.close_ports(self.send)
        neighbours.close_ports(self.on_master)


def unused_addresses(settings, request, result, ports, ask_ipam):
    """The IPAM result with no address anybody on the LAN answers for. A conflicting address is
    held by the IPAM (with the MAC that answered) and the IPAM asked again (`ask_ipam()`: DEL of
    this attachment's lease, ADD); an IPAM that cannot hold it fails the ADD (the caller's undo
    releases the lease)."""
    held = []
    while True:
        found = neighbours.conflicts(ports.send, ports.hear, [ip_of(ip) for ip in result["ips"]],
                                     settings.conflict_ms / 1000)
        if not found:
            return result
        for address, mac in found.items():
            if not dispatch.hold_ipam_conflict(request, str(address), mac):
                raise CniError(ERR_NO_ADDRESS, f"conflictDetection: {address} is in use on the LAN by {mac}; "
                                               f"{ipam_name(request)} cannot hold it as a conflict, so its lease "
                                               "was released: free the address or take it out of the range")
            held.append((address, mac))
        if len(held) >= MAX_CONFLICTS:
            raise CniError(ERR_NO_ADDRESS, f"conflictDetection: {len(held)} addresses in use on the LAN "
                                           f"(the most one ADD tries): {listed(held)}; held as conflicts")
        try:
            result = ask_ipam()
        except CniError as e:
            raise CniError(ERR_NO_ADDRESS, f"{e.msg}; conflictDetection held {listed(held)} as conflicts",
                           e.details) from None


def ipam_name(request):
    kind = (request.config.get("ipam") or {}).get("type")
    return f"IPAM {kind}" if kind else "a chained plugin's result (no IPAM)"


def listed(held):
    return ", ".join(f"{address} ({mac})" for address, mac in held)


def check_gateways(settings, result, ports, master, vlan):
    """Every address's gateway answers within the bound, else code 104 naming it and the master."""
    pairs = [(ip_of(ip), ipaddress.ip_address(ip["gateway"])) for ip in result["ips"] if ip.get("gateway")]
    missing = neighbours.unanswered_gateways(ports.send, ports.hear, pairs, settings.gateway_ms / 1000)
    if missing:
        names = ", ".join(str(g) for g in missing)
        if vlan is None and parents.vlan_of(master.name):
            vlan = parents.vlan_of(master.name)[1]
        where = f"master {master.name}" + (f" (VLAN {vlan})" if vlan is not None else "")
        raise CniError(ERR_NO_GATEWAY, f"gatewayDetection: gateway {names} did not answer within "
                                       f"{settings.gateway_ms} ms on {where}: likely the wrong master"
                                       f"{', or the VLAN is not trunked to its switch port' if vlan else ''}"
                                       " (or the gateway is down)")


def announce(result, ports):
    neighbours.announce(ports.send, [ip_of(ip) for ip in result["ips"]])
