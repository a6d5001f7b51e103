"""The story macvlan and ipvlan share: a pod interface that is a child of a node interface.

ADD creates the child directly inside the pod's netns under its name, CNI_IFNAME
(IFLA_NET_NS_FD: moving it afterwards costs ~16 ms of kernel time), gets
addresses from IPAM (with conflictDetection: ones nobody on the LAN answers
for; the lease's fsync goes on meanwhile, waited for before the answer),
applies them, checks the gateways
(gatewayDetection) and announces the addresses (cni/plugins/lan.py). Every step
registers its undo right after it succeeds, so a failure leaves no link, no
lease and no parent behind. DEL releases IPAM first and accepts whatever is
already gone. CHECK compares prevResult with what the kernel has.

A plugin module supplies a `Kind`: its schema, its config and the link
attributes that make it a macvlan or an ipvlan.
"""

import contextlib
import errno
import os
import re
import zlib

from cni import config as netconf
from cni import contract, dispatch, registry
from cni.net import iface, netlink, netns, parents, shim
from cni.plugins import lan
from cni.errors import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_LINK, ERR_NOT_AVAILABLE, CniError

MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Conf:
    """The settings both kinds have, read in one place: what DEL, GC and STATUS derive
    (the state dir, the parent's name, the shim) is what ADD derived.

    strict (ADD, CHECK): every rule is checked before anything is changed.
    lenient (DEL, GC, STATUS): the schema's types only, so a config ADD would refuse can
    still be taken apart; a parent name that cannot be derived is None."""

    def __init__(self, request, schema, default_mode, strict=True):
        config = request.config
        netconf.validate(schema, config, request)  # wrong types must not reach paths and link names
        self.master = config.get("master") or None
        self.vlan = config.get("vlan")
        self.mode = config.get("mode") or default_mode
        self.mtu = config.get("mtu") or 0
        self.link_in_container = bool(config.get("linkInContainer"))
        self.state_dir = config.get("stateDir") or parents.DEFAULT_STATE_DIR
        self.ipam_type = contract.ipam_type(config)
        self.dns = config.get("dns") or {}
        self.internal = bool(config.get("internal"))
        self.shim = shim.settings(config, strict)
        self.lan = lan.Settings(config)
        self.prev = dispatch.prev_result(request) if strict else None
        if strict:
            self.check_combinations(config)
        try:
            self.parent = self.parent_name(request.network)
        except CniError:
            if strict:
                raise
            self.parent = None

    def check_combinations(self, config):
        if self.vlan is not None and self.link_in_container:
            raise CniError(ERR_INVALID_CONFIG, "vlan: cannot be combined with linkInContainer")
        if self.internal:
            for key in ("master", "vlan", "linkInContainer"):
                if config.get(key) not in (None, False):
                    raise CniError(ERR_INVALID_CONFIG, f"{key}: an internal network has a parent of its own; "
                                                       f"remove {key} or internal")

    @property
    def chained(self):
        """No IPAM of our own: apply the addresses a previous plugin in the chain got."""
        return self.ipam_type is None and bool(self.prev and self.prev.get("ips"))

    def parent_name(self, network):
        """The parent's name as configured (None: chained, or the default-route interface)."""
        if self.internal:
            return parents.internal_name(network)
        if self.master or self.vlan is not None:
            return parents.parent_name(self.master, self.vlan)[0]
        return None


