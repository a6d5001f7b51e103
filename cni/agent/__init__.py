"""underlayd: the node agent that keeps the plugins warm.

    underlayd [--socket PATH] [--metrics HOST:PORT] [--textfile PATH] [--workers N] [--spares N] [--queue N]
              [--data-dir DIR]... [--heal-every SECONDS] [--config-dir DIR] [--cluster-data-dir DIR]...

Every exec of a plugin pays for a fresh interpreter and its imports (~30 ms
before any work). underlayd imports every plugin once and keeps forked spare
workers waiting on its socket (default /run/underlay/underlay.sock, mode 0600
in a 0700 directory); a plugin executable hands its invocation over
(cni/handoff.py, the protocol) and exits with the worker's exit code.

A worker serves exactly one invocation and exits, so each one is as isolated
as an exec: its own process, with the caller's argv, environment, stdout,
stderr, network namespace, working directory and umask; it runs the plugin's
own main(). Nothing is cached between invocations: the stores and the kernel
stay the truth, so restarting the agent loses nothing, and a plugin finding
no agent does the same work itself.

Only root peers are served (SO_PEERCRED; a refused caller runs the plugin
itself, with its own privileges), and the clients hand off only to a root
listener; the socket's directory, and those above it, must be writable by
root alone (bind()). At most --workers invocations run at once
(default 8); more wait in the socket's listen queue (--queue, default 256).
The agent touches its socket file every 0.25 s: a caller waits while it beats
(up to 60 s in the queue) and gives up, code 11 with nothing done, once it has
been silent for UNDERLAY_AGENT_TIMEOUT (5 s). --spares (default 2) workers are forked
ahead of requests.

The agent runs in the node's network namespace; a worker enters its caller's
network and mount namespaces (the node's, unless a runtime runs plugins
elsewhere, or the agent runs in a container) and opens pod netns paths
(/run/netns/..., /proc/PID/ns/net) as the runtime gave them. A worker never
imports anything (preload did it all): after entering the caller's mount
namespace, the agent's own files may not be there.
SIGTERM stops accepting, removes the socket (callers then work in-process)
and waits for the invocations in flight.
"""

import fcntl
import gc
import importlib
import io
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import time

from cni import handoff, registry
from ipam import cluster as cluster_ipam, host_local

DEFAULT_WORKERS = 8
DEFAULT_SPARES = 2
DEFAULT_QUEUE = 256
REQUEST_WAIT = 30.0      # for the request after b"R": a caller sends it at once (unless starved of CPU)
DRAIN_WAIT = 60.0        # SIGTERM: how long invocations in flight may still take
TEXTFILE_EVERY = 15.0    # seconds between --textfile writes
DEFAULT_HEAL_EVERY = 300  # seconds between healing runs (and one at start)
DEFAULT_DATA_DIR = host_local.DEFAULT_DATA_DIR   # host-local's default dataDir
DEFAULT_CONFIG_DIR = "/etc/cni/net.d"        # the runtime's conflists: the pools' ranges, cluster-ipam's networks
DEFAULT_CLUSTER_DATA_DIR = cluster_ipam.DEFAULT_DATA_DIR   # cluster-ipam's default dataDir: its networks' records
POOL_LOCK_TIMEOUT = 2.0  # seconds a scrape waits for one store's lock (then that network is a problem)
PLUGINS = {}             # name -> module of every plugin served, imported by preload()



def plugin_modules():
    """{name: module} of the CNI plugins this build has (a module not written yet is left out)."""
    found = {}
    for name in registry.cni_plugins():
        module = registry.module_of(name)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        found[name] = module
    return found


