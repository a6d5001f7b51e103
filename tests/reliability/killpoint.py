"""Run a plugin that SIGKILLs itself at a named step: the crash tests' precise kills.

    UNDERLAY_KILL_AT=add:after-create python3 -m tests.reliability.killpoint cni.plugins.macvlan

A random delay lands mostly in Python's start-up; these points put the kill
exactly between two steps (the link created but not renamed, the lease linked
but not indexed, a rollback half done). The plugin itself is unchanged: the
points wrap its functions from outside, in this test-only entry point.
UNDERLAY_FAIL_AT=configure makes the interface configuration fail, so ADD
rolls back and the rollback points are reached. UNDERLAY_STOP=1 stops the
plugin there (SIGSTOP) instead: a process hung at that step. A point never
reached lets the plugin finish normally.

    python3 -m tests.reliability.killpoint cni.agent --socket PATH

runs underlayd with every point and failure armed but dormant: each reads
UNDERLAY_KILL_AT / UNDERLAY_FAIL_AT when it is reached, so it fires in the
worker serving a request whose environment names it (tests/agent.py).
"""

import errno
import os
import runpy
import signal
import sys


def _lease_body(args, kwargs):
    return kwargs.get("keep_open", False)


def _caller(name):
    def test(args, kwargs):
        # the wrapper's caller is the function that called the wrapped one (past other wrappers of it)
        frame = sys._getframe(2)
        while frame.f_code.co_filename == __file__ and frame.f_code.co_name in ("wrapper", "failing"):
            frame = frame.f_back
        return frame.f_code.co_name == name
    return test


def _marked(name):
    def test(args, kwargs):
        return args[:1] == (name,)
    return test


# point -> (module, attribute path, before/after, filter or None)
POINTS = {
    "add:before-create": ("cni.net.netlink", "Netlink.create_link", "before", None),
    "add:after-create": ("cni.net.netlink", "Netlink.create_link", "after", None),
    "add:lease-body": ("cni.files", "write_temp", "after", _lease_body),
    "add:after-lease": ("ipam.stores.lease_files", "LeaseFiles.reserve", "after", None),
    "add:after-index": ("ipam.stores.lease_index", "AttachmentIndex.record", "after", None),
    "add:after-ipam": ("ipam.stores.lease_index", "AttachmentIndex.commit", "after", _caller("flush")),
    # the lease linked and indexed, its fsync under way beside the kernel work, not waited for
    "add:lease-unsynced": ("cni.dispatch", "wait_ipam_synced", "before", None),
    "add:before-configure": ("cni.net.iface", "configure", "before", None),
    "add:after-configure": ("cni.net.iface", "configure", "after", None),
    "add:before-result": ("cni.net.iface", "interface_result", "after", None),
    # with UNDERLAY_FAIL_AT=configure: ADD fails after IPAM and rolls back
    "add:rollback-ipam": ("ipam.stores.disk", "DiskStore.release", "after", None),
    "cluster:before-complete": ("ipam.stores.etcd", "EtcdStore.complete", "before", None),   # claimed, marked
    "add:rollback-link": ("cni.net.netlink", "Netlink.delete_link", "before", None),
    "del:before-release": ("ipam.stores.disk", "DiskStore.release", "before", None),
    "del:after-release": ("ipam.stores.disk", "DiskStore.release", "after", None),
    "del:after-forget": ("ipam.stores.lease_index", "AttachmentIndex.forget", "after", None),
    "del:before-link": ("cni.net.netlink", "Netlink.delete_link", "before", None),
    "del:after-link": ("cni.net.netlink", "Netlink.delete_link", "after", None),
    # through underlayd: the worker has answered and closed the connection, its DELLINK may still
    # be in the kernel (cni/net/netlink.py delete_link); not reached by an exec'd plugin
    "served:closed": ("cni.agent.phases", "mark", "after", _marked("closed")),
    "gc:after-release": ("ipam.stores.disk", "DiskStore.release", "after", _caller("cmd_gc")),
    # any verb after an earlier kill: the index cleared, the new one not written yet
    "rebuild": ("ipam.stores.lease_files", "LeaseFiles.records", "after", _caller("rebuild_index")),
    # the first verb after a reboot: one dead pod's lease released, the others not yet
    "heal": ("ipam.stores.lease_files", "LeaseFiles.release", "after", _caller("reclaim_dead_netns")),
}

FAILURES = {
    "configure": ("cni.net.iface", "configure"),
    "fsync": ("os", "fsync"),    # an I/O error (EIO) making the lease durable
}


def die():
    # UNDERLAY_STOP=1: stop instead (SIGSTOP), a process hung at that step
    os.kill(os.getpid(), signal.SIGSTOP if os.environ.get("UNDERLAY_STOP") else signal.SIGKILL)


def resolve(module, path):
    owner = __import__(module, fromlist=["_"])
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    return owner, attr


def kill_at(point, dormant=False):
    """Wrap the point's function; dormant: fire only while UNDERLAY_KILL_AT names it."""
    module, path, when, test = POINTS[point]
    owner, attr = resolve(module, path)
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        hit = (not dormant or os.environ.get("UNDERLAY_KILL_AT") == point) and (test is None or test(args, kwargs))
        if hit and when == "before":
            die()
        result = original(*args, **kwargs)
        if hit and when == "after":
            die()
        return result

    setattr(owner, attr, wrapper)


def fail_at(name, dormant=False):
    from cni.net import netlink
    owner, attr = resolve(*FAILURES[name])
    original = getattr(owner, attr)

    def failing(*args, **kwargs):
        if dormant and os.environ.get("UNDERLAY_FAIL_AT") != name:
            return original(*args, **kwargs)
        if name == "fsync":
            raise OSError(errno.EIO, f"injected failure in {name}")
        raise netlink.NetlinkError(errno.EIO, f"injected failure in {name}")

    setattr(owner, attr, failing)


def main():
    module = sys.argv[1]
    if module == "cni.agent":
        # several points wrap one function: each wrapper calls the one before, so all stay reachable
        for name in FAILURES:
            fail_at(name, dormant=True)
        for point in POINTS:
            kill_at(point, dormant=True)
        sys.argv = [module] + sys.argv[2:]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    if os.environ.get("UNDERLAY_FAIL_AT"):
        fail_at(os.environ["UNDERLAY_FAIL_AT"])
    if os.environ.get("UNDERLAY_KILL_AT"):
        kill_at(os.environ["UNDERLAY_KILL_AT"])
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
