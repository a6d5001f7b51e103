"""`underlay cluster ...`: cluster-ipam's etcd store as the operator reads it, and the dead-node command.

The store's logic is ipam/cluster.py's (leases, who_has, pools, release_node);
this module parses, maps cluster-ipam's errors onto the command's exit codes
and prints. ipam/cluster.py is imported when a command first needs it
(cluster_module), so the other commands start without it.
"""

import ipaddress
import sys

from cni.errors import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_NOT_AVAILABLE, CniError
from cni.operator import output
from cni.operator.output import UsageError
from ipam.host_local_reader import StoreProblem


class Refused(Exception):
    """A negative answer with a reason: exit 1."""


def add_parsers(sub, common):
    p = sub.add_parser("cluster", help="cluster-ipam's etcd store",
                       description="cluster-ipam's store in etcd: its leases, who holds an address, its pools, "
                                   "and releasing a node that never comes back. --config names a network config "
                                   "(config, conflist or NAD YAML) whose ipam is cluster-ipam: its ipam.etcd "
                                   "says where etcd is; every cluster-ipam network of the file (each document) "
                                   "is read. Reads only, except release-node --yes.")
    csub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    config = dict(required=True, metavar="FILE", help="a network config with cluster-ipam as its ipam")

    c = csub.add_parser("leases", parents=[common], help="leases and sticky holds in etcd",
                        description="Every lease (and sticky hold, and conflict record) under the config's etcd "
                                    "prefix: network, address, node, kind, container, ifname, pod, since; "
                                    "with conflicts, the MAC that answered and when it is given back.")
    c.add_argument("--config", **config)
    c.add_argument("--node", action="append", metavar="NODE", help="only this node's (repeatable)")
    c.add_argument("--network", action="append", metavar="NAME", help="only this network's (repeatable)")
    c.add_argument("--no-trunc", action="store_true", help="full container IDs in tables")
    c.set_defaults(run=cmd_leases)

    c = csub.add_parser("who-has", parents=[common], help="who holds an address",
                        description="The lease or sticky hold of ADDRESS in etcd (any network); exit 1 if "
                                    "nobody holds it.")
    c.add_argument("address", metavar="ADDRESS")
    c.add_argument("--config", **config)
    c.add_argument("--no-trunc", action="store_true", help="full container IDs in tables")
    c.set_defaults(run=cmd_who_has)

    c = csub.add_parser("pools", parents=[common], help="address use per range set, blocks per node",
                        description="Per range set of the config's network: addresses in rangeStart..rangeEnd, "
                                    "excluded, aux, reserved (network, broadcast, gateway), in use (every "
                                    "network's leases and holds in its subnets), free, sticky holds; then per "
                                    "node: blocks owned, leases, and how many of those are borrowed from "
                                    "another node's block (by the pool's blocks as stored, whatever the "
                                    "config's blockSize says now).")
    c.add_argument("--config", **config)
    c.set_defaults(run=cmd_pools)

    c = csub.add_parser("release-conflict", parents=[common], help="give a conflict record back now",
                        description="Give back the conflict record of ADDRESS (an address someone else on the "
                                    "LAN answered for, held in etcd since conflictDetection found it): any "
                                    "node's next ADD may hand it out again. Exit 1 if ADDRESS holds none.")
    c.add_argument("address", metavar="ADDRESS")
    c.add_argument("--config", **config)
    c.set_defaults(run=cmd_release_conflict)

    c = csub.add_parser("release-node", parents=[common], help="release a node that never comes back",
                        description="Release every lease (every network) and block a node holds. Refused "
                                    "(exit 1) while it still holds leases unless --force: only the operator "
                                    "knows the node is gone for good. A NODE etcd knows nothing of is an error "
                                    "(exit 2). With sticky, a known pod's lease becomes its hold (still the "
                                    "node's). Blocks where other nodes still borrow addresses, or holds remain, "
                                    "are orphaned for any node to adopt.")
    c.add_argument("node", metavar="NODE")
    c.add_argument("--config", **config)
    c.add_argument("--force", action="store_true", help="even while the node still holds leases")
    c.add_argument("--yes", action="store_true", help="required: this changes the store")
    c.add_argument("--network", metavar="NAME",
                   help="the network of --config whose etcd store to use, when its networks name several")
    c.set_defaults(run=cmd_release_node)
    return p


def cluster_module():
    """ipam/cluster.py, imported when a command first needs it: the others start without it."""
    from ipam import cluster
    return cluster


