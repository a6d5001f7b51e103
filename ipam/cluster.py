"""cluster-ipam: one range shared by every node, leases in etcd, per-node blocks.

host-local's config surface (ranges, rangeStart/rangeEnd, gateway, exclude,
auxAddresses, requested IPs, routes, resolvConf, lockTimeout, logging) plus
`etcd`, `node`, `blockSize`, `dataDir`, `sticky`/`stickySeconds`; a config
written for whereabouts (`range`, `range_start`, `range_end`, `exclude`,
`gateway`, `ipRanges`) is taken as it is. The policy below talks only to a block
store (ipam/stores/protocols.py BlockStore: ipam/stores/etcd.py's in etcd, the
memory one's in tests); the block grid is ipam/blocks.py's.

Allocation, per range set: a requested address (anywhere in the subnets, as
host-local); else the pod's sticky hold; else round-robin over this node's
blocks; else a free block claimed for this node; else an address borrowed from
another node's block; else code 101. A node-local file lock under dataDir
serialises this node's own operations on a network (an ADD's only while it
chooses and claims: its reads come before), so its ADDs rarely
race each other on a block; correctness never depends on it. Beside that lock, ADD keeps
a record of the network (RECORD: its name and ipam section), by which underlayd
heals the networks no config file names, a Multus NetworkAttachmentDefinition's.

Run from a checkout: `python3 -m ipam.cluster` with the CNI_* environment.
"""

import ipaddress
import json
import os
import socket

from cni import config as netconf
from cni import contract, dispatch, registry
from cni.errors import ERR_CHECK_FAILED, ERR_INVALID_CONFIG, ERR_NOT_AVAILABLE, CniError
from ipam import allocator, ranges, verbs
from ipam.blocks import DEFAULT_BLOCK_SIZE, Grid
from ipam.stores import holds as clock
from ipam.stores.block_leases import CacheMissed, contention, parse

DEFAULT_PREFIX = "/underlay/ipam"
DEFAULT_DATA_DIR = "/var/lib/cni/cluster-ipam"
RECORD = "network.json"   # <dataDir>/<network>/RECORD: what underlayd's healer opens the store by
RECORD_MAX = 1 << 20
DEFAULT_STICKY_SECONDS = 300
MAX_STICKY_SECONDS = 366 * 86400
MAX_ATTEMPTS = 1000
ROLLBACK_BUDGET = 1.0     # seconds a failed ADD may still spend undoing what it took
CLAIMS = "claims"         # ClusterConfig.store(lock=CLAIMS): the node's lock around an ADD's claims only


def field_error(field, problem):
    return CniError(ERR_INVALID_CONFIG, f"{field}: {problem}")


# --------------------------------------------------------------------------
# Config

def whereabouts_range(spec, field, gateway=None):
    """A whereabouts range ({range, range_start, range_end, exclude}) -> one host-local range with
    whereabouts' rules (ipam/ranges.py Range). As whereabouts reads it: a CIDR's host bits are
    ignored ("176.168.10.1/16" starts at 176.168.0.1), "first-last/prefix" bounds it."""
    text = spec.get("range")
    if not isinstance(text, str) or "/" not in text:
        raise field_error(f"{field}.range", f"{text!r} is not a CIDR or first-last/prefix")
    address, _, plen = text.rpartition("/")
    first, dash, last = address.partition("-")
    try:
        subnet = ipaddress.ip_network(f"{first.strip()}/{plen}", strict=False)
    except ValueError:
        raise field_error(f"{field}.range", f"{text!r} is not a CIDR or first-last/prefix") from None
    out = {"subnet": str(subnet), ranges.WHEREABOUTS: True, "gateway": gateway}
    for ours, theirs in (("rangeStart", "range_start"), ("rangeEnd", "range_end")):
        if spec.get(theirs) not in (None, ""):
            out[ours] = spec[theirs]
    if dash:   # whereabouts: first-last/prefix wins over range_start and range_end
        out["rangeStart"], out["rangeEnd"] = first.strip(), last.strip()
    if spec.get("exclude"):
        out["exclude"] = whereabouts_exclude(spec["exclude"])
    return out


def outside(entries, subnet, field):
    """The indexes of the exclude entries that lie outside `subnet` (a bad entry is refused, naming it)."""
    found = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        version, lo, hi = ranges.parse_exclusion(entry, field, i, [])
        if version != subnet.version or hi < int(subnet.network_address) or lo > int(subnet.broadcast_address):
            found.append(i)
    return found


def whereabouts_exclude(entries):
    """whereabouts' exclude: CIDRs whose host bits it masks (its README excludes "192.168.2.229/30",
    .228-.231). Only for whereabouts' keys: host-local's and our own `ranges` refuse host bits
    (issue 11). Anything else is left for the usual checks to refuse, naming the field."""
    if not isinstance(entries, list):
        return entries
    return [masked(entry) if "-" not in str(entry) else entry for entry in entries]


def masked(cidr):
    """A CIDR string with its host bits cleared, as Go's ParseCIDR reads it (whereabouts' exclude
    and routes); anything else as it is."""
    network = ranges.masked_cidr(cidr.strip()) if isinstance(cidr, str) else None
    return str(network) if network is not None else cidr


