"""A worker: one invocation served as an exec'd plugin would run it, then exit.

Forked by the server (cni/agent/server.py) as a spare; once it has accepted a
caller, it receives the request (argv, environment, stdin, the caller's fds and
namespaces: cni/handoff.py), takes on the caller's context (`become`), runs the
plugin's own main() and sends its exit code back. It never imports anything
(cni/agent/preload.py did it all): in the caller's mount namespace the agent's
own files may not be there.
"""

import fcntl
import io
import json
import os
import re
import select
import socket
import struct
import sys
import time
import types

from cni import contract, handoff, registry
from cni.agent import phases
from cni.agent.service import log
from cni.errors import CniError
from cni.net import netns

RECEIVE_SIZE = 1 << 16   # the first read of a request: a runtime's is a few KiB
REQUEST_WAIT = 30.0      # for the request after b"R": a caller sends it at once (unless starved of CPU)
# name -> module of every plugin served (cni/agent/preload.py imports them)
PLUGINS = {name: registry.module_of(name) for name in registry.cni_plugins()}


class Request:
    def __init__(self, payload, fds):
        # protocol, name called, umask, argc, then argc args, envc, envc entries, stdin (may hold NULs)
        protocol, called, umask, argc, rest = payload.split(b"\0", 4)
        if protocol != handoff.PROTOCOL:
            raise ValueError("protocol version")
        argc = int(argc)
        *args, envc, rest = rest.split(b"\0", argc + 1)
        envc = int(envc)
        *self.env, self.stdin = rest.split(b"\0", envc)
        if len(args) != argc or len(self.env) != envc:
            raise ValueError("truncated")
        called = called.decode()
        # the compiled client sends the name it was called by (`underlay-macvlan`), Python the plugin's
        self.plugin = registry.plugin_for(called) or called
        self.umask = int(umask, 8)
        self.argv = [arg.decode("utf-8", "surrogateescape") for arg in args]
        if len(fds) != 6:
            raise ValueError(f"{len(fds)} file descriptors")
        self.stdout, self.stderr, self.netns, self.mntns, self.root, self.cwd = fds


