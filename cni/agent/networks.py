"""The networks this node's agent knows: configured in --config-dir, recorded in dataDirs.
What healing and the pool figures read."""

import json

from cni import config_files


def config_paths(config_dir):
    """(paths, problems): the network config files of --config-dir, which the pool figures and the
    healing of cluster-ipam read; none when it does not exist (no networks yet on this node)."""
    try:
        return config_files.files_in(config_dir), []
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"--config-dir {config_dir}: {e.strerror or e}"]


def cluster_networks(config_dir, cluster_data_dirs):
    """(networks, problems): (path, name, config) of each cluster-ipam network configured in
    config_dir, then of each network an ADD recorded (ipam/cluster.RECORD) in cluster_data_dirs or
    those configs' dataDirs that no config names (a NetworkAttachmentDefinition's: Multus hands its
    config to the plugin, no file holds it); what healing and the pool figures read. problems: lines
    for the files and records that could not be read (the others are found all the same)."""
    from cni.errors import CniError
    from ipam import cluster
    paths, problems = config_paths(config_dir)
    found, bad = config_files.ipam_users(paths, config_files.is_cluster_ipam)
    problems += bad
    networks = [(path, network.name, plugin.config) for path, network, plugin, ipam in found]
    configured = {name for _, name, _ in networks}   # a config file wins over a record of its name
    data_dirs = list(cluster_data_dirs)
    for _, _, _, ipam in found:
        try:
            data_dir = cluster.data_dir(ipam)
        except CniError:
            continue   # refused: the config's problem, which healing and the pool figures report
        if data_dir not in data_dirs:
            data_dirs.append(data_dir)
    for data_dir in data_dirs:
        records, bad = cluster.recorded_networks(data_dir)
        problems += bad
        networks += [(path, config["name"], config) for path, config in records if config["name"] not in configured]
    once, seen = [], set()
    for path, name, config in networks:
        key = json.dumps([name, config.get("ipam")], sort_keys=True)
        if key not in seen:   # the same network in two files (a conflist and its copy): once
            seen.add(key)
            once.append((path, name, config))
    return once, problems
