"""Warm-up: everything any invocation imports, imported once in the agent before it forks, and
the common paths (a macvlan + host-local ADD, CHECK and DEL; cluster-ipam's ADD and DEL against a
canned etcd) run on samples (warm_up)."""

import base64
import gc
import importlib
import io
import json
import os
import socket
import sys
import threading

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
    kernel without veth or macvlan links) only skips it: the workers run cold, as before. Then
    cluster-ipam's ADD and DEL in the same namespace (warm_up_cluster), against a canned etcd."""
    import shutil
    import tempfile
    import time
    from cni.agent.service import log
    from cni.net import netlink, netns
    started = time.monotonic()
    home = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)
    data_dir = pod = None
    try:
        data_dir = tempfile.mkdtemp(prefix="underlayd-warm-up-",
                                    dir=next(d for d in WARM_UP_DIRS if d is None or os.access(d, os.W_OK)))
        netns.unshare_net()
        pod = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)   # the pod's namespace
        netns.unshare_net()                                      # the node's stand-in
        with netlink.Netlink() as nl:   # the master: a veth (kernel.probe's kinds; dummy is not everywhere)
            nl.create_link("warm0", "veth", data={"VETH_INFO_PEER": {"attrs": [("IFLA_IFNAME", "warm1")]}})
            nl.set_link(nl.link("warm0").index, up=True)
        config = dict(WARM_UP_CONFIG, ipam=dict(WARM_UP_CONFIG["ipam"], dataDir=data_dir))
        env = {"CNI_CONTAINERID": "underlayd-warm-up", "CNI_NETNS": f"/proc/self/fd/{pod}", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/nonexistent"}
        for _ in range(WARM_UP_ROUNDS):
            result = None
            for verb in ("ADD", "CHECK", "DEL"):
                stdin = json.dumps(dict(config, prevResult=result) if result else config).encode()
                out = run_sample("macvlan", dict(env, CNI_COMMAND=verb), stdin)
                if verb == "ADD":
                    result = json.loads(out)
        log(f"warmed up: {WARM_UP_ROUNDS} sample ADD, CHECK and DEL in {(time.monotonic() - started) * 1000:.0f} ms")
        started = time.monotonic()
        try:
            warm_up_cluster(data_dir, dict(env, CNI_NETNS="/run/netns/underlayd-warm-up"))
            log(f"warmed up: {WARM_UP_ROUNDS} cluster-ipam ADD and DEL in {(time.monotonic() - started) * 1000:.0f} ms")
        except Exception as e:   # that part only: its workers run it cold
            log(f"cluster-ipam's warm-up skipped: {type(e).__name__}: {e}")
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


def warm_up_cluster(data_dir, env):
    """cluster-ipam's ADD and DEL WARM_UP_ROUNDS times (a node's cached claim and release: one pod stays
    added, so its block does), against CannedEtcd in the warm-up's own network namespace, its node's
    files in the warm-up's data dir: its workers are forked with that code quickened (~120 faults and
    ~0.5 ms of CPU less an operation). No etcd is contacted."""
    from cni.net import netlink
    with netlink.Netlink() as nl:   # the namespace's own loopback, where CannedEtcd listens
        nl.set_link(nl.link("lo").index, up=True)
    etcd = CannedEtcd()
    try:
        stdin = json.dumps(dict(WARM_UP_CONFIG, ipam={
            "type": "cluster-ipam", "node": "underlayd-warm-up", "dataDir": data_dir,
            "ranges": [[{"subnet": "192.0.2.0/24"}]],
            "etcd": {"endpoints": [f"http://127.0.0.1:{etcd.port}"], "requestTimeout": 1}})).encode()
        # pod 0 stays added throughout: its block stays, and the others' ADDs and DELs take the cached path
        rounds = [(n, verb) for n in range(1, WARM_UP_ROUNDS + 1) for verb in ("ADD", "DEL")]
        for n, verb in [(0, "ADD")] + rounds + [(0, "DEL")]:
            run_sample("cluster-ipam", dict(env, CNI_COMMAND=verb, CNI_CONTAINERID=f"underlayd-warm-up-{n}",
                                            CNI_ARGS=f"K8S_POD_NAMESPACE=underlayd;K8S_POD_NAME=warm-up-{n}"), stdin)
    finally:
        etcd.close()


def run_sample(name, env, stdin):
    """One verb of the plugin `name` run in-process on a sample, as a worker runs a request: what it
    printed, or a RuntimeError with its answer (the warm-up is then skipped)."""
    from cni import dispatch, registry
    out, err = io.StringIO(), io.StringIO()
    verbs = importlib.import_module(worker.PLUGINS[name]).VERBS
    if dispatch.run(registry.EXECUTABLES[name], verbs, env=env, stdin=stdin, stdout=out, stderr=err):
        raise RuntimeError(f"{env['CNI_COMMAND']}: {(out.getvalue() or err.getvalue()).strip()[:200]}")
    return out.getvalue()


class CannedEtcd:
    """The warm-up's stand-in for etcd's JSON gateway, in a thread on a socket of the warm-up's own
    network namespace: keys put and deleted, ranges read, every compare taken as holding. Enough for
    cluster-ipam's common ADD and DEL to run their code, not a second etcd: no revision is checked, a
    single client is served, nothing else is answered."""

    def __init__(self):
        self.keys, self.revision = {}, 1   # key -> [value, create_revision, mod_revision] (bytes, ints)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, name="underlayd-warm-up-etcd", daemon=True)
        self.thread.start()

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)   # wakes its accept()
        self.thread.join()
        self.listener.close()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with conn, conn.makefile("rb") as stream:
                    while self.answered(conn, stream):
                        pass
            except Exception:   # a request it cannot answer: that call fails, and the warm-up is skipped
                continue

    def answered(self, conn, stream):
        """One request read and answered; False at the connection's end."""
        line = stream.readline()
        length = 0
        while line not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            length = int(value) if name.lower() == b"content-length" else length
            line = stream.readline()
        if not line:
            return False
        body = json.dumps(self.answer(json.loads(stream.read(length)))).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        return True

    def answer(self, request):
        """A range's or a txn's answer (a txn's success ops applied)."""
        if "success" not in request:
            return {"header": {"revision": str(self.revision)}, "kvs": self.range(request)}
        responses = []
        for op in request.get("success", ()):
            kind, args = next(iter(op.items()))
            key = base64.b64decode(args["key"])
            if kind == "request_range":
                responses.append({"response_range": {"kvs": self.range(args)}})
                continue
            self.revision += 1
            if kind == "request_put":
                created = self.keys.get(key, [None, self.revision])[1]
                self.keys[key] = [base64.b64decode(args["value"]), created, self.revision]
            else:
                for k in self.selected(args):
                    del self.keys[k]
            responses.append({kind.replace("request_", "response_"): {}})
        return {"header": {"revision": str(self.revision)}, "succeeded": True, "responses": responses}

    def selected(self, args):
        key = base64.b64decode(args["key"])
        end = base64.b64decode(args["range_end"]) if "range_end" in args else None
        return sorted(k for k in self.keys if k == key or end is not None and key <= k < end)

    def range(self, args):
        return [{"key": base64.b64encode(k).decode(), "value": base64.b64encode(self.keys[k][0]).decode(),
                 "create_revision": str(self.keys[k][1]), "mod_revision": str(self.keys[k][2])}
                for k in self.selected(args)]
