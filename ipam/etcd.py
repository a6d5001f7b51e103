"""A small etcd v3 client over etcd's JSON gateway (/v3/kv/*), standard library only.

The interface is the one in ETCD_API.md: Client.get/range/put/delete/txn/status,
compare builders (absent, value_is, mod_revision_is; none_under added) and op builders (put,
delete, get, get_prefix; delete_prefix added). Keys and values are str or bytes; results
carry bytes.

Why not http.client or gRPC: every pod attach execs a fresh process, so the
import is paid each time. http.client alone pulls in email.* and ssl (~20 ms);
a gRPC stack costs 100 ms+ per exec (REFERENCE.md §6: Debian's python3-etcd3,
104-111 ms a process). This module speaks the little HTTP/1.1 the
gateway needs (one POST, Content-Length or chunked answers) on a plain socket,
and imports ssl only when an endpoint is https://. What that buys (import time,
one txn, a whole process) is measured side by side by
`python -m tests.bench.etcd_client`, not written down here to go stale.

Failures. One call is bounded by request_timeout as a whole; each connect by
dial_timeout as well. The client starts with the endpoint that answered last
(in this process; nothing is kept on disk), keeps one keep-alive connection per
endpoint (checked for a close by etcd before reuse), and moves on to the next
endpoint when one cannot be reached, refuses TLS, answers with an etcd error
(no leader, leader changed, ...) or answers something that is not etcd's. When
every endpoint failed it pauses (50 ms, doubling to 0.5 s) and goes round again
until the deadline, then raises CniError(11, "etcd: no endpoint answered within
Ns", details naming each endpoint and why). Requests carry the gRPC metadata
hasleader=true: a member that knows it has no leader says so at once instead of
holding the request.

A write (put, delete, a txn with a put or delete) is never sent twice. When the
connection breaks after the request went out, or etcd answers "request timed
out" / "leader changed", etcd may or may not have applied it: the client raises
code 11 "etcd: <endpoint> broke off during a write; it may have been applied"
(or "... gave up on a write ...") instead of repeating it elsewhere, and a write
still unanswered at the deadline is reported as such in the details. Callers
make writes safe to repeat (compare-guarded txns that recognise their own
earlier success) and retry, as a runtime retries an ADD that failed with 11.
This is what etcd's own clientv3 does for writes too. With several endpoints, a
write's answer must start within max(dial_timeout, request_timeout / 2), else
it is given up as "did not answer a write in time; it may have been applied":
after the leader is SIGKILLed, a follower that has not noticed yet forwards a
write to the dead leader and holds it for etcd's 7 s request timeout, longer
than the call. Given up at half the call, the caller still has a whole call to
read the outcome from a member that answers once a new leader is elected (~1-2
s; the follower then says "leader changed" to reads) and to repeat its guarded
txn: no ADD is lost to a leader's death (tests/cluster/test_failures.py).
A follower's death, or the leader's SIGTERM (etcd hands leadership over), costs
a write nothing but the failover.

A refusal etcd means (bad request, too many txn ops, database space exceeded,
...) raises code 5 naming the endpoint and etcd's message, without trying
further endpoints. A TLS handshake that fails for a certificate's reason (our
trustedCAFile does not verify etcd's certificate, it names another host, etcd
refuses our client certificate or its absence) is the config's mistake, not a
member down: when no endpoint answered in that round, code 7 names the field
(trustedCAFile, certFile, endpoints[i]), the file and TLS's reason at once,
instead of code 11 at the deadline. A member refusing while another answers is
one member lost. TLS 1.3 refuses a client certificate after the handshake, by
an alert that a request sent meanwhile may meet as an EOF: the alert is then
read before the failure is judged.

A member that accepts connections but never answers (stopped, not dead) costs
a read its share of the call: with several endpoints, a read's answer must
start within max(dial_timeout, request_timeout / endpoints) of the attempt,
else the next endpoint is tried (the body then has until the deadline).
A write is never re-sent: a stopped member first in the list is left by the
reads that precede every write of an ADD, and the client keeps to the endpoint
that answered last.

A Client is not thread-safe; make one per process (or per thread).
"""

import base64
import json
import select
import socket
import time

from cni.errors import ERR_INVALID_CONFIG, ERR_IO, ERR_TRY_AGAIN, CniError