def with_whereabouts(ipam, warnings=None):
    """The ipam section with whereabouts' `range`/`ipRanges` turned into host-local range sets, and
    its routes' destinations read as whereabouts reads them (host bits cleared). whereabouts' top-level
    exclude is `range`'s (its pkg/config/config.go); an entry outside range's subnet, which whereabouts
    ignores, stays a top-level exclude of the ranges it overlaps, as cluster-ipam took it before, and
    is warned of: never an address handed out that the config names as excluded."""
    extra, stray = [], []
    if "range" in ipam:
        own = whereabouts_range({k: ipam.get(k) for k in ("range", "range_start", "range_end", "exclude")},
                                "ipam", ipam.get("gateway"))
        indexes = outside(own.get("exclude"), ipaddress.ip_network(own["subnet"]), "ipam.exclude")
        if indexes:
            stray = [own["exclude"][i] for i in indexes]   # masked as whereabouts masks them
            own["exclude"] = [e for i, e in enumerate(own["exclude"]) if i not in indexes]
            if warnings is not None:
                warnings.extend(f"ipam.exclude[{i}]: {ipam['exclude'][i]!r} lies outside range {own['subnet']}: "
                                "whereabouts ignores it; excluded here from the ranges it overlaps (write it in "
                                "that ipRanges entry's exclude)" for i in indexes)
        extra.append([own])
    for i, spec in enumerate(ipam.get("ipRanges") or []):
        if not isinstance(spec, dict):
            raise field_error(f"ipam.ipRanges[{i}]", "must be an object with a range")
        extra.append([whereabouts_range(spec, f"ipam.ipRanges[{i}]")])
    if not extra:
        return ipam
    out = {k: v for k, v in ipam.items() if k not in ("range", "range_start", "range_end", "ipRanges")}
    if "range" in ipam:
        out.pop("gateway", None)   # they went into the range
        out.pop("exclude", None)
        if stray:
            out["exclude"] = stray
    if isinstance(ipam.get("routes"), list):
        out["routes"] = [dict(r, dst=masked(r["dst"])) if isinstance(r, dict) and "dst" in r else r
                         for r in ipam["routes"]]
    out["ranges"] = list(ipam.get("ranges") or []) + extra
    return out


# whereabouts' keys that mean nothing here: accepted, so its configs move over as they are, and
# each named in a warning with what takes its place.
WHEREABOUTS_IGNORED = {
    "kubernetes": "whereabouts' Kubernetes store; leases live in etcd (ipam.etcd)",
    "datastore": "whereabouts' choice of store; leases live in etcd (ipam.etcd)",
    "configuration_path": "whereabouts' flat file; cluster-ipam reads only the network config",
    "log_file": "underlay logs to the network's top-level logFile",
    "log_level": "underlay logs at the network's top-level logLevel",
    "leader_lease_duration": "cluster-ipam takes no cluster-wide lock (no leader election)",
    "leader_renew_deadline": "cluster-ipam takes no cluster-wide lock (no leader election)",
    "leader_retry_period": "cluster-ipam takes no cluster-wide lock (no leader election)",
    "reconciler_cron_expression": "underlayd heals leases of pods gone without DEL (docs/cluster-ipam.md)",
    "sleep_for_race": "a whereabouts test setting",
    "node_slice_size": "each node claims blocks of blockSize on its own, no controller needed",
    "enable_overlapping_ranges": "an address is never handed out twice under one etcd prefix",
}
# whereabouts' etcd keys -> the `etcd` section's
WHEREABOUTS_ETCD_FILES = {"etcd_cert_file": "certFile", "etcd_key_file": "keyFile",
                          "etcd_ca_cert_file": "trustedCAFile"}
ETCD_PORT = 2379


def whereabouts_etcd(ipam, warnings):
    """The `etcd` section, or one made of whereabouts' etcd keys: etcd_host (host[:port], a URL, or
    several, comma-separated or a list) -> endpoints, https:// when a certificate file is given, else
    http://, port 2379 unless named; etcd_cert_file, etcd_key_file, etcd_ca_cert_file -> certFile,
    keyFile, trustedCAFile. An `etcd` section given beside them wins (and they are warned of)."""
    theirs = [k for k in ("etcd_host", *WHEREABOUTS_ETCD_FILES) if k in ipam]
    for key in ("etcd_username", "etcd_password"):
        if ipam.get(key):
            raise field_error(f"ipam.{key}", "etcd user/password authentication is not supported: give the "
                                             "client certificate (ipam.etcd.certFile and keyFile, or whereabouts' "
                                             "etcd_cert_file and etcd_key_file)")
    if "etcd" in ipam:
        if theirs:
            warnings.append(f"ipam: whereabouts' {', '.join(theirs)} not used: ipam.etcd is given")
        return ipam["etcd"]
    if "etcd_host" not in ipam:
        raise field_error("ipam.etcd", "is required: etcd.endpoints, the URLs of the etcd members "
                                       "(or whereabouts' etcd_host)")
    hosts = ipam["etcd_host"]
    hosts = hosts.split(",") if isinstance(hosts, str) else hosts
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h.strip() for h in hosts):
        raise field_error("ipam.etcd_host", f"{ipam['etcd_host']!r} must name etcd's members: host:port, "
                                            "comma-separated for several")
    conf = {ours: ipam[theirs] for theirs, ours in WHEREABOUTS_ETCD_FILES.items() if theirs in ipam}
    scheme = "https://" if conf else "http://"
    conf["endpoints"] = [endpoint_of(h.strip(), scheme) for h in hosts]
    return conf


