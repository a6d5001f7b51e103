"""cluster-access: a pod on the underlay reaches its cluster (services, its node) and answers the LAN.

A chained plugin, placed after the plugin that made the pod's underlay
interface (our macvlan or ipvlan, or the reference's): it reads `prevResult`
and passes it on unchanged (what it adds is plumbing, not an interface of the
attachment: Multus' network-status keeps showing the underlay interface alone).

Primary mode (the underlay interface holds the pod's default route): a veth
pair between the pod (`vethName`, default veth0) and the node. In the pod,
`serviceCIDRs`, the node's own addresses and `clusterCIDRs` route through the
veth to a link-local next hop that is a permanent neighbour entry pointing at
the node's end: no address on the node, no ARP or NDP, nothing a reverse-path
filter could refuse. On the node, each pod address gets a host route (and a
permanent neighbour) through the node's end, so kube-proxy's DNAT in the
node's namespace serves ClusterIPs and answers come back through the veth.
Strict rp_filter passes on both sides: every source arrives on the link its
route leaves by. The node must forward (a clear error otherwise; no node-wide
setting is changed).

Secondary mode (another interface holds the default route): policy routing in
the pod, so traffic from the underlay interface's addresses leaves through it:
a table per interface with its gateway as default and its subnet, a rule per
source address, optional `routes` through it, and with `defaultRoute` the
pod's default route through it.

Nothing is kept on disk: the node's end is named from a hash of network,
container ID and ifname and carries them in its alias (GC finds it), the
policy table from the interface's name. DEL needs neither the config nor the
pod's netns: it removes the node's end (the pod's end goes with it) and, if
the netns is still there, the rules and routes of the table.
"""

import contextlib
import hashlib
import ipaddress
import os
import zlib

from cni import config as netconf
from cni import dispatch, registry
from cni.config import parse_cidr
from cni.errors import ERR_INVALID_ENV, ERR_LINK, ERR_NOT_AVAILABLE, CniError, config_error
from cni.net import iface, netlink, netns
from cni.plugins.child_link import delete_quietly, quietly

SCHEMA = "cluster-access"
MODES = ("auto", "primary", "secondary")
NODE_PREFIX = "ulca"                                   # + 11 hex of the hash: 15 characters
ALIAS = "underlay cluster-access"                      # + network, container ID, ifname
VETH_GATEWAY = {4: "169.254.1.1", 6: "fe80::1"}        # the node's end as the pod sees it (a neighbour entry)
TABLE_BASE = 0x55000000                                # + 24 bits of the interface name's CRC
RULE_PRIORITY = 1000                                   # before the main table (32766)
FORWARDING = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}


# -- the config -----------------------------------------------------------------

class Conf:
    """The config, checked before anything changes. prevResult is read when present;
    ADD and CHECK require it (`underlay validate` checks a config file without one)."""

    def __init__(self, request):
        config = request.config
        netconf.validate(SCHEMA, config, request)
        self.mode = config.get("mode") or "auto"
        self.veth_name = config.get("vethName") or "veth0"
        self.service_cidrs = cidrs(config, "serviceCIDRs")
        self.cluster_cidrs = cidrs(config, "clusterCIDRs")
        self.routes = cidrs(config, "routes")
        self.node_addresses = None
        if "nodeAddresses" in config:
            self.node_addresses = [address(text, f"nodeAddresses[{i}]")
                                   for i, text in enumerate(config["nodeAddresses"])]
        self.default_route = bool(config.get("defaultRoute"))
        if self.mode == "primary" and not self.service_cidrs:
            raise config_error("serviceCIDRs", "required in primary mode: the cluster's service ranges "
                                               "(e.g. [\"10.96.0.0/12\"])")
        self.prev = dispatch.prev_result(request)
        if self.prev is not None:
            check_interface_indexes(self.prev)


def check_interface_indexes(prev):
    """prevResult is answered as it is: an address must not point past its interfaces list."""
    count = len(prev.get("interfaces") or [])
    for i, ip in enumerate(prev.get("ips") or []):
        if "interface" in ip and ip["interface"] >= count:   # a non-negative int (check_result_values)
            raise config_error(f"prevResult.ips[{i}].interface", f"{ip['interface']} is not an index of "
                                                                 f"prevResult.interfaces ({count} given)")


def cidrs(config, key):
    return [parse_cidr(text, f"{key}[{i}]") for i, text in enumerate(config.get(key) or [])]


def address(text, field):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise config_error(field, f"{text!r} is not an IP address") from None


def load_config(request):
    """The config, checked as ADD checks it, changing nothing (cni/registry.py)."""
    return Conf(request)