DEFAULT_DIAL_TIMEOUT = 2.0
DEFAULT_REQUEST_TIMEOUT = 5.0
DEFAULT_PORT = 2379
MAX_TIMEOUT = 300.0

MAX_LINE = 65536
MAX_HEADERS = 100
MAX_BODY = 64 << 20          # a range over a /16 of leases is ~15 MB of JSON

# gRPC codes the gateway reports for a member that cannot serve right now.
GRPC_UNAVAILABLE = 14
GRPC_DEADLINE_EXCEEDED = 4
# Unavailable answers after which a write may still be applied (etcdserver's
# ErrTimeout*, ErrLeaderChanged); "no leader" and "not capable" were refused.
MAYBE_APPLIED = ("timed out", "leader changed")


# --------------------------------------------------------------------------
# Builders. Compares and ops are the gateway's JSON objects.

def _b(data):
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"an etcd key or value is str or bytes, not {type(data).__name__}")   # bytes(5) is 5 NULs


def _b64(data):
    return base64.b64encode(_b(data)).decode("ascii")


def _prefix_end(prefix):
    """The range_end that selects every key starting with prefix."""
    prefix = _b(prefix).rstrip(b"\xff")
    if not prefix:
        return b"\0"                     # every key
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _key_range(prefix):
    prefix = _b(prefix)
    return {"key": _b64(prefix or b"\0"), "range_end": _b64(_prefix_end(prefix))}


def absent(key):
    return {"target": "CREATE", "result": "EQUAL", "key": _b64(key), "create_revision": "0"}


def none_under(prefix):
    """No key starts with `prefix` (a compare over the range: etcd 3.3 and later)."""
    return {"target": "CREATE", "result": "EQUAL", **_key_range(prefix), "create_revision": "0"}


def value_is(key, value):
    return {"target": "VALUE", "result": "EQUAL", "key": _b64(key), "value": _b64(value)}


def mod_revision_is(key, revision):
    return {"target": "MOD", "result": "EQUAL", "key": _b64(key), "mod_revision": str(int(revision))}


def put(key, value):
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def delete(key):
    return {"request_delete_range": {"key": _b64(key)}}


def delete_prefix(prefix):
    return {"request_delete_range": _key_range(prefix)}


def get(key):
    return {"request_range": {"key": _b64(key)}}


def get_prefix(prefix, keys_only=False):
    return {"request_range": dict(_key_range(prefix), keys_only=True) if keys_only else _key_range(prefix)}


# --------------------------------------------------------------------------
# Results.

class KV:
    """One key: .key and .value (bytes), .create_revision, .mod_revision, .version (ints)."""

    __slots__ = ("key", "value", "create_revision", "mod_revision", "version")

    def __init__(self, key, value, create_revision, mod_revision, version=0):
        self.key, self.value = key, value
        self.create_revision, self.mod_revision, self.version = create_revision, mod_revision, version

    @classmethod
    def from_json(cls, kv):
        return cls(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")),
                   int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)), int(kv.get("version", 0)))

    def __repr__(self):
        return f"KV({self.key!r}, {self.value!r}, create_revision={self.create_revision}, mod_revision={self.mod_revision})"


class TxnResult:
    """.succeeded, .responses (list[KV] per get/range op, else None), .revision."""

    __slots__ = ("succeeded", "responses", "revision")

    def __init__(self, succeeded, responses, revision):
        self.succeeded, self.responses, self.revision = succeeded, responses, revision

    def __repr__(self):
        return f"TxnResult(succeeded={self.succeeded}, responses={self.responses!r}, revision={self.revision})"


def _kvs(doc):
    return [KV.from_json(kv) for kv in doc.get("kvs", ())]


def _revision(doc):
    return int(doc["header"]["revision"])


def _txn_result(doc):
    responses = []
    for response in doc.get("responses", ()):
        got = response.get("response_range")
        responses.append(None if got is None else _kvs(got))
    return TxnResult(bool(doc.get("succeeded", False)), responses, _revision(doc))


# --------------------------------------------------------------------------
# Transport: one keep-alive HTTP/1.1 connection per endpoint.

class _Unsent(Exception):
    """Nothing reached etcd (no connection, TLS refused): safe to try elsewhere."""


