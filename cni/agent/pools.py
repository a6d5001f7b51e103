"""The pool figures of /metrics and --textfile, read in a forked child (a scrape, a textfile
write): every network this node's agent can know, read-only, from the same code as `underlay
pools` (ipam/host_local_reader.pools, ipam/cluster.pools)."""

import os
import time

from cni import config_files
from cni.agent import networks
from cni.agent.service import log

POOL_LOCK_TIMEOUT = 2.0  # seconds a scrape waits for one store's lock (then that network is a problem)


def pool_metrics(options):
    """In a forked child (a scrape or a textfile write): the pools of every network this node's
    agent can know, read-only: host-local's (host_local_pools) and cluster-ipam's (cluster_pools).
    underlay_pool_addresses' states partition underlay_pool_size_addresses where the size is known;
    every network has underlay_pool_readable (0: see the log), every problem is counted."""
    rows, readable, problems = [], {}, []
    for part in (lambda: host_local_pools(options.config_dir, options.data_dirs),
                 lambda: cluster_pools(options.config_dir, options.cluster_data_dirs)):
        try:
            found, known, bad = part()
        except Exception as e:   # a bug: the scrape still answers, with the problem counted
            found, known, bad = [], {}, [f"{type(e).__name__}: {e}"]
        rows += found
        readable.update(known)
        problems += bad
    for problem in problems:
        log(f"pools: {problem}")
    return render_pools(rows, readable, problems)


def pool_row(network, ipam, figures=None, in_use=None):
    """One range set's figures (a row of hostlocal.pools or cluster.pools) as render_pools takes
    them; without figures, a network whose ranges are unknown: only its addresses in use."""
    if figures is None:
        return {"network": network, "ipam": ipam, "set": None, "ranges": None, "in_use": in_use}
    row = {k: figures[k] for k in ("size",) + POOL_STATES}
    row.update(network=network, ipam=ipam, set=figures["set"], ranges=figures["ranges"])
    return row


POOL_STATES = ("excluded", "aux", "reserved", "in_use", "conflict", "free")


def host_local_pools(config_dir, data_dirs):
    """(rows, readable, problems) of host-local: each network of config_dir's configs per range set,
    as `underlay pools` counts them (ipam/host_local_reader.pools); then each network directory of
    data_dirs and those configs' dataDirs that no config names (a NetworkAttachmentDefinition's):
    only its leases in use are known, its ranges are in no file on this node. A directory holding
    cluster-ipam's record is cluster-ipam's (cluster_pools), as `underlay leases` sees it."""
    from cni.errors import CniError
    from ipam import cluster, host_local
    from ipam import host_local_reader as hostlocal
    paths, problems = networks.config_paths(config_dir)
    rows, readable, configured = [], {}, set()
    if paths:
        found, bad = hostlocal.pools(paths, lock_timeout=POOL_LOCK_TIMEOUT)
        problems += bad
        for row in found:
            rows.append(pool_row(row["network"], "host-local", row))
        users, _ = config_files.ipam_users(paths, config_files.is_host_local)   # their problems are in bad
        for _, network, _, ipam in users:
            try:
                data_dir = host_local.data_dir(ipam)
            except CniError:
                continue   # refused: hostlocal.pools reported it
            if network.name:
                configured.add((os.path.abspath(data_dir), network.name))
                readable[("host-local", network.name)] = any(r["network"] == network.name for r in found)
    roots = []
    for data_dir in [*data_dirs, *(root for root, _ in sorted(configured))]:
        if os.path.abspath(data_dir) not in roots:
            roots.append(os.path.abspath(data_dir))
    for root in roots:
        try:
            names = hostlocal.networks(root)
        except hostlocal.StoreProblem as e:
            if os.path.exists(root):
                problems.append(str(e))
            continue   # not there: no host-local network has run there
        for name in names:
            if (root, name) in configured or ("host-local", name) in readable or cluster.is_recorded(root, name):
                continue
            try:
                leases = hostlocal.read(root, name, POOL_LOCK_TIMEOUT).leases
            except hostlocal.StoreProblem as e:
                problems.append(f"{root}: {e}")
                readable[("host-local", name)] = False
                continue
            rows.append(pool_row(name, "host-local", in_use=len(leases)))
            readable[("host-local", name)] = True
    return rows, readable, problems


