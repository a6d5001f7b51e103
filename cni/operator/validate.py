"""`underlay validate`: schema and meaning of network configs, before a runtime meets them.

Each plugin config is checked the way the plugin's ADD checks it, with the
plugin's own code (its schema, then its config loader), without touching the
machine (cluster-ipam: its schema and loader, no etcd contact). On top of
that, what no single ADD can see:
  - keys that are not known (a warning: runtimes and chains add their own) or
    close to a known one (an error: a typo silently ignored);
  - ranges overlapping across networks whose leases are in different stores
    (host-local: each network's files; cluster-ipam: an etcd cluster and key
    prefix, shared by every network naming both), so both hand out the same
    addresses: an error, a warning only when the two networks name different
    masters or VLANs (which may be separate L2s) or the same prefix on etcd
    endpoint lists that share no URL (which may name one cluster);
  - the same network name defined twice with different IPAM: one store, two
    sets of ranges;
  - host-local in a NetworkAttachmentDefinition: host-local is per node, so on
    a shared L2 every node hands out the same addresses.
"""

import os

from cni import config as netconf
from cni import contract, dispatch, registry
from cni.errors import CniError
from cni.config_files import is_cluster_ipam, is_host_local, load, split_field
from ipam.host_local_reader import check_host_local


def main_plugin(kind):
    """Our main plugin a config's type names (exact, or prefixed: underlay-macvlan), or None."""
    name = registry.plugin_for(kind) if isinstance(kind, str) else None
    return name if name and registry.EXECUTABLES[name].role == "main" else None


def check_files(paths):
    """Every Problem of the files at `paths`, in file order, cross-file checks last."""
    problems, networks = [], []
    for path in paths:
        found, more = load(path)
        problems += more
        for network in found:
            problems += check_network(network)
        networks += found
    problems += check_across(networks)
    return problems


def check_network(network):
    problems = []

    def error(field, message, severity="error"):
        problems.append(network.problem(severity, field, message))

    try:
        contract.check_network_name(network.name)
    except CniError as e:
        error(*split_field(e.msg))
    for plugin in network.plugins:
        config = plugin.config
        kind = config.get("type")
        if not isinstance(kind, str) or not kind:
            error(plugin.at("type"), "missing: every plugin config names its plugin")
            continue
        main = main_plugin(kind)
        ipam = config.get("ipam") if isinstance(config.get("ipam"), dict) else {}
        host_local = is_host_local(ipam.get("type"))
        for field, message, severity in plugin_problems(config, main, host_local, is_cluster_ipam(ipam.get("type"))):
            error(plugin.at(field), message, severity)
        if host_local and network.nad:
            error(plugin.at("ipam.type"), "host-local is per node: one NetworkAttachmentDefinition on a shared "
                                          "L2 hands the same addresses out on every node (use cluster-wide "
                                          "IPAM)", "warning")
    return problems


def plugin_problems(config, main, host_local, cluster_ipam=False):
    """(field, message, severity) of one plugin config: keys, then the plugin's checks, then IPAM's."""
    out = [key_problem(*p) for p in key_problems(config, main, host_local, cluster_ipam)]

    def refused(e):
        # the plugin refuses a near-miss key itself: already reported, with its field, above
        if not e.msg.startswith("unknown key "):
            out.append(split_field(e.msg) + ("error",))

    if main:
        load = dispatch.plugin_module(registry.EXECUTABLES[main]).load_config
        try:
            load(contract.Request("ADD", {}, config, b""))
        except CniError as e:
            refused(e)
    warnings = []   # what the plugin accepts and warns of (its log): host bits in exclude, one block
    if host_local:
        try:
            check_host_local(config, warnings)
        except CniError as e:
            refused(e)
    if cluster_ipam:
        try:
            check_cluster_ipam(config, warnings)
        except CniError as e:
            refused(e)
    out += [split_field(w) + ("warning",) for w in warnings]
    if host_local or cluster_ipam:
        resolv = config["ipam"].get("resolvConf")
        if isinstance(resolv, str) and resolv and not os.path.isfile(resolv):
            out.append(("ipam.resolvConf", f"{resolv} is no file on this machine: ADD fails on a node "
                                           "without it", "warning"))
    return out


def check_cluster_ipam(config, warnings=None):
    """cluster-ipam's ADD checks of its config (its loader: schema, ranges, whereabouts' keys,
    blockSize; then etcd's endpoints and timeouts), without contacting etcd or reading files: resolvConf
    and the etcd certificates are a node's files (resolvConf is warned of above). Returns the loaded
    config; the loader's warnings, but unknown keys (reported on their own), go to `warnings`."""
    from ipam import cluster, etcd, verbs
    loaded = verbs.load_as_add(cluster.ClusterConfig, config, warnings)
    conf = loaded.etcd_conf   # ipam.etcd, or the one made of whereabouts' etcd_host
    if isinstance(conf, dict):
        files = ("certFile", "keyFile", "trustedCAFile")
        plain = {k: v for k, v in conf.items() if k not in files}
        if isinstance(plain.get("endpoints"), list):   # no TLS context: that would read the files
            plain["endpoints"] = [e.replace("https://", "http://", 1) if isinstance(e, str) else e
                                  for e in plain["endpoints"]]
        etcd.client_from_config(plain, "ipam.etcd").close()
    return loaded