def endpoint_of(host, scheme):
    if "://" in host:
        return host
    try:
        ipaddress.IPv6Address(host)   # a bare IPv6 address: brackets, default port
        return f"{scheme}[{host}]:{ETCD_PORT}"
    except ValueError:
        pass
    return f"{scheme}{host}" if host.rpartition(":")[2].isdigit() else f"{scheme}{host}:{ETCD_PORT}"


def whereabouts_warnings(ipam):
    return [f"ipam.{key}: whereabouts' key, not used: {why}" for key, why in WHEREABOUTS_IGNORED.items()
            if key in ipam]


def network_prefix(prefix, ipam):
    """whereabouts' network_name: networks of the same subnets allocating independently. Each name
    gets its own key space below the prefix, which nothing else there uses (pools/, ips/, ...)."""
    name = ipam.get("network_name")
    if name in (None, ""):
        return prefix
    if not isinstance(name, str) or len(name) > 253 or not name.isprintable() or "/" in name:
        raise field_error("ipam.network_name", f"{name!r} must be a name: printable, no '/'")
    return f"{prefix.rstrip('/')}/networks/{name}"


def block_sizes(value):
    """blockSize: a prefix length (IPv4; IPv6 blocks then hold as many addresses) or {"ipv4", "ipv6"}."""
    if value is None:
        return dict(DEFAULT_BLOCK_SIZE)
    if isinstance(value, dict):
        sizes = dict(DEFAULT_BLOCK_SIZE)
        for version, key, top in ((4, "ipv4", 32), (6, "ipv6", 128)):
            if key in value:
                sizes[version] = check_block_size(value[key], f"ipam.blockSize.{key}", top)
        return sizes
    v4 = check_block_size(value, "ipam.blockSize", 32)
    return {4: v4, 6: 128 - (32 - v4)}


def one_block_warnings(ipam, grids, sizes):
    """A blockSize the operator wrote that leaves a range one block: the first node to ADD owns it
    and every other node borrows from it address by address (more etcd writes, more contention).
    Said only of a written blockSize: with the default, one shared block of a small range is
    whereabouts' behaviour (it has no blocks), which its configs, taken as they are, expect."""
    value = ipam.get("blockSize")
    warnings = []
    for grid in grids:
        r = grid.range
        key = "ipv4" if r.version == 4 else "ipv6"
        if value is None or isinstance(value, dict) and key not in value or grid.block_count() > 1:
            continue
        field = f"ipam.blockSize.{key}" if isinstance(value, dict) else "ipam.blockSize"
        top = r.subnet.max_prefixlen - 2
        better = next((p for p in range(grid.prefix + 1, top) if grid.block_count(p) >= 4), top)
        warnings.append(f"{field}: a /{sizes[r.version]} block holds all of {r.field} ({r.describe()}): the "
                        "first node to ADD owns it and every other node borrows from it address by address; "
                        f"a blockSize of /{better} cuts it into {grid.block_count(better)} blocks")
    return warnings


def check_block_size(value, field, top):
    if isinstance(value, bool) or not isinstance(value, int) or not top - 24 <= value <= top - 2:
        raise field_error(field, f"{value!r} must be a prefix length from {top - 24} to {top - 2}")
    return value


def data_dir(ipam):
    """ipam.dataDir, the default when not given: where this node's lock and the network's RECORD are."""
    path = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(path, str) or not path.startswith("/") or not path.isprintable():
        raise field_error("ipam.dataDir", f"{path!r} must be an absolute path")
    return path


def check_node(name, field="ipam.node"):
    if not isinstance(name, str) or not name or len(name) > 253 or not name.isprintable() or "/" in name \
            or " " in name:
        raise field_error(field, f"{name!r} is not a node name (1-253 printable characters, no '/' or space)")
    return name


def pod_of(request):
    """(namespace, name) of the pod from K8S_POD_*, or None; names that could not be Kubernetes' are ignored."""
    namespace, name = request.args.get("K8S_POD_NAMESPACE"), request.args.get("K8S_POD_NAME")
    if not namespace or not name:
        return None
    if any(len(x) > 253 or not x.isprintable() or "/" in x or " " in x for x in (namespace, name)):
        return None
    return namespace, name


