"""host-local IPAM: addresses from local ranges, leases in files on this node.

A drop-in superset of containernetworking/plugins' host-local (same config,
same files) that also honours `exclude` and `auxAddresses`, never hands out the
network, broadcast or gateway address, and implements CHECK, STATUS and GC.

Run from a checkout: `python3 -m ipam.host_local` with the CNI_* environment.
"""

import ipaddress

from cni import config as netconf
from cni import dispatch, registry
from cni.errors import ERR_INVALID_CONFIG, ERR_NOT_AVAILABLE, CniError
from ipam import allocator, verbs
from ipam.stores.disk import DiskStore

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


class HostLocalConfig(verbs.IpamConfig):
    """host-local's config, read by its one loader (the plugin's verbs, `underlay validate` and
    `pools`, underlayd). With the request (ADD, CHECK, STATUS; validate and pools make one): the
    schema, then the addresses (verbs.IpamConfig). Always: where the store is, dataDir and
    lockTimeout, reuseCooldown and conflictCooldown, which are all DEL and GC read (as the reference,
    DEL takes any config it can)."""

    def __init__(self, config, request=None):
        if request is not None:
            netconf.validate("host-local", config, request)
            super().__init__(request, config["ipam"])
        ipam = config.get("ipam")
        if not isinstance(ipam, dict):
            raise CniError(ERR_INVALID_CONFIG, "ipam: must be an object")
        self.data_dir = data_dir(ipam)
        self.lock_timeout = verbs.lock_timeout(ipam)
        verbs.cooldowns(self, ipam)

    def open_store(self, request):
        return DiskStore(self.data_dir, request.network, lock_timeout=self.lock_timeout, netns=request.netns or None,
                         reuse_cooldown=self.reuse_cooldown)


def load_config(request):
    """The config, checked: for a main plugin to load before it changes anything."""
    return HostLocalConfig(request.config, request)


def data_dir(ipam):
    """ipam.dataDir, the default when unset or empty (as the reference; any other type is an error)."""
    path = ipam.get("dataDir")
    if path in (None, ""):
        return DEFAULT_DATA_DIR
    if not isinstance(path, str) or "\0" in path or not path.isprintable():
        raise CniError(ERR_INVALID_CONFIG, f"ipam.dataDir: {path!r} is not a path")
    return path


# --------------------------------------------------------------------------
# Verbs

def cmd_add(request):
    conf = request.ipam_config or load_config(request)
    requested = verbs.assign_requested(conf)
    cid, ifname = request.container_id, request.ifname
    allocated = []
    failure = None
    with conf.open_store(request) as store:
        verbs.refuse_duplicate(conf, store.ips_of(cid, ifname), cid, ifname)
        verbs.give_back_conflicts(store)
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
    if not request.defer_sync:
        try:
            dispatch.wait_ipam_synced()
        except CniError:
            cmd_del(request)   # not durable: nothing is answered, nothing kept
            raise
    return verbs.add_result(conf, allocated)


def cmd_del(request):
    cid, ifname = request.container_id, request.ifname
    with HostLocalConfig(request.config).open_store(request) as store:
        for ip in store.ips_of(cid, ifname):
            store.release(ip, cid, ifname)


def cmd_check(request):
    conf = request.ipam_config or load_config(request)
    ours = verbs.prev_addresses(request, conf)
    with conf.open_store(request) as store:
        leased = set(store.ips_of(request.container_id, request.ifname))
    verbs.check_leased(ours, leased, request.container_id, request.ifname)


def cmd_gc(request):
    # a malformed list must not read as "nothing is valid": that would release every lease
    netconf.validate("host-local", request.config, request)
    valid = verbs.ValidAttachments(request.valid_attachments())
    with HostLocalConfig(request.config).open_store(request) as store:
        for (cid, ifname), ips in store.attachments().items():
            if valid.keeps(cid, ifname):
                continue
            for ip in ips:
                store.release(ip, cid, ifname)
        verbs.give_back_conflicts(store)


def hold_conflict(request, address, mac):
    """conflictDetection (cni/dispatch.py hold_ipam_conflict): the address this attachment was just
    given, which someone with `mac` answered for, becomes a conflict record of the store."""
    conf = request.ipam_config or load_config(request)
    with conf.open_store(request) as store:
        verbs.hold_conflict(conf, store, request, address, mac)


def rehearse(request):
    """A spare's warm-up (cni/dispatch.py rehearse_ipam): what ADD computes for a constant sample, the
    store neither read nor written: the address after a last reserved one in each range set, the result."""
    conf = request.ipam_config or load_config(request)
    allocated = []
    for s in conf.range_sets:
        r = s.ranges[0]
        allocated.append(next(s.candidates(ipaddress.ip_address(r.text(r.start)))))
    return verbs.add_result(conf, allocated)


def cmd_status(request):
    conf = request.ipam_config or load_config(request)
    try:
        with conf.open_store(request) as store:
            leased = store.leased()
    except CniError as e:
        raise CniError(ERR_NOT_AVAILABLE, f"host-local store not usable: {e.msg}", e.details) from None
    verbs.check_free(conf, leased)


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def main():
    dispatch.main(registry.EXECUTABLES["host-local"], VERBS)


if __name__ == "__main__":
    main()
