"""What host-local and cluster-ipam share: the config they load and the rules of their verbs.

Both take the same config surface (range sets, routes, requested IPs,
resolvConf, lockTimeout) and answer CHECK, GC and STATUS by the same rules;
only the store differs (files on this node, or etcd). Each plugin validates
its own schema first, then loads an IpamConfig.
"""

import ipaddress
import os

from cni import config as netconf
from cni import contract, dispatch
from cni.errors import (ERR_CHECK_FAILED, ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_NO_ADDRESS, ERR_NOT_AVAILABLE,
                        CniError)
from ipam import allocator, ranges
from ipam.stores import holds

DEFAULT_LOCK_TIMEOUT = 10.0
RESOLV_CONF_MAX = 64 * 1024
# How long an address someone else answered for stays held: Kea's decline-probation-period default,
# the DHCP server's answer to the same event (a client's DHCPDECLINE). Whoever answers is mostly a
# device with a static address that stays for days; a short hold would have each next ADD probe it
# again and fail on it again. The operator gives one back at once (`underlay release-conflict`).
DEFAULT_CONFLICT_COOLDOWN = 86400.0
MAX_COOLDOWN = 366 * 86400


class IpamConfig:
    """Range sets, routes, requested addresses and DNS of one request; `ipam` is the ipam section as
    the plugin reads it (cluster-ipam's with whereabouts' keys turned into range sets)."""

    def __init__(self, request, ipam):
        config = request.config
        runtime = config.get("runtimeConfig") or {}
        extra_aux = ranges.host_shim_aux(config)   # the node's hostShim addresses are never given to a pod
        self.range_sets = ranges.range_sets(ipam, runtime.get("ipRanges"), extra_aux, request.warnings)
        if contract.version_key(request.version) < (0, 3, 0):
            check_one_set_per_family(self.range_sets, request.version)
        self.routes = [check_route(r, f"ipam.routes[{i}]") for i, r in enumerate(ipam.get("routes") or [])]
        self.requested = requested_ips(request, runtime)
        # read now: a missing file must fail before an address is taken, not after
        self.dns = read_resolv_conf(ipam["resolvConf"]) if ipam.get("resolvConf") else {}


def lock_timeout(ipam):
    timeout = ipam.get("lockTimeout", DEFAULT_LOCK_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
        raise CniError(ERR_INVALID_CONFIG, f"ipam.lockTimeout: {timeout!r} must be a number of seconds in (0, 3600]")
    return float(timeout)


def cooldown(ipam, key, default=0.0, zero=True):
    """ipam.reuseCooldown / ipam.conflictCooldown: seconds, 0 allowed only where it means "off"."""
    value = ipam.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value if zero else 0 < value) \
            or not value <= MAX_COOLDOWN:
        raise CniError(ERR_INVALID_CONFIG, f"ipam.{key}: {value!r} must be a number of seconds in "
                                           f"{'[' if zero else '('}0, {MAX_COOLDOWN}]")
    return float(value)


def cooldowns(conf, ipam):
    """The store's part both IPAMs read for every verb: reuse_cooldown, conflict_cooldown."""
    conf.reuse_cooldown = cooldown(ipam, "reuseCooldown")
    conf.conflict_cooldown = cooldown(ipam, "conflictCooldown", DEFAULT_CONFLICT_COOLDOWN, zero=False)


def check_one_set_per_family(range_sets, version):
    """0.1.0/0.2.0 results carry one ip4 and one ip6: a second address would be leased but never reported."""
    seen = {}
    for s in range_sets:
        if s.version in seen:
            raise CniError(ERR_INVALID_CONFIG, f"ipam.ranges: cniVersion {version} results carry one address per "
                                               f"family, but range sets {seen[s.version]} and {s.index} are both "
                                               f"IPv{s.version}")
        seen[s.version] = s.index


def check_route(route, field):
    netconf.parse_cidr(route["dst"], f"{field}.dst")
    if route.get("gw"):
        ranges.parse_ip(route["gw"], f"{field}.gw")
    return dict(route)


def requested_ips(request, runtime):
    """Requested addresses from CNI_ARGS IP=, args.cni.ips and runtimeConfig.ips, combined."""
    sources = [("CNI_ARGS IP", request.args.get("IP") or [], ERR_INVALID_ENV)]
    args = request.config.get("args") or {}
    sources.append(("args.cni.ips", (args.get("cni") or {}).get("ips") or [], ERR_INVALID_CONFIG))
    sources.append(("runtimeConfig.ips", runtime.get("ips") or [], ERR_INVALID_CONFIG))
    requested = []
    for source, values, code in sources:
        for text in values:
            address = text.split("/", 1)[0] if isinstance(text, str) else text
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise CniError(code, f"{source}: {text!r} is not a valid IP address") from None
            if all(r.ip != ip for r in requested):
                requested.append(allocator.Requested(ip, source))
    return requested


def assign_requested(conf):
    """Map each requested address to the range set whose ranges (else subnets) hold it."""
    by_set = {}
    for req in conf.requested:
        owner = next((s for s in conf.range_sets if s.range_of(req.ip)), None) or \
            next((s for s in conf.range_sets if s.subnet_range_of(req.ip)), None)
        if owner is None:
            raise CniError(req.error_code, f"{req.source}: requested IP {req.ip} is in no subnet of network")
        if owner.index in by_set:
            raise CniError(req.error_code, f"{req.source}: requested IPs {by_set[owner.index].ip} and {req.ip} "
                                           f"both fall in range set {owner.index}; one address per range set")
        by_set[owner.index] = req
    return by_set


