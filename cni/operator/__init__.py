"""`underlay`: the operator's command for leases, pools and configs.

Reads host-local's stores under the lock the plugins take and cluster-ipam's
in etcd, and never changes them (but for `release-conflict`, `cluster
release-conflict` and `cluster release-node --yes`); checks
network configs with the plugins' own code. See `underlay --help`
and the README section "The underlay command".
"""

import argparse
import ipaddress
import json
import os
import sys

from cni import contract
from cni.contract import OLD_VALID_ATTACHMENTS, VALID_ATTACHMENTS
from cni.errors import CniError
from cni import config_files as configs
from cni.config_files import CONFIG_SUFFIXES, DEFAULT_CONFIG_DIR  # noqa: F401 (re-exported)
from cni.operator import cluster, dhcp, output
from ipam import host_local_reader as hostlocal
from ipam.host_local_reader import StoreProblem
from cni.operator.output import UsageError
from ipam.host_local import DEFAULT_DATA_DIR

# exit codes
OK, NO, USAGE, STORE, INTERNAL = 0, 1, 2, 3, 4

DESCRIPTION = """\
The operator's command of underlay's CNI plugins. It reads host-local's lease
stores under the same lock the plugins take, and cluster-ipam's in etcd, and
never changes them (but for `release-conflict` and `cluster release-conflict`,
`cluster release-node --yes`); it checks network configs with the plugins' own
code.

commands:
  leases     every lease: network, address, container, ifname, pod netns, since;
             then the conflict records (conflictDetection): address, MAC, since, until
  release-conflict  give a conflict record back now (the address is handed out again)
  who-has    the container holding an address
  pools      per network and range set: size, excluded, aux, reserved, in use, free
  validate   check network configs, conflists and NetworkAttachmentDefinition YAML
  gc         what host-local's GC would release for a valid list, and why (--dry-run)
  cluster    cluster-ipam's store in etcd: leases, who-has, pools, release-conflict, release-node
  dhcp       the dhcp IPAM's leases underlayd keeps renewed (its --dhcp-dir)

In the built bundle, `underlay PLUGIN` (macvlan, ipvlan, host-local) runs that
plugin, as a runtime would, for debugging by hand.

exit status: 0 done; 1 a negative answer (validate found errors, who-has found
nobody, release-node refused: the node still holds leases); 2 bad usage or
input (a bad config, an unknown node, a cluster-ipam network given to a
host-local command); 3 a store could not be read (locked, missing, no
permission, etcd unreachable: nothing on stdout then but, with -o json, an
error object); 4 an internal error (a bug: please report it). Options are
never abbreviated.

Docs: README.md, section "The underlay command".
"""