class ClusterConfig(verbs.IpamConfig):
    """cluster-ipam's config, read by its one loader (the plugin's verbs, `underlay validate`,
    `underlay cluster ...`, underlayd). Always: the store's part, what every verb needs (etcd,
    prefix, node, dataDir, lockTimeout, sticky, blockSize). With the request (ADD, CHECK, STATUS;
    validate and pools make one): the schema first, and after the store's part host-local's
    addresses (verbs.IpamConfig: whereabouts' keys turned into range sets) and their block grids."""

    def __init__(self, config, request=None):
        if request is not None:
            netconf.validate("cluster-ipam", config, request)
        ipam = config.get("ipam")
        if not isinstance(ipam, dict):
            raise field_error("ipam", "must be an object")
        self.ipam = ipam
        self.warnings = whereabouts_warnings(ipam)
        self.etcd_conf = whereabouts_etcd(ipam, self.warnings)
        prefix = self.etcd_conf.get("prefix", DEFAULT_PREFIX) if isinstance(self.etcd_conf, dict) else None
        if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.isprintable():
            raise field_error("ipam.etcd.prefix", f"{prefix!r} must be a key prefix starting with '/'")
        self.etcd_prefix = prefix   # as given: network_name's key spaces are below it
        self.prefix = network_prefix(prefix, ipam)
        self.node = check_node(ipam["node"]) if ipam.get("node") not in (None, "") else \
            check_node(socket.gethostname(), "ipam.node (the hostname)")
        self.data_dir = data_dir(ipam)
        self.lock_timeout = verbs.lock_timeout(ipam)
        sticky = ipam.get("sticky", False)
        if not isinstance(sticky, bool):
            raise field_error("ipam.sticky", f"{sticky!r} must be true or false")
        seconds = ipam.get("stickySeconds", DEFAULT_STICKY_SECONDS)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_STICKY_SECONDS:
            raise field_error("ipam.stickySeconds", f"{seconds!r} must be a number of seconds in "
                                                    f"(0, {MAX_STICKY_SECONDS}]")
        self.sticky_seconds = float(seconds) if sticky else None
        self.block_sizes = block_sizes(ipam.get("blockSize"))
        verbs.cooldowns(self, ipam)
        if request is not None:
            self.load_addresses(request)

    def load_addresses(self, request):
        """The part a request's addresses need: range sets, routes, requested IPs, DNS; block grids."""
        verbs.IpamConfig.__init__(self, request, with_whereabouts(self.ipam, self.warnings))
        if not self.dns and isinstance(self.ipam.get("dns"), dict):
            # static IPAM's `dns`, which whereabouts reports (the schema checked its keys' types)
            self.dns = {k: v for k, v in self.ipam["dns"].items() if k in ("nameservers", "domain", "search",
                                                                             "options")}
        request.warnings.extend(self.warnings)
        self.grids = {id(r): Grid(r, self.block_sizes[r.version]) for s in self.range_sets for r in s.ranges}
        request.warnings += one_block_warnings(self.ipam, self.grids.values(), self.block_sizes)

    def client(self):
        from ipam import etcd
        return etcd.client_from_config(self.etcd_conf, "ipam.etcd")

    def store_key(self):
        """What tells one store of leases from another: the key prefix (network_name's included) and
        the endpoint URLs; not timeouts or certificate paths, which do not change what is read."""
        urls = self.etcd_conf.get("endpoints")
        urls = urls if isinstance(urls, list) else []
        return self.prefix, frozenset(u.strip().rstrip("/").lower() for u in urls if isinstance(u, str))

    def store(self, network, grids=(), pod=None, lock=True, netns=None):
        """lock: True, the node's lock for the whole operation; False, none; CLAIMS, only around the
        claims (EtcdStore.claiming: an ADD's)."""
        from ipam.stores.etcd import EtcdStore
        from ipam.stores.lease_files import LeaseFiles
        client = self.client()
        files = None
        try:
            if lock:
                files = LeaseFiles(self.data_dir, network, self.lock_timeout)
            return EtcdStore(client, self.prefix, network, self.node, grids, files, pod, self.sticky_seconds, netns,
                             self.reuse_cooldown, claims_only=lock == CLAIMS)
        except BaseException:
            client.close()
            raise

    def grids_of(self, range_set):
        return [self.grids[id(r)] for r in range_set.ranges]

    def open_store(self, request, lock=True):
        return self.store(request.network, list(self.grids.values()), pod_of(request), lock, request.netns)


# --------------------------------------------------------------------------
# Allocation policy over blocks

def allocate(range_set, grids, store, container_id, ifname, requested=None, holds=()):
    """Take one address of range_set; return (Range, int)."""
    if requested is not None:
        return allocator.reserve_requested(range_set, store, container_id, ifname, requested)
    for hold in holds:
        taken = take_hold(grids, store, hold, container_id, ifname)
        if taken is not None:
            return taken
    last = store.last_reserved(range_set.index)
    try:
        last = int(ipaddress.ip_address(last)) if last and ipaddress.ip_address(last).version == \
            range_set.version else None
    except ValueError:
        last = None
    for _ in range(MAX_ATTEMPTS):
        found = candidate(grids, store, last, clock.now())
        if found is None:
            raise allocator.exhausted(range_set, store, store.cooling())
        grid, block, value = found
        if store.claim(grid, block, value, container_id, ifname):
            store.set_last_reserved(range_set.index, grid.range.text(value))
            return grid.range, value
    raise contention(range_set.describe())