class _Broken(Exception):
    """The request went out but no whole answer came back: a write may have been applied.
    .silent: not a byte of the answer came by the attempt's first-byte time."""

    def __init__(self, why, silent=False):
        super().__init__(why)
        self.silent = silent


class _NotEtcd(Exception):
    """A whole answer came back that is not etcd's gateway speaking."""


class _CertRefused(Exception):
    """The TLS handshake failed for a certificate's reason: the config's files (or the endpoint's
    name) are wrong, not the member down. .whose: "ca" (our trustedCAFile does not verify etcd's
    certificate), "name" (etcd's certificate is not for the endpoint's host) or "client" (etcd
    refused our client certificate, or its absence); .why: the TLS library's words."""

    def __init__(self, whose, why):
        super().__init__(why)
        self.whose, self.why = whose, why


def _parse_url(url, field):
    bad = CniError(ERR_INVALID_CONFIG, f"{field}: {url!r} is not an http:// or https:// URL "
                                       "(scheme://host[:port], nothing after it)")
    if not isinstance(url, str):
        raise CniError(ERR_INVALID_CONFIG, f"{field}: must be a string (an http:// or https:// URL)")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise bad
    rest = rest[:-1] if rest.endswith("/") else rest
    if not rest or any(c in rest for c in "/?#@ \t\r\n\\"):
        raise bad
    if rest.startswith("["):                        # [v6]:port
        host, sep, port = rest[1:].partition("]")
        if port and not port.startswith(":"):
            raise bad
        port = port[1:] if port else ""
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            raise bad from None
    else:
        host, _, port = rest.partition(":")
        if not host or not all(c.isascii() and (c.isalnum() or c in ".-_") for c in host):
            raise bad
        # a DNS name: labels of 1-63 characters (the resolver's idna encoding refuses others)
        if len(host) > 253 or not all(0 < len(label) <= 63 for label in host.removesuffix(".").split(".")):
            raise bad
    if port == "" and ":" in rest.rpartition("]")[2]:
        raise bad                                   # "host:" with no port
    if port:
        if not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
            raise bad
    return scheme, host, int(port) if port else DEFAULT_PORT