class Options:
    def __init__(self, argv):
        self.socket = handoff.DEFAULT_SOCKET
        self.metrics = None
        self.workers = DEFAULT_WORKERS
        self.spares = DEFAULT_SPARES
        self.queue = DEFAULT_QUEUE
        self.textfile = None
        self.data_dirs = []
        self.heal_every = DEFAULT_HEAL_EVERY
        self.config_dir = DEFAULT_CONFIG_DIR
        self.cluster_data_dirs = []
        self.named_dirs = []   # (flag, path) of each directory named on the command line
        args = list(argv)
        while args:
            flag = args.pop(0)
            name, eq, value = flag.partition("=")
            if name in ("-h", "--help"):
                raise Usage(None)
            if name not in ("--socket", "--metrics", "--textfile", "--workers", "--spares", "--queue",
                            "--data-dir", "--heal-every", "--config-dir", "--cluster-data-dir"):
                raise Usage(f"unknown option {flag!r}")
            if not eq:
                if not args:
                    raise Usage(f"{name} needs a value")
                value = args.pop(0)
            if name == "--socket":
                if not value.startswith("/"):
                    raise Usage("--socket: must be an absolute path")
                self.socket = value
            elif name == "--metrics":
                host, colon, port = value.rpartition(":")
                if not colon or not port.isdigit() or int(port) > 65535:
                    raise Usage(f"--metrics: {value!r} is not HOST:PORT")
                self.metrics = (host.strip("[]") or "0.0.0.0", int(port))
            elif name in ("--data-dir", "--cluster-data-dir"):
                if not value.startswith("/"):
                    raise Usage(f"{name}: must be an absolute path")
                (self.data_dirs if name == "--data-dir" else self.cluster_data_dirs).append(value)
                self.named_dirs.append((name, value))
            elif name == "--config-dir":
                if not value.startswith("/"):
                    raise Usage("--config-dir: must be an absolute path")
                self.config_dir = value
                self.named_dirs.append((name, value))
            elif name == "--heal-every":
                if not value.isdigit():
                    raise Usage(f"--heal-every: {value!r} is not a number of seconds (0: never)")
                self.heal_every = int(value)
            elif name == "--textfile":
                if not value.startswith("/") or not value.endswith(".prom"):
                    raise Usage("--textfile: must be an absolute path ending in .prom")
                self.textfile = value
            else:
                if not value.isdigit() or int(value) < (0 if name == "--spares" else 1):
                    raise Usage(f"{name}: {value!r} is not a positive number")
                setattr(self, name[2:], int(value))
        self.spares = min(self.spares, self.workers)
        self.data_dirs = self.data_dirs or [DEFAULT_DATA_DIR]
        self.cluster_data_dirs = self.cluster_data_dirs or [DEFAULT_CLUSTER_DATA_DIR]


class Usage(Exception):
    pass


# what a directory named on the command line that is not there means (logged as a warning at start)
NAMED_DIRS = {
    "--config-dir": "no network configs are read from it (pool figures, cluster-ipam healing) until it is there",
    "--data-dir": "no host-local leases to heal there until a plugin creates it",
    "--cluster-data-dir": "no cluster-ipam records to heal there until a plugin creates it",
}


USAGE = ("usage: underlayd [--socket PATH] [--metrics HOST:PORT] [--textfile PATH] [--workers N] [--spares N]"
         " [--queue N] [--data-dir DIR]... [--heal-every SECONDS] [--config-dir DIR]"
         " [--cluster-data-dir DIR]...\n"
         f"  --socket   the agent's socket (default {handoff.DEFAULT_SOCKET}; plugins read $UNDERLAY_SOCKET)\n"
         f"  --workers  invocations served at once (default {DEFAULT_WORKERS}); more wait in the queue\n"
         f"  --spares   workers forked ahead of requests (default {DEFAULT_SPARES})\n"
         f"  --queue    connections waiting for a worker (default {DEFAULT_QUEUE})\n"
         f"  --data-dir host-local dataDir to heal and report (repeatable; default {DEFAULT_DATA_DIR})\n"
         f"  --heal-every  seconds between releases of leases whose netns is gone (default {DEFAULT_HEAL_EVERY}; 0: never)\n"
         "  --metrics  serve Prometheus text at http://HOST:PORT/metrics (and /healthz)\n"
         "  --textfile also write it to PATH.prom every 15 s, for node-exporter's textfile collector\n"
         f"  --config-dir  the network configs whose pools are reported and whose cluster-ipam\n"
         f"             networks are healed (default {DEFAULT_CONFIG_DIR})\n"
         "  --cluster-data-dir  cluster-ipam dataDir whose recorded networks (a NetworkAttachmentDefinition's,\n"
         "             which no config file names) are healed and reported too (repeatable; default\n"
         f"             {DEFAULT_CLUSTER_DATA_DIR}; the dataDirs of --config-dir's cluster-ipam configs always)\n")


def log(message):
    try:
        os.write(2, f"underlayd: {message}\n".encode(errors="replace"))
    except OSError:
        pass


# --------------------------------------------------------------------------
# Warm-up: everything any invocation imports, imported once here.