def cluster_configs(path):
    """The plugin configs of `path` whose ipam is cluster-ipam: every network of every document."""
    from cni import config_files as configs
    networks, problems = configs.load(path)
    for p in problems:
        if p.severity == "error":
            raise UsageError(p.line())
    found = []
    for network in networks:
        for plugin in network.plugins:
            ipam = plugin.config.get("ipam")
            if isinstance(ipam, dict) and isinstance(ipam.get("type"), str) and ipam["type"].endswith("cluster-ipam"):
                found.append(plugin.config)
    if not found:
        raise UsageError(f"{path}: no plugin with ipam type cluster-ipam")
    return found


def by_store(args, found):
    """The configs grouped by the etcd store their leases are in (ipam.cluster.store_key: endpoints
    and key prefix, network_name's included): [[config, ...], ...]."""
    groups = {}
    for config in found:
        groups.setdefault(call(args, "store_key", config), []).append(config)
    return list(groups.values())


def call(args, name, config, *params, **kw):
    """ipam.cluster.<name>(config, ...), cluster-ipam's errors turned into the command's exit codes:
    a bad config is bad input (2); etcd unreachable or refusing (11, 5) a store not read (3)."""
    cluster = cluster_module()
    try:
        return getattr(cluster, name)(config, *params, **kw)
    except CniError as e:
        if e.code in (ERR_INVALID_CONFIG, ERR_INVALID_ENV):
            raise UsageError(f"{args.config}: {e.msg}") from None
        if e.code == ERR_NOT_AVAILABLE and name == "release_node":
            raise Refused(e.msg) from None
        raise StoreProblem(f"{args.config}: {e.msg}" + (f" ({e.details})" if e.details else "")) from None
    except cluster.UnknownNode as e:
        raise UsageError(f"{args.config}: {e}") from None


def each_store(args, name, *params):
    """ipam.cluster.<name> once per etcd store the file's networks name, the results in a list."""
    return [call(args, name, group[0], *params) for group in by_store(args, cluster_configs(args.config))]


# -- what host-local's commands say of cluster-ipam networks -------------------

def recorded_networks(data_dirs):
    """{network: (RECORD path, ipam)} of the cluster-ipam networks an ADD recorded in `data_dirs`
    (ipam/cluster.py RECORD), and in cluster-ipam's default dataDir: on this node, those are
    cluster-ipam's, their leases in etcd, not host-local's."""
    cluster = cluster_module()
    found = {}
    for data_dir in dict.fromkeys(list(data_dirs) + [cluster.DEFAULT_DATA_DIR]):
        for path, config in cluster.recorded_networks(data_dir)[0]:
            found.setdefault(config["name"], (path, config["ipam"]))
    return found


def network_of(address, recorded):
    """The name of the recorded network whose ranges hold `address`, or None."""
    if not recorded:
        return None
    from ipam import verbs
    cluster = cluster_module()
    ip = ipaddress.ip_address(address)
    for name, (_, ipam) in sorted(recorded.items()):
        try:
            sets = verbs.load_as_add(cluster.ClusterConfig, {"name": name, "ipam": ipam}, None).range_sets
        except CniError:
            continue   # a record no ADD could have written: not one to point at
        if any(s.subnet_range_of(ip) for s in sets):
            return name
    return None


def is_recorded(data_dir, name):
    """Whether <data_dir>/<name> is a network directory of cluster-ipam's (its ADD's RECORD is there)."""
    return cluster_module().is_recorded(data_dir, name)


def elsewhere(name, command, config=None, what="leases"):
    """What a host-local command says of a cluster-ipam network: where its leases are, and which
    `underlay cluster` command reads them."""
    hint = "" if config else " (FILE: the network's config, e.g. its NetworkAttachmentDefinition)"
    return (f"network {name} is cluster-ipam's: its {what} are in etcd, not in a host-local store; "
            f"ask etcd with `underlay cluster {command} --config {config or 'FILE'}`{hint}")


# -- leases, who-has --------------------------------------------------------

LEASE_COLUMNS = [("NETWORK", "network"), ("ADDRESS", "address"), ("NODE", "node"), ("KIND", "kind"),
                 ("CONTAINER", "container"), ("IFNAME", "ifname"), ("POD", "pod"), ("SINCE", "since")]


def lease_json(row):
    """A row of ipam.cluster.leases() as the command shows it (the host-local listing's names)."""
    since = {"lease": row["time"], "hold": row["released"]}.get(row["kind"])
    if row["kind"] == "conflict" and isinstance(row["since"], (int, float)):
        since = output.when(row["since"])
    return {"network": row["network"], "address": row["ip"], "node": row["node"], "kind": row["kind"],
            "container": row["containerID"], "ifname": row["ifname"], "namespace": row["namespace"],
            "pod": row["pod"], "since": since,
            "until": output.when(row["until"]) if isinstance(row["until"], (int, float)) else None,
            "pool": row["pool"], "block": row["block"], "mac": row["mac"]}


