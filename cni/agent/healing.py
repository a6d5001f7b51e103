"""Healing missed DELs: at start and every --heal-every seconds, the leases whose recorded pod
netns is certainly gone are released (host-local's and this node's of cluster-ipam's)."""

import importlib
import math
import os

from cni.agent import networks
from cni.agent.service import log
from cni.net import netns as namespaces


class Healing:
    """A healing run at start and every --heal-every seconds (never with 0), one at a time, in a
    child of its own: it takes store locks and may wait on etcd, never in the agent's loop."""

    def __init__(self, options, children, report, metrics):
        self.options, self.children, self.report, self.metrics = options, children, report, metrics
        self.next = 0.0 if options.heal_every else math.inf
        self.healer = None

    def fds(self):
        return ()

    def due(self):
        return self.next

    def run(self, ready, now):
        self.next = now + self.options.heal_every
        if self.healer is not None:
            return   # the last run is still going
        self.metrics.heal_runs += 1
        options = self.options
        self.healer = self.children.fork(
            lambda: heal(options.data_dirs, options.config_dir, options.cluster_data_dirs, self.report), self.done)

    def done(self, pid, status):
        self.healer = None

    def stop(self):
        pass


def netns_visible(path):
    """Whether this process could see `path` if it existed: the directory of a
    named netns is there, and /proc/PID paths are read in the node's PID namespace
    (kthreadd, PID 2 with no parent, exists only there)."""
    if path.startswith("/proc/"):
        try:
            with open("/proc/2/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open("/proc/2/comm") as f:
                return f.read().strip() == "kthreadd" and fields[1] == "0"
        except (OSError, IndexError):
            return False
    return os.path.isdir(os.path.dirname(path))


def netns_certainly_gone(path):
    """Healing's judgement of a recorded netns: gone for sure (never one that exists, nor one we
    cannot judge from here)."""
    from ipam.stores import lease_index
    return netns_visible(path) and lease_index.netns_gone(path)


def heal(data_dirs, config_dir, cluster_data_dirs, report):
    """In a forked child: release every lease whose recorded pod netns is certainly gone, host-local's
    (data_dirs) and cluster-ipam's (this node's, of the networks configured in config_dir or recorded
    in cluster_data_dirs and those configs' dataDirs), in the node's mount namespace (PID 1's: the
    agent may run in a container), where the plugins' paths (netns, dataDir, etcd certificates) are
    what the plugins see."""
    healing_imports()
    try:
        fd = os.open("/proc/1/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            namespaces.enter_for_good(fd, namespaces.CLONE_NEWNS, "/proc/self/ns/mnt")
        finally:
            os.close(fd)
    except OSError as e:
        log(f"healing: cannot enter the node's mount namespace ({e.strerror or e}); healing in ours")
    heal_host_local(data_dirs, report)
    heal_cluster(config_dir, cluster_data_dirs, report)
    os._exit(0)


def healing_imports():
    """Import what healing imports lazily (the stores, configs, the etcd client, ssl for https://
    endpoints, the idna codec getaddrinfo takes) before the healer enters the node's mount namespace,
    where our own files may not be there."""
    for name in ["ipam.stores.lease_index", "ipam.stores.disk", "ipam.cluster", "cni.config_files", "ipam.etcd",
                 "ipam.stores.etcd", "ipam.stores.lease_files"]:
        importlib.import_module(name)
    for name in ("ssl", "encodings.idna"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass   # not in this build: the etcd call that needs it fails, and is logged


def heal_host_local(data_dirs, report):
    from ipam.stores import lease_index
    from ipam.stores.disk import DiskStore
    for data_dir in data_dirs:
        try:
            names = sorted(n for n in os.listdir(data_dir) if not n.startswith("."))
        except FileNotFoundError:
            continue
        except OSError as e:
            log(f"healing: {data_dir}: {e.strerror or e}")
            continue
        for network in names:
            if not os.path.isdir(os.path.join(data_dir, network, lease_index.INDEX_DIR)):
                continue   # not a store of ours (or not one yet)
            try:
                released = 0
                with DiskStore(data_dir, network) as store:     # the index is written as the block ends
                    for cid, ifname, netns, ips in store.reclaim_dead_netns(netns_certainly_gone):
                        released += len(ips)
                        log(f"healing: released {', '.join(ips)} of {cid}/{ifname} in {data_dir}/{network}: "
                            f"its netns {netns} is gone")
                if released:
                    report(f"H {os.getpid()} {network} {released}")
            except Exception as e:   # one broken store must not stop the others
                log(f"healing: {data_dir}/{network}: {getattr(e, 'msg', None) or e}")


def heal_cluster(config_dir, cluster_data_dirs, report):
    """cluster-ipam's part: per network of cluster_networks, this node's attachments whose netns is
    gone, released as DEL releases them (ipam/cluster.heal). An etcd that does not answer costs that
    network its client's timeouts (etcd.requestTimeout per call) and is logged; so is a record that
    cannot be read, and the others are healed all the same."""
    from ipam import cluster
    found, problems = networks.cluster_networks(config_dir, cluster_data_dirs)
    for problem in problems:
        log(f"healing: {problem}")
    for path, name, config in found:
        released = 0
        try:
            for cid, ifname, netns, ips in cluster.heal(config, netns_certainly_gone):
                released += len(ips)
                log(f"healing: released {', '.join(ips)} of {cid}/{ifname} in cluster-ipam network "
                    f"{name}: its netns {netns} is gone")
        except Exception as e:   # etcd unreachable, a bad config: the other networks are still healed
            log(f"healing: cluster-ipam network {name} ({path}): {getattr(e, 'msg', None) or e}")
        if released:
            report(f"H {os.getpid()} {name} {released}")