def seconds(text):
    """A lock wait as the plugins allow it: (0, 3600] s (0 would make the wait unbounded)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


class Parser(argparse.ArgumentParser):
    """No abbreviated options: `--y` must never pass for `--yes` on a command that changes a store.
    Subcommands' parsers are of the same class (argparse's default)."""

    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)


def parser():
    common = Parser(add_help=False)
    common.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="a table for people (default) or JSON for scripts")
    store = Parser(add_help=False)
    store.add_argument("--data-dir", metavar="DIR",
                       help=f"host-local's data directory (default {DEFAULT_DATA_DIR})")
    store.add_argument("--lock-timeout", metavar="SECONDS", type=seconds, default=hostlocal.DEFAULT_LOCK_TIMEOUT,
                       help="how long to wait for a store's lock (default %(default)g s, as the plugins)")
    store.add_argument("--no-trunc", action="store_true", help="full container IDs in tables")

    top = Parser(prog="underlay", description=DESCRIPTION,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="store_true", help="print underlay's version and build")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("leases", parents=[common, store], help="list leases",
                       description="Every host-local lease under the data directory.")
    p.add_argument("--network", action="append", metavar="NAME", help="only this network (repeatable)")
    p.set_defaults(run=cmd_leases)

    p = sub.add_parser("release-conflict", parents=[common, store], help="give a conflict record back now",
                       description="Give back the conflict record of ADDRESS (an address someone else on the "
                                   "LAN answered for, held by host-local since conflictDetection found it): "
                                   "the next ADD may hand it out again. The one host-local command that "
                                   "changes a store, under the plugins' lock. Exit 1 if ADDRESS holds no "
                                   "conflict record.")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--network", action="append", metavar="NAME", help="only in this network (repeatable)")
    p.set_defaults(run=cmd_release_conflict)

    p = sub.add_parser("who-has", parents=[common, store], help="who holds an address",
                       description="The lease of ADDRESS in every network of the data directory; "
                                   "exit 1 if nobody holds it.")
    p.add_argument("address", metavar="ADDRESS")
    p.set_defaults(run=cmd_who_has)

    p = sub.add_parser("pools", parents=[common, store], help="address use per range set",
                       description="Per network and range set: addresses in rangeStart..rangeEnd, excluded, "
                                   "aux, reserved (network, broadcast, gateway), in use and free. The ranges "
                                   "come from the configs; the leases from the data directory (the config's "
                                   "ipam.dataDir, unless --data-dir is given).")
    p.add_argument("--config", nargs="+", action="extend", metavar="FILE",
                   help=f"configs, conflists or NAD YAML (default: the files of {DEFAULT_CONFIG_DIR})")
    p.set_defaults(run=cmd_pools)

    p = sub.add_parser("validate", parents=[common], help="check network configs",
                       description="Check network configs, conflists and NetworkAttachmentDefinition YAML "
                                   "(several documents) as the plugins would, and across the files: unknown and "
                                   "near-miss keys, ranges overlapping, aux or excluded addresses outside every "
                                   "subnet, host-local in a NAD. Exit 1 on an error; warnings alone exit 0.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("gc", parents=[common, store], help="what a GC would release (--dry-run)",
                       description="What host-local's GC would release, given the attachments a runtime "
                                   "says are valid, and why: not in the list, or after a reboot the pod's "
                                   "netns is gone. Releases nothing: without --dry-run it refuses.")
    p.add_argument("--dry-run", action="store_true", help="required: show, release nothing")
    p.add_argument("--network", action="append", metavar="NAME",
                   help="only this network (repeatable; default: the one --valid-from names, else all)")
    p.add_argument("--valid", nargs="+", action="extend", default=[], metavar="CID/IFNAME",
                   help="an attachment to keep")
    p.add_argument("--valid-from", metavar="FILE",
                   help="a JSON file (- for stdin): a GC config with cni.dev/valid-attachments "
                        "(or cni.dev/attachments), or a list of {containerID, ifname}")
    p.add_argument("--all", action="store_true", help="also list the leases GC keeps")
    p.set_defaults(run=cmd_gc)

    dhcp.add_parser(sub, common)

    p = cluster.add_parsers(sub, common)
    p.set_defaults(run=lambda args: usage_error(p, "name a cluster subcommand"))
    return top


def usage_error(p, message):
    p.print_usage(sys.stderr)
    raise UsageError(message)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    top = parser()
    args = top.parse_args(argv)
    if args.version:
        from cni import version_info
        v = version_info()
        sys.stdout.write(f"underlay {v['version']} (build {v['build']})\n")
        return OK
    if not getattr(args, "run", None):
        top.print_help(sys.stderr)
        return USAGE
    try:
        return args.run(args)
    except UsageError as e:
        sys.stderr.write(f"underlay: {e}\n")
        return USAGE
    except StoreProblem as e:
        output.error(args, [str(e)])
        sys.stderr.write(f"underlay: {e}\n")
        return STORE
    except BrokenPipeError:   # `underlay leases | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        return OK
    except Exception as e:   # never a traceback: say what broke
        sys.stderr.write(f"underlay: internal error: {type(e).__name__}: {e}\n")
        return INTERNAL


# -- leases, who-has --------------------------------------------------------

LEASE_COLUMNS = [("NETWORK", "network"), ("ADDRESS", "address"), ("CONTAINER", "container"),
                 ("IFNAME", "ifname"), ("NETNS", "netns"), ("SINCE", "since")]


def lease_json(lease):
    return {"network": lease.network, "address": lease.address, "container": lease.container,
            "ifname": lease.ifname, "netns": lease.netns, "since": output.when(lease.since)}


def lease_row(lease, args):
    return dict(lease_json(lease), container=output.short(lease.container, args.no_trunc))


def data_dir(args):
    return os.path.abspath(args.data_dir or DEFAULT_DATA_DIR)


def snapshots(args, names=None, command="leases", note=True):
    """(snapshots, problems) of the named networks, or of every network in the data dir but
    cluster-ipam's (with `note`, said on stderr, naming `underlay cluster COMMAND`)."""
    root = data_dir(args)
    recorded = cluster.recorded_networks([root])
    if names:
        for name in names:
            if cluster.is_recorded(root, name) or (name in recorded and not os.path.isdir(os.path.join(root, name))):
                raise UsageError(cluster.elsewhere(name, command))
    else:
        names = [name for name in hostlocal.networks(root) if not cluster.is_recorded(root, name)]
        for name in sorted(recorded) if note else ():
            if name not in names:
                sys.stderr.write(f"underlay: note: {cluster.elsewhere(name, command)}\n")
    snaps, problems = [], []
    for name in names:
        try:
            snaps.append(hostlocal.read(root, name, args.lock_timeout))
        except StoreProblem as e:
            problems.append(str(e))
    return snaps, problems