def check_mac(value, field, code):
    if not isinstance(value, str) or not MAC.match(value):
        raise CniError(code, f"{field}: {value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(value[:2], 16) & 1:
        raise CniError(code, f"{field}: {value} is a multicast MAC address")
    return value.lower()


class Kind:
    """What makes the child a macvlan or an ipvlan; subclassed by each plugin."""
    name = None
    schema = None

    def load(self, request, strict=True):
        """The plugin's Conf: strict for ADD and CHECK, lenient for DEL, GC and STATUS."""
        raise NotImplementedError

    def link_data(self, conf):
        """IFLA_INFO_DATA for the new link."""
        raise NotImplementedError

    def mac(self, conf):
        return None

    def check_link(self, link, conf):
        """Raise a CHECK error if the link's kind-specific settings differ from conf."""

    other = None  # the kind a parent cannot carry alongside this one

    def settings(self, conf):
        return f"mode {conf.mode}"

    def create_error(self, error, conf, master):
        if error.errno == errno.EPERM:
            return iface.not_permitted(str(error))
        if error.errno == errno.EOPNOTSUPP:
            return CniError(ERR_LINK, f"this kernel cannot create {self.name} links ({self.name} module missing): {error}")
        if error.errno == errno.EBUSY:
            return CniError(ERR_LINK, f"master {master.name}: busy, it may already carry {self.other} children "
                                      f"(a parent takes macvlan or ipvlan children, not both): {error}")
        return CniError(ERR_LINK, f"{error} (master {master.name}, {self.settings(conf)})")

    def shim_data(self, conf):
        """IFLA_INFO_DATA for a hostShim on the same master (cni/net/shim.py)."""
        raise NotImplementedError

    def device_routes(self, conf):
        """True: routes go out of the device with no gateway (ipvlan l3/l3s)."""
        return False

    def parent_for_chain(self, conf):
        return None

    hears_on_master = False   # True: some answers to the child's probes reach the master instead (ipvlan)


def temporary_prefix(ifname):
    return f"ul{zlib.crc32(ifname.encode()) & 0xffff:04x}"


def is_leftover(name, ifname):
    """ul + 4 hex naming CNI_IFNAME + 6 random hex: the temporary name under which ADDs before issue 21
    made the child (then renamed it); one killed in between left it behind, which the DEL of the same
    ifname recognises and removes."""
    prefix = temporary_prefix(ifname)
    return len(name) == len(prefix) + 6 and name.startswith(prefix) and \
        all(c in "0123456789abcdef" for c in name[len(prefix):])


def delete_quietly(nl, index):
    try:
        nl.delete_link(index)
    except netlink.LinkNotFound:
        pass


def quietly(step):
    """An undo step: best effort, since the error being reported is the one that matters."""
    def run():
        try:
            step()
        except Exception:
            pass
    return run


def find_master(kind, conf, where, request, undo):
    """The master Link: configured, made on demand (its release registered in `undo`),
    chained, or the default route's."""
    if conf.internal or conf.master or conf.vlan is not None:
        master, managed = parents.acquire_parent(where, conf, request)
        if managed:
            user = parents.user_key(request.network, request.container_id, request.ifname)
            undo.callback(quietly(lambda: parents.release(where, master.name, user, conf.state_dir)))
        return master
    name = kind.parent_for_chain(conf)
    if name is not None:
        master = where.find_link(name)
        if master is None:
            raise CniError(ERR_INVALID_CONFIG, f"master: prevResult's interface {name!r} does not exist")
        return master
    return parents.default_route_master(where)


def create_child(kind, conf, where, pod, pod_fd, master, request, undo):
    """The child, made in the pod under its name, CNI_IFNAME: the kernel refuses one that exists there."""
    try:
        where.create_link(request.ifname, kind.name, parent_index=master.index, mtu=conf.mtu or None,
                          mac=kind.mac(conf), data=kind.link_data(conf),
                          netns_fd=None if conf.link_in_container else pod_fd)
    except netlink.NetlinkError as e:
        if e.errno == errno.EEXIST and pod.find_link(request.ifname) is not None:
            raise already_exists(request) from None
        raise kind.create_error(e, conf, master) from None
    link = pod.link(request.ifname)
    undo.callback(quietly(lambda: delete_quietly(pod, link.index)))
    return link


def already_exists(request):
    return CniError(ERR_INVALID_ENV, f"CNI_IFNAME: {request.ifname} already exists in {request.netns}")


def addresses(kind, conf, request, undo):
    """The IPAM result (its DEL registered in `undo`), prevResult's in a chain, or none (ipam {})."""
    if conf.ipam_type:
        result = dispatch.delegate_ipam(request, "ADD", defer_sync=True)   # waited for before add() answers
        undo.callback(quietly(lambda: dispatch.delegate_ipam(request, "DEL")))
        if not result.get("ips"):
            raise CniError(ERR_INVALID_CONFIG, f"ipam: {conf.ipam_type} returned no IP addresses")
    elif conf.chained:
        result = {"ips": [dict(ip) for ip in conf.prev["ips"]], "routes": conf.prev.get("routes") or [],
                  "dns": conf.prev.get("dns") or {}}
    else:
        result = {"ips": [], "routes": [], "dns": {}}
    if kind.device_routes(conf):
        for ip in result["ips"]:
            ip.pop("gateway", None)
        result["routes"] = device_default_routes(result)
    return result


def add(kind, request):
    """Load, open the netns, find the master, create the child, get addresses, apply them,
    add the shim, answer. `resources` close whatever happens; `undo` runs only on failure."""
    conf = kind.load(request)
    dispatch.load_ipam_config(request)   # a bad ipam section is refused before the link exists
    try:
        with contextlib.ExitStack() as resources, contextlib.ExitStack() as undo:
            pod_fd = iface.open_pod_netns(request)
            resources.callback(os.close, pod_fd)
            host = resources.enter_context(netlink.Netlink())
            pod = resources.enter_context(iface.pod_socket(pod_fd))
            where = pod if conf.link_in_container else host
            master = find_master(kind, conf, where, request, undo)
            if conf.mtu and conf.mtu > master.mtu:
                raise CniError(ERR_INVALID_CONFIG, f"mtu: {conf.mtu} is larger than master {master.name}'s "
                                                   f"MTU {master.mtu}")
            # IPAM after the link: a caller that cannot make it leaves no store behind
            link = create_child(kind, conf, where, pod, pod_fd, master, request, undo)
            result = addresses(kind, conf, request, undo)   # its lease's fsync goes on beside the rest
            neighbours = resources.enter_context(lan.Neighbours(kind, conf, request, pod, pod_fd, link, master))
            if conf.lan.conflicts:
                result = neighbours.unused_addresses(result, lambda: addresses_again(kind, conf, request, undo))
            with netns.entered(pod_fd):
                if result["ips"]:
                    iface.configure(pod, link, request.ifname, result, device_default=kind.device_routes(conf))
                else:
                    iface.prepare(request.ifname, False)
                    pod.set_link(link.index, up=True)  # ipam {}: an L2-only attachment
            if conf.lan.gateways:
                neighbours.check_gateways(result)
            if not kind.device_routes(conf):   # ipvlan l3/l3s children have no ARP or ND of their own
                neighbours.announce(result)
            if conf.shim:
                undo.callback(quietly(shim.ensure(host, kind, conf, master, request, result)))

            finish_result(conf, request, link, result)
            dispatch.wait_ipam_synced()   # the lease's fsync went on beside the kernel work above
            undo.pop_all()  # success: keep everything
            return result
    except netlink.NetlinkError as e:
        raise CniError(ERR_LINK, str(e)) from None


def finish_result(conf, request, link, result):
    """ADD's result: IPAM's, with the pod's interface and the config's DNS."""
    result["interfaces"] = [iface.interface_result(link, request.netns)]
    for ip in result["ips"]:
        ip["interface"] = 0
    if conf.dns:
        result["dns"] = conf.dns


def rehearse(kind, request):
    """A spare's warm-up (cni/agent/worker.py read_sample): what an ADD computes for `request`, a
    constant sample, without a system call: the link's messages packed in a Netlink with no socket
    (never sent), parsed back as the kernel's replies, IPAM's result without its store
    (dispatch.rehearse_ipam), the answer's JSON. The first run of this code in a fresh fork writes
    to hundreds of the agent's pages (reference counts, the interpreter's caches, the allocator's
    pools), each a copy-on-write fault a caller would wait for. Nothing is kept. (A CHECK's own
    rehearsal was measured: it spared a CHECK ~6 of its ~90 faults for ~0.3 ms of the spare's CPU.)"""
    conf = kind.load(request)
    dispatch.load_ipam_config(request)
    nl = netlink.Netlink.unsent()
    nl.create_link(request.ifname, kind.name, parent_index=1, mtu=conf.mtu or None, mac=kind.mac(conf),
                   data=kind.link_data(conf), netns_fd=0)
    body = nl.queued[-1][2] + netlink.nla_u32(netlink.IFLA_MTU, 1500) + \
        netlink.nla_mac(netlink.IFLA_ADDRESS, "02:00:00:00:00:01")
    link = netlink.Link(netlink.as_reply(netlink.RTM_NEWLINK, body))
    kind.check_link(link, conf)
    result = dispatch.rehearse_ipam(request) or {"ips": [], "routes": [], "dns": {}}
    ips = result["ips"]
    has_ipv6 = any(":" in ip["address"] for ip in ips)
    iface.add_addresses_and_up(nl, link, ips, result, kind.device_routes(conf), has_ipv6)
    for msg_type, _flags, body, _what in nl.queued:
        if msg_type == netlink.RTM_NEWADDR:
            netlink.parse_address(netlink.as_reply(msg_type, body))
        elif msg_type == netlink.RTM_NEWROUTE:
            netlink.parse_route(netlink.as_reply(msg_type, body))
    nl._pack(nl.queued)
    finish_result(conf, request, link, result)
    dispatch.result_text(result, request.version)


def addresses_again(kind, conf, request, undo):
    """After a conflict is held: this attachment's lease released, IPAM asked for the next one."""
    dispatch.delegate_ipam(request, "DEL")
    return addresses(kind, conf, request, undo)


def device_default_routes(result):
    """`default dev <ifname>` per family, plus the configured routes without gateways."""
    families = {"6" if ":" in ip["address"] else "4" for ip in result["ips"]}
    routes = [{"dst": "0.0.0.0/0"}] if "4" in families else []
    routes += [{"dst": "::/0"}] if "6" in families else []
    for route in result.get("routes") or []:
        if route["dst"] not in ("0.0.0.0/0", "::/0"):
            routes.append({k: v for k, v in route.items() if k != "gw"})
    return routes


def delete(kind, request):
    """Release IPAM first; then remove the link if the netns and the link are still there,
    and any link of ours an older ADD killed between create and rename left under its temporary name."""
    conf = kind.load(request, strict=False)
    if conf.ipam_type:
        dispatch.delegate_ipam(request, "DEL")
    if request.netns:
        try:
            pod_fd = netns.open_netns(request.netns)
        except netns.NetnsError:
            pod_fd = None  # gone, or not a netns any more: nothing left to remove there
        if pod_fd is not None:
            try:
                with iface.pod_socket(pod_fd) as pod:
                    for link in pod.links():
                        if link.kind == kind.name and (link.name == request.ifname or
                                                       is_leftover(link.name, request.ifname)):
                            delete_quietly(pod, link.index)
            finally:
                os.close(pod_fd)
    if conf.link_in_container:
        return
    user = parents.user_key(request.network, request.container_id, request.ifname)
    with netlink.Netlink() as host:
        if conf.shim:
            shim.release(host, conf.shim.name, user, conf.state_dir)
        if conf.parent:
            parents.release(host, conf.parent, user, conf.state_dir)


def check(kind, request):
    conf = kind.load(request)
    prev = conf.prev
    if prev is None:
        raise CniError(ERR_INVALID_CONFIG, "prevResult: required for CHECK")
    if conf.ipam_type:
        dispatch.delegate_ipam(request, "CHECK")
    ours = [i for i, x in enumerate(prev.get("interfaces") or []) if x.get("name") == request.ifname]
    if not ours:
        raise iface.check_error(f"prevResult has no interface {request.ifname}")
    expected = prev["interfaces"][ours[0]]
    if expected.get("sandbox") and expected["sandbox"] != request.netns:
        raise iface.check_error(f"interface {request.ifname}: sandbox {expected['sandbox']} "
                                f"is not CNI_NETNS {request.netns}")
    pod_fd = iface.open_pod_netns(request)
    try:
        with iface.pod_socket(pod_fd) as pod, netlink.Netlink() as host:
            link = pod.find_link(request.ifname)
            if link is None:
                raise iface.check_error(f"interface {request.ifname} is missing from {request.netns}")
            if link.kind != kind.name:
                raise iface.check_error(f"interface {request.ifname} is a {link.kind}, not a {kind.name}")
            kind.check_link(link, conf)
            where = pod if conf.link_in_container else host
            name = conf.parent or kind.parent_for_chain(conf)
            master = where.find_link(name) if name else parents.default_route_master(where)
            if master is None:
                raise iface.check_error(f"master {name} is missing")
            if link.parent_index != master.index:
                raise iface.check_error(f"interface {request.ifname} is not on master {master.name}")
            if expected.get("mac") and expected["mac"].lower() != (link.mac or "").lower():
                raise iface.check_error(f"interface {request.ifname}: MAC {link.mac}, prevResult says {expected['mac']}")
            iface.check_addresses_and_routes(pod, link, prev, ours[0])
            if conf.shim:
                shim.check(host, conf, master, request, prev)
    finally:
        os.close(pod_fd)


def status(kind, request):
    """0 if an ADD could succeed: the kernel has the link kinds, the master is there, IPAM is ready."""
    from cni.net import kernel  # STATUS only: keeps ctypes off the ADD path
    conf = kind.load(request, strict=False)
    needed = [kind.name] + (["dummy"] if conf.internal else [])
    name = conf.parent
    if name and not conf.link_in_container:
        with netlink.Netlink() as host:
            missing = host.find_link(name) is None
        if missing and conf.vlan is None and not conf.internal:
            if parents.vlan_of(name) is None:
                raise CniError(ERR_NOT_AVAILABLE, f"master {name} does not exist")
        if missing and not conf.internal:
            needed.append("vlan")
    for link_kind in needed:
        reason = kernel.unsupported(link_kind, conf.state_dir)
        if reason:
            raise CniError(ERR_NOT_AVAILABLE, reason)
    if conf.ipam_type:
        try:
            dispatch.delegate_ipam(request, "STATUS")
        except CniError as e:
            raise CniError(ERR_NOT_AVAILABLE, f"IPAM {conf.ipam_type}: {e.msg}", e.details) from None


def gc(kind, request):
    conf = kind.load(request, strict=False)
    if conf.ipam_type:
        dispatch.delegate_ipam(request, "GC")
    valid = {parents.user_key(request.network, cid, ifname) for cid, ifname in request.valid_attachments()}
    with netlink.Netlink() as host:
        shim.garbage_collect(host, request.network, valid, conf.state_dir)


def verbs(kind):
    return {
        "ADD": lambda request: add(kind, request),
        "DEL": lambda request: delete(kind, request),
        "CHECK": lambda request: check(kind, request),
        "STATUS": lambda request: status(kind, request),
        "GC": lambda request: gc(kind, request),
    }


def main(kind):
    dispatch.main(registry.EXECUTABLES[kind.name], verbs(kind))
