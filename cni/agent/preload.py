"""Warm-up: everything any invocation imports, imported once in the agent before it forks."""

import gc
import importlib
import os
import sys

from cni.agent import worker


def preload():
    """Import every plugin and what they import lazily, and run the paths that
    compile things on first use, so a worker starts with all of it in memory."""
    for name in list(worker.PLUGINS.values()) + \
            ["cni.net.kernel", "subprocess", "traceback", "ipaddress", "json", "ipam.host_local_reader",
             "ipam.allocator", "cni.results",
             # cluster-ipam's store, its client and what connecting imports (a host name's IDNA
             # codec: unicodedata, a C extension): each served operation imported them (~2.5 ms of
             # CPU). Not ssl (https etcd): +4 MiB of PSS for every agent, https or not
             "ipam.stores.etcd", "ipam.etcd", "base64", "encodings.idna"] + ["cni.schemas." + p.replace("-", "_") for p in worker.PLUGINS]:
        importlib.import_module(name)
    from cni.net import netlink, netns
    with netlink.Netlink() as nl:     # a first round trip: the socket, a request packed, its reply parsed
        nl.find_link("lo")
    fd = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.setns(fd)               # our own netns: loads ctypes and libc's setns (a worker's too)
    except netns.NetnsError as e:     # no worker could enter a caller's netns: say so, do not start
        sys.exit(f"underlayd: cannot enter network namespaces ({e}): it needs CAP_SYS_ADMIN, as the plugins do")
    finally:
        os.close(fd)
    gc.collect()
    gc.freeze()    # out of the collector's sight: a worker's collections do not touch (copy) them