def preload():
    """Import every plugin and what they import lazily, and run the paths that
    compile things on first use, so a worker starts with all of it in memory."""
    global PLUGINS
    PLUGINS = plugin_modules()
    for name in ["cni.net.kernel", "subprocess", "traceback", "ipaddress", "json", "cni.operator.hostlocal",
                 "cni.operator.validate", "ipam.allocator"] + \
            ["cni.schemas." + p.replace("-", "_") for p in PLUGINS]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
    from cni.net import netlink, netns
    with netlink.Netlink() as nl:     # the message classes decode once: lazily built tables
        nl.find_link("lo")
    fd = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.setns(fd)               # our own netns: loads ctypes and libc's setns
    except netns.NetnsError as e:     # no worker could enter a caller's netns: say so, do not start
        sys.exit(f"underlayd: cannot enter network namespaces ({e}): it needs CAP_SYS_ADMIN, as the plugins do")
    finally:
        os.close(fd)
    global _libc
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)   # for enter_namespace
    gc.collect()
    gc.freeze()    # out of the collector's sight: a worker's collections do not touch (copy) them


# --------------------------------------------------------------------------
# The socket.

def unsafe_directory(directory):
    """Why someone other than root could replace a socket in `directory` (None: nobody can):
    it, or a directory above it, is not root's or is writable by group or others. Above it,
    a sticky directory (/tmp) is fine: others cannot rename what is not theirs there. Directories
    that do not exist yet are created root's, mode 0700. Both the path as written and where its
    symlinks lead are checked."""
    real = os.path.realpath(directory)
    for path in sorted({*ancestors(directory), *ancestors(real)}, key=len, reverse=True):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue   # we create it
        except OSError as e:
            return f"{path}: {e.strerror or e}"
        if st.st_uid != 0:
            return f"{path} belongs to uid {st.st_uid}, not root"
        own = path in (directory, real)
        if st.st_mode & 0o022 and (own or not st.st_mode & stat.S_ISVTX):
            return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def ancestors(path):
    """`path` and every directory above it, up to /."""
    out = [path]
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        out.append(path)
    return out


