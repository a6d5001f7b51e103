"""ipam.etcd facing endpoints that are not etcd: fake servers on 127.0.0.1, beside a real member."""

import base64
import socket
import threading
import time

import pytest

from cni.errors import ERR_TRY_AGAIN, CniError
from ipam import etcd

pytestmark = pytest.mark.etcd

HANG = 30   # an upper bound only rules out a hang: no load on the machine may fail it (speed is never asserted)

ANSWERS = {
    "not JSON": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "JSON without a header": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n",
    "an HTML 502": b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\n<h1>no</h1>",
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n",
    "a bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "a huge length": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    "etcd-like JSON with bad fields": b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"
                                      b'{"header":{"revision":"x"},"kvs":[1]}   ',
    "a JSON list, chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
}


class FakeServer:
    """Answers every request with `answer` (bytes), or closes ("close") or never answers ("hang")."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        self.closed = threading.Event()
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.threads.append(threading.Thread(target=self._handle, args=(conn,), daemon=True))
            self.threads[-1].start()

    def _handle(self, conn):
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(data) < length:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                data = data[length:]
                self.requests += 1
                if self.answer == "hang":
                    self.closed.wait()
                    return
                if self.answer == "close":
                    conn.close()
                    return
                conn.sendall(self.answer)
        except OSError:
            return

    def close(self):
        """Stops every thread it started: a thread blocked in accept() or recv() wakes only on a
        shutdown, not on close(), and would outlive the test into the next one in this process."""
        self.closed.set()
        self._shut(self.sock)
        self.threads[0].join()      # accepts no more: conns and threads are complete
        for conn in self.conns:
            self._shut(conn)
        for thread in self.threads:
            thread.join()
        for sock in [self.sock, *self.conns]:
            sock.close()

    @staticmethod
    def _shut(sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:     # the peer or a "close" answer already ended it
            pass


@pytest.fixture
def fake():
    made = []

    def make(answer):
        made.append(FakeServer(answer))
        return made[-1]

    try:
        yield make
    finally:
        for server in made:
            server.close()


class RoundClock:
    """The etcd client's clock, moved only by its pause between two rounds, by a third of HANG: a call
    makes three rounds, each with HANG seconds to read its answer however busy the machine is."""

    def __init__(self):
        self.now = time.monotonic()

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += HANG / 3


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_an_answer_that_is_not_etcds_is_code_11_naming_the_endpoint(fake, kind, monkeypatch):
    server = fake(ANSWERS[kind])
    monkeypatch.setattr(etcd, "time", RoundClock())
    for call, args in (("get", ("uet/k",)), ("put", ("uet/k", "v"))):
        with pytest.raises(CniError) as e:
            getattr(etcd.Client([server.url], request_timeout=HANG), call)(*args)
        assert (e.value.code, e.value.msg) == (ERR_TRY_AGAIN, f"etcd: no endpoint answered within {HANG}s")
        assert e.value.details.startswith(f"{server.url}: not an etcd answer"), e.value.details


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_the_next_endpoint_answers_within_the_same_call(etcd_cluster, fake, kind):
    server, cluster = fake(ANSWERS[kind]), etcd_cluster()
    client = etcd.Client([server.url] + cluster.endpoints)
    assert client.put("uet/k", "v") > 0 and client.get("uet/k").value == b"v"
    assert server.requests >= 1 and client.status()["endpoint"] == cluster.endpoints[0]


def test_a_connection_lost_during_a_write_is_not_resent(etcd_cluster, fake):
    server, cluster = fake("close"), etcd_cluster()
    client = etcd.Client([server.url] + cluster.endpoints)
    with pytest.raises(CniError) as e:
        client.put("uet/k", "v")
    assert e.value.code == ERR_TRY_AGAIN
    assert e.value.msg == f"etcd: {server.url} broke off during a write; it may have been applied"
    assert cluster.client().get("uet/k") is None                        # not sent to the real member
    assert client.get("uet/k") is None                                  # a read moves on to it


def test_a_member_that_never_answers_holds_the_call_to_its_deadline(fake):
    server = fake("hang")
    for call, args in (("get", ("uet/k",)), ("put", ("uet/k", "v"))):
        start = time.monotonic()
        with pytest.raises(CniError) as e:
            getattr(etcd.Client([server.url], request_timeout=1), call)(*args)
        assert e.value.code == ERR_TRY_AGAIN and e.value.msg == "etcd: no endpoint answered within 1s"
        assert f"{server.url}: no answer before the deadline" in e.value.details
        assert 0.95 <= time.monotonic() - start <= 1 + HANG


def test_https_to_a_plain_member_is_a_tls_failure(etcd_cluster, tmp_path, monkeypatch):
    cluster = etcd_cluster(members=1, tls=True)                          # for its CA file
    plain = FakeServer(ANSWERS["not JSON"])
    monkeypatch.setattr(etcd, "time", RoundClock())
    try:
        url = plain.url.replace("http://", "https://")
        with pytest.raises(CniError) as e:
            etcd.Client([url], ca_file=cluster.tls.ca, request_timeout=HANG).get("uet/k")
        assert e.value.code == ERR_TRY_AGAIN and e.value.details.startswith(f"{url}: TLS: "), e.value.details
    finally:
        plain.close()


def test_nothing_listening_within_the_dial_timeout():
    # 192.0.2.0/24 (TEST-NET-1) is never routed; the connect times out (or is unreachable at once)
    start = time.monotonic()
    with pytest.raises(CniError) as e:
        etcd.Client(["http://192.0.2.1:2379"], dial_timeout=0.3, request_timeout=1).get("uet/k")
    assert e.value.code == ERR_TRY_AGAIN and e.value.details.startswith("http://192.0.2.1:2379: ")
    assert time.monotonic() - start <= 1 + HANG


def range_answer(value):
    """An HTTP answer as etcd's gateway gives it to a range of one key holding `value`."""
    body = (b'{"header":{"revision":"7"},"kvs":[{"key":"dWV0L2s=","value":"%s","create_revision":"2",'
            b'"mod_revision":"7","version":"1"}],"count":"1"}') % base64.b64encode(value)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_bytes_after_an_answer_are_never_read_as_the_next_one(fake):
    # whatever a member sends beyond its answer is not the answer to the next request: the connection
    # is dropped and the next request goes on a fresh one
    server = fake(range_answer(b"fresh") + range_answer(b"stale"))
    client = etcd.Client([server.url])
    assert client.get("uet/k").value == b"fresh"
    assert client.get("uet/k").value == b"fresh"
    assert len(server.conns) == 2


def test_an_address_endpoint_is_dialled_without_a_name_lookup(etcd_cluster, monkeypatch):
    cluster = etcd_cluster()
    looked_up = []
    lookup = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        return lookup(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    port = cluster.endpoints[0].rsplit(":", 1)[1]
    assert etcd.Client([f"http://127.0.0.1:{port}"]).put("uet/k", "v") > 0
    assert looked_up == []
    assert etcd.Client([f"http://localhost:{port}"]).get("uet/k").value == b"v"   # a name is still looked up
    assert looked_up == ["localhost"]