def underlay_addresses(prev, ifname):
    """The pod's addresses on the underlay interface (ip_interface), from prevResult."""
    if prev is None:
        raise config_error("prevResult", "missing: cluster-access is a chained plugin; place it after the plugin "
                                         "that makes the pod's interface (macvlan, ipvlan) in a conflist")
    interfaces = prev.get("interfaces") or []
    ours = [i for i, x in enumerate(interfaces) if x.get("name") == ifname and x.get("sandbox")]
    if interfaces and not ours:
        raise config_error("prevResult.interfaces", f"no interface {ifname} (CNI_IFNAME) in the pod: cluster-access "
                                                    "follows the plugin that made it")
    ips = [ip for ip in prev.get("ips") or [] if not ours or ip.get("interface", ours[0]) in ours]
    if not ips:
        raise config_error("prevResult.ips", f"no address on {ifname}: cluster-access routes the pod's "
                                             "underlay addresses")
    return [ipaddress.ip_interface(ip["address"]) for ip in ips], \
        {ipaddress.ip_address(ip["gateway"]).version: ip["gateway"] for ip in ips if ip.get("gateway")}


# -- names ----------------------------------------------------------------------

def node_link_name(network, container_id, ifname):
    """The node's end of the veth: never the same for two attachments (two networks, long
    shared container ID prefixes, two interfaces of one pod)."""
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return NODE_PREFIX + digest[:15 - len(NODE_PREFIX)]


def alias(request):
    return f"{ALIAS} {request.network} {request.container_id} {request.ifname}"


def table_of(ifname):
    """The pod's policy routing table for one underlay interface (secondary mode)."""
    return TABLE_BASE + (zlib.crc32(ifname.encode()) & 0xffffff)


def host_route(ip):
    return f"{ip}/{ip.max_prefixlen}"


# -- ADD ------------------------------------------------------------------------

def add(request):
    conf = Conf(request)
    addresses, gateways = underlay_addresses(conf.prev, request.ifname)
    try:
        with contextlib.ExitStack() as resources, contextlib.ExitStack() as undo:
            pod_fd = iface.open_pod_netns(request)
            resources.callback(os.close, pod_fd)
            pod = resources.enter_context(iface.pod_socket(pod_fd))
            link = pod.find_link(request.ifname)
            if link is None:
                raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME: {request.ifname} is not in {request.netns}; "
                                                "cluster-access follows the plugin that makes it")
            mode = choose_mode(conf, pod, link)
            if mode == "primary":
                host = resources.enter_context(netlink.Netlink())
                add_primary(conf, request, pod, pod_fd, host, addresses, undo)
            else:
                add_secondary(conf, request, pod, link, addresses, gateways, undo)
            undo.pop_all()   # success: keep everything
    except netlink.NetlinkError as e:
        raise CniError(ERR_LINK, str(e)) from None
    return conf.prev     # passed through: the veth is no interface of the attachment


def choose_mode(conf, pod, link):
    """auto: primary when the underlay interface holds the pod's default route (or none does),
    secondary when another interface holds it."""
    if conf.mode != "auto":
        mode = conf.mode
    else:
        defaults = [r["oif"] for r in pod.routes() if r["dst"].endswith("/0") and r["table"] == netlink.RT_TABLE_MAIN]
        mode = "secondary" if defaults and link.index not in defaults else "primary"
    if mode == "primary" and not conf.service_cidrs:
        raise config_error("serviceCIDRs", f"required in primary mode (chosen because no interface but {link.name} "
                                           "holds the pod's default route): the cluster's service ranges")
    return mode


def check_forwarding(families):
    """The node must forward what the pod sends through it; underlay never turns that on itself."""
    for version in sorted(families):
        try:
            with open(FORWARDING[version]) as f:
                on = f.read().strip() == "1"
        except OSError:
            on = False
        if not on:
            raise CniError(ERR_NOT_AVAILABLE, f"the node does not forward IPv{version} ({FORWARDING[version]} is "
                                              "not 1): primary mode routes the pod's traffic to services through "
                                              "the node; enable forwarding on the node (kubelet nodes have it)")


def pod_destinations(conf, host, families):
    """What the pod reaches through the veth: services, the node's addresses, clusterCIDRs."""
    node = conf.node_addresses
    if node is None:
        node = [ipaddress.ip_address(a) for a in host.global_addresses()]
    wanted = [str(c) for c in conf.service_cidrs + conf.cluster_cidrs] + [host_route(a) for a in node]
    out = []
    for dst in wanted:
        if ipaddress.ip_network(dst).version in families and dst not in out:
            out.append(dst)
    return out


