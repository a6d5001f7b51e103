"""The pod's side: its network namespace opened and a netlink socket in it, an IPAM result
applied to a pod interface, and one checked against prevResult.

Shared by macvlan, ipvlan, cluster-access and dhcp. The caller has the pod's netlink socket and
runs `configure` inside the pod netns (sysctls are per netns).
"""

import ipaddress
import os

from cni.net import netlink, netns
from cni.errors import ERR_CHECK_FAILED, ERR_INVALID_ENV, ERR_LINK, ERR_NOT_PERMITTED, CniError


def open_pod_netns(request):
    try:
        fd = netns.open_netns(request.netns)
    except netns.NetnsError as e:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS: {e}") from None
    if netns.is_current(fd):
        os.close(fd)
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS: {request.netns} is the plugin's own network namespace")
    return fd


def pod_socket(pod_fd):
    try:
        with netns.entered(pod_fd):
            return netlink.Netlink()
    except netns.NotPermitted as e:   # before anything is done: say what is missing, not "internal error"
        raise not_permitted(f"entering the pod's network namespace (CNI_NETNS): {e}") from None


def not_permitted(what):
    return CniError(ERR_NOT_PERMITTED, f"{what}: the plugin needs CAP_SYS_ADMIN and CAP_NET_ADMIN "
                                       "(runtimes run plugins as root)")


def check_error(msg):
    return CniError(ERR_CHECK_FAILED, msg)


def prepare(ifname, has_ipv6):
    """Sysctls before the link goes up: announce the new MAC at once, and make IPv6
    usable without waiting for DAD (optimistic DAD instead of the reference's
    up-to-1.5 s settle, reference #680)."""
    netns.set_interface_sysctl("ipv4", ifname, "arp_notify", 1)
    try:
        netns.set_interface_sysctl("ipv6", ifname, "ndisc_notify", 1)
        if has_ipv6:
            netns.set_interface_sysctl("ipv6", ifname, "disable_ipv6", 0)
            netns.set_interface_sysctl("ipv6", ifname, "optimistic_dad", 1)
            netns.set_interface_sysctl("ipv6", ifname, "accept_ra", 0)
    except FileNotFoundError:
        if has_ipv6:
            raise CniError(ERR_LINK, "IPv6 addresses requested but IPv6 is disabled in the pod netns")


def up(nl, link, ifname, result):
    """Sysctls for the result's families, then the link up before it has addresses: for
    conflictDetection's probes (cni/plugins/lan.py). configure does both again, harmlessly."""
    prepare(ifname, any(":" in ip["address"] for ip in result.get("ips") or []))
    nl.set_link(link.index, up=True)


def configure(nl, link, ifname, result, device_default=False):
    """Addresses, link up (coming up with them, it has arp_notify announce the IPv4 ones), routes:
    one netlink round trip (nl.batched()); with IPv6, the routes come after the check that no
    address failed DAD, a second one.
    `device_default` adds `default dev <ifname>` per family instead of gateway routes (ipvlan l3/l3s)."""
    ips = [ip for ip in result.get("ips") or []]
    has_ipv6 = any(":" in ip["address"] for ip in ips)
    prepare(ifname, has_ipv6)
    with nl.batched():
        add_addresses_and_up(nl, link, ips, result, device_default, has_ipv6)
    if has_ipv6:
        for address, plen, flags in nl.addresses(link.index):
            if flags & netlink.IFA_F_DADFAILED:
                raise CniError(ERR_LINK, f"IPv6 duplicate address detection failed for {address}/{plen}")
        with nl.batched():
            add_routes(nl, link, ips, result, device_default)


def add_addresses_and_up(nl, link, ips, result, device_default, has_ipv6):
    """configure's first batch: the addresses, the link up, and without IPv6 the routes."""
    for ip in ips:
        iface = ipaddress.ip_interface(ip["address"])
        flags = netlink.IFA_F_OPTIMISTIC if iface.version == 6 else 0
        nl.add_address(link.index, str(iface.ip), iface.network.prefixlen, flags)
    nl.set_link(link.index, up=True)
    if not has_ipv6:   # IPv4 has no duplicate address detection to look at first
        add_routes(nl, link, ips, result, device_default)


def add_routes(nl, link, ips, result, device_default):
    gateways = {}
    for ip in ips:
        if ip.get("gateway"):
            gateways.setdefault(ipaddress.ip_address(ip["gateway"]).version, ip["gateway"])
    for route in result.get("routes") or []:
        version = ipaddress.ip_network(route["dst"], strict=False).version
        gw = None if device_default else (route.get("gw") or gateways.get(version))
        nl.add_route(str(ipaddress.ip_network(route["dst"], strict=False)), link.index, gw=gw,
                     priority=route.get("priority"), table=route.get("table"), scope=route.get("scope"),
                     mtu=route.get("mtu"), advmss=route.get("advmss"))


def interface_result(link, sandbox):
    return {"name": link.name, "mac": link.mac, "mtu": link.mtu, "sandbox": sandbox}


def check_addresses_and_routes(nl, link, prev, our_index):
    """Every address of prevResult on our interface is there; every route exists."""
    present = {(ipaddress.ip_address(a), plen): flags for a, plen, flags in nl.addresses(link.index)}
    for ip in prev.get("ips") or []:
        if ip.get("interface", our_index) != our_index:
            continue
        iface = ipaddress.ip_interface(ip["address"])
        flags = present.get((iface.ip, iface.network.prefixlen))
        if flags is None:
            raise check_error(f"address {ip['address']} of prevResult is missing from {link.name}")
        if flags & netlink.IFA_F_DADFAILED:
            raise check_error(f"address {ip['address']} on {link.name} failed duplicate address detection")
    wanted = prev.get("routes") or []
    # only the families prevResult has routes in (a dst of one family never matches the other)
    families = sorted({netlink.family_of(str(ipaddress.ip_network(r["dst"], strict=False).network_address))
                       for r in wanted})
    routes = [r for family in families for r in nl.routes(family)]
    for route in wanted:
        dst = str(ipaddress.ip_network(route["dst"], strict=False))
        gw = route.get("gw")
        if not any(r["dst"] == dst and (not gw or r["gw"] == gw) for r in routes):
            raise check_error(f"route {route['dst']}{' via ' + gw if gw else ''} of prevResult is missing")
