"""hostShim: let the node reach its own pods on a macvlan/ipvlan network.

By kernel design a macvlan or ipvlan child cannot talk to its parent, so a node
cannot reach the pods on a child of its own interface. The known workaround is
a "shim": one more child of the same master, in the node's namespace, with an
address from the pod subnet and routes to the pods through it.

    "hostShim": {"name": "ulshim0", "address": "10.1.0.250"}
    "hostShim": {"name": "ulshim0", "address": ["10.1.0.250", "2001:db8:1::250"]}   (dual stack)
    "hostShim": {"name": "ulshim0", "address": "10.1.0.250", "routes": ["10.1.0.64/26"]}

Without `routes`, each ADD routes its pod's addresses (/32, /128) through the
shim and its DEL removes them: only the pods on this node need the shim, and a
host route never collides with the node's own route to the subnet (a node with
an address in the pod subnet on the master, Docker's documented topology).
With `routes`, those are routed through it instead, once per network.
host-local reserves each `address` as the aux address "hostShim".

The first ADD creates the shim when missing. It is recorded like the parents
underlay creates (cni/net/parents.py), with what each network and each attachment
added to it; several networks on one master may share one shim name: each
network's addresses and routes go with its last attachment, the shim with the
last attachment of all (DEL or GC).

  <stateDir>/links/<netns>/<name>.json  {"kind": "shim", "users": [...],
        "networks": {"<network>": {"addresses": ["10.1.0.250/32"], "routes": [...]}},
        "hosts": {"<network>/<containerID>/<ifname>": ["10.1.0.7/32"]}}
"""

import errno
import ipaddress

from cni.net import iface, netlink, parents
from cni.config import parse_cidr
from cni.errors import ERR_LINK, CniError, config_error


class Shim:
    def __init__(self, name, addresses, routes):
        self.name = name
        self.addresses = addresses   # [ip_address], at most one per family
        self.routes = routes         # [ip_network], or None: a host route per pod address

    def families(self):
        return {a.version for a in self.addresses}


def settings(config, strict=True):
    """The Shim of a network config, or None; strict (ADD, CHECK) checks every value,
    lenient (DEL, GC, STATUS) needs only the name."""
    shim = config.get("hostShim")
    if shim is None:
        return None
    if not strict:
        return Shim(shim["name"], [], None)
    if config.get("linkInContainer"):
        raise config_error("hostShim", "cannot be used with linkInContainer")
    texts = shim["address"] if isinstance(shim["address"], list) else [shim["address"]]
    addresses = []
    for i, text in enumerate(texts):
        field = "hostShim.address" + (f"[{i}]" if isinstance(shim["address"], list) else "")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise config_error(field, f"{text!r} is not an IP address") from None
        if any(a.version == address.version for a in addresses):
            raise config_error(field, f"a second IPv{address.version} address; give at most one per family")
        addresses.append(address)
    if not addresses:
        raise config_error("hostShim.address", "needs an address")
    routes = None
    if "routes" in shim:
        routes = []
        for i, route in enumerate(shim["routes"]):
            routes.append(parse_cidr(route, f"hostShim.routes[{i}]"))
    return Shim(shim["name"], addresses, routes)


def host(address):
    ip = ipaddress.ip_interface(address).ip
    return f"{ip}/{ip.max_prefixlen}"


def plan(shim, result):
    """(this network's entry, this attachment's host routes) for the record."""
    families = shim.families()
    network = {"addresses": [host(a) for a in shim.addresses],
               "routes": [str(r) for r in shim.routes or [] if r.version in families]}
    hosts = [] if shim.routes is not None else \
        [host(ip["address"]) for ip in result["ips"] if ipaddress.ip_interface(ip["address"]).version in families]
    return network, hosts


def complete(record):
    """Records written before shims were shared carry no per-network entries."""
    record.setdefault("networks", {})
    record.setdefault("hosts", {})
    return record


def wanted(record):
    """(addresses, {route: source}) the shim must carry for every network and attachment it serves.
    Each route leaves from its own network's address: the shim's first address may be another
    network's, to which the pod has no route."""
    addresses, routes = set(), {}
    for network, entry in record["networks"].items():
        source = {ipaddress.ip_interface(a).version: str(ipaddress.ip_interface(a).ip) for a in entry["addresses"]}
        addresses.update(entry["addresses"])
        hosts = [r for user, rs in record["hosts"].items() if user.startswith(f"{network}/") for r in rs]
        for route in entry["routes"] + hosts:
            routes.setdefault(route, source.get(ipaddress.ip_network(route).version))
    return addresses, routes