def report(problems):
    for problem in problems:
        sys.stderr.write(f"underlay: {problem}\n")
    return STORE if problems else OK


def answer(args, problems, data, columns, rows, empty):
    """`data` (or the table of `rows`, or `empty`), exit 0; but when a store could not be read,
    nothing a script could take for the answer ("no leases" or `[]` of a store it could not
    read): the problems on stderr, an error object with -o json, exit 3."""
    if problems:
        output.error(args, problems)
        return report(problems)
    output.emit(args, data, columns, rows, empty)
    return OK


CONFLICT_COLUMNS = [("NETWORK", "network"), ("ADDRESS", "address"), ("CONFLICT", "mac"), ("SINCE", "since"),
                    ("UNTIL", "until")]


def conflict_json(conflict):
    return {"network": conflict.network, "address": conflict.address, "kind": "conflict", "container": None,
            "ifname": None, "netns": None, "since": output.when(conflict.since), "mac": conflict.mac,
            "until": output.when(conflict.until) if conflict.until != float("inf") else None}


def cmd_leases(args):
    snaps, problems = snapshots(args, args.network)
    leases = [lease for snap in snaps for lease in snap.leases]
    conflicts = [c for snap in snaps for c in snap.conflicts]
    data = [dict(lease_json(x), kind="lease") for x in leases] + [conflict_json(c) for c in conflicts]
    code = answer(args, problems, data, LEASE_COLUMNS, [lease_row(x, args) for x in leases],
                  f"no leases in {data_dir(args)}")
    if conflicts and not code and args.output == "table":
        sys.stdout.write("\n" + output.table(CONFLICT_COLUMNS, [conflict_json(c) for c in conflicts]))
    return code


def cmd_release_conflict(args):
    try:
        wanted = str(ipaddress.ip_address(args.address.split("/", 1)[0]))
    except ValueError:
        raise UsageError(f"{args.address!r} is not an IP address") from None
    root = data_dir(args)
    known = [name for name in hostlocal.networks(root) if not cluster.is_recorded(root, name)]
    for name in args.network or ():
        if name not in known:   # opening a store would make its directory: a typo must not
            raise UsageError(f"no host-local network {name} in {root}")
    names = args.network or known
    released = [name for name in names if hostlocal.release_conflict(root, name, wanted, args.lock_timeout)]
    if args.output == "json":
        sys.stdout.write(output.dump({"address": wanted, "released": released}))
    elif released:
        sys.stdout.write(f"gave back {wanted} in {', '.join(released)}: the next ADD may hand it out\n")
    else:
        sys.stdout.write(f"no conflict record of {wanted} in {root}\n")
    return OK if released else NO


def cmd_who_has(args):
    try:
        wanted = str(ipaddress.ip_address(args.address.split("/", 1)[0]))   # the store's spelling
    except ValueError:
        raise UsageError(f"{args.address!r} is not an IP address") from None
    snaps, problems = snapshots(args, note=False)
    found = [lease for snap in snaps for lease in snap.leases if lease.address == wanted]
    held = [c for snap in snaps for c in snap.conflicts if c.address == wanted]
    if held and not found and not problems:   # nobody's lease: held as a conflict record
        output.emit(args, [conflict_json(c) for c in held], CONFLICT_COLUMNS, [conflict_json(c) for c in held], "")
        return OK
    if not found and not problems:   # "nobody holds" must not be said of a cluster-ipam network's address
        network = cluster.network_of(wanted, cluster.recorded_networks([data_dir(args)]))
        if network:
            raise UsageError(f"{wanted} lies in {cluster.elsewhere(network, f'who-has {wanted}')}")
    return answer(args, problems, [lease_json(x) for x in found], LEASE_COLUMNS,
                  [lease_row(x, args) for x in found], f"nobody holds {wanted} in {data_dir(args)}") \
        or (OK if found else NO)


# -- pools ------------------------------------------------------------------

POOL_COLUMNS = [("NETWORK", "network"), ("SET", "set"), ("RANGES", "ranges"), ("SIZE", "size"),
                ("EXCLUDED", "excluded"), ("AUX", "aux"), ("RESERVED", "reserved"), ("IN USE", "in_use"),
                ("FREE", "free")]