def key_problems(config, main, host_local, cluster_ipam=False):
    """(field path, key, suggestion or None) from cni.config.key_problems: the plugin's schema for
    its own keys, host-local's (or cluster-ipam's) for the ipam section."""
    find = netconf.key_problems
    found = []
    if main:
        found += [p for p in find(main, config) if not p[0].startswith("ipam")]
    if host_local:
        found += [p for p in find("host-local", config) if p[0].startswith("ipam") or not main]
    if cluster_ipam:
        found += [p for p in find("cluster-ipam", config) if p[0].startswith("ipam") or not main]
    seen, out = set(), []
    for p in found:
        if (p[0], p[1]) not in seen:
            seen.add((p[0], p[1]))
            out.append(p)
    return out


def key_problem(path, key, suggestion):
    field = f"{path}.{key}" if path else key
    if suggestion:
        return field, f"unknown key {key!r}; did you mean {suggestion!r}? (the plugin refuses it)", "error"
    return field, f"unknown key {key!r} (kept and ignored by the plugin)", "warning"


def check_across(networks):
    """Problems no single config shows: ranges overlapping across stores, one name defined twice."""
    problems = []
    pools = []    # (network, plugin, ipam, sets, parent, store)
    for network in networks:
        for plugin in network.plugins:
            found = pool_of(network, plugin.config)
            if found is not None:
                pools.append((network, plugin) + found)
    by_name = {}
    for network, plugin, ipam, sets, parent, store in pools:
        if store[0] != "host-local":
            continue
        first = by_name.setdefault(network.name, (network, plugin, ipam))
        if first[0] is not network and first[2] != ipam:
            problems.append(network.problem("error", plugin.at("ipam"),
                                            f"network {network.name} is also defined in {place(first[0])} with "
                                            "other IPAM settings: both share one host-local store"))
    # one message per network, naming the first network it clashes with: a directory of
    # alternatives (examples) would otherwise print every pair
    for i, (b, b_plugin, _, b_sets, b_parent, b_store) in enumerate(pools):
        clashes = []
        for a, a_plugin, _, a_sets, a_parent, a_store in pools[:i]:
            shared = same_store(a_store, b_store)
            clash = first_overlap(a_sets, b_sets) if shared is not True else None
            if clash and all(c[0].name != a.name for c in clashes):
                separate = bool(a_parent[0] and b_parent[0] and a_parent != b_parent)
                clashes.append((a, a_plugin, clash, separate, a_store, shared, names_apart(a_store, b_store)))
        if not clashes:
            continue
        a, a_plugin, (ra, rb), _, a_store, shared, deliberate = clashes[0]
        others = [c[0].name for c in clashes[1:]]
        soft = all(c[3] or c[5] is None or c[6] for c in clashes)
        if a_store[0] == b_store[0] == "host-local":
            why = "each network has its own store, so both hand out the same addresses"
        elif deliberate:
            why = (f"network_name keeps their leases apart in one etcd store ({describe_store(b_store)}; "
                   f"{describe_store(a_store)}): a deliberate overlap, both hand out the same addresses")
        elif shared is None:
            why = (f"their leases may be in separate stores ({describe_store(b_store)}; {describe_store(a_store)}), "
                   "so both may hand out the same addresses (fine only if both endpoint lists name one etcd cluster)")
        else:
            why = (f"their leases are in separate stores ({describe_store(b_store)}; {describe_store(a_store)}), "
                   "so both hand out the same addresses")
        if soft and shared is not None:
            why += " (fine only if their masters are separate L2s)"
        problems.append(b.problem(
            "warning" if soft else "error", b_plugin.at(rb.field),
            f"range {rb.describe()} overlaps {ra.describe()} of network {a.name} ({place(a)}, "
            f"{a_plugin.at(ra.field)})" + (f" and ranges of {len(others)} more ({', '.join(others)})" if others else "")
            + ": " + why))
    return problems


def pool_of(network, config):
    """(ipam, range sets, (master, vlan), store) of a host-local or cluster-ipam plugin config, else
    None (also when the config is refused: that is reported on its own). The store is what leases
    live in: ("host-local", network name), or ("etcd", key prefix, endpoint URLs, etcd.prefix as given:
    the key prefix without network_name's part)."""
    ipam = config.get("ipam") if isinstance(config.get("ipam"), dict) else {}
    parent = (config.get("master"), config.get("vlan"))
    try:
        if is_host_local(ipam.get("type")):
            return ipam, check_host_local(config).range_sets, parent, ("host-local", network.name)
        if is_cluster_ipam(ipam.get("type")):
            conf = check_cluster_ipam(config)
            return ipam, conf.range_sets, parent, ("etcd", *conf.store_key(), conf.etcd_prefix)
    except CniError:
        pass
    return None


def same_store(a, b):
    """True if leases of both stores are one store's (an address is leased once), False if not,
    None if it cannot be told: one etcd prefix on endpoint lists sharing no URL (a cluster may be
    named by other hosts, or by a subset of its members)."""
    if a[0] != b[0]:
        return False
    if a[0] == "host-local":
        return a[1] == b[1]
    if a[1] != b[1]:
        return False
    return True if a[2] & b[2] else None


def names_apart(a, b):
    """Whether two etcd stores are one etcd prefix's key spaces that only network_name tells apart:
    whereabouts' way to hand out one range twice on purpose (its README's network_name example)."""
    return a[0] == b[0] == "etcd" and a[1] != b[1] and a[3] == b[3] and bool(a[2] & b[2])


def describe_store(store):
    if store[0] == "host-local":
        return f"network {store[1]}'s host-local files"
    return f"etcd {', '.join(sorted(store[2]))} prefix {store[1]}"


def first_overlap(a_sets, b_sets):
    from ipam import ranges
    for sa in a_sets:
        for ra in sa.ranges:
            for sb in b_sets:
                for rb in sb.ranges:
                    if ranges.overlap(ra, rb):
                        return ra, rb
    return None


def place(network):
    return network.file + (f" ({network.where})" if network.where else "")