def take_hold(grids, store, hold, container_id, ifname):
    """The pod's own sticky address, if it lies in these ranges and is still held for it."""
    version, value = parse(hold.ip)
    grid = next((g for g in grids if g.range.version == version and g.range.in_subnet(value)), None)
    if grid is None:
        return None
    for _ in range(MAX_ATTEMPTS):
        outcome = store.claim(grid, store.block(grid, grid.first_of(value)), value, container_id, ifname, hold)
        if outcome is not None:
            return (grid.range, value) if outcome else None
    return None


def candidate(grids, store, last, now):
    """(grid, block, value) to try next: this node's blocks round-robin after `last`, then a
    free (or orphaned) block, then a borrowed address; None when nothing is left. An address
    released less than reuseCooldown ago is never one. The whole pool is read only once the
    node's own blocks are full."""
    node, cooldown = store.node, store.reuse_cooldown

    def free(grid, block, value):
        return not store.taken(grid, block, value, now) and not block.cools(value, now, cooldown)

    own = sorted(((g, b) for g in grids for b in store.own_blocks(g)),
                 key=lambda gb: gb[1].first)
    for after in ((last, None) if last is not None else (None,)):   # after `last` first, then wrapped
        for grid, block in own:
            for value in grid.free_in(block, now, after):
                if free(grid, block, value):
                    return grid, block, value
    for grid in grids:
        blocks = store.blocks(grid)
        for first in grid.blocks_from(node):
            block = blocks.get(first)
            if block is None or block.node is None:
                block = store.block(grid, first)
                value = next((v for v in grid.free_in(block, now) if free(grid, block, v)), None)
                if value is not None:
                    return grid, block, value
    for grid in grids:
        for block in sorted(store.blocks(grid).values(), key=lambda b: b.first):
            if block.node not in (node, None):
                value = next((v for v in grid.free_in(block, now) if free(grid, block, v)), None)
                if value is not None:
                    return grid, block, value
    return None


# --------------------------------------------------------------------------
# Verbs

def load_config(request):
    """The config, checked: for a main plugin to load before it changes anything (as host-local's)."""
    return ClusterConfig(request.config, request)


def cmd_add(request):
    conf = request.ipam_config or load_config(request)
    requested = verbs.assign_requested(conf)
    try:
        return add(conf, request, requested, cached=True)
    except CacheMissed:   # records of the attachment or of conflicts: nothing claimed; read first this time
        return add(conf, request, requested, cached=False)


def add(conf, request, requested, cached):
    cid, ifname = request.container_id, request.ifname
    pod = pod_of(request)
    allocated = []
    with conf.open_store(request, lock=CLAIMS) as store:
        store.begin_add(cid, ifname)   # before any claim: what tells a retry of this ADD from a second one
        data = record(conf, request.network)
        # The common ADD (no address asked for, no sticky hold to look up) starts from the node's cache
        # of its blocks, without the first read: its first claim is refused unless etcd holds no record
        # of the attachment and no conflict record of the network, which is all that read would have
        # found to act on below (CacheMissed: the ADD starts again here, reading first).
        if not (cached and not requested and not (conf.sticky_seconds and pod)
                and store.start_cached(cid, ifname, RECORD, data)):
            # An attachment whose ADD succeeded gets no second address (host-local's rule). Leases still
            # pending are an earlier ADD of this very attachment on this node that never answered success
            # (its claim's answer lost, then etcd gone before read-back and rollback; killed): the runtime
            # retries such an ADD, so they are released here and this ADD allocates afresh. With sticky
            # they become the pod's holds, which it takes back just below: the same addresses.
            pending, done = store.pending_and_done(cid, ifname)
            store.keep_record(RECORD, data)   # etcd answered: before any lease is taken
            verbs.refuse_duplicate(conf, done, cid, ifname)
            for ip in pending:
                store.release(ip, cid, ifname)
            verbs.give_back_conflicts(store)
        try:
            holds = store.holds_of(*pod) if conf.sticky_seconds and pod else []
            with store.claiming():   # the node's lock: only while choosing and claiming
                for s in conf.range_sets:
                    allocated.append(allocate(s, conf.grids_of(s), store, cid, ifname, requested.get(s.index),
                                              holds))
            store.complete(cid, ifname, [r.text(v) for r, v in allocated])
        except CacheMissed:
            raise   # refused before anything was claimed
        except BaseException:
            rollback(store, allocated, cid, ifname)
            raise
    return verbs.add_result(conf, allocated)


# Client.unsent's answer to every call of rehearse: a range (none), a txn that succeeded (a pool read's first)
REHEARSED_ANSWER = (b'{"header":{"revision":"2"},"succeeded":true,"kvs":[],'
                    b'"responses":[{"response_range":{}},{"response_put":{}},{"response_put":{}}]}')