def config_files(paths):
    if paths:
        return paths
    try:
        return configs.files_in(DEFAULT_CONFIG_DIR)
    except OSError as e:
        raise UsageError(f"{DEFAULT_CONFIG_DIR}: {e.strerror}; name the configs with --config") from None


def cmd_pools(args):
    paths = config_files(args.config)
    rows, problems = hostlocal.pools(paths, args.data_dir, args.lock_timeout)
    columns = POOL_COLUMNS + ([("CONFLICTS", "conflict")] if any(r["conflict"] for r in rows) else [])
    notes = [cluster.elsewhere(network.name, "pools", path, "pools")
             for path, network, _, _ in configs.ipam_users(paths, configs.is_cluster_ipam)[0]]
    if notes and not rows and not problems:
        raise UsageError("; ".join(notes))
    for note in notes:
        sys.stderr.write(f"underlay: note: {note}\n")
    return answer(args, problems, rows, columns, rows, "no host-local networks in the configs")


# -- validate ---------------------------------------------------------------

def cmd_validate(args):
    from cni.operator import validate
    problems = validate.check_files(args.files)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if args.output == "json":
        sys.stdout.write(output.dump({"errors": errors, "warnings": warnings,
                                      "problems": [p.as_json() for p in problems]}))
    else:
        for p in problems:
            sys.stdout.write(p.line() + "\n")
        sys.stdout.write(f"{len(args.files)} file(s): {errors} error(s), {warnings} warning(s)\n")
    return NO if errors else OK


# -- gc ---------------------------------------------------------------------

GC_COLUMNS = [("NETWORK", "network"), ("ADDRESS", "address"), ("CONTAINER", "container"), ("IFNAME", "ifname"),
              ("ACTION", "action"), ("WHY", "reason")]


def parse_valid(text):
    container, sep, ifname = text.rpartition("/")
    if not sep or not container or not ifname:
        raise UsageError(f"--valid {text!r}: expected CONTAINERID/IFNAME")
    return container, ifname


def read_valid_from(path):
    """(set of (containerID, ifname), network name or None) of a --valid-from file."""
    try:
        if path == "-":
            data = sys.stdin.read()
        else:
            with open(path) as f:
                data = f.read()
        document = json.loads(data)
    except OSError as e:
        raise UsageError(f"--valid-from {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"--valid-from {path}: not JSON: {e}") from None
    name = None
    if isinstance(document, dict):
        name = document.get("name") if isinstance(document.get("name"), str) else None
        if VALID_ATTACHMENTS not in document and OLD_VALID_ATTACHMENTS not in document:
            raise UsageError(f"--valid-from {path}: no {VALID_ATTACHMENTS} (or {OLD_VALID_ATTACHMENTS}) key")
    elif isinstance(document, list):
        document = {VALID_ATTACHMENTS: document}
    else:
        raise UsageError(f"--valid-from {path}: the valid attachments must be a list")
    try:   # the plugins' own rule: which key counts, and what a valid list is
        return contract.Request("GC", {}, document, b"").valid_attachments(), name
    except CniError as e:
        raise UsageError(f"--valid-from {path}: {e.msg}") from None


def cmd_gc(args):
    if not args.dry_run:
        raise UsageError("gc releases nothing itself: run it with --dry-run to see what host-local's GC would "
                         "release (the runtime's GC, CNI_COMMAND=GC through the plugin, releases)")
    if not args.valid and args.valid_from is None:
        raise UsageError("gc --dry-run needs the valid attachments (--valid CID/IFNAME ... or --valid-from FILE): "
                         "with none, GC releases every lease; say so with --valid-from and an empty list")
    valid = {parse_valid(v) for v in args.valid}
    names = args.network
    if args.valid_from is not None:
        more, name = read_valid_from(args.valid_from)
        valid |= more
        names = names or ([name] if name else None)
    snaps, problems = snapshots(args, names)
    verdicts = [v for snap in snaps for v in hostlocal.gc_plan(snap, valid)]
    shown = [v for v in verdicts if v.release or args.all]
    data = [dict(lease_json(v.lease), action="release" if v.release else "keep", reason=v.reason)
            for v in verdicts]
    rows = [dict(lease_row(v.lease, args), action="release" if v.release else "keep", reason=v.reason)
            for v in shown]
    if answer(args, problems, data, GC_COLUMNS, rows, "GC would release nothing"):
        return STORE
    if args.output == "table":
        released = sum(v.release for v in verdicts)
        sys.stdout.write(f"dry run: GC would release {released} and keep {len(verdicts) - released} "
                         f"lease(s); nothing was changed\n")
    return OK
