"""The thin path: hand this invocation to underlayd, the warm node agent (cni/agent/__init__.py).

A plugin executable calls `hand_off(plugin)` before it imports the plugin.
When the agent answers, a fork of the agent that has already imported every
plugin runs the invocation with this process's argv, environment, stdin,
stdout, stderr, network namespace, working directory and umask, and this
process exits with its exit code. When no agent answers (no socket, refused,
a stale socket file, not a socket, a non-root caller) or the listener is not
root's (SO_PEERCRED, checked before anything is sent) it returns None and the
plugin runs in this process exactly as it would without an agent; `status`
says why, for the operation log's debug level.

Two clients speak this protocol: this module, for the plugins run from
Python (`python -m cni.plugins.macvlan`, pip's console scripts, `underlay macvlan`),
and cni/handoff.c, which the bundle's plugin names are (a frozen interpreter
takes 25-30 ms to start, the compiled client ~1 ms). When the compiled
client does not hand off, it execs the bundle with UNDERLAY_HANDOFF_STATUS
(why) or UNDERLAY_HANDOFF_ERROR (a code-11 message) set, and hand_off obeys.
tests/reliability/test_agent.py runs every case through both.

Only what connecting needs is imported here (`_socket`, `time`: built into
the interpreter). When the agent is there and does not start the invocation,
hand_off sets `refusal` and returns None; the caller (cni/dispatch.py, or the
bundle's entry through it) answers code 11 with that message.

The protocol, one SOCK_STREAM connection per invocation:
  agent -> client  b"R"                      a worker took the connection and will serve it
                   b"N" reason               refused (SO_PEERCRED: not root); run in-process
  client -> agent  8-byte length, payload    argv, environment, umask, stdin (NUL-separated),
                                             with fds stdout, stderr, netns, mount ns, root, cwd (SCM_RIGHTS)
  agent -> client  b"F" reason               cannot take on the caller's context; run in-process
                   b"X" code                 the plugin's exit code
Until the request is sent the worker has started nothing, so the client may
still give up (code 11) or run the plugin itself; once sent, the worker owns
the invocation (unless it answers "F" first), and dies if this process dies
(as an exec'd plugin would). This is why the request waits for "R": sent
earlier, it would sit in the connection, where a worker accepting just after
the client gave up waiting could still read and start it. The client makes it
ready while the worker wakes up, and sends it the moment "R" comes.

Bounds: UNDERLAY_AGENT_TIMEOUT (seconds, default 5) for connecting to a full
queue and for the agent's silence while waiting for "R" (its heartbeat is the
socket file's mtime, touched every 0.25 s); QUEUE_LIMIT (60 s) for waiting in
a live agent's queue (a burst of pod starts). Past either the answer is code
11, try again, with nothing done. UNDERLAY_AGENT=0 never hands off (the agent sets it for its workers, so
a plugin they exec runs in-process and cannot wait for a slot its caller holds).
"""

import _socket
import os
import sys
import time

DEFAULT_SOCKET = "/run/underlay/underlay.sock"
DEFAULT_TIMEOUT = 5.0
HEARTBEAT = 0.25      # the agent touches its socket file this often while it runs
QUEUE_LIMIT = 60.0    # the longest a request waits in a live agent's queue
PROTOCOL = b"underlay/1"
READY, REFUSED, EXIT, FALLBACK = b"R", b"N", b"X", b"F"
MAX_REQUEST = 64 << 20        # a config is far smaller; the agent refuses more
# set by the compiled client (cni/handoff.c) when it execs the bundle instead of handing off:
STATUS_VARIABLE = "UNDERLAY_HANDOFF_STATUS"   # why the plugin runs in-process (the log's debug line)
ERROR_VARIABLE = "UNDERLAY_HANDOFF_ERROR"     # the agent did not serve: answer code 11 with this message

status = None   # why this process ran the plugin itself, or "served by underlayd" in a worker
refusal = None  # the agent did not start the invocation: answer code 11 with this message (dispatch.refused)


def socket_path(environ):
    return environ.get("UNDERLAY_SOCKET") or DEFAULT_SOCKET