def lease_table_row(lease, args):
    pod = f"{lease['namespace']}/{lease['pod']}" if lease["namespace"] and lease["pod"] else None
    return dict(lease, container=output.short(lease["container"], args.no_trunc) if lease["container"] else None,
                pod=pod)


def cmd_leases(args):
    found = [lease_json(r) for rows in each_store(args, "leases") for r in rows]
    found = [x for x in found if (not args.node or x["node"] in args.node)
             and (not args.network or x["network"] in args.network)]
    columns = LEASE_COLUMNS + ([("MAC", "mac"), ("UNTIL", "until")] if any(x["mac"] for x in found) else [])
    output.emit(args, found, columns, [lease_table_row(x, args) for x in found], "no leases")
    return 0


def cmd_release_conflict(args):
    try:
        wanted = str(ipaddress.ip_address(args.address.split("/", 1)[0]))
    except ValueError:
        raise UsageError(f"{args.address!r} is not an IP address") from None
    released = any(each_store(args, "release_conflict", wanted))
    if args.output == "json":
        sys.stdout.write(output.dump({"address": wanted, "released": released}))
    else:
        sys.stdout.write(f"gave back {wanted}: any node's next ADD may hand it out\n" if released
                         else f"no conflict record of {wanted} in etcd\n")
    return 0 if released else 1


def cmd_who_has(args):
    try:
        wanted = str(ipaddress.ip_address(args.address.split("/", 1)[0]))
    except ValueError:
        raise UsageError(f"{args.address!r} is not an IP address") from None
    found = [lease_json(row) for row in each_store(args, "who_has", wanted) if row]
    output.emit(args, found, LEASE_COLUMNS, [lease_table_row(x, args) for x in found], f"nobody holds {wanted}")
    return 0 if found else 1


# -- pools ------------------------------------------------------------------

POOL_COLUMNS = [("NETWORK", "network"), ("SET", "set"), ("RANGES", "ranges"), ("SIZE", "size"),
                ("EXCLUDED", "excluded"), ("AUX", "aux"), ("RESERVED", "reserved"), ("IN USE", "in_use"),
                ("FREE", "free"), ("HELD", "held"), ("BLOCKS", "blocks"), ("BORROWED", "borrowed")]
NODE_COLUMNS = [("NETWORK", "network"), ("SET", "set"), ("NODE", "node"), ("BLOCKS", "blocks"),
                ("LEASES", "leases"), ("BORROWED", "borrowed")]


def cmd_pools(args):
    sets = [dict(s, network=config.get("name")) for config in cluster_configs(args.config)
            for s in call(args, "pools", config)]
    if args.output == "json":
        sys.stdout.write(output.dump(sets))
        return 0
    conflicts = [("CONFLICTS", "conflict")] if any(s["conflict"] for s in sets) else []
    sys.stdout.write(output.table(POOL_COLUMNS + conflicts, sets))
    nodes = [dict(n, network=s["network"], set=s["set"],
                  node=n["node"] if n["node"] is not None else "(orphaned)")
             for s in sets for n in s["nodes"]]
    sys.stdout.write("\n" + (output.table(NODE_COLUMNS, nodes) if nodes else "no blocks claimed yet\n"))
    return 0


# -- release-node -----------------------------------------------------------

def cmd_release_node(args):
    if not args.yes:
        raise UsageError(f"release-node changes the store: add --yes to release every lease and block of "
                         f"{args.node}")
    groups = by_store(args, cluster_configs(args.config))
    if args.network:
        groups = [[c for c in group if c.get("name") == args.network] for group in groups]
        groups = [group for group in groups if group]
        if not groups:
            raise UsageError(f"{args.config}: no cluster-ipam network {args.network}")
    if len(groups) > 1:
        # one store per run: a refusal (or a typo) on the second must not come after the first changed
        names = ", ".join(group[0].get("name") or "?" for group in groups)
        raise UsageError(f"{args.config}: its cluster-ipam networks ({names}) are kept in {len(groups)} "
                         "etcd stores: name the one whose store to release the node in with --network NAME")
    config, *others = groups[0]
    try:
        released = call(args, "release_node", config, args.node, force=args.force, others=others)
    except Refused as e:
        sys.stderr.write(f"underlay: refused: {e}: add --force to release them\n")
        return 1
    if args.output == "json":
        sys.stdout.write(output.dump(released))
    else:
        sys.stdout.write(f"released node {released['node']}: {released['leases']} lease(s), "
                         f"{released['blocks_deleted']} block(s) returned to the pool, "
                         f"{released['blocks_orphaned']} orphaned (other nodes still borrow in them), "
                         f"{released['blocks_held']} orphaned keeping sticky holds (for their pods; "
                         f"any node may adopt them)\n")
    return 0
