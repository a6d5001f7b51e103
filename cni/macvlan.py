"""macvlan: give a pod a macvlan child of a node interface, straight on its network.

ADD creates the link directly inside the pod's netns under a temporary name
(IFLA_NET_NS_FD: moving it afterwards costs ~16 ms of kernel time), renames it
to CNI_IFNAME there, gets addresses from IPAM and applies them. Every step
registers its undo, so a failure leaves no link and no lease behind.

Run from a checkout: `python3 -m cni.macvlan` with the CNI_* environment.
"""

import os
import re

from cni import config as netconf
from cni import contract, iface, netlink, netns, parents
from cni.contract import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_LINK, CniError

KIND = "macvlan"
MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Conf:
    """The macvlan config, checked and merged before anything is changed."""

    def __init__(self, request):
        config = request.config
        netconf.validate("macvlan", config)
        self.master = config.get("master") or None
        self.vlan = config.get("vlan")
        self.mode = config.get("mode") or "bridge"
        self.mtu = config.get("mtu") or 0
        self.link_in_container = bool(config.get("linkInContainer"))
        self.bcqueuelen = config.get("bcqueuelen")
        self.state_dir = config.get("stateDir") or parents.DEFAULT_STATE_DIR
        self.ipam_type = contract.ipam_type(config)
        self.dns = config.get("dns") or {}
        self.mac = self._mac(request)
        if self.vlan is not None and self.link_in_container:
            raise CniError(ERR_INVALID_CONFIG, "vlan: cannot be combined with linkInContainer")

    @staticmethod
    def _mac(request):
        """MAC priority: runtimeConfig.mac > CNI_ARGS MAC= > mac."""
        runtime = request.config.get("runtimeConfig") or {}
        for field, value, code in (("runtimeConfig.mac", runtime.get("mac"), ERR_INVALID_CONFIG),
                                   ("CNI_ARGS MAC", request.args.get("MAC"), ERR_INVALID_ENV),
                                   ("mac", request.config.get("mac"), ERR_INVALID_CONFIG)):
            if value:
                return check_mac(value, field, code)
        return None


def check_mac(value, field, code):
    if not isinstance(value, str) or not MAC.match(value):
        raise CniError(code, f"{field}: {value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(value[:2], 16) & 1:
        raise CniError(code, f"{field}: {value} is a multicast MAC address")
    return value.lower()


def open_pod_netns(request):
    try:
        fd = netns.open_netns(request.netns)
    except netns.NetnsError as e:
        raise CniError(contract.ERR_INVALID_ENV, f"CNI_NETNS: {e}") from None
    if netns.is_current(fd):
        os.close(fd)
        raise CniError(contract.ERR_INVALID_ENV,
                       f"CNI_NETNS: {request.netns} is the plugin's own network namespace")
    return fd


def temporary_name():
    return "ul" + os.urandom(5).hex()


def link_error(e, conf, master):
    if e.errno == 16 and conf.mode == "passthru":  # EBUSY
        return CniError(ERR_LINK, f"master {master.name}: already has a passthru macvlan; "
                                  "passthru allows one attachment per master")
    if e.errno == 22 and conf.mode == "passthru":  # EINVAL
        return CniError(ERR_LINK, f"master {master.name}: passthru needs the master to itself "
                                  f"(it has other macvlan children): {e}")
    return CniError(ERR_LINK, f"{e} (master {master.name}, mode {conf.mode})")


def cmd_add(request):
    conf = Conf(request)
    undo = []
    pod_fd = open_pod_netns(request)
    host = netlink.Netlink()
    try:
        with netns.entered(pod_fd):
            pod = netlink.Netlink()
        undo.append(pod.close)
        if pod.find_link(request.ifname):
            raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME: {request.ifname} already exists in {request.netns}")

        where = pod if conf.link_in_container else host
        user = parents.user_key(request.network, request.container_id, request.ifname)
        if conf.master or conf.vlan is not None:
            master, created = parents.acquire(where, conf.master, conf.vlan, conf.state_dir, user)
            if created:
                undo.append(lambda: parents.release(where, conf.master, conf.vlan, conf.state_dir, user))
        else:
            master = parents.default_route_master(where)
        if conf.mtu and conf.mtu > master.mtu:
            raise CniError(ERR_INVALID_CONFIG, f"mtu: {conf.mtu} is larger than master {master.name}'s MTU {master.mtu}")

        temp = temporary_name()
        data = {"IFLA_MACVLAN_MODE": netlink.MACVLAN_MODES[conf.mode]}
        if conf.bcqueuelen is not None:
            data["IFLA_MACVLAN_BC_QUEUE_LEN"] = conf.bcqueuelen
        try:
            where.create_link(temp, KIND, parent_index=master.index, mtu=conf.mtu or None, mac=conf.mac,
                              netns_fd=None if conf.link_in_container else pod_fd, data=data)
        except netlink.NetlinkError as e:
            raise link_error(e, conf, master) from None
        link = pod.link(temp)
        undo.append(lambda: delete_quietly(pod, link.index))
        try:
            pod.set_link(link.index, name=request.ifname)
        except netlink.NetlinkError as e:
            raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME: cannot rename {temp} to {request.ifname}: "
                                            f"{os.strerror(e.errno)}") from None

        result = {"ips": [], "routes": [], "dns": {}}
        if conf.ipam_type:
            result = contract.delegate_ipam(request, "ADD")
            undo.append(lambda: contract.delegate_ipam(request, "DEL"))
            if not result.get("ips"):
                raise CniError(contract.ERR_INVALID_CONFIG, f"ipam: {conf.ipam_type} returned no IP addresses")
        with netns.entered(pod_fd):
            if result.get("ips"):
                iface.configure(pod, pod.link(index=link.index), request.ifname, result)
            else:
                iface.prepare(request.ifname, False)
                pod.set_link(link.index, up=True)  # ipam {} : L2 only
        link = pod.link(index=link.index)
        result["interfaces"] = [iface.interface_result(link, request.netns)]
        for ip in result.get("ips") or []:
            ip["interface"] = 0
        if conf.dns:
            result["dns"] = conf.dns
        undo.clear()
        pod.close()
        return result
    except netlink.NetlinkError as e:
        raise CniError(ERR_LINK, str(e)) from None
    finally:
        for step in reversed(undo):
            try:
                step()
            except Exception:
                pass  # best effort: the original error is the one to report
        host.close()
        os.close(pod_fd)