def timeout_of(environ):
    try:
        value = float(environ.get("UNDERLAY_AGENT_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if 0 < value < 3600 else DEFAULT_TIMEOUT


def hand_off(plugin, argv=None, environ=None):
    """The agent's exit code for this invocation, or None: run the plugin in this process
    (or, with `refusal` set, answer code 11)."""
    global status
    environ = os.environ if environ is None else environ
    if environ.get("CNI_COMMAND", "") in ("", "VERSION") or "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        return None   # the about line, VERSION and --help are static: never worth a round trip
    if status is not None:
        return None   # decided already (the bundle's entry asks before the plugin's main does)
    # the compiled client (cni/handoff.c) decided already; its children must not see its word
    if STATUS_VARIABLE in environ:
        status = environ.pop(STATUS_VARIABLE)
        return None
    if ERROR_VARIABLE in environ:
        status = "underlayd did not serve it"
        if sys.stdin is None:
            restore_stdin(b"")   # the answer reads an empty config, as with no stdin at all
        return refuse(environ.pop(ERROR_VARIABLE))
    if environ.get("UNDERLAY_AGENT") == "0":
        status = "agent disabled (UNDERLAY_AGENT=0)"
        return None
    # read first: a worker is taken only by a caller ready to send (a runtime writes stdin at once)
    stdin = sys.stdin.buffer.read() if sys.stdin is not None else b""
    code = ask(plugin, argv or sys.argv, environ, stdin)
    if code is None:
        restore_stdin(stdin)   # the plugin reads it here, as it would have
    return code


def ask(plugin, argv, environ, stdin):
    global status
    path = socket_path(environ)
    timeout = timeout_of(environ)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        # a blocking connect to a full listen queue waits, bounded by SO_SNDTIMEO
        sec = int(timeout)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO,
                        sec.to_bytes(8, sys.byteorder) + int((timeout - sec) * 1e6).to_bytes(8, sys.byteorder))
        try:
            sock.connect(path)
        except BlockingIOError:
            return busy(path, f"its queue stayed full for {timeout:g} s")
        except OSError as e:
            status = f"no agent at {path}: {e.strerror or e}"
            return None
        # only root's agent gets the request (it carries our fds and environment, and we print its
        # answer); anyone else listening there gets nothing, and the plugin runs here
        try:
            pid, uid = peer_of(sock)
        except OSError as e:
            status = f"agent at {path}: SO_PEERCRED: {e.strerror or e}"
            return None
        if uid != 0:
            status = f"{path} is not root's: its listener runs as uid {uid} (pid {pid}); not handing off"
            return None
        payload = request_payload(plugin, argv, environ, stdin)   # while the spare wakes up
        answer = wait_for_worker(sock, path, timeout)
        if answer is None:
            return busy(path, f"silent for over {timeout:g} s, or {QUEUE_LIMIT:g} s in its queue")
        if isinstance(answer, OSError):
            status = f"agent at {path} went away before serving: {answer.strerror or answer}"
            return None
        if answer[:1] == REFUSED:
            status = f"agent at {path} refused: {answer[1:].decode(errors='replace')}"
            return None
        if answer != READY:
            status = f"agent at {path} answered {answer[:40]!r}" if answer else \
                f"agent at {path} closed the connection before serving"
            return None
        try:
            send_request(sock, payload)
        except OSError as e:
            # the worker has not got the request, so nothing has started: do it here
            status = f"agent at {path}: sending the request failed: {e.strerror or e}"
            return None
        sock.settimeout(None)
        # from here the worker owns the invocation; this process only waits for it
        answer = b""
        try:
            while True:
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            # the worker closed with our request unread (it gave up waiting for it): nothing started
            status = f"agent at {path} dropped the request unread"
            return None
        except OSError:
            answer = b""
        if answer[:1] == EXIT and answer[1:].isdigit():
            return int(answer[1:])
        if answer[:1] == FALLBACK:
            status = f"agent at {path} could not serve this context: {answer[1:].decode(errors='replace')}"
            return None
        return refuse(f"underlayd's worker for this {plugin} request ended without an answer "
                      "(killed?); what it did is undone by DEL")
    finally:
        sock.close()


def peer_of(sock):
    """(pid, uid) of the process at the other end of a unix socket (SO_PEERCRED: struct ucred):
    the listener, for a client; the caller, for the agent."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return (int.from_bytes(cred[0:4], sys.byteorder, signed=True),
            int.from_bytes(cred[4:8], sys.byteorder))


def wait_for_worker(sock, path, timeout):
    """The worker's first answer; None if the agent stayed silent: its heartbeat (the socket
    file's mtime, touched every HEARTBEAT s) older than `timeout`, or QUEUE_LIMIT s in its queue.
    A burst of pod starts may queue for long on a busy node; a hung agent is given up on at once."""
    started = time.monotonic()
    while True:
        sock.settimeout(min(timeout, 1.0))
        try:
            return sock.recv(512)
        except TimeoutError:
            pass
        except OSError as e:
            return e
        try:
            silent = time.time() - os.stat(path).st_mtime
        except OSError:
            silent = float("inf")   # the socket is gone: the agent stopped (a new one has a new queue)
        if silent > timeout or time.monotonic() - started > QUEUE_LIMIT:
            return None


def request_payload(plugin, argv, environ, stdin):
    mask = os.umask(0)
    os.umask(mask)
    env = [k.encode("utf-8", "surrogateescape") + b"=" + v.encode("utf-8", "surrogateescape")
           for k, v in environ.items()]
    args = [a.encode("utf-8", "surrogateescape") for a in argv]
    fields = [PROTOCOL, plugin.encode(), b"%o" % mask, b"%d" % len(args), *args, b"%d" % len(env), *env]
    return b"\0".join(fields) + b"\0" + stdin


def send_request(sock, payload):
    netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    mntns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    root = os.open("/", os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (1, 2, netns, mntns, root, cwd))
        header = len(payload).to_bytes(8, "big")
        sent = sock.sendmsg([header, payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        view = memoryview(header + payload)[sent:]
        while view:
            view = view[sock.send(view):]
    finally:
        os.close(netns)
        os.close(mntns)
        os.close(root)
        os.close(cwd)


def restore_stdin(data):
    import io
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))


def busy(path, why):
    return refuse(f"underlayd at {path} did not start the request ({why}); nothing was done "
                  "(UNDERLAY_AGENT_TIMEOUT sets the bound)")


def refuse(msg):
    """None, with `refusal` set: the caller answers code 11 (try again) with `msg`."""
    global refusal
    refusal = msg
    return None