def receive(conn):
    """The request after b"R", or None when the caller gave up (nothing was started)."""
    fd_size = 6 * struct.calcsize("i")
    try:
        # the header and, as a client sends them in one sendmsg, most often the whole payload
        data, ancdata, flags, _ = conn.recvmsg(RECEIVE_SIZE, socket.CMSG_SPACE(fd_size), socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None
    fds = []
    for level, kind, blob in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(struct.unpack(f"{len(blob) // 4}i", blob[:len(blob) // 4 * 4]))
    try:
        if not data or flags & socket.MSG_CTRUNC:
            return None
        while len(data) < 8:
            more = conn.recv(8 - len(data))
            if not more:
                return None
            data += more
        size = int.from_bytes(data[:8], "big")
        if size > handoff.MAX_REQUEST or len(data) > 8 + size:
            return None
        if len(data) < 8 + size:
            payload = bytearray(data[8:])
            while len(payload) < size:
                more = conn.recv(min(size - len(payload), 1 << 20))
                if not more:
                    return None
                payload += more
            data = bytes(payload)
        else:
            data = data[8:]
        request = Request(data, fds)
        fds = []
        return request
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        for fd in fds:
            os.close(fd)


# read_sample's samples: a request of each kind (plugin, IPAM) a spare can warm up for, on constants
LINK_PLUGINS = ("macvlan", "ipvlan")   # their link's rehearsal (child_link.rehearse)
SAMPLE_PLUGIN = "macvlan"   # the main plugin of an IPAM plugin's sample (an IPAM gets its main plugin's config)
SAMPLE_IPAM = {"host-local": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]],
                              "routes": [{"dst": "0.0.0.0/0"}]},
               "cluster-ipam": {"type": "cluster-ipam", "node": "sample", "dataDir": "/run/sample",
                                "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                                "ranges": [[{"subnet": "10.0.0.0/16"}]]}}
FIRST_KIND = ("macvlan", "host-local")   # before the agent has served anything: the most common request
RECENT = 4               # the kinds of the last RECENT requests served are what the next spares warm up for
WARM_UP_AFTER = 0.01     # s: a served ADD's own CPU work is ~5 ms
BUSY_SHARE = 0.5         # of the time since a spare last looked that some task waited for a core: no warm-up
SAMPLE_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "sample", "CNI_NETNS": "/run/netns/sample",
              "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
              "CNI_ARGS": "K8S_POD_NAMESPACE=sample;K8S_POD_NAME=sample;K8S_POD_INFRA_CONTAINER_ID=sample"}
# ... and the code a request runs that no rehearsal can (it makes system calls): the functions of these
# modules and classes ("module:Class"), whose first call in a fresh fork writes to their pages, by the
# part of a request that runs them. "common" goes with a link's or host-local's part, not cluster-ipam's
# alone: there it cost a spare ~100 faults to spare its request ~20.
SAMPLE_CODE = {
    "common": ("cni.dispatch", "cni.files", "cni.locks", "contextlib:_BaseExitStack", "contextlib:ExitStack",
               "socket:socket", "posixpath", "os"),
    "link": ("cni.plugins.child_link", "cni.plugins.lan:Neighbours", "cni.net.netlink:Netlink", "cni.net.netns",
             "cni.net.iface", "cni.net.parents"),
    "host-local": ("ipam.host_local", "ipam.allocator", "ipam.stores.disk:DiskStore", "ipam.stores.lease_files",
                   "ipam.stores.lease_files:LeaseFiles", "ipam.stores.lease_index",
                   "ipam.stores.lease_index:AttachmentIndex"),
}
# In the agent: the kinds of the last requests served (note_served), oldest first; a spare reads them as
# it was forked (kinds_to_warm). Only names of this build's plugins and of SAMPLE_IPAM: no request data.
recent = []


def note_served(pid, plugin, ipam):
    """In the agent, a worker's "K" report: the kind of request it served, kept for the next spares."""
    if plugin not in PLUGINS:
        return
    recent.append((plugin, ipam if ipam in SAMPLE_IPAM else None))
    del recent[:-RECENT]


def kinds_to_warm():
    """The kinds a spare warms up for: those of the last requests served, each once, the latest first."""
    kinds = []
    for kind in reversed(recent or [FIRST_KIND]):
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def kind_of(request):
    """(plugin, IPAM) of a request served, by the names of this build's plugins: the IPAM its config names
    when it is one of SAMPLE_IPAM (an IPAM plugin called is its own), else "-"."""
    plugin = request.plugin
    if registry.EXECUTABLES[plugin].role == "ipam":
        return plugin, plugin if plugin in SAMPLE_IPAM else "-"
    try:
        ipam = registry.in_process_ipam(contract.ipam_type(json.loads(request.stdin)))
    except (ValueError, AttributeError, RecursionError, CniError):
        ipam = None
    return plugin, ipam.name if ipam is not None and ipam.name in SAMPLE_IPAM else "-"


def sample_config(kind):
    """The constant config a spare reads for a kind of request."""
    plugin, ipam = kind
    config = {"cniVersion": "1.0.0", "name": "sample", "type": plugin if plugin in LINK_PLUGINS else SAMPLE_PLUGIN,
              "master": "eth0"}
    if ipam is not None:
        config["ipam"] = SAMPLE_IPAM[ipam]
    return json.dumps(config).encode()


def prepare(listener):
    """Done by a spare while it waits, off the caller's time, and nothing a request could see: the
    agent's environment dropped (become() puts the caller's in its place), one text stream made
    and thrown away (the first one made in a fresh fork copies the pages it allocates in: ~50 us),
    a sample request's configs read (read_sample) for each kind of request the agent served last
    (kinds_to_warm), and its receiving and context rehearsed (rehearse), unless a caller comes first
    or the cores are busy (Cores)."""
    os.environb.clear()
    io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    # A spare is forked as a request starts: it lets that request's work pass before warming up
    # (it took a core from it). A caller coming meanwhile is served at once, cold, as before.
    # Not SCHED_IDLE instead: on a loaded node such a spare would wait for ever for a core, and
    # callers for it.
    cores = Cores()
    if select.select([listener], [], [], WARM_UP_AFTER)[0]:
        return
    for kind in kinds_to_warm():
        if cores.busy():
            return
        try:
            read_sample(kind)
        except Exception:   # a warm-up only (tests/unit/test_agent.py reads the samples): never a spare lost
            pass
        if select.select([listener], [], [], 0)[0]:
            return   # a caller: served now, not after the rest of the warm-up
    if cores.busy():
        return
    try:
        rehearse()
    except Exception:   # a warm-up too
        pass
    phases.mark("warmed up")   # a traced request's line says whether its worker was warm


class Cores:
    """Whether the cores were busy since the last look: some task waited for a core (PSI's CPU
    "some" stall, /proc/pressure/cpu) over more than BUSY_SHARE of the time passed. A warm-up moves
    a request's first touches off its caller's time, not off the CPU, and costs more than it spares
    (the sample's work is done again by the request): on busy cores it only takes time from the work
    waiting there. 1 000 cluster-ipam ADDs over 10 agents, always warming up: ~2 ms more of the
    agents' CPU an ADD (docs/performance.md, "eighth pass"). Without PSI: never busy (as before)."""

    def __init__(self, pressure="/proc/pressure/cpu", clock=time.monotonic):
        self.pressure, self.clock = pressure, clock
        self.stall, self.at = self.stalled(), clock()

    def stalled(self):
        """Microseconds some task has waited for a core since boot (None: no PSI)."""
        try:
            with open(self.pressure, "rb") as f:
                return int(f.readline().rsplit(b"total=", 1)[1])
        except (OSError, ValueError, IndexError):
            return None

    def busy(self):
        stall, at = self.stalled(), self.clock()
        waited = None if stall is None or self.stall is None else stall - self.stall
        busy = waited is not None and waited > BUSY_SHARE * (at - self.at) * 1e6
        self.stall, self.at = stall, at
        return busy


def rehearse():
    """Receive a constant sample request from this spare itself (a socket pair) and take on its
    context, the spare's own (its namespaces, root, cwd, umask, stdout and stderr), then put back
    fds 0-2, the streams, argv and the (empty) environment: the first receive and become() in a
    fresh fork write to ~100 of the agent's pages (reference counts, the environment's and the
    streams' objects), each a copy-on-write fault a caller waited for (~0.15 ms). Nothing of a
    request: the sample is a constant and its context the spare's own; nothing stays changed but
    the pages copied."""
    for fd in (0, 1, 2):
        os.fstat(fd)   # OSError when one is closed (started so, an agent may hold any fd there): none
    std = [(os.dup(fd), os.get_inheritable(fd)) for fd in (0, 1, 2)]
    saved = sys.stdin, sys.stdout, sys.stderr, sys.argv, handoff.status
    try:
        conn, caller = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            handoff.peer_of(conn)
            conn.settimeout(REQUEST_WAIT)
            conn.sendall(handoff.READY)
            caller.recv(len(handoff.READY))
            handoff.send_request(caller, handoff.request_payload(SAMPLE_PLUGIN, [SAMPLE_PLUGIN], SAMPLE_ENV,
                                                                 sample_config(FIRST_KIND)))
            request = receive(conn)
            conn.settimeout(None)
            try:
                become(request)
            except OSError:   # it closes the fds it was handed only once it has taken them over
                for fd in (request.stdout, request.stderr, request.netns, request.mntns, request.root, request.cwd):
                    os.close(fd)
                raise
        finally:
            conn.close()
            caller.close()
    finally:
        for fd, (copy, inheritable) in enumerate(std):
            os.dup2(copy, fd, inheritable=inheritable)
            os.close(copy)
        sys.stdin, sys.stdout, sys.stderr, sys.argv, handoff.status = saved
        os.environb.clear()


def read_sample(kind=FIRST_KIND):
    """Read a constant sample config of `kind` (plugin, IPAM) as the plugins read a request's (stdin,
    their schema, the IPAM's config), rehearse what its ADD computes with no system call (a link
    plugin's: child_link.rehearse, with its IPAM's; an IPAM plugin's: dispatch.rehearse_ipam) and
    touch the functions of SAMPLE_CODE for its parts, and drop it all: the first run in a fresh fork
    writes to hundreds of the agent's pages (reference counts of the decoder's, validators', parsers'
    and functions' objects, the interpreter's caches), each a copy-on-write fault: ~1.5 ms a request
    paid. Done here, they are copied before a caller waits; only the parts the kind runs (a part no
    request then runs is CPU for nothing). No request has been seen yet, and the spare serves one, then
    exits: nothing of a request can be kept for the next (the kind is two names of this build's)."""
    from cni import dispatch
    from cni.plugins import child_link   # preloaded: no file is read
    plugin, ipam = kind
    request = contract.read_request(SAMPLE_ENV, sample_config(kind))
    if plugin in LINK_PLUGINS:
        child_link.rehearse(sys.modules[PLUGINS[plugin]].KIND, request)
    elif ipam is not None:
        dispatch.result_text(dispatch.rehearse_ipam(request), request.version)   # the answer an IPAM prints
    parts = (["link"] if plugin in LINK_PLUGINS else []) + ([ipam] if ipam in SAMPLE_CODE else [])
    for part in (["common"] + parts) if parts else []:
        for name in SAMPLE_CODE[part]:
            module, _, cls = name.partition(":")
            owner = getattr(sys.modules[module], cls) if cls else sys.modules[module]
            [value.__code__ for value in vars(owner).values() if isinstance(value, types.FunctionType)]


def become(request):
    """Take on the caller's context, as an exec'd plugin would have it: its mount and network
    namespaces (so dataDir, logFile and pod netns paths name what they name for the caller,
    wherever the agent runs), cwd, umask, fds, environment and argv. Until the fds are taken
    over nothing is changed that matters: an OSError here means "run it yourself"."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        netns.enter_for_good(request.mntns, netns.CLONE_NEWNS, "/proc/self/ns/mnt")
        netns.enter_for_good(request.netns, netns.CLONE_NEWNET, netns.SELF)
        os.fchdir(request.root)   # the caller's root, which a chroot may make other than its namespace's
        os.chroot(".")
        os.fchdir(request.cwd)
        os.umask(request.umask)
    except OSError:
        os.close(null)
        raise
    os.dup2(null, 0)
    os.dup2(request.stdout, 1)
    os.dup2(request.stderr, 2)
    for fd in (null, request.stdout, request.stderr, request.netns, request.mntns, request.root, request.cwd):
        os.close(fd)
    os.environb.clear()
    for entry in request.env:
        key, _, value = entry.partition(b"=")
        if key:
            os.environb[key] = value
    os.environ["UNDERLAY_AGENT"] = "0"   # a plugin this one execs runs in-process: no slot to wait for
    sys.argv = request.argv
    sys.stdin = io.TextIOWrapper(io.BytesIO(request.stdin), encoding="utf-8")
    sys.stdout = Recorder(io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8"))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    handoff.status = "served by underlayd"


class Recorder:
    """sys.stdout for the plugin, keeping the start of what it writes: the CNI error code for metrics."""

    def __init__(self, stream):
        self.stream, self.head = stream, ""

    def write(self, text):
        if len(self.head) < 65536:
            self.head += text[:65536]
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def cni_code(self, exit_code):
        """0 on success, the error JSON's code, or -1 when there is none."""
        if exit_code == 0:
            return 0
        import json
        try:
            code = json.loads(self.head).get("code")
        except (ValueError, AttributeError):
            return -1
        return code if isinstance(code, int) and not isinstance(code, bool) else -1


def run_plugin(name):
    module = PLUGINS.get(name)
    if module is None:
        sys.stderr.write(f"underlayd: plugin {name!r} is not part of this build\n")
        return 2
    try:
        sys.modules[module].main()
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xff
        sys.stderr.write(f"{code}\n")
        return 1
    except BaseException as e:   # the contract never lets one out; say so if it happens
        sys.stderr.write(f"underlayd: {name}: {type(e).__name__}: {e}\n")
        return 1
    return 0


def exit_with_caller(conn):
    """Die (SIGIO, whose default is to terminate) the moment the caller goes away, as an exec'd
    plugin dies when the runtime kills it: no work continues that the runtime has given up on."""
    fcntl.fcntl(conn.fileno(), fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, fcntl.fcntl(conn.fileno(), fcntl.F_GETFL) | os.O_ASYNC)
    if select.select([conn], [], [], 0)[0]:
        os._exit(0)   # gone already (or speaking out of turn): nothing started


def serve(conn, report, listener, lifeline):
    """In a worker: the caller's invocation, its exit code sent back; then exit. The spare's
    listener and lifeline are closed once the caller has its b"R", which goes first: the caller
    makes its request ready meanwhile."""
    conn.setblocking(True)
    conn.settimeout(REQUEST_WAIT)
    try:
        conn.sendall(handoff.READY)
    except OSError:
        os._exit(0)
    phases.mark("ready sent")
    report(f"B {os.getpid()}")
    listener.close()
    os.close(lifeline)
    request = receive(conn)
    if request is None:
        report(f"A {os.getpid()}")
        os._exit(0)   # the caller gave up before sending: nothing was done
    phases.mark("request received")
    started = time.monotonic()
    conn.settimeout(None)
    try:
        become(request)
    except OSError as e:
        # nothing done yet: the caller runs the plugin itself
        log(f"cannot take on the context of caller {handoff.peer_of(conn)[0]}: {e.strerror or e} ({e.filename or ''})")
        try:
            conn.sendall(handoff.FALLBACK + f"{e.strerror or e}".encode())
        except OSError:
            pass
        os._exit(0)
    exit_with_caller(conn)
    phases.mark("context taken on")
    trace = phases.traced()
    if trace:
        phases.install()
        phases.mark("plugin start")
    code = run_plugin(request.plugin)
    phases.mark("plugin done")
    cni_code = sys.stdout.cni_code(code) if isinstance(sys.stdout, Recorder) else -1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    flags = fcntl.fcntl(conn.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, flags & ~os.O_ASYNC)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)   # the runtime sees EOF on its pipes as soon as the caller exits
    os.dup2(null, 2)
    try:
        conn.sendall(handoff.EXIT + b"%d" % code)
    except OSError:
        pass
    phases.mark("answer sent")
    # The caller exits at EOF: closed now, not when this process's exit has unmapped a copy of the
    # agent (~0.7 ms); everything the request did is done and answered.
    conn.close()
    phases.mark("closed")
    verb = "".join(c for c in os.environ.get("CNI_COMMAND", "")[:16] if c.isalnum()) or "-"
    plugin = request.plugin if request.plugin in PLUGINS else "unknown"
    if trace:
        phases.write(trace, plugin)   # before the report: once the agent logs it served, the line is there
    # "K": the kind served, what the next spares warm up for; in the same write as "D" (one wake-up)
    kind = "K %d %s %s\n" % (os.getpid(), *kind_of(request)) if plugin != "unknown" else ""
    report(f"{kind}D {os.getpid()} {plugin} {verb} {code} {cni_code} {time.monotonic() - started:.6f} "
           f"{trace_id(os.environ.get('TRACEPARENT', ''))}")
    os._exit(0)


TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(traceparent):
    """The trace id of the caller's W3C TRACEPARENT (libcni passes the runtime's trace context
    on, spec #1173): the served line names it, so a runtime's trace finds its invocation. "-": none."""
    match = TRACEPARENT.fullmatch(traceparent.strip())
    return match.group(1) if match and match.group(1) != "0" * 32 else "-"