def ensure(nl, kind, conf, master, request, result):
    """Create the shim if missing, add what this network and attachment need, and record them.
    Returns the undo (this attachment's release)."""
    shim = conf.shim
    user = parents.user_key(request.network, request.container_id, request.ifname)
    entry, hosts = plan(shim, result)
    with parents.Records(conf.state_dir) as records:
        record = records.get(shim.name)
        link = nl.find_link(shim.name)
        if link is not None and record is None:
            raise config_error("hostShim.name", f"{shim.name} exists and underlay did not create it; "
                                                "name a link of its own, or remove hostShim and manage it yourself")
        record = complete(record or {"kind": "shim", "network": request.network, "users": set()})
        if link is not None and (link.parent_index != master.index or link.kind != kind.name):
            others = ", ".join(repr(n) for n in sorted(record["networks"]) or [record.get("network")])
            parent = link_name(nl, link.parent_index)
            raise config_error("hostShim.name", f"{shim.name} already serves network {others} as a {link.kind} "
                                                f"child of {parent}; network {request.network!r} has master "
                                                f"{master.name} ({kind.name}): give it another hostShim.name")
        before = {k: (set(v) if k == "users" else dict(v) if isinstance(v, dict) else v) for k, v in record.items()}
        record["users"].add(user)
        record["networks"][request.network] = entry
        if hosts:
            record["hosts"][user] = hosts
        records.save(shim.name, record)  # first: a kill from here on leaves a record DEL or GC finishes
        created = link is None
        added = []
        try:
            if created:
                nl.create_link(shim.name, kind.name, parent_index=master.index, data=kind.shim_data(conf))
                link = nl.link(shim.name)
                nl.set_link(link.index, up=True)
            apply(nl, link, record, added)
        except (netlink.NetlinkError, CniError) as e:
            try:
                if created:
                    parents.remove(nl, records, shim.name)
                    if before.get("users"):
                        records.save(shim.name, before)
                else:
                    undo_added(nl, link, added)
                    if before["users"]:
                        records.save(shim.name, before)
                    else:
                        records.forget(shim.name)
            except (netlink.NetlinkError, OSError):
                pass  # best effort: the error being reported is the one that matters
            if isinstance(e, CniError):
                raise
            raise CniError(ERR_LINK, f"hostShim {shim.name}: {e}") from None
    return lambda: release(nl, shim.name, user, conf.state_dir)


def link_name(nl, index):
    try:
        return nl.link(index=index).name
    except netlink.NetlinkError:
        return f"link {index}"


def apply(nl, link, record, added):
    """Add whatever of the record the link lacks; note each step in `added`."""
    addresses, routes = wanted(record)
    present = {host(f"{a}/{plen}") for a, plen, _ in nl.addresses(link.index)}
    for address in sorted(addresses - present):
        ip = ipaddress.ip_interface(address).ip
        nl.add_address(link.index, str(ip), ip.max_prefixlen, netlink.IFA_F_NODAD if ip.version == 6 else 0)
        added.append(("address", address))
    ours = {r["dst"] for r in nl.routes() if r["oif"] == link.index and r["table"] == netlink.RT_TABLE_MAIN}
    for route in sorted(set(routes) - ours):
        try:
            nl.add_route(route, link.index, exclusive=True, src=routes[route])  # never beside the node's own
        except netlink.NetlinkError as e:
            if e.errno != errno.EEXIST:
                raise
            raise CniError(ERR_LINK, f"hostShim.routes: the node already routes {route} elsewhere; leave "
                                     "routes out (a host route per pod) or route the pod range") from None
        added.append(("route", route))


def undo_added(nl, link, added):
    for what, value in reversed(added):
        if what == "route":
            nl.delete_route(value, link.index)
        else:
            ip = ipaddress.ip_interface(value)
            nl.delete_address(link.index, str(ip.ip), ip.network.prefixlen)


def withdraw(nl, name, record, dropped):
    """Users `dropped` left a shim that stays: remove their host routes, and the addresses and
    routes of each network that has no user left, unless another network still needs them."""
    if record.get("kind") != "shim":
        return
    complete(record)
    addresses_before, routes_before = wanted(record)
    for user in dropped:
        record["hosts"].pop(user, None)
    for network in list(record["networks"]):
        if not any(u.startswith(f"{network}/") for u in record["users"]):
            del record["networks"][network]
    addresses, routes = wanted(record)
    link = nl.find_link(name)
    if link is None:
        return
    for route in sorted(set(routes_before) - set(routes)):
        nl.delete_route(route, link.index)
    for address in sorted(addresses_before - addresses):
        ip = ipaddress.ip_interface(address)
        nl.delete_address(link.index, str(ip.ip), ip.network.prefixlen)


def release(nl, name, user, state_dir):
    parents.release(nl, name, user, state_dir, withdraw)


def garbage_collect(nl, network, valid_users, state_dir):
    """Links of ours (parents and shims) no attachment of `network` in valid_users still uses."""
    parents.garbage_collect(nl, network, valid_users, state_dir, withdraw)


def check(nl, conf, master, request, prev):
    """CHECK: the shim is there on the master with its addresses and this attachment's routes."""
    shim = conf.shim
    link = nl.find_link(shim.name)
    if link is None:
        raise iface.check_error(f"hostShim {shim.name} is missing")
    if link.parent_index != master.index:
        raise iface.check_error(f"hostShim {shim.name} is not on master {master.name}")
    present = {host(f"{a}/{plen}") for a, plen, _ in nl.addresses(link.index)}
    for address in shim.addresses:
        if host(str(address)) not in present:
            raise iface.check_error(f"hostShim {shim.name}: address {address} is missing")
    entry, hosts = plan(shim, prev)
    ours = {r["dst"] for r in nl.routes() if r["oif"] == link.index and r["table"] == netlink.RT_TABLE_MAIN}
    for route in entry["routes"] + hosts:
        if route not in ours:
            raise iface.check_error(f"hostShim {shim.name}: route {route} is missing")
