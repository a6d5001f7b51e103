"""`underlay dhcp`: the dhcp IPAM's leases, as underlayd's records hold them (--dhcp-dir).

Read-only: the records are read as they are on disk (each written whole), without the lock."""

import os
import sys
import time

from cni.operator import output
from ipam.dhcp import plugin

COLUMNS = [("NETWORK", "network"), ("ADDRESS", "address"), ("CONTAINER", "container"), ("IFNAME", "ifname"),
           ("SERVER", "server"), ("STATE", "state"), ("RENEW", "renew_at"), ("EXPIRES", "expires_at"),
           ("NETNS", "netns")]


def add_parser(sub, common):
    p = sub.add_parser("dhcp", parents=[common], help="the dhcp IPAM's leases",
                       description="Every DHCP lease underlayd keeps renewed (the dhcp IPAM's records): network, "
                                   "address with the server's prefix, container, ifname, the server that granted "
                                   "it, its state (bound; renewing after T1; rebinding after T2; expired), when "
                                   "it is renewed and when it expires.")
    p.add_argument("--dhcp-dir", metavar="DIR", default=plugin.DEFAULT_DIR,
                   help="underlayd's --dhcp-dir (default %(default)s)")
    p.add_argument("--network", action="append", metavar="NAME", help="only this network (repeatable)")
    p.add_argument("--no-trunc", action="store_true", help="full container IDs in tables")
    p.set_defaults(run=cmd_dhcp)
    return p


def state(lease, now):
    if now >= lease.expires_at():
        return "expired"
    if now >= lease.rebind_at():
        return "rebinding"
    return "renewing" if now >= lease.renew_at() else "bound"


def lease_json(lease, now):
    return {"network": lease.network, "family": lease.family, "address": f"{lease.address}/{lease.prefixlen}",
            "container": lease.container_id, "ifname": lease.ifname, "server": lease.server_address,
            "state": state(lease, now), "bound_at": output.when(lease.bound_at),
            "renew_at": output.when(lease.renew_at()), "expires_at": output.when(lease.expires_at()),
            "hostname": lease.hostname, "netns": lease.netns}


def cmd_dhcp(args):
    from ipam.dhcp import records   # only here: the other commands do not pay for the DHCP client's imports
    directory = os.path.abspath(args.dhcp_dir)
    problems, leases = [], []
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None   # no lease was ever taken here
    except OSError as e:
        problems.append(f"{directory}: {e.strerror or e}")
        fd = None
    if fd is not None:
        try:
            for name in records.names(fd):
                try:
                    record = records.read(fd, name)
                except (OSError, ValueError) as e:
                    problems.append(f"{directory}/{name}: {e}")
                    continue
                if record is not None and (not args.network or record[0].network in args.network):
                    leases.append(record[0])
        finally:
            os.close(fd)
    now = time.time()
    leases.sort(key=lambda x: (x.network, x.family, x.address))
    data = [lease_json(x, now) for x in leases]
    rows = [dict(d, container=output.short(d["container"], args.no_trunc)) for d in data]
    for problem in problems:
        sys.stderr.write(f"underlay: {problem}\n")
    output.emit(args, data, COLUMNS, rows, f"no DHCP leases in {directory}")
    return 3 if problems else 0