def bind(path, queue):
    """Listen on `path` (mode 0600, its directory made 0700); refuse a directory others could
    write to (a socket there could be replaced by theirs), or another agent answering there."""
    directory = os.path.dirname(path)
    if path == handoff.DEFAULT_SOCKET and os.path.isdir(directory):
        os.chmod(directory, 0o700)   # ours alone (a DaemonSet's hostPath makes it 0755)
    unsafe = unsafe_directory(directory)
    if unsafe:
        raise SystemExit(f"underlayd: --socket {path}: {unsafe}; its directory and those above it must be "
                         "root's and writable by root alone (sticky ones above it excepted)")
    old = os.umask(0o077)   # the parents it creates too (makedirs gives them 0777 & ~umask)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    finally:
        os.umask(old)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise SystemExit(f"underlayd: {path} exists and is not a socket; not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1)
            probe.connect(path)
            raise SystemExit(f"underlayd: another agent answers on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)   # stale: left by an agent that was killed
        except OSError:
            raise SystemExit(f"underlayd: another agent holds {path}") from None
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)   # never reachable by others, not even for a moment
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(queue)
    listener.setblocking(False)
    return listener


# --------------------------------------------------------------------------
# A worker: one invocation, then exit.

class Request:
    def __init__(self, payload, fds):
        at = 0

        def field():
            nonlocal at
            end = payload.index(b"\0", at)
            value, at = payload[at:end], end + 1
            return value

        if field() != handoff.PROTOCOL:
            raise ValueError("protocol version")
        called = field().decode()
        # the compiled client sends the name it was called by (`underlay-macvlan`), Python the plugin's
        self.plugin = registry.plugin_for(called) or called
        self.umask = int(field(), 8)
        self.argv = [field().decode("utf-8", "surrogateescape") for _ in range(int(field()))]
        self.env = [field() for _ in range(int(field()))]
        self.stdin = payload[at:]
        if len(fds) != 6:
            raise ValueError(f"{len(fds)} file descriptors")
        self.stdout, self.stderr, self.netns, self.mntns, self.root, self.cwd = fds


def receive(conn):
    """The request after b"R", or None when the caller gave up (nothing was started)."""
    fd_size = 6 * struct.calcsize("i")
    try:
        data, ancdata, flags, _ = conn.recvmsg(8, socket.CMSG_SPACE(fd_size), socket.MSG_CMSG_CLOEXEC)
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
        size = int.from_bytes(data, "big")
        if size > handoff.MAX_REQUEST:
            return None
        payload = bytearray()
        while len(payload) < size:
            more = conn.recv(min(size - len(payload), 1 << 20))
            if not more:
                return None
            payload += more
        request = Request(bytes(payload), fds)
        fds = []
        return request
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        for fd in fds:
            os.close(fd)


CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
_libc = None


def enter_namespace(fd, nstype, own):
    """setns() into the namespace `fd` unless it is ours already (`own`: our /proc/self/ns file)."""
    global _libc
    mine, theirs = os.stat(own), os.fstat(fd)
    if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
        return
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        import ctypes
        raise OSError(ctypes.get_errno(), f"setns {own.rsplit('/', 1)[1]}")


def become(request):
    """Take on the caller's context, as an exec'd plugin would have it: its mount and network
    namespaces (so dataDir, logFile and pod netns paths name what they name for the caller,
    wherever the agent runs), cwd, umask, fds, environment and argv. Until the fds are taken
    over nothing is changed that matters: an OSError here means "run it yourself"."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        enter_namespace(request.mntns, CLONE_NEWNS, "/proc/self/ns/mnt")
        enter_namespace(request.netns, CLONE_NEWNET, "/proc/self/ns/net")
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


def serve(conn, report):
    """In a worker: the caller's invocation, its exit code sent back; then exit."""
    conn.setblocking(True)
    conn.settimeout(REQUEST_WAIT)
    try:
        conn.sendall(handoff.READY)
    except OSError:
        os._exit(0)
    request = receive(conn)
    if request is None:
        report(f"A {os.getpid()}")
        os._exit(0)   # the caller gave up before sending: nothing was done
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
    code = run_plugin(request.plugin)
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
    verb = "".join(c for c in os.environ.get("CNI_COMMAND", "")[:16] if c.isalnum()) or "-"
    plugin = request.plugin if request.plugin in PLUGINS else "unknown"
    report(f"D {os.getpid()} {plugin} {verb} {code} {cni_code} {time.monotonic() - started:.6f} "
           f"{trace_id(os.environ.get('TRACEPARENT', ''))}")
    os._exit(0)


TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(traceparent):
    """The trace id of the caller's W3C TRACEPARENT (libcni passes the runtime's trace context
    on, spec #1173): the served line names it, so a runtime's trace finds its invocation. "-": none."""
    match = TRACEPARENT.fullmatch(traceparent.strip())
    return match.group(1) if match and match.group(1) != "0" * 32 else "-"


def spare(listener, lifeline, report):
    """A worker forked ahead of requests: waits for a connection, serves it, exits.
    It exits too when the agent is gone (its lifeline pipe closes)."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(lifeline, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if lifeline in events:
            os._exit(0)
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue   # another spare took it
        pid, uid = handoff.peer_of(conn)
        if uid != 0:
            log(f"refused a connection from pid {pid} (uid {uid}): only root is served")
            report(f"N {os.getpid()}")
            try:
                conn.send(handoff.REFUSED + b"only root is served")
            except OSError:
                pass
            conn.close()
            continue
        report(f"B {os.getpid()}")
        listener.close()
        os.close(lifeline)
        serve(conn, report)


# --------------------------------------------------------------------------
# Healing missed DELs: leases whose pod netns is gone.

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
    cluster = healing_imports()
    try:
        fd = os.open("/proc/1/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter_namespace(fd, CLONE_NEWNS, "/proc/self/ns/mnt")
        finally:
            os.close(fd)
    except OSError as e:
        log(f"healing: cannot enter the node's mount namespace ({e.strerror or e}); healing in ours")
    heal_host_local(data_dirs, report)
    if cluster:
        heal_cluster(config_dir, cluster_data_dirs, report)
    os._exit(0)


def healing_imports():
    """Import what healing imports lazily (the stores, configs, the etcd client, ssl for https://
    endpoints, the idna codec getaddrinfo takes) before the healer enters the node's mount namespace,
    where our own files may not be there. False in a build without cluster-ipam (host-local only)."""
    cluster = "cluster-ipam" in PLUGINS
    names = ["ipam.stores.lease_index", "ipam.stores.disk"]
    if cluster:
        names += [registry.module_of("cluster-ipam"), "cni.operator.configs", "cni.operator.validate", "ipam.etcd",
                  "ipam.stores.etcd", "ipam.stores.lease_files"]
    for name in names:
        importlib.import_module(name)
    for name in ("ssl", "encodings.idna") if cluster else ():
        try:
            importlib.import_module(name)
        except ImportError:
            pass   # not in this build: the etcd call that needs it fails, and is logged
    return cluster


def heal_host_local(data_dirs, report):
    from ipam.stores import lease_index
    from ipam.stores.disk import DiskStore
    for data_dir in data_dirs:
        try:
            networks = sorted(n for n in os.listdir(data_dir) if not n.startswith("."))
        except FileNotFoundError:
            continue
        except OSError as e:
            log(f"healing: {data_dir}: {e.strerror or e}")
            continue
        for network in networks:
            if not os.path.isdir(os.path.join(data_dir, network, lease_index.INDEX_DIR)):
                continue   # not a store of ours (or not one yet)
            try:
                released = 0
                with DiskStore(data_dir, network) as store:     # the index is written as the block ends
                    for (cid, ifname), (netns, ips) in store.index.entries().items():
                        if not netns or not netns_certainly_gone(netns):
                            continue
                        for ip in ips:
                            store.release(ip, cid, ifname)
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
    networks, problems = cluster_networks(config_dir, cluster_data_dirs)
    for problem in problems:
        log(f"healing: {problem}")
    for path, name, config in networks:
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


def cluster_networks(config_dir, cluster_data_dirs):
    """(networks, problems): (path, name, config) of each cluster-ipam network configured in
    config_dir, then of each network an ADD recorded (ipam/cluster.RECORD) in cluster_data_dirs or
    those configs' dataDirs that no config names (a NetworkAttachmentDefinition's: Multus hands its
    config to the plugin, no file holds it); what healing and the pool figures read. problems: lines
    for the files and records that could not be read (the others are found all the same)."""
    import json
    from cni.contract import CniError
    from cni.operator import configs, validate
    from ipam import cluster
    paths, problems = config_files(config_dir)
    found, bad = configs.ipam_users(paths, validate.is_cluster_ipam)
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


# --------------------------------------------------------------------------
# Metrics: Prometheus text, from the agent's counters and (read in a fork) the pools.

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.started = time.time()
        self.requests = {}     # (plugin, verb, CNI code) -> count
        self.latency = {}      # (plugin, verb) -> [count per bucket..., +Inf count, sum]
        self.killed = 0        # workers that died mid-request (the caller got code 11)
        self.refused = 0       # non-root peers
        self.abandoned = 0     # callers that gave up before sending (nothing done)
        self.healed = {}       # network -> addresses released by healing
        self.heal_runs = 0

    def observe(self, plugin, verb, cni_code, seconds):
        key = (plugin, verb, cni_code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.setdefault((plugin, verb), [0] * (len(BUCKETS) + 1) + [0.0])
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                hist[i] += 1
        hist[len(BUCKETS)] += 1
        hist[-1] += seconds

    def render(self, busy, idle, options):
        out = []

        def family(name, kind, text):
            out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")

        family("underlay_agent_requests_total", "counter",
               "CNI invocations served by underlayd, by plugin, verb and CNI result code (0: success)")
        for (plugin, verb, code), count in sorted(self.requests.items()):
            out.append(f'underlay_agent_requests_total{{plugin="{plugin}",verb="{verb}",code="{code}"}} {count}\n')
        family("underlay_agent_request_duration_seconds", "histogram",
               "time a worker spent on one invocation, from its request to its exit code")
        for (plugin, verb), hist in sorted(self.latency.items()):
            labels = f'plugin="{plugin}",verb="{verb}"'
            for bound, count in zip(BUCKETS, hist):
                out.append(f'underlay_agent_request_duration_seconds_bucket{{{labels},le="{bound:g}"}} {count}\n')
            out.append(f'underlay_agent_request_duration_seconds_bucket{{{labels},le="+Inf"}} {hist[len(BUCKETS)]}\n')
            out.append(f"underlay_agent_request_duration_seconds_sum{{{labels}}} {hist[-1]:.6f}\n")
            out.append(f"underlay_agent_request_duration_seconds_count{{{labels}}} {hist[len(BUCKETS)]}\n")
        for name, value, text in (
                ("underlay_agent_workers_killed_total", self.killed,
                 "workers that died mid-request (their caller answered code 11; DEL undoes what they did)"),
                ("underlay_agent_refused_total", self.refused, "connections refused: the peer was not root"),
                ("underlay_agent_abandoned_total", self.abandoned,
                 "callers that gave up (UNDERLAY_AGENT_TIMEOUT) before a worker started their request")):
            family(name, "counter", text)
            out.append(f"{name} {value}\n")
        family("underlay_heal_releases_total", "counter",
               "addresses released by healing: their lease's pod netns was gone (a missed DEL)")
        for network, count in sorted(self.healed.items()):
            out.append(f'underlay_heal_releases_total{{network="{_label(network)}"}} {count}\n')
        family("underlay_heal_runs_total", "counter", "healing runs started")
        out.append(f"underlay_heal_runs_total {self.heal_runs}\n")
        family("underlay_agent_workers", "gauge", "worker processes: busy serving, or idle spares")
        out.append(f'underlay_agent_workers{{state="busy"}} {busy}\nunderlay_agent_workers{{state="idle"}} {idle}\n')
        family("underlay_agent_workers_limit", "gauge", "invocations served at once (--workers)")
        out.append(f"underlay_agent_workers_limit {options.workers}\n")
        family("underlay_agent_start_time_seconds", "gauge", "when this agent started (Unix time)")
        out.append(f"underlay_agent_start_time_seconds {self.started:.3f}\n")
        return "".join(out)


def config_files(config_dir):
    """(paths, problems): the network config files of --config-dir, which the pool figures and the
    healing of cluster-ipam read; none when it does not exist (no networks yet on this node)."""
    from cni.operator import configs
    try:
        return configs.files_in(config_dir), []
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"--config-dir {config_dir}: {e.strerror or e}"]


def pool_metrics(options):
    """In a forked child (a scrape or a textfile write): the pools of every network this node's
    agent can know, read-only: host-local's (host_local_pools) and cluster-ipam's (cluster_pools).
    underlay_pool_addresses' states partition underlay_pool_size_addresses where the size is known;
    every network has underlay_pool_readable (0: see the log), every problem is counted."""
    rows, readable, problems = [], {}, []
    parts = [lambda: host_local_pools(options.config_dir, options.data_dirs)]
    if "cluster-ipam" in PLUGINS:   # a build without it has no cluster-ipam networks to read
        parts.append(lambda: cluster_pools(options.config_dir, options.cluster_data_dirs))
    for part in parts:
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


POOL_STATES = ("excluded", "aux", "reserved", "in_use", "free")


def host_local_pools(config_dir, data_dirs):
    """(rows, readable, problems) of host-local: each network of config_dir's configs per range set,
    as `underlay pools` counts them (cni/operator/hostlocal.pools); then each network directory of
    data_dirs and those configs' dataDirs that no config names (a NetworkAttachmentDefinition's):
    only its leases in use are known, its ranges are in no file on this node. A directory holding
    cluster-ipam's record is cluster-ipam's (cluster_pools), as `underlay leases` sees it."""
    from cni.contract import CniError
    from cni.operator import cluster, configs, hostlocal, validate
    paths, problems = config_files(config_dir)
    rows, readable, configured = [], {}, set()
    if paths:
        found, bad = hostlocal.pools(paths, lock_timeout=POOL_LOCK_TIMEOUT)
        problems += bad
        for row in found:
            rows.append(pool_row(row["network"], "host-local", row))
        users, _ = configs.ipam_users(paths, validate.is_host_local)   # their problems are in bad
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
    networks, problems = cluster_networks(config_dir, cluster_data_dirs)
    results, reads = {}, []
    for path, name, config in networks:
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
    from cni.contract import CniError
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
        out = f'network="{_label(row["network"])}",ipam="{row["ipam"]}"'
        return out if row["set"] is None else out + f',set="{row["set"]}",ranges="{_label(row["ranges"])}"'

    out = ["# HELP underlay_pool_size_addresses addresses of a range set (its ranges' rangeStart..rangeEnd); "
           "cluster-ipam's are the whole cluster's\n# TYPE underlay_pool_size_addresses gauge\n"]
    for row in once.values():
        if row["set"] is not None:
            out.append(f'underlay_pool_size_addresses{{{labels(row)}}} {row["size"]}\n')
    out.append("# HELP underlay_pool_addresses addresses of a range set by state: excluded, aux, reserved "
               "(network, broadcast, gateway), in_use, free (their sum is the size); a network whose ranges "
               "are unknown (no config on this node) has only in_use, without set and ranges\n"
               "# TYPE underlay_pool_addresses gauge\n")
    for row in once.values():
        for state in POOL_STATES if row["set"] is not None else ("in_use",):
            out.append(f'underlay_pool_addresses{{{labels(row)},state="{state}"}} {row[state]}\n')
    out.append("# HELP underlay_pool_readable whether a network's figures could be read on this scrape "
               "(0: see the agent's log)\n# TYPE underlay_pool_readable gauge\n")
    for (ipam, network), ok in sorted(readable.items()):
        out.append(f'underlay_pool_readable{{network="{_label(network)}",ipam="{ipam}"}} {int(ok)}\n')
    out.append("# HELP underlay_pool_problems configs, records, stores or etcds that could not be read for "
               "these figures (see the agent's log)\n# TYPE underlay_pool_problems gauge\n")
    out.append(f"underlay_pool_problems {len(problems)}\n")
    return "".join(out)


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve_http(conn, body, options):
    """In a forked child: answer one HTTP request (GET /metrics or /healthz) and exit.
    body: the agent's counters as they were at accept; the pools are read here."""
    conn.settimeout(5)
    request = b""
    try:
        while b"\r\n\r\n" not in request and len(request) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        line = request.split(b"\r\n", 1)[0].split()
        path = line[1].split(b"?")[0] if len(line) >= 2 and line[0] in (b"GET", b"HEAD") else None
        if path == b"/metrics":
            payload = (body + pool_metrics(options)).encode()
            status, kind = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
        elif path == b"/healthz":
            status, payload, kind = "200 OK", b"ok\n", "text/plain"
        else:
            status, payload, kind = "404 Not Found", b"not found: try /metrics\n", "text/plain"
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n").encode()
        conn.sendall(head + (payload if line and line[0] != b"HEAD" else b""))
    except (OSError, IndexError):
        pass
    os._exit(0)