def add_primary(conf, request, pod, pod_fd, host, addresses, undo):
    families = {a.version for a in addresses}
    check_forwarding(families)
    destinations = pod_destinations(conf, host, families)
    name = node_link_name(request.network, request.container_id, request.ifname)
    if pod.find_link(conf.veth_name):
        raise config_error("vethName", f"{conf.veth_name} already exists in {request.netns}")
    if host.find_link(name):
        raise CniError(ERR_LINK, f"the node already has {name}, this attachment's veth: DEL it first")
    host.create_link(name, "veth", data={"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", conf.veth_name),
                                                                      ("IFLA_NET_NS_FD", pod_fd)]}})
    node_end = host.link(name)
    undo.callback(quietly(lambda: delete_quietly(host, node_end.index)))   # the pod's end goes with it
    host.set_link(node_end.index, alias=alias(request))
    pod_end = pod.link(conf.veth_name)
    prepare(name, families)
    with netns.entered(pod_fd):
        prepare(conf.veth_name, families)
    host.set_link(node_end.index, up=True)
    pod.set_link(pod_end.index, up=True)

    sources = {}
    for a in addresses:
        sources.setdefault(a.version, str(a.ip))
    for version in sorted(families):
        pod.add_neighbour(pod_end.index, VETH_GATEWAY[version], node_end.mac)
    for dst in destinations:
        version = ipaddress.ip_network(dst).version
        pod.add_route(dst, pod_end.index, gw=VETH_GATEWAY[version], src=sources[version], onlink=version == 4)
    for a in addresses:
        host.add_neighbour(node_end.index, str(a.ip), pod_end.mac)
        host.add_route(host_route(a.ip), node_end.index)


def prepare(ifname, families):
    """Sysctls of a veth end (ours, in the netns we are in), before it is up: IPv6 on, without
    autoconfiguration, not even a link-local address (the next hops are neighbour entries)."""
    if 6 in families:
        try:
            for key, value in (("disable_ipv6", 0), ("accept_ra", 0), ("accept_dad", 0), ("addr_gen_mode", 1)):
                netns.set_interface_sysctl("ipv6", ifname, key, value)
        except FileNotFoundError:
            raise CniError(ERR_LINK, "the pod has IPv6 addresses but IPv6 is disabled on the node or in the pod") \
                from None


def add_secondary(conf, request, pod, link, addresses, gateways, undo):
    table = table_of(request.ifname)
    undo.callback(quietly(lambda: remove_policy(pod, table, link.index)))
    families = {a.version for a in addresses}
    for a in addresses:
        pod.add_route(str(a.network), link.index, table=table, src=str(a.ip))
    for version in sorted(families):
        pod.add_route("0.0.0.0/0" if version == 4 else "::/0", link.index, gw=gateways.get(version), table=table)
    for a in addresses:
        pod.add_rule(host_route(a.ip), table, RULE_PRIORITY)
    for i, dst in enumerate(conf.routes):
        if dst.version not in families:
            raise config_error(f"routes[{i}]", f"{dst} is IPv{dst.version}; {request.ifname} has no such address")
        pod.add_route(str(dst), link.index, gw=gateways.get(dst.version))
        undo.callback(quietly(lambda dst=dst: pod.delete_route(str(dst), link.index)))
    if conf.default_route:
        for version in sorted(families):
            default = "0.0.0.0/0" if version == 4 else "::/0"
            for route in pod.routes(netlink.family_of(default.split("/")[0])):
                if route["dst"] == default and route["table"] == netlink.RT_TABLE_MAIN and route["oif"] != link.index:
                    pod.delete_route(default, route["oif"])
            if not any(r["dst"] == default and r["table"] == netlink.RT_TABLE_MAIN and r["oif"] == link.index
                       for r in pod.routes()):
                pod.add_route(default, link.index, gw=gateways.get(version))


# -- DEL ------------------------------------------------------------------------

def delete(request):
    """Whatever is left: the node's end (its peer and routes go with it), then the pod's
    rules and table. Needs no config beyond the name, nor the netns: a DEL after a refused
    ADD, a repeated DEL and a DEL after the pod is gone all succeed."""
    with netlink.Netlink() as host:
        # the name is this attachment's hash (its alias may be missing: an ADD killed before it was set)
        node_end = host.find_link(node_link_name(request.network, request.container_id, request.ifname))
        if node_end is not None and node_end.kind == "veth":
            delete_quietly(host, node_end.index)
    if not request.netns:
        return
    try:
        pod_fd = netns.open_netns(request.netns)
    except netns.NetnsError:
        return   # gone: its rules and routes went with it
    try:
        with iface.pod_socket(pod_fd) as pod:
            link = pod.find_link(request.ifname)
            secondary = remove_policy(pod, table_of(request.ifname), link.index if link else None)
            # `routes` are secondary mode's, added after its rules: without the rules they are not ours
            # (primary mode adds none; the pod's own route to its subnet may be one of them)
            if link is not None and secondary:
                for dst in lenient_routes(request.config):
                    pod.delete_route(dst, link.index)
    finally:
        os.close(pod_fd)