def read_resolv_conf(path):
    # Only a regular file, opened without blocking and read up to a bound: a config
    # naming a FIFO, /dev/zero or a huge file must fail, not hang or fill memory.
    dns = {}
    try:
        if not isinstance(path, str) or not os.path.isfile(path):
            raise CniError(ERR_INVALID_CONFIG, f"ipam.resolvConf: {path!r} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            data = os.read(fd, RESOLV_CONF_MAX + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise CniError(ERR_INVALID_CONFIG, f"ipam.resolvConf: cannot read {path}: {e.strerror}") from None
    if len(data) > RESOLV_CONF_MAX:
        raise CniError(ERR_INVALID_CONFIG, f"ipam.resolvConf: {path} is larger than {RESOLV_CONF_MAX} bytes")
    lines = data.decode(errors="replace").splitlines()
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith(("#", ";")):
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(values[0])
        elif key == "domain":
            dns["domain"] = values[0]
        elif key == "search":
            dns["search"] = values
        elif key == "options":
            dns.setdefault("options", []).extend(values)
    return dns


# --------------------------------------------------------------------------
# The verbs' rules

def refuse_duplicate(conf, existing, container_id, ifname):
    """ADD: an attachment holding an address in one of the range sets' subnets already gets no second."""
    for s in conf.range_sets:
        for ip in existing:
            if s.subnet_range_of(ipaddress.ip_address(ip)):
                raise CniError(ERR_NO_ADDRESS, f"{ip} has been allocated to {container_id}/{ifname}, "
                                               "duplicate allocation is not allowed")


def give_back_conflicts(store):
    """ADD (and GC): conflict records past their time go back to the pool, before anything is allocated."""
    now = holds.now()
    for ip, conflict in store.conflicts().items():
        if not conflict.held(now):
            store.release_conflict(ip)


def hold_conflict(conf, store, request, address, mac):
    """The attachment's lease of `address` becomes a conflict record held conf.conflict_cooldown seconds."""
    try:
        ip = str(ipaddress.ip_interface(address).ip)
        mac = holds.check_mac(mac)
    except ValueError as e:
        raise CniError(ERR_INVALID_CONFIG, f"conflict hold: {e}") from None
    cid, ifname = request.container_id, request.ifname
    if not store.hold_conflict(ip, cid, ifname, mac, conf.conflict_cooldown):
        raise CniError(ERR_NO_ADDRESS, f"conflict hold: {ip} is not leased to {cid}/{ifname}")


def add_result(conf, allocated):
    """ADD's result from the (Range, int) taken per range set."""
    ips = []
    for r, value in allocated:
        ip = {"address": f"{r.text(value)}/{r.subnet.prefixlen}"}
        if r.gateway is not None:
            ip["gateway"] = r.text(r.gateway)
        ips.append(ip)
    return {"ips": ips, "routes": conf.routes, "dns": conf.dns}


def prev_addresses(request, conf):
    """CHECK: the addresses of prevResult in this network's subnets (another plugin may add others)."""
    prev = dispatch.prev_result(request)
    if prev is None:
        raise CniError(ERR_INVALID_CONFIG, "prevResult: required for CHECK")
    ours = set()
    for i, ip in enumerate(prev["ips"]):
        try:
            address = ipaddress.ip_interface(ip["address"]).ip
        except ValueError:
            raise CniError(ERR_INVALID_CONFIG, f"prevResult.ips[{i}].address: {ip['address']!r} is not "
                                               "an address/prefix") from None
        if any(s.subnet_range_of(address) for s in conf.range_sets):
            ours.add(str(address))
    return ours


def check_leased(ours, leased, container_id, ifname):
    """CHECK: the store leases this attachment exactly the addresses prevResult reports."""
    for ip in sorted(ours - leased):
        raise CniError(ERR_CHECK_FAILED, f"prevResult address {ip} is not leased to {container_id}/{ifname}")
    for ip in sorted(leased - ours):
        raise CniError(ERR_CHECK_FAILED, f"{ip} is leased to {container_id}/{ifname} but missing from prevResult")


class ValidAttachments:
    """GC's list (Request.valid_attachments: which key, and its checks) as GC asks it."""

    def __init__(self, pairs):
        self.pairs = set(pairs)
        self.ids = {cid for cid, _ in self.pairs}

    def keeps(self, container_id, ifname):
        """A listed attachment, or an old lease (no ifname) of a listed container."""
        return (container_id, ifname) in self.pairs or (ifname is None and container_id in self.ids)


def check_free(conf, leased):
    """STATUS: every range set has an address left to hand out."""
    for s in conf.range_sets:
        if allocator.tally(s, leased)["free"] <= 0:
            raise CniError(ERR_NOT_AVAILABLE, f"range set {s.index} ({s.describe()}) has no free address")


def load_as_add(loader, config, warnings):
    """An IPAM's config as its loader reads it for ADD (`underlay validate`, `pools`, underlayd's figures),
    but for resolvConf: a node's file (ADD reads it). The loader's warnings, but unknown keys (reported
    on their own), go to `warnings`."""
    ipam = {k: v for k, v in config["ipam"].items() if k != "resolvConf"}
    config = dict(config, ipam=ipam)
    request = contract.Request("ADD", {}, config, b"")
    loaded = loader(config, request)
    if warnings is not None:
        warnings += [w for w in request.warnings if not w.startswith("unknown key ")]
    return loaded