def metrics_listener(address):
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        raise SystemExit(f"underlayd: --metrics {host}:{port}: {e.strerror or e}") from None
    listener.listen(16)
    listener.setblocking(False)
    return listener


def write_textfile(path, text):
    """node-exporter's textfile collector: written whole (temporary file, then rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)
    except OSError as e:
        log(f"--textfile {path}: {e.strerror or e}")


# --------------------------------------------------------------------------
# The agent's own process: keeps spares forked, reaps workers, counts.

class Agent:
    def __init__(self, options):
        self.options = options
        self.idle, self.busy = set(), set()
        self.metrics = Metrics()
        self.stopping = False
        self.inode = None   # our socket file's, once bound

    def start(self):
        """Everything that can fail at start fails before the socket exists, or removes it."""
        preload()
        self.http = metrics_listener(self.options.metrics) if self.options.metrics else None
        self.listener = bind(self.options.socket, self.options.queue)
        self.inode = os.stat(self.options.socket).st_ino
        self.status_r, self.status_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)   # wakes the loop through the wakeup fd
        self.buffer = b""
        self.textfile_due = 0.0
        self.heal_due = 0.0 if self.options.heal_every else float("inf")
        self.healer = None
        self.textfile_writer = None
        self.beaten = 0.0
        log(f"serving on {self.options.socket} (pid {os.getpid()}, workers {self.options.workers}, "
            f"spares {self.options.spares}, queue {self.options.queue})")
        for flag, path in self.options.named_dirs:   # a typo here would otherwise read as "nothing there"
            if not os.path.isdir(path):
                log(f"warning: {flag} {path} {'is not a directory' if os.path.exists(path) else 'does not exist'}: "
                    f"{NAMED_DIRS[flag]}")

    def stop(self, *_):
        self.stopping = True

    def report(self, line):
        try:
            os.write(self.status_w, line.encode() + b"\n")   # < PIPE_BUF: written whole
        except OSError:
            pass   # the agent is gone (killed): its worker still finishes the invocation

    def fork_spare(self):
        pid = os.fork()
        if pid == 0:
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
                signal.set_wakeup_fd(-1)
                for fd in (self.status_r, self.lifeline_w, self.wake_r, self.wake_w):
                    os.close(fd)
                spare(self.listener, self.lifeline_r, self.report)
            finally:
                os._exit(1)
        self.idle.add(pid)

    def top_up(self):
        while not self.stopping and len(self.idle) < self.options.spares and \
                len(self.idle) + len(self.busy) < self.options.workers:
            self.fork_spare()

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.busy and os.WIFSIGNALED(status):
                self.metrics.killed += 1
                log(f"worker {pid} was killed by signal {os.WTERMSIG(status)} mid-request")
            self.idle.discard(pid)
            self.busy.discard(pid)
            if pid == self.healer:
                self.healer = None
            if pid == self.textfile_writer:
                self.textfile_writer = None

    def read_reports(self):
        try:
            self.buffer += os.read(self.status_r, 65536)
        except BlockingIOError:
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            kind, pid, *rest = line.decode(errors="replace").split(" ")
            pid = int(pid)
            if kind == "B" and pid in self.idle:   # else reaped already: it served and exited meanwhile
                self.idle.discard(pid)
                self.busy.add(pid)
            elif kind == "D":
                plugin, verb, code, cni_code, seconds, trace = rest
                self.metrics.observe(plugin, verb, int(cni_code), float(seconds))
                log(f"served {plugin} {verb} exit {code} in {float(seconds) * 1000:.1f} ms (worker {pid}"
                    + (f", trace {trace})" if trace != "-" else ")"))
            elif kind == "N":
                self.metrics.refused += 1
            elif kind == "A":
                self.metrics.abandoned += 1
            elif kind == "H":
                network, count = rest
                self.metrics.healed[network] = self.metrics.healed.get(network, 0) + int(count)

    def loop(self):
        poller = select.poll()
        poller.register(self.status_r, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        if self.http is not None:
            poller.register(self.http, select.POLLIN)
        while not self.stopping:
            self.reap()
            self.top_up()
            self.heartbeat()
            for fd, _ in poller.poll(handoff.HEARTBEAT * 1000):
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 512)
                    except BlockingIOError:
                        pass
            self.read_reports()
            if self.http is not None:
                self.answer_http()
            if time.monotonic() >= self.heal_due:
                self.start_healing()
            if self.options.textfile and time.monotonic() >= self.textfile_due:
                self.start_textfile()
        self.shutdown()

    def heartbeat(self):
        """Touch the socket file: callers waiting in the queue see the agent alive (cni/handoff.py)."""
        now = time.monotonic()
        if now - self.beaten >= handoff.HEARTBEAT:
            self.beaten = now
            try:
                os.utime(self.options.socket)
            except OSError:
                pass

    def start_healing(self):
        """One healing run at a time, in a child of its own (it takes store locks, may wait)."""
        self.heal_due = time.monotonic() + self.options.heal_every
        if self.healer is not None:
            return   # the last run is still going
        self.metrics.heal_runs += 1
        self.healer = self.fork_background(lambda: heal(self.options.data_dirs, self.options.config_dir,
                                                        self.options.cluster_data_dirs, self.report))

    def fork_background(self, work):
        """A child of the agent that runs `work` with default signals and without the listening
        socket, then exits (0 if `work` returned); its pid."""
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                self.listener.close()
                work()
                os._exit(0)
            finally:
                os._exit(1)
        return pid

    def render(self):
        return self.metrics.render(len(self.busy), len(self.idle), self.options)

    def start_textfile(self):
        """One write at a time, in a child: the pools take store locks, never in this loop."""
        self.textfile_due = time.monotonic() + TEXTFILE_EVERY
        if self.textfile_writer is not None:
            return
        body = self.render()
        self.textfile_writer = self.fork_background(
            lambda: write_textfile(self.options.textfile, body + pool_metrics(self.options)))

    def answer_http(self):
        """Each scrape is answered by a fork holding a snapshot: a slow client never holds up the loop."""
        try:
            conn, _ = self.http.accept()
        except (BlockingIOError, InterruptedError):
            return
        body = self.render()
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                serve_http(conn, body, self.options)
            finally:
                os._exit(1)
        conn.close()

    def remove_socket(self):
        """Our socket file (not one another agent has put there since)."""
        try:
            if self.inode is not None and os.stat(self.options.socket).st_ino == self.inode:
                os.unlink(self.options.socket)
        except FileNotFoundError:
            pass

    def shutdown(self):
        """Stop accepting, remove our socket, let the invocations in flight finish."""
        self.remove_socket()
        self.listener.close()
        os.close(self.lifeline_w)    # idle spares exit
        deadline = time.monotonic() + DRAIN_WAIT
        while self.busy or self.idle:
            self.reap()
            self.read_reports()
            if time.monotonic() > deadline:
                log(f"{len(self.busy)} invocations still running at exit")
                break
            time.sleep(0.02)
        self.read_reports()
        if self.options.textfile:   # the last figures; the loop is over, the locks are bounded
            write_textfile(self.options.textfile, self.render() + pool_metrics(self.options))
        log("stopped")


def main(argv=None):
    try:
        options = Options(sys.argv[1:] if argv is None else argv)
    except Usage as e:
        sys.stderr.write((f"underlayd: {e}\n" if e.args[0] else "") + USAGE)
        sys.exit(2 if e.args[0] else 0)
    agent = Agent(options)
    try:
        agent.start()
    except BaseException:
        agent.remove_socket()   # a failed start leaves nothing behind
        raise
    agent.loop()
    sys.exit(0)