def lenient_routes(config):
    """The `routes` DEL removes: those of a config that can be read; none of one that cannot."""
    out = []
    for text in config.get("routes") or [] if isinstance(config.get("routes"), list) else []:
        try:
            out.append(str(ipaddress.ip_network(text)))
        except (TypeError, ValueError):
            pass
    return out


def remove_policy(pod, table, index):
    """Remove secondary mode's rules and table; True if there were rules (secondary mode's ADD)."""
    found = False
    for rule in pod.rules():
        if rule["table"] == table:
            pod.delete_rule(rule)
            found = True
    if index is not None:
        for route in pod.routes():
            if route["table"] == table:
                pod.delete_route(route["dst"], index, table=table)
    return found


# -- CHECK ----------------------------------------------------------------------

def check(request):
    conf = Conf(request)
    if conf.prev is None:
        raise config_error("prevResult", "required for CHECK")
    addresses, gateways = underlay_addresses(conf.prev, request.ifname)
    pod_fd = iface.open_pod_netns(request)
    try:
        with iface.pod_socket(pod_fd) as pod, netlink.Netlink() as host:
            link = pod.find_link(request.ifname)
            if link is None:
                raise iface.check_error(f"interface {request.ifname} is missing from {request.netns}")
            name = node_link_name(request.network, request.container_id, request.ifname)
            node_end = host.find_link(name)
            mode = conf.mode
            if mode == "auto":   # what ADD chose: its veth, else its rules, else what it would choose
                if node_end is not None:
                    mode = "primary"
                elif any(r["table"] == table_of(request.ifname) for r in pod.rules()):
                    mode = "secondary"
                else:
                    mode = choose_mode(conf, pod, link)
            if mode == "primary":
                check_primary(conf, request, pod, host, node_end, name, addresses)
            else:
                check_secondary(request, pod, link, addresses)
    finally:
        os.close(pod_fd)


def check_primary(conf, request, pod, host, node_end, name, addresses):
    if node_end is None or node_end.kind != "veth":
        raise iface.check_error(f"the node's end of the veth, {name}, is missing")
    pod_end = pod.find_link(conf.veth_name)
    if pod_end is None or pod_end.kind != "veth":
        raise iface.check_error(f"the pod's end of the veth, {conf.veth_name}, is missing")
    if not (node_end.up and pod_end.up):
        raise iface.check_error(f"the veth {name} / {conf.veth_name} is down")
    families = {a.version for a in addresses}
    present = {r["dst"] for r in pod.routes() if r["oif"] == pod_end.index and r["table"] == netlink.RT_TABLE_MAIN}
    for dst in pod_destinations(conf, host, families):
        if dst not in present:
            raise iface.check_error(f"the pod's route to {dst} through {conf.veth_name} is missing")
    on_node = {r["dst"] for r in host.routes() if r["oif"] == node_end.index and r["table"] == netlink.RT_TABLE_MAIN}
    for a in addresses:
        if host_route(a.ip) not in on_node:
            raise iface.check_error(f"the node's route to {a.ip} through {name} is missing")


def check_secondary(request, pod, link, addresses):
    table = table_of(request.ifname)
    rules = {r["src"] for r in pod.rules() if r["table"] == table}
    for a in addresses:
        if host_route(a.ip) not in rules:
            raise iface.check_error(f"the rule from {a.ip} lookup {table} is missing")
    routes = [r for r in pod.routes() if r["table"] == table and r["oif"] == link.index]
    for version in {a.version for a in addresses}:
        if not any(r["dst"] == ("0.0.0.0/0" if version == 4 else "::/0") for r in routes):
            raise iface.check_error(f"the default route of table {table} through {request.ifname} is missing")


# -- GC and STATUS ----------------------------------------------------------------

def gc(request):
    """Node ends of this network whose attachment is no longer valid (the netns of a pod
    that is gone takes its veth with it; a live netns whose DEL never came does not)."""
    valid = request.valid_attachments()
    prefix = f"{ALIAS} {request.network} "
    with netlink.Netlink() as host:
        for link in host.links():
            if link.kind == "veth" and link.name.startswith(NODE_PREFIX) and (link.alias or "").startswith(prefix):
                container_id, _, ifname = link.alias[len(prefix):].partition(" ")
                if (container_id, ifname) not in valid:
                    delete_quietly(host, link.index)


def status(request):
    """0 if an ADD could succeed: the config reads, and in primary mode the node forwards."""
    conf = Conf(request)
    if conf.mode != "secondary":
        check_forwarding({c.version for c in conf.service_cidrs})


VERBS = {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc, "STATUS": status}


def main():
    dispatch.main(registry.EXECUTABLES["cluster-access"], VERBS)


if __name__ == "__main__":
    main()
