"""host-local IPAM: addresses from local ranges, leases in files on this node.

A drop-in superset of containernetworking/plugins' host-local (same config,
same files) that also honours `exclude` and `auxAddresses`, never hands out the
network, broadcast or gateway address, and implements CHECK, STATUS and GC.

Run from a checkout: `python3 -m ipam.host_local` with the CNI_* environment.
"""

import ipaddress
import os

from cni import config as netconf
from cni import contract
from cni.contract import ERR_CHECK_FAILED, ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_NO_ADDRESS, CniError
from ipam import allocator, ranges
from ipam.store import DiskStore

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_LOCK_TIMEOUT = 10.0


class IpamConfig:
    def __init__(self, request):
        config = request.config
        netconf.validate("host-local", config, request)
        self.ipam = ipam = config["ipam"]
        runtime = config.get("runtimeConfig") or {}
        # the node's hostShim address (cni/shim.py) is never given to a pod
        shim = config.get("hostShim")
        extra_aux = [("hostShim.address", "hostShim", shim.get("address"))] if isinstance(shim, dict) else []
        self.range_sets = ranges.range_sets(ipam, runtime.get("ipRanges"), extra_aux)
        if contract.version_key(request.version) < (0, 3, 0):
            check_one_set_per_family(self.range_sets, request.version)
        self.routes = [check_route(r, f"ipam.routes[{i}]") for i, r in enumerate(ipam.get("routes") or [])]
        self.requested = requested_ips(request, runtime)
        # read now: a missing file must fail before an address is taken, not after
        self.dns = read_resolv_conf(ipam["resolvConf"]) if ipam.get("resolvConf") else {}


def load_config(request):
    """The config, checked: for a main plugin to load before it changes anything."""
    return IpamConfig(request)


def check_one_set_per_family(range_sets, version):
    """0.1.0/0.2.0 results carry one ip4 and one ip6: a second address would be leased but never reported."""
    seen = {}
    for s in range_sets:
        if s.version in seen:
            raise CniError(ERR_INVALID_CONFIG, f"ipam.ranges: cniVersion {version} results carry one address per "
                                               f"family, but range sets {seen[s.version]} and {s.index} are both "
                                               f"IPv{s.version}")
        seen[s.version] = s.index


def open_store(request):
    """The store for this network; DEL and GC need only this much of the config."""
    ipam = request.config.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(ERR_INVALID_CONFIG, "ipam: must be an object")
    data_dir = ipam.get("dataDir")
    if data_dir in (None, ""):
        data_dir = DEFAULT_DATA_DIR  # as the reference: unset or empty is the default, any other type an error
    timeout = ipam.get("lockTimeout", DEFAULT_LOCK_TIMEOUT)
    if not isinstance(data_dir, str) or "\0" in data_dir or not data_dir.isprintable():
        raise CniError(ERR_INVALID_CONFIG, f"ipam.dataDir: {data_dir!r} is not a path")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
        raise CniError(ERR_INVALID_CONFIG, f"ipam.lockTimeout: {timeout!r} must be a number of seconds in (0, 3600]")
    return DiskStore(data_dir, request.network, lock_timeout=float(timeout), netns=request.netns or None)


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


RESOLV_CONF_MAX = 64 * 1024


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
# Verbs

def cmd_add(request):
    conf = request.ipam_config or IpamConfig(request)
    requested = assign_requested(conf)
    cid, ifname = request.container_id, request.ifname
    allocated = []
    failure = None
    with open_store(request) as store:
        existing = store.ips_of(cid, ifname)
        for s in conf.range_sets:
            for ip in existing:
                if s.subnet_range_of(ipaddress.ip_address(ip)):
                    raise CniError(ERR_NO_ADDRESS, f"{ip} has been allocated to {cid}/{ifname}, "
                                                   "duplicate allocation is not allowed")
        try:
            for s in conf.range_sets:
                allocated.append(allocator.allocate(s, store, cid, ifname, requested.get(s.index)))
        except BaseException as e:
            for r, value in allocated:
                store.release(r.text(value), cid, ifname)
            if not isinstance(e, CniError):
                raise
            failure = e   # rolled back: leave the store cleanly (committed), then report
    if failure is not None:
        raise failure

    ips = []
    for r, value in allocated:
        ip = {"address": f"{r.text(value)}/{r.subnet.prefixlen}"}
        if r.gateway is not None:
            ip["gateway"] = r.text(r.gateway)
        ips.append(ip)
    return {"ips": ips, "routes": conf.routes, "dns": conf.dns}


def cmd_del(request):
    cid, ifname = request.container_id, request.ifname
    with open_store(request) as store:
        for ip in store.ips_of(cid, ifname):
            store.release(ip, cid, ifname)


def cmd_check(request):
    conf = request.ipam_config or IpamConfig(request)
    prev = request.prev_result()
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
    with open_store(request) as store:
        leased = set(store.ips_of(request.container_id, request.ifname))
    for ip in sorted(ours - leased):
        raise CniError(ERR_CHECK_FAILED, f"prevResult address {ip} is not leased to "
                                         f"{request.container_id}/{request.ifname}")
    for ip in sorted(leased - ours):
        raise CniError(ERR_CHECK_FAILED, f"{ip} is leased to {request.container_id}/{request.ifname} "
                                         "but missing from prevResult")


def cmd_gc(request):
    # a malformed list must not read as "nothing is valid": that would release every lease
    netconf.validate("host-local", request.config, request)
    keep = request.valid_attachments()
    keep_ids = {cid for cid, _ in keep}
    with open_store(request) as store:
        for (cid, ifname), ips in store.attachments().items():
            if (cid, ifname) in keep or (ifname is None and cid in keep_ids):
                continue
            for ip in ips:
                store.release(ip, cid, ifname)


def cmd_status(request):
    conf = request.ipam_config or IpamConfig(request)
    try:
        with open_store(request) as store:
            leased = store.leased()
    except CniError as e:
        raise CniError(contract.ERR_NOT_AVAILABLE, f"host-local store not usable: {e.msg}", e.details) from None
    for s in conf.range_sets:
        if allocator.tally(s, leased)["free"] <= 0:
            raise CniError(contract.ERR_NOT_AVAILABLE, f"range set {s.index} ({s.describe()}) has no free address")


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def main():
    from cni import version_info
    v = version_info()
    contract.main(VERBS, f"CNI host-local IPAM plugin (underlay {v['version']}, build {v['build']})", "host-local")


if __name__ == "__main__":
    main()