def rehearse(request):
    """A spare's warm-up (cni/dispatch.py rehearse_ipam): what ADD computes for a constant sample with
    neither etcd nor the node's files: the config, the client (never connected), the network's record,
    each range set's first address claimed in its first block (read: none yet) and the claims
    completed, their transactions packed and answered by Client.unsent (nothing sent), the result."""
    from ipam.etcd import Client
    from ipam.stores.etcd import EtcdStore
    conf = request.ipam_config or load_config(request)
    conf.client().close()
    record(conf, request.network)
    store = EtcdStore(Client.unsent(REHEARSED_ANSWER), conf.prefix, request.network, conf.node,
                      list(conf.grids.values()), pod=pod_of(request), netns=request.netns, claims_only=True)
    allocated = []
    for s in conf.range_sets:
        grid, r = conf.grids_of(s)[0], s.ranges[0]
        store.claim(grid, store.block(grid, grid.first_of(r.start)), r.start, request.container_id, request.ifname)
        allocated.append((r, r.start))
    store.complete(request.container_id, request.ifname, [r.text(v) for r, v in allocated])
    return verbs.add_result(conf, allocated)


def record(conf, network):
    """The bytes of the network's RECORD: its name and the ipam section as ADD parsed it, node and
    dataDir as resolved, and only the keys the schema knows (nothing else a config carries lands on
    disk: the etcd section's certificates are paths, never key material). Never a lease."""
    ipam = netconf.known_only("cluster-ipam", {"ipam": conf.ipam})["ipam"]
    ipam.update(node=conf.node, dataDir=conf.data_dir)
    return json.dumps({"network": network, "ipam": ipam}, sort_keys=True).encode()


def recorded_networks(data_dir):
    """(found, problems) of one dataDir: found, (path, config) of each network an ADD recorded there,
    the config {"name", "ipam"} as heal() takes it; problems, a line for each record that cannot be
    read or is not one (the others are found all the same). A dataDir not there has none."""
    try:
        names = sorted(n for n in os.listdir(data_dir) if not n.startswith("."))
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"{data_dir}: {e.strerror or e}"]
    found, problems = [], []
    for name in names:
        path = os.path.join(data_dir, name, RECORD)
        try:
            found.append((path, read_record(path, data_dir, name)))
        except (FileNotFoundError, NotADirectoryError):
            continue   # no record (a stray file, or only older versions' ADDs): nothing to heal it by
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
        except ValueError as e:
            problems.append(f"{path}: not a record of cluster-ipam: {e}")
    return found, problems


def is_recorded(data_dir, name):
    """Whether <data_dir>/<name> is a network directory of cluster-ipam's (its ADD's RECORD is there)."""
    return os.path.exists(os.path.join(data_dir, name, RECORD))