def _ip_family(host):
    """AF_INET or AF_INET6 when `host` is an address, else None (a name)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family
        except OSError:
            continue
    return None


class _Endpoint:
    def __init__(self, url, field):
        self.scheme, self.host, self.port = _parse_url(url, field)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{self.scheme}://{host}:{self.port}"
        self.host_header = f"{host}:{self.port}".encode()
        self.family = _ip_family(self.host)
        self.sock = None
        self.buf = bytearray()   # what was read of the answer and not taken yet

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = bytearray()

    def _connect(self, timeout, tls):
        try:
            sock = self._dial(timeout)
        except socket.timeout:
            raise _Unsent(f"no connection within {timeout:.3g}s") from None
        except OSError as e:
            raise _Unsent(_why(e)) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                sock = tls.wrap_socket(sock, server_hostname=self.host)
        except (OSError, ValueError) as e:           # ssl.SSLError is an OSError
            sock.close()
            _check_certificate(e)
            raise _Unsent(f"TLS: {_why(e)}") from None
        self.sock = sock

    def _dial(self, timeout):
        """A connected socket. An address (what endpoints are: members' ClusterIPs) is connected to as it
        is: a name lookup (socket.create_connection's getaddrinfo, with its IDNA encoding) cost every
        operation ~0.2 ms of CPU in a fresh worker for nothing."""
        if self.family is None:
            return socket.create_connection((self.host, self.port), timeout=timeout)
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return sock

    def exchange(self, path, body, deadline, dial_timeout, tls, first_byte_by=None):
        """POST body to path; returns (status, answer bytes). `first_byte_by`: the answer must start by
        then (a monotonic time before `deadline`), else _Broken; the rest of it has until `deadline`."""
        if self.sock is not None and (self.buf or select.select([self.sock], [], [], 0)[0]):
            self.close()                            # closed by etcd (or a restart) while idle, or spoke out of turn
        fresh = self.sock is None
        started = time.monotonic()
        if fresh:
            self._connect(max(0.001, min(dial_timeout, deadline - time.monotonic())), tls)
        head = (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Grpc-Metadata-hasleader: true\r\nContent-Length: %d\r\n\r\n") % (path, self.host_header, len(body))
        answered = False
        try:
            self._settimeout(deadline)
            self.sock.sendall(head + body)
            try:
                status_line = self._line(min(deadline, first_byte_by or deadline))
            except socket.timeout:
                if first_byte_by is None or first_byte_by >= deadline:
                    raise
                self.close()
                raise _Broken(f"no answer within {first_byte_by - started:.3g}s", silent=True) from None
            answered = True
            status, answer, keep = self._read_answer(status_line, deadline)
        except _NotEtcd:
            self.close()
            raise
        except socket.timeout:
            self.close()
            raise _Broken("no answer before the deadline") from None
        except OSError as e:
            # TLS 1.3 tells a client its certificate was refused only after the handshake,
            # instead of the first answer: a TLS failure there is a refusal, not a lost request.
            if fresh and not answered and self.scheme == "https":
                self._check_refusal(e, deadline)
                if _is_tls_error(e):
                    self.close()
                    raise _Unsent(f"TLS: {_why(e)}") from None
            self.close()
            raise _Broken(_why(e)) from None
        if not keep:
            self.close()
        return status, answer

    def _check_refusal(self, e, deadline):
        """Raise _CertRefused (closed) if etcd refused our certificate on this fresh TLS connection: said
        by `e`, or by an alert still to be read when the request met the closed connection first
        (an EOF on send)."""
        try:
            try:
                _check_certificate(e)
                self.sock.settimeout(max(0.001, min(0.5, deadline - time.monotonic())))
                self.sock.recv(1)
            except (OSError, ValueError) as alert:
                _check_certificate(alert)
        except _CertRefused:
            self.close()
            raise

    def _settimeout(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)

    # The answer is read into self.buf by recv calls, each bounded by the deadline: a buffered file
    # object (makefile) set the socket's timeout, an ioctl, for every line of the headers.

    def _fill(self, deadline):
        """One recv into the buffer; False at EOF."""
        self._settimeout(deadline)
        data = self.sock.recv(1 << 16)
        self.buf += data
        return bool(data)

    def _line(self, deadline):
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                break
            if len(self.buf) > MAX_LINE:
                raise _NotEtcd("an HTTP line too long")
            start = len(self.buf)
            if not self._fill(deadline):
                if self.buf:
                    raise _NotEtcd("an HTTP line too long")    # cut short: no end of line
                raise ConnectionResetError("connection closed before the whole answer")
        if end >= MAX_LINE:
            raise _NotEtcd("an HTTP line too long")
        line = bytes(self.buf[:end + 1])
        del self.buf[:end + 1]
        return line

    def _read(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ConnectionResetError("connection closed before the whole answer")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _read_answer(self, status_line, deadline):
        status_line = status_line.split(None, 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
            raise _NotEtcd("not an HTTP answer")
        status = int(status_line[1])
        headers = self._headers(deadline)
        keep = headers.get(b"connection", b"").lower() != b"close" and status_line[0] == b"HTTP/1.1"
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts, size = [], 0
            while True:
                chunk = self._line(deadline).split(b";", 1)[0].strip()
                try:
                    n = int(chunk, 16)
                except ValueError:
                    raise _NotEtcd("a bad chunk size") from None
                size += n
                if n < 0 or size > MAX_BODY:
                    raise _NotEtcd(f"an answer larger than {MAX_BODY} bytes")
                if n == 0:
                    self._headers(deadline)         # trailers (grpc-gateway sends some)
                    break
                parts.append(self._read(n, deadline))
                self._read(2, deadline)             # CRLF after the chunk
            return status, b"".join(parts), keep
        if b"content-length" in headers:
            length = headers[b"content-length"]
            if not length.isdigit() or int(length) > MAX_BODY:
                raise _NotEtcd(f"a bad Content-Length {length[:20]!r}")
            return status, self._read(int(length), deadline), keep
        return status, self._read_to_eof(deadline), False    # HTTP/1.0 style: the body ends the connection

    def _read_to_eof(self, deadline):
        while self._fill(deadline):
            if len(self.buf) > MAX_BODY:
                raise _NotEtcd(f"an answer larger than {MAX_BODY} bytes")
        data = bytes(self.buf)
        self.buf = bytearray()
        return data

    def _headers(self, deadline):
        headers = {}
        for _ in range(MAX_HEADERS):
            line = self._line(deadline)
            if line in (b"\r\n", b"\n"):
                return headers
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        raise _NotEtcd("too many HTTP headers")


class _Canned:
    """Client.unsent's endpoint: `answer` to every request, which goes nowhere."""

    url = "canned"

    def __init__(self, answer):
        self.answer = answer

    def exchange(self, path, body, deadline, dial_timeout, tls, first_byte_by=None):
        return 200, self.answer

    def close(self):
        pass


def _why(e):
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if type(e).__module__ == "ssl":                 # "[SSL: X] text (_ssl.c:992)" -> "text"
        text = getattr(e, "verify_message", None)
        text = f"certificate verify failed: {text}" if text else str(e.args[1] if len(e.args) > 1 else e)
        return text.split("] ", 1)[-1].split(" (_ssl.c:", 1)[0]
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _is_tls_error(e):
    import ssl                                      # loaded already: the endpoint is https://
    return isinstance(e, ssl.SSLError)


# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH: etcd's certificate names another host
NAME_MISMATCH = (62, 64)


def _check_certificate(e):
    """Raise _CertRefused if the TLS error `e` is about a certificate: ours failed to verify etcd's,
    or etcd's alert refused ours (bad certificate, unknown CA, certificate required, expired, ...).
    Anything else (a reset, EOF, a protocol mismatch) may be a member going down: left to the caller."""
    import ssl
    if isinstance(e, ssl.SSLCertVerificationError):
        raise _CertRefused("name" if e.verify_code in NAME_MISMATCH else "ca", _why(e)) from None
    reason = getattr(e, "reason", None) or ""
    if isinstance(e, ssl.SSLError) and "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
        raise _CertRefused("client", _why(e)) from None


def _tls_context(cert_file, key_file, ca_file, field):
    import ssl                                      # only for https:// endpoints (~8 ms)

    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as e:
        raise CniError(ERR_INVALID_CONFIG, f"{field}.trustedCAFile: cannot load {ca_file!r}: {_why(e)}") from None
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ValueError) as e:
            raise CniError(ERR_INVALID_CONFIG, f"{field}.certFile/keyFile: cannot load {cert_file!r}"
                                               f"{f' with {key_file!r}' if key_file else ''}: {_why(e)}") from None
    return ctx


# --------------------------------------------------------------------------
# The client.

class Client:
    """An etcd v3 client on a list of endpoints (see the module docstring for failures)."""

    def __init__(self, endpoints, cert_file=None, key_file=None, ca_file=None,
                 dial_timeout=DEFAULT_DIAL_TIMEOUT, request_timeout=DEFAULT_REQUEST_TIMEOUT, field="etcd"):
        if isinstance(endpoints, (str, bytes)) or not isinstance(endpoints, (list, tuple)) or not endpoints:
            raise CniError(ERR_INVALID_CONFIG, f"{field}.endpoints: must be a non-empty list of http:// or https:// URLs")
        self.endpoints = [_Endpoint(url, f"{field}.endpoints[{i}]") for i, url in enumerate(endpoints)]
        if key_file and not cert_file:
            raise CniError(ERR_INVALID_CONFIG, f"{field}.keyFile: given without certFile")
        self._tls = None
        if any(ep.scheme == "https" for ep in self.endpoints):
            self._tls = _tls_context(cert_file, key_file, ca_file, field)
        self.dial_timeout = float(dial_timeout)
        self.request_timeout = float(request_timeout)
        self._last = 0                              # index of the endpoint that answered last
        self._field, self._cert_file, self._ca_file = field, cert_file, ca_file   # for certificate errors

    @classmethod
    def unsent(cls, answer):
        """One whose every call is packed as ever and answered with `answer` (the bytes of an etcd answer),
        nothing sent, no socket: a spare's warm-up (ipam/cluster.py rehearse), as Netlink.unsent."""
        client = cls(["http://127.0.0.1"])
        client.endpoints = [_Canned(answer)]
        return client

    def close(self):
        for ep in self.endpoints:
            ep.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- KV ----------------------------------------------------------------

    def get(self, key):
        kvs = self._call(b"/v3/kv/range", {"key": _b64(key)}, False, _kvs)
        return kvs[0] if kvs else None

    def range(self, prefix, keys_only=False):
        request = _key_range(prefix)
        if keys_only:
            request["keys_only"] = True
        return self._call(b"/v3/kv/range", request, False, _kvs)

    def put(self, key, value):
        return self._call(b"/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, True, _revision)

    def delete(self, key):
        return self._call(b"/v3/kv/deleterange", {"key": _b64(key)}, True, lambda doc: int(doc.get("deleted", 0)))

    def txn(self, compares, success, failure=()):
        request = {"compare": list(compares), "success": list(success), "failure": list(failure)}
        write = any("request_range" not in op for op in request["success"] + request["failure"])
        return self._call(b"/v3/kv/txn", request, write, _txn_result)

    def status(self):
        """The answering endpoint's /v3/maintenance/status (etcd's JSON, int64s as strings), plus "endpoint"."""
        doc = self._call(b"/v3/maintenance/status", {}, False, dict)
        doc["endpoint"] = self.endpoints[self._last].url
        return doc

    # -- one call over the endpoints ---------------------------------------

    def _call(self, path, request, write, parse):
        """POSTs request to the endpoints in turn until one answers; returns parse(answer)."""
        body = json.dumps(request, separators=(",", ":")).encode()
        deadline = time.monotonic() + self.request_timeout
        why = {}
        pause = 0.05
        n = len(self.endpoints)
        # A read's answer must start within its endpoint's share of the call, so that a member that
        # accepts but never answers (stopped) costs a share, not the call. A write keeps the whole
        # deadline: once sent it is never sent elsewhere, and a slow answer beats an unknown outcome.
        # A write's answer must start within half the call: a follower that forwards it to a leader
        # just killed holds it for etcd's own request timeout (7 s), longer than the call. Given up,
        # it is reported as possibly applied, never re-sent: the caller reads the outcome (from a
        # member that answers, once a new leader is elected) and repeats its guarded txn in time.
        share = None if n == 1 else max(self.dial_timeout, self.request_timeout / (2 if write else n))
        refused = None                              # the first certificate refusal of this round
        while True:
            for i in [(self._last + k) % n for k in range(n)]:
                if time.monotonic() >= deadline:
                    break
                ep = self.endpoints[i]
                try:
                    first_byte_by = None if share is None else time.monotonic() + share
                    status, answer = ep.exchange(path, body, deadline, self.dial_timeout, self._tls, first_byte_by)
                    doc = _decode(answer)
                except _Unsent as e:
                    why[ep.url] = str(e)
                    continue
                except _CertRefused as e:
                    why[ep.url] = f"TLS: {e.why}"
                    refused = refused or (i, e)
                    continue
                except _Broken as e:
                    cut = time.monotonic() >= deadline
                    if write and not cut:
                        what = "did not answer a write in time" if e.silent else "broke off during a write"
                        raise CniError(ERR_TRY_AGAIN, f"etcd: {ep.url} {what}; it may have been applied",
                                       f"{ep.url}: {e}") from None
                    text = f"{e}, to a write (it may still be applied)" if write else str(e)
                    # an attempt the deadline cut short says less than the failure before it
                    why[ep.url] = f"{why[ep.url]}; then {text}" if cut and ep.url in why else text
                    continue
                except _NotEtcd as e:
                    why[ep.url] = f"not an etcd answer: {e}"
                    continue
                if status == 200 and isinstance(doc.get("header"), dict):
                    try:
                        result = parse(doc)
                    except (KeyError, TypeError, ValueError, AttributeError) as e:   # binascii.Error too
                        why[ep.url] = f"not an etcd answer: {type(e).__name__} {str(e)[:100]}"
                        continue
                    self._last = i
                    return result
                code, message = doc.get("code"), str(doc.get("error") or doc.get("message") or "")[:300]
                if status == 200 or not isinstance(code, int) or not message:
                    why[ep.url] = f"not an etcd answer: HTTP {status}"
                    continue
                if code in (GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED):
                    if write and (code == GRPC_DEADLINE_EXCEEDED or any(m in message for m in MAYBE_APPLIED)):
                        raise CniError(ERR_TRY_AGAIN, f"etcd: {ep.url} gave up on a write; it may have been applied: {message}",
                                       f"{ep.url}: {message}")
                    why[ep.url] = message
                    continue
                raise CniError(ERR_IO, f"etcd: {ep.url} refused the request: {message}", f"gRPC code {code}")
            if refused:                             # no member answered, one refused our certificates
                raise self._certificate_error(*refused, self._round(why))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)
        raise CniError(ERR_TRY_AGAIN, f"etcd: no endpoint answered within {self.request_timeout:g}s",
                       self._round(why))

    def _round(self, why):
        """What each endpoint said in the last round (the details of a failed call)."""
        return "; ".join(f"{ep.url}: {why.get(ep.url, 'not tried')}" for ep in self.endpoints)

    def _certificate_error(self, i, refusal, details):
        """Code 7 naming the file (or endpoint) to fix and TLS's reason: nothing gets better by retrying."""
        url, host = self.endpoints[i].url, self.endpoints[i].host
        if refusal.whose == "name":
            field, what = f"endpoints[{i}]", f"the certificate of {url} is not for {host}"
        elif refusal.whose == "ca":
            field, what = "trustedCAFile", (f"{self._ca_file!r} does not verify the certificate of {url}"
                                            if self._ca_file else
                                            f"not given, and the system's CAs do not verify the certificate of {url}")
        else:
            field, what = "certFile", (f"{url} refused the client certificate {self._cert_file!r}" if self._cert_file
                                       else f"not given, and {url} requires a client certificate")
        return CniError(ERR_INVALID_CONFIG, f"{self._field}.{field}: {what}: {refusal.why}", details)


def _decode(answer):
    try:
        doc = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        raise _NotEtcd("not JSON") from None
    if not isinstance(doc, dict):
        raise _NotEtcd("not a JSON object")
    return doc


# --------------------------------------------------------------------------
# From a network config's `etcd` object.

TIMEOUT_DEFAULTS = {"dialTimeout": DEFAULT_DIAL_TIMEOUT, "requestTimeout": DEFAULT_REQUEST_TIMEOUT}


def timeout_setting(etcd_conf, key, field="ipam.etcd"):
    """dialTimeout or requestTimeout of an etcd section, in seconds (its default when not given);
    code 7 names the field when it is not a number of seconds in (0, MAX_TIMEOUT]."""
    value = etcd_conf.get(key, TIMEOUT_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
        raise CniError(ERR_INVALID_CONFIG, f"{field}.{key}: {value!r} is not a number of seconds in (0, {MAX_TIMEOUT:g}]")
    return float(value)


def client_from_config(etcd_conf, field="ipam.etcd"):
    """Checks endpoints, certFile, keyFile, trustedCAFile, dialTimeout, requestTimeout
    (and that prefix, if given, is a string) and builds the Client. Code 7 names the field."""
    if not isinstance(etcd_conf, dict):
        raise CniError(ERR_INVALID_CONFIG, f"{field}: must be an object")
    endpoints = etcd_conf.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise CniError(ERR_INVALID_CONFIG, f"{field}.endpoints: must be a non-empty list of http:// or https:// URLs")
    if "prefix" in etcd_conf and not isinstance(etcd_conf["prefix"], str):
        raise CniError(ERR_INVALID_CONFIG, f"{field}.prefix: must be a string")
    files = {}
    for key in ("certFile", "keyFile", "trustedCAFile"):
        value = etcd_conf.get(key)
        if value is not None and (not isinstance(value, str) or not value or "\0" in value):
            raise CniError(ERR_INVALID_CONFIG, f"{field}.{key}: must be a file path")
        files[key] = value
    timeouts = {key: timeout_setting(etcd_conf, key, field) for key in ("dialTimeout", "requestTimeout")}
    client = Client(endpoints, cert_file=files["certFile"], key_file=files["keyFile"], ca_file=files["trustedCAFile"],
                    dial_timeout=timeouts["dialTimeout"], request_timeout=timeouts["requestTimeout"], field=field)
    if any(files.values()) and client._tls is None:
        given = next(k for k, v in files.items() if v)
        raise CniError(ERR_INVALID_CONFIG, f"{field}.{given}: given, but no endpoint is https://")
    return client
