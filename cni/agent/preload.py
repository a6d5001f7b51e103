"""Warm-up: everything any invocation imports, imported once in the agent before it forks, and
the common path (a macvlan + host-local ADD, CHECK and DEL) run on a sample (warm_up)."""

import gc
import importlib
import json
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
    warm_up()
    gc.collect()
    gc.freeze()    # out of the collector's sight: a worker's collections do not touch (copy) them


WARM_UP_ROUNDS = 10   # CPython 3.11 quickens a function at its 8th call and specializes it at the next
WARM_UP_DIRS = ("/dev/shm", None)   # where its data dir may go: a tmpfs (a read-only root file system
                                     # still has one), else tempfile's choice ($TMPDIR, /tmp...)
WARM_UP_CONFIG = {"cniVersion": "1.0.0", "name": "underlayd-warm-up", "type": "macvlan", "master": "warm0",
                  "ipam": {"type": "host-local", "ranges": [[{"subnet": "192.0.2.0/24"}]]}}


def warm_up():
    """Run a sample macvlan + host-local ADD, CHECK and DEL WARM_UP_ROUNDS times in the agent itself,
    in private throw-away network namespaces (a veth master in one, the pod in the other) and a
    temporary data dir, before the socket exists. CPython's adaptive interpreter then has that path
    quickened and specialized once for all, in the pages every worker is forked from, instead of
    cold in each worker (an ADD: ~0.5 ms of CPU and ~50-130 copy-on-write faults less). Nothing of
    the node is touched; the sample is a constant and no request has been seen yet. A failure (a
    kernel without veth or macvlan links) only skips it: the workers run cold, as before."""
    import ctypes
    import io
    import shutil
    import tempfile
    import time
    from cni import dispatch, registry
    from cni.agent.service import log
    from cni.net import netlink, netns
    started = time.monotonic()
    home = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    data_dir = pod = None
    try:
        data_dir = tempfile.mkdtemp(prefix="underlayd-warm-up-",
                                    dir=next(d for d in WARM_UP_DIRS if d is None or os.access(d, os.W_OK)))
        if libc.unshare(netns.CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        pod = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)   # the pod's namespace
        if libc.unshare(netns.CLONE_NEWNET) != 0:               # the node's stand-in
            raise OSError(ctypes.get_errno(), "unshare")
        with netlink.Netlink() as nl:   # the master: a veth (kernel.probe's kinds; dummy is not everywhere)
            nl.create_link("warm0", "veth", data={"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", "warm1")]}})
            nl.set_link(nl.link("warm0").index, up=True)
        plugin = registry.EXECUTABLES["macvlan"]
        verbs = importlib.import_module(worker.PLUGINS["macvlan"]).VERBS
        config = dict(WARM_UP_CONFIG, ipam=dict(WARM_UP_CONFIG["ipam"], dataDir=data_dir))
        env = {"CNI_CONTAINERID": "underlayd-warm-up", "CNI_NETNS": f"/proc/self/fd/{pod}", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/nonexistent"}
        for _ in range(WARM_UP_ROUNDS):
            result = None
            for verb in ("ADD", "CHECK", "DEL"):
                out, err = io.StringIO(), io.StringIO()
                stdin = json.dumps(dict(config, prevResult=result) if result else config).encode()
                if dispatch.run(plugin, verbs, env=dict(env, CNI_COMMAND=verb), stdin=stdin, stdout=out, stderr=err):
                    raise RuntimeError(f"{verb}: {(out.getvalue() or err.getvalue()).strip()[:200]}")
                if verb == "ADD":
                    result = json.loads(out.getvalue())
        log(f"warmed up: {WARM_UP_ROUNDS} sample ADD, CHECK and DEL in {(time.monotonic() - started) * 1000:.0f} ms")
    except Exception as e:   # a warm-up only: the workers run cold
        log(f"warm-up skipped: {type(e).__name__}: {e}")
    finally:
        netlink.wait_sent()   # the DELs' DELLINKs returned: no thread of theirs when workers are forked
        try:
            netns.setns(home)
        except netns.NetnsError as e:   # never serve from a namespace of our own
            sys.exit(f"underlayd: cannot return to its network namespace after the warm-up: {e}")
        os.close(home)
        if pod is not None:
            os.close(pod)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