def delete_quietly(nl, index):
    try:
        nl.delete_link(index)
    except netlink.LinkNotFound:
        pass


def cmd_del(request):
    """Release IPAM first; then remove the link if the netns and the link are still there."""
    config = request.config
    if contract.ipam_type(config):
        contract.delegate_ipam(request, "DEL")
    master, vlan = config.get("master") or None, config.get("vlan")
    state_dir = config.get("stateDir") or parents.DEFAULT_STATE_DIR
    user = parents.user_key(request.network, request.container_id, request.ifname)
    if request.netns:
        try:
            pod_fd = netns.open_netns(request.netns)
        except netns.NetnsError:
            pod_fd = None  # gone, or not a netns any more: nothing left to remove there
        if pod_fd is not None:
            try:
                with netns.entered(pod_fd):
                    pod = netlink.Netlink()
                with pod:
                    link = pod.find_link(request.ifname)
                    if link is not None and link.kind == KIND:
                        delete_quietly(pod, link.index)
            finally:
                os.close(pod_fd)
    if (master or vlan is not None) and not config.get("linkInContainer"):
        with netlink.Netlink() as host:
            parents.release(host, master, vlan, state_dir, user)


def cmd_check(request):
    conf = Conf(request)
    prev = request.prev_result()
    if prev is None:
        raise CniError(ERR_INVALID_CONFIG, "prevResult: required for CHECK")
    if conf.ipam_type:
        contract.delegate_ipam(request, "CHECK")
    ours = [i for i, x in enumerate(prev.get("interfaces") or []) if x.get("name") == request.ifname]
    if not ours:
        raise iface.check_error(f"prevResult has no interface {request.ifname}")
    expected = prev["interfaces"][ours[0]]
    if expected.get("sandbox") and expected["sandbox"] != request.netns:
        raise iface.check_error(f"interface {request.ifname}: sandbox {expected['sandbox']} != CNI_NETNS {request.netns}")
    pod_fd = open_pod_netns(request)
    try:
        with netns.entered(pod_fd):
            pod = netlink.Netlink()
        with pod, netlink.Netlink() as host:
            link = pod.find_link(request.ifname)
            if link is None:
                raise iface.check_error(f"interface {request.ifname} is missing from {request.netns}")
            if link.kind != KIND:
                raise iface.check_error(f"interface {request.ifname} is a {link.kind}, not a {KIND}")
            mode = link.data.get("IFLA_MACVLAN_MODE")
            if mode != netlink.MACVLAN_MODES[conf.mode]:
                names = {v: k for k, v in netlink.MACVLAN_MODES.items()}
                raise iface.check_error(f"interface {request.ifname}: mode {names.get(mode, mode)}, "
                                        f"config says {conf.mode}")
            where = pod if conf.link_in_container else host
            master_name = parents.parent_name(conf.master, conf.vlan)[0] if conf.master else None
            master = where.find_link(master_name) if master_name else parents.default_route_master(where)
            if master is None:
                raise iface.check_error(f"master {master_name} is missing")
            if link.parent_index != master.index:
                raise iface.check_error(f"interface {request.ifname} is not on master {master.name}")
            if expected.get("mac") and expected["mac"].lower() != (link.mac or "").lower():
                raise iface.check_error(f"interface {request.ifname}: MAC {link.mac}, prevResult says {expected['mac']}")
            iface.check_addresses_and_routes(pod, link, prev, ours[0])
    finally:
        os.close(pod_fd)


def cmd_status(request):
    Conf(request)
    if contract.ipam_type(request.config):
        contract.delegate_ipam(request, "STATUS")


def cmd_gc(request):
    if contract.ipam_type(request.config):
        contract.delegate_ipam(request, "GC")
    config = request.config
    valid = {parents.user_key(request.network, a.get("containerID"), a.get("ifname"))
             for a in config.get("cni.dev/valid-attachments") or [] if isinstance(a, dict)}
    with netlink.Netlink() as host:
        parents.garbage_collect(host, request.network, valid,
                                config.get("stateDir") or parents.DEFAULT_STATE_DIR)


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


def main():
    from cni import version_info
    contract.main(VERBS, f"CNI macvlan plugin (underlay {version_info()['version']})")


if __name__ == "__main__":
    main()
