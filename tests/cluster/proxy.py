"""A TCP proxy in front of one etcd member that loses answers on purpose.

    with FaultProxy(member_url) as proxy:       # proxy.url: http://127.0.0.1:<port>
        proxy.lose_answer(is_claim)             # the next request matching it reaches etcd,
                                                # its answer never reaches the client
        proxy.refuse = True                     # every new and current connection is cut
        proxy.hold(rule)                        # the next request matching it waits in the proxy
        proxy.held.wait(); proxy.release()      # until it has come, then goes on to etcd
        proxy.requests                          # (path, body) of every request forwarded, in order

It reads the client's HTTP/1.1 requests (ipam/etcd.py sends one at a time on a
keep-alive connection, with Content-Length) so it can tell which request an
answer belongs to; answers are copied back byte for byte. Losing an answer:
the request is forwarded, the proxy waits for etcd's answer to begin (etcd has
then decided the request) and resets the client's connection instead of
passing it on, exactly "a write whose connection broke after sending".
"""

import base64
import json
import select
import socket
import struct
import threading


def _reset(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def decoded_key(b64):
    return base64.b64decode(b64).decode(errors="replace")


def is_claim(path, body):
    """A cluster-ipam claim: a txn whose first compare is "the address key is absent"."""
    if path != "/v3/kv/txn":
        return False
    doc = json.loads(body)
    first = (doc.get("compare") or [{}])[0]
    return first.get("target") == "CREATE" and "/ips/" in decoded_key(first.get("key", ""))


def is_release(path, body):
    """A cluster-ipam release: a txn whose success ops delete an address key."""
    if path != "/v3/kv/txn":
        return False
    doc = json.loads(body)
    return any("/ips/" in decoded_key(op["request_delete_range"]["key"])
               for op in doc.get("success", []) if "request_delete_range" in op)


def is_write(path, body):
    """A request etcd passes through its log (raft): a put, a delete, a txn with a write in it."""
    if path in ("/v3/kv/put", "/v3/kv/deleterange"):
        return True
    if path != "/v3/kv/txn":
        return False
    doc = json.loads(body)
    return any("request_range" not in op for op in doc.get("success", []) + doc.get("failure", []))


class FaultProxy:
    def __init__(self, upstream_url):
        host, port = upstream_url.split("://", 1)[1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.refuse = False
        self.lost = []                  # (path, body) of the requests whose answer was lost
        self.requests = []              # (path, body) of every request forwarded: round trips counted
        self._rule = None
        self._hold = None               # the rule of the request to hold back until release()
        self.held = threading.Event()   # set when that request has come
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._open = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def lose_answer(self, rule, times=1, then_refuse=False):
        """The next `times` requests for which rule(path, body) is true lose their answer;
        with then_refuse, the proxy refuses every connection from then on (etcd "gone")."""
        with self._lock:
            self._rule = (rule, times, then_refuse)

    def hold(self, rule):
        """The next request for which rule(path, body) is true waits in the proxy, unsent, until
        release(); `held` is set once it has come."""
        with self._lock:
            self._hold = rule
            self.held.clear()
            self._released.clear()

    def release(self):
        self._released.set()

    def _held(self, path, body):
        with self._lock:
            try:
                hit = self._hold is not None and self._hold(path, body)
            except (ValueError, KeyError, TypeError):
                hit = False
            if hit:
                self._hold = None
                self.held.set()
        return hit

    def cut_all(self):
        with self._lock:
            for sock in list(self._open):
                _reset(sock)

    def close(self):
        self._closed = True
        self._released.set()
        self.cut_all()
        _reset(self.listener)
        self._thread.join(5)

    # -- the pumps --------------------------------------------------------

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    def _take(self, path, body):
        with self._lock:
            if self._rule is None:
                return False
            rule, times, then_refuse = self._rule
            try:
                hit = rule(path, body)
            except (ValueError, KeyError, TypeError):
                hit = False
            if hit:
                self._rule = (rule, times - 1, then_refuse) if times > 1 else None
                self.lost.append((path, body))
                self.refuse = self.refuse or then_refuse
            return hit

    def _serve(self, client, upstream):
        reader = client.makefile("rb")
        try:
            while not self.refuse:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline(65536)
                    if not line:
                        return
                    head += line
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = reader.read(length) if length else b""
                path = head.split(b" ", 2)[1].decode()
                if self._held(path, body):
                    self._released.wait()
                lose = self._take(path, body)
                with self._lock:
                    self.requests.append((path, body))
                upstream.sendall(head + body)
                if lose:
                    select.select([upstream], [], [], 10)   # etcd has decided once its answer begins
                    return
                if not self._relay_answer(upstream, client):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            reader.close()
            _reset(client)
            _reset(upstream)

    @staticmethod
    def _relay_answer(upstream, client):
        """Copy one HTTP answer (Content-Length or chunked, as etcd's gateway sends) back."""
        reader = upstream.makefile("rb")
        try:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline(65536)
                if not line:
                    return False
                head += line
            client.sendall(head)
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"content-length" in headers:
                client.sendall(reader.read(int(headers[b"content-length"])))
                return True
            while True:                                     # chunked
                size_line = reader.readline(65536)
                client.sendall(size_line)
                n = int(size_line.split(b";")[0].strip(), 16)
                if n == 0:
                    while True:
                        trailer = reader.readline(65536)
                        client.sendall(trailer)
                        if trailer in (b"\r\n", b""):
                            return True
                client.sendall(reader.read(n + 2))
        finally:
            reader.close()