def cluster_pools(config_dir, cluster_data_dirs):
    """(rows, readable, problems) of cluster-ipam: each network of cluster_networks per range set,
    as `underlay cluster pools` counts them (ipam/cluster.pools): the whole cluster's figures, read
    from etcd. The networks are read at once, each in a thread; one whose etcd has not answered
    within twice its requestTimeout (the leases, then the pools; each call is bounded by it) is a
    problem, and the page goes out without it."""
    import threading
    found, problems = networks.cluster_networks(config_dir, cluster_data_dirs)
    results, reads = {}, []
    for path, name, config in found:
        if any(name == read[0] for read in reads):
            continue   # two configs of one name (a file and a stale record of it): the first
        timeout = request_timeout(config)
        thread = threading.Thread(target=cluster_read, args=(results, name, config), daemon=True)
        thread.start()
        reads.append((name, path, thread, time.monotonic() + 2 * timeout))
    rows, readable = [], {}
    for name, path, thread, deadline in reads:
        thread.join(max(0.0, deadline - time.monotonic()))
        found = results.get(name)
        if isinstance(found, list):
            rows += [pool_row(name, "cluster-ipam", s) for s in found]
        elif found is None:   # still waiting: left behind, this process ends with the page
            problems.append(f"cluster-ipam network {name} ({path}): etcd did not answer within twice "
                            "its requestTimeout")
        else:
            problems.append(f"cluster-ipam network {name} ({path}): {getattr(found, 'msg', None) or found}")
        readable[("cluster-ipam", name)] = isinstance(found, list)
    return rows, readable, problems


def request_timeout(config):
    """A cluster-ipam network's requestTimeout, read as its etcd client reads it (whereabouts'
    etcd_host included); the default for a config that is refused: its read says why."""
    from cni.errors import CniError
    from ipam import cluster, etcd
    try:
        return etcd.timeout_setting(cluster.ClusterConfig(config).etcd_conf, "requestTimeout")
    except (CniError, AttributeError):
        return etcd.DEFAULT_REQUEST_TIMEOUT


def cluster_read(results, name, config):
    from cni import contract
    from ipam import cluster
    try:
        contract.check_network_name(name)   # as heal(): a record of a name no ADD could have used
        results[name] = cluster.pools(config)
    except Exception as e:   # etcd down, a bad config: a problem of this network only
        results[name] = e


def render_pools(rows, readable, problems):
    once = {}
    for row in rows:   # the same network in two files (a conflist and its copy): counted once
        once.setdefault((row["ipam"], row["network"], row["set"]), row)

    def labels(row):
        out = f'network="{label(row["network"])}",ipam="{row["ipam"]}"'
        return out if row["set"] is None else out + f',set="{row["set"]}",ranges="{label(row["ranges"])}"'

    out = ["# HELP underlay_pool_size_addresses addresses of a range set (its ranges' rangeStart..rangeEnd); "
           "cluster-ipam's are the whole cluster's\n# TYPE underlay_pool_size_addresses gauge\n"]
    for row in once.values():
        if row["set"] is not None:
            out.append(f'underlay_pool_size_addresses{{{labels(row)}}} {row["size"]}\n')
    out.append("# HELP underlay_pool_addresses addresses of a range set by state: excluded, aux, reserved "
               "(network, broadcast, gateway), in_use, conflict (held: someone else on the LAN answered for "
               "it, conflictDetection), free (their sum is the size); a network whose ranges "
               "are unknown (no config on this node) has only in_use, without set and ranges\n"
               "# TYPE underlay_pool_addresses gauge\n")
    for row in once.values():
        for state in POOL_STATES if row["set"] is not None else ("in_use",):
            out.append(f'underlay_pool_addresses{{{labels(row)},state="{state}"}} {row[state]}\n')
    out.append("# HELP underlay_pool_readable whether a network's figures could be read on this scrape "
               "(0: see the agent's log)\n# TYPE underlay_pool_readable gauge\n")
    for (ipam, network), ok in sorted(readable.items()):
        out.append(f'underlay_pool_readable{{network="{label(network)}",ipam="{ipam}"}} {int(ok)}\n')
    out.append("# HELP underlay_pool_problems configs, records, stores or etcds that could not be read for "
               "these figures (see the agent's log)\n# TYPE underlay_pool_problems gauge\n")
    out.append(f"underlay_pool_problems {len(problems)}\n")
    return "".join(out)


def label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
