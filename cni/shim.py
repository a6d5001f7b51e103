"""hostShim: let the node reach its own pods on a macvlan/ipvlan network.

By kernel design a macvlan or ipvlan child cannot talk to its parent, so a node
cannot reach the pods on a child of its own interface. The known workaround is
a "shim": one more child of the same master, in the node's namespace, with an
address from the pod subnet and routes to the pods through it.

    "hostShim": {"name": "ulshim0", "address": "10.1.0.250", "routes": ["10.1.0.0/24"]}

The first ADD creates it when missing; it is recorded like the parents underlay
creates (cni/parents.py), so the last DEL of the network, or GC, removes it.
host-local reserves `address` as the aux address "hostShim". `routes` defaults
to the subnets of the pod's addresses; where the node already has an address in
that subnet on the master, give the pod range instead (see the README).
"""

import ipaddress

from cni import netlink, parents
from cni.config import parse_cidr
from cni.contract import ERR_INVALID_CONFIG, ERR_LINK, CniError


def settings(config):
    """(name, address, routes) or None; checked before anything is changed."""
    shim = config.get("hostShim")
    if shim is None:
        return None
    if config.get("linkInContainer"):
        raise CniError(ERR_INVALID_CONFIG, "hostShim: cannot be used with linkInContainer")
    try:
        address = ipaddress.ip_address(shim["address"])
    except ValueError:
        raise CniError(ERR_INVALID_CONFIG, f"hostShim.address: {shim['address']!r} is not an IP address") from None
    routes = []
    for i, route in enumerate(shim.get("routes") or []):
        routes.append(parse_cidr(route, f"hostShim.routes[{i}]"))
    return shim["name"], address, routes


def ensure(nl, kind, conf, master, request, result):
    """Create the shim if missing and record this attachment as one of its users."""
    name, address, routes = conf.shim
    if not routes:
        routes = [ipaddress.ip_interface(ip["address"]).network for ip in result["ips"]]
    user = parents.user_key(request.network, request.container_id, request.ifname)

    def create():
        nl.create_link(name, kind.name, parent_index=master.index, data=kind.shim_data(conf))
        link = nl.link(name)
        try:
            nl.set_link(link.index, up=True)
            nl.add_address(link.index, str(address), address.max_prefixlen,
                           netlink.IFA_F_NODAD if address.version == 6 else 0)
            for route in routes:
                if route.version == address.version:
                    nl.add_route(str(route), link.index, exclusive=True)  # never beside the node's own
        except netlink.NetlinkError as e:
            nl.delete_link(link.index, name)  # never a half-made shim
            raise CniError(ERR_LINK, f"hostShim {name}: {e}; if the node already routes that subnet, "
                                     "set hostShim.routes to the pod range") from None

    parents.acquire(nl, name, user, request.network, conf.state_dir, "shim", create)
    return lambda: parents.release(nl, name, user, conf.state_dir)


def release(nl, config, request, state_dir):
    shim = config.get("hostShim")
    if isinstance(shim, dict) and shim.get("name"):
        parents.release(nl, shim["name"], parents.user_key(request.network, request.container_id, request.ifname),
                        state_dir)