def read_record(path, data_dir, network):
    """The config {"name", "ipam"} in the RECORD at `path`, found as <data_dir>/<network>/RECORD;
    ValueError if it is not one, or names another network or dataDir than where it lies."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = os.read(fd, RECORD_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > RECORD_MAX:
        raise ValueError(f"larger than {RECORD_MAX} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ipam"), dict):
        raise ValueError("no ipam object")
    if doc.get("network") != network:
        raise ValueError(f"names network {doc.get('network')!r}, not {network!r} (its directory)")
    recorded = doc["ipam"].get("dataDir")
    if not isinstance(recorded, str) or os.path.normpath(recorded) != os.path.normpath(data_dir):
        raise ValueError(f"names dataDir {recorded!r}, not {data_dir!r} (where it lies)")
    return {"name": network, "ipam": doc["ipam"]}


def rollback(store, allocated, cid, ifname):
    """Give back what a failed ADD took, and the claim it was in the middle of if etcd may have
    applied it. With etcd gone the leases stay (no pod holds them: DEL or GC releases them)."""
    store.limit_wait(ROLLBACK_BUDGET)
    doubt = store.in_doubt()
    texts = [r.text(v) for r, v in allocated] + ([doubt] if doubt else [])
    for text in texts:
        try:
            store.release(text, cid, ifname, hold=False)   # an address never handed out is no pod's to keep
        except CniError:
            break


def cmd_del(request):
    conf = ClusterConfig(request.config)
    cid, ifname = request.container_id, request.ifname
    with conf.store(request.network) as store:
        for ip in store.ips_of(cid, ifname):
            store.release(ip, cid, ifname)
        store.end_attachment(cid, ifname)


def cmd_check(request):
    conf = request.ipam_config or load_config(request)
    ours = verbs.prev_addresses(request, conf)
    cid, ifname = request.container_id, request.ifname
    with conf.store(request.network, lock=False) as store:
        verbs.check_leased(ours, set(store.ips_of(cid, ifname)), cid, ifname)
        for ip in sorted(ours):
            owner = store.owner(ip)
            if owner is None or owner[0] != cid or owner[1] not in (ifname, None):
                raise CniError(ERR_CHECK_FAILED, f"prevResult address {ip}: etcd holds no lease of it for "
                                                 f"{cid}/{ifname} (indexed, but the lease is "
                                                 f"{'gone' if owner is None else 'another attachment’s'})")


def cmd_gc(request):
    # a malformed list must not read as "nothing is valid": that would release every lease
    netconf.validate("cluster-ipam", request.config, request)
    conf = ClusterConfig(request.config)
    valid = verbs.ValidAttachments(request.valid_attachments())
    with conf.store(request.network) as store:
        for (cid, ifname), (node, _, ips) in store.attachment_records().items():
            if node != conf.node or valid.keeps(cid, ifname):
                continue   # never another node's, nor a live attachment's
            for ip in ips:
                store.release(ip, cid, ifname)
            store.end_attachment(cid, ifname)
        store.drop_marks(valid.keeps)   # and those of ADDs that failed with nothing left in etcd
        drop_expired_holds(store)
        verbs.give_back_conflicts(store)


def hold_conflict(request, address, mac):
    """conflictDetection (cni/dispatch.py hold_ipam_conflict): the address this attachment was just
    given, which someone with `mac` answered for, becomes a conflict record in etcd."""
    conf = request.ipam_config or load_config(request)
    with conf.open_store(request) as store:
        verbs.hold_conflict(conf, store, request, address, mac)


def heal(config, gone):
    """underlayd's healing of missed DELs (cni/agent/healing.py): release this node's attachments of the
    config's network whose recorded netns `gone(path)` says is certainly gone, as DEL releases them
    (with sticky, a known pod's become holds), under the node's lock as DEL takes it. Yields
    (containerID, ifname, netns, [ip]) of each once released. Another node's attachments, and
    those with no netns recorded (ADDs of older versions), are never touched."""
    contract.check_network_name(config.get("name"))   # as every plugin call checks it: no ADD used another
    conf = ClusterConfig(config)
    with conf.store(config["name"]) as store:
        for (cid, ifname), (node, netns, ips) in store.attachment_records().items():
            if node != conf.node or netns is None or not gone(netns):
                continue
            for ip in ips:
                store.release(ip, cid, ifname)
            store.end_attachment(cid, ifname)
            yield cid, ifname, netns, ips


def drop_expired_holds(store):
    """Sticky holds of this network released by this node whose time is up go back to the pool."""
    now = clock.now()
    for lease in store.holds():
        if lease.expired(now) and lease.doc.get("node") == store.node:
            store.release_lease(lease, None)


def cmd_status(request):
    conf = request.ipam_config or load_config(request)
    try:
        with conf.store(request.network, list(conf.grids.values()), lock=False) as store:
            store.status()
            leased = store.leased()
    except CniError as e:
        raise CniError(ERR_NOT_AVAILABLE, f"cluster-ipam: etcd not usable: {e.msg}", e.details) from None
    verbs.check_free(conf, leased)


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


# --------------------------------------------------------------------------
# Operating it: the `underlay` command's functions (cni/operator.py)

def store_key(config):
    """The store `config`'s leases are in (ClusterConfig.store_key): configs with equal keys share one."""
    return ClusterConfig(config).store_key()


def leases(config):
    """Every lease, sticky hold and conflict record under the config's etcd prefix, all networks and
    nodes: a list of dicts {ip, kind ("lease", "hold" or "conflict"), network, containerID, ifname,
    node, namespace, pod, time, released, until, pool, block, mac, since}, sorted by address. Reads only."""
    conf = ClusterConfig(config)
    with conf.store("", lock=False) as store:
        found = store.all_leases()
    return sorted((lease_row(x) for x in found), key=lambda r: ip_key(r["ip"]))


def who_has(config, address):
    """The row (as leases()) of the lease or hold of one address, any network; None if free. Reads only."""
    text = str(ipaddress.ip_address(address))
    conf = ClusterConfig(config)
    with conf.store("", lock=False) as store:
        lease = store.read(text)
    return None if lease is None else lease_row(lease)


LEASE_FIELDS = ("ip", "kind", "network", "node", "containerID", "ifname", "namespace", "pod", "time", "released",
                "until", "pool", "block", "mac", "since")


def lease_row(lease):
    row = {key: lease.doc.get(key) for key in LEASE_FIELDS}   # every row the same keys: a table's columns
    row.update(ip=lease.ip, kind="hold" if lease.hold else "conflict" if lease.conflict else "lease")
    return row


def release_conflict(config, address):
    """Give the conflict record of `address` back now (the operator's word); False if it holds none."""
    text = str(ipaddress.ip_address(address))
    conf = ClusterConfig(config)
    with conf.store("", lock=False) as store:
        return store.release_conflict(text)


def ip_key(text):
    return ipaddress.ip_address(text).packed.rjust(16, b"\0")


def pools(config):
    """Per range set of the config's network: the tally ADD works with (size, excluded, aux, reserved,
    in use, free) from the address keys of its subnets (every network's: pools are keyed by subnet),
    plus its blocks per node, borrowed addresses (leased by a node other than the block's owner) and
    sticky holds still running. Reads only (no pool config is written, unlike an ADD's first read).
    A list of dicts {set, ranges, size, excluded, aux, reserved, in_use, free, held, blocks, borrowed,
    nodes: [{node, blocks, leases, borrowed}]}; node None: blocks orphaned by release-node."""
    request = contract.Request("STATUS", {}, config, b"")
    conf = ClusterConfig(config, request)
    now = clock.now()
    with conf.store(request.network, list(conf.grids.values()), lock=False) as store:
        found = [x for x in store.all_leases() if not x.expired(now)]
        by_pool = {}
        for grid in conf.grids.values():
            by_pool.setdefault(str(grid.range.subnet), (grid, store.pool_blocks(grid)))
    rows = []
    for s in conf.range_sets:
        subnets = {str(r.subnet) for r in s.ranges}
        mine = [x for x in found if s.subnet_range_of(ipaddress.ip_address(x.ip))]
        t = allocator.tally(s, [x.ip for x in mine], [x.ip for x in mine if x.conflict])
        nodes = {}

        def node_row(name):
            return nodes.setdefault(name, {"node": name, "blocks": 0, "leases": 0, "borrowed": 0})

        owners = {}
        for subnet in sorted(subnets):
            for block in by_pool[subnet][1].values():
                node_row(block.node)["blocks"] += 1
                # the block's own name, as its leases record it: the pool's block size, which may
                # not be the config's (an edited blockSize, which ADD refuses)
                owners[(subnet, block.key.rpartition("/blocks/")[2])] = block.node
        held = 0
        for x in mine:
            if x.hold:
                held += 1
            if x.hold or x.conflict:
                continue
            row = node_row(x.doc.get("node"))
            row["leases"] += 1
            owner = owners.get((x.doc.get("pool"), x.doc.get("block")))
            row["borrowed"] += owner != x.doc.get("node")
        listed = sorted(nodes.values(), key=lambda n: (n["node"] is None, str(n["node"])))
        rows.append({"set": s.index, "ranges": s.describe(), "size": t["addresses"], "excluded": t["excluded"],
                     "aux": t["aux"], "reserved": t["reserved"], "in_use": t["in use"], "free": t["free"],
                     "conflict": t["conflict"],
                     "held": held, "blocks": sum(n["blocks"] for n in listed),
                     "borrowed": sum(n["borrowed"] for n in listed), "nodes": listed})
    return rows


class UnknownNode(ValueError):
    """release-node was given a name no lease, hold, block or attachment in etcd names."""


def release_node(config, node, force=False, others=()):
    """Release a node that never comes back: its leases (every network) and its blocks.

    Refused (code 50) while the node holds leases, unless `force`: a lease may be a live pod's,
    and only the operator knows the node is gone. A name etcd knows no node by raises UnknownNode
    (a typo must not read as "released"). With ipam.sticky in `config` (or, for their own
    networks' leases, in `others`: configs of networks on the same store), leases of known pods
    become holds as a DEL would make them, still the pod's node's. Blocks left empty are deleted;
    blocks where other nodes still borrow addresses, or sticky holds remain, are orphaned ("node":
    null) for any node to adopt. Returns {"node", "leases", "blocks_deleted", "blocks_orphaned"
    (other nodes still borrow there), "blocks_held" (orphaned keeping sticky holds only)}."""
    conf = ClusterConfig(config)
    sticky = {c.get("name"): ClusterConfig(c).sticky_seconds for c in others}
    node = check_node(node, "node")
    with conf.store("", lock=False) as store:
        found, owners = store.all_leases(), store.block_owners()
        known = known_nodes(store, found, owners)
        if node not in known:
            raise UnknownNode(f"no node {node} in etcd under {conf.prefix}: no lease, hold, block or attachment "
                              f"names it (released already, or never ran here; known nodes: "
                              f"{', '.join(sorted(known)) or 'none'})")
        live = [lease for lease in found if lease.owner() is not None and lease.doc.get("node") == node]
        if live and not force:
            sample = ", ".join(f"{lease.ip} ({lease.doc.get('network')}/{lease.doc.get('containerID')})"
                               for lease in live[:5])
            raise CniError(ERR_NOT_AVAILABLE, f"node {node} still holds {len(live)} lease(s): {sample}"
                                              f"{' ...' if len(live) > 5 else ''}; release them only if the "
                                              "node is gone for good")
        owned = [block for owner, block in owners if owner == node]
        released = 0
        for lease in live:
            released += store.release_lease(lease, sticky.get(lease.doc.get("network"), conf.sticky_seconds))
        orphaned = held = 0
        for block in node_blocks(store, node):   # what the releases left: borrowers' addresses, holds
            if store.orphan(block):
                orphaned += bool(block.used)
                held += not block.used and not block.empty
    return {"node": node, "leases": released, "blocks_deleted": len(owned) - orphaned - held,
            "blocks_orphaned": orphaned, "blocks_held": held}


def known_nodes(store, found, owners):
    """The names of every node etcd knows: in leases and holds (`found`), blocks (`owners`:
    block_owners), attachment records."""
    known = {lease.doc.get("node") for lease in found} | store.attachment_nodes()
    known.update(owner for owner, _ in owners)
    return {name for name in known if isinstance(name, str)}


def node_blocks(store, node):
    """The blocks owned by `node`, in every pool, as they are now."""
    return [block for owner, block in store.block_owners() if owner == node]


def main():
    dispatch.main(registry.EXECUTABLES["cluster-ipam"], VERBS)


if __name__ == "__main__":
    main()
