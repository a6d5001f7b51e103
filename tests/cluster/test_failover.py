"""ipam.etcd when members die and come back (real 3-member clusters).

The time bounds asserted here are correctness bounds (a call must give up at
its deadline, not hang, and must not give up early), with generous margins;
they say nothing about speed.
"""

import socket
import threading
import time

import pytest

from cni.errors import ERR_INVALID_CONFIG, ERR_TRY_AGAIN, CniError
from ipam import etcd

pytestmark = pytest.mark.etcd

MARGIN = 30           # only a hang (or retrying far past the deadline) exceeds it, however loaded the machine


def first_on(cluster, i, **kw):
    """A client whose first (and so preferred) endpoint is member i."""
    endpoints = [cluster.endpoints[i]] + [e for j, e in enumerate(cluster.endpoints) if j != i]
    return etcd.Client(endpoints, **cluster.client_tls, **kw)


def timed_failure(call, *args):
    start = time.monotonic()
    with pytest.raises(CniError) as e:
        call(*args)
    return e.value, time.monotonic() - start


def test_sigkill_of_the_member_last_used_fails_over_within_the_call(etcd_cluster):
    cluster = etcd_cluster(members=3)
    victim = (cluster.leader() + 1) % 3                                  # a follower
    client = first_on(cluster, victim)
    client.put("uet/before", "1")
    assert client.status()["endpoint"] == cluster.endpoints[victim]     # the kept connection is to the victim
    cluster.kill(victim)
    revision = client.put("uet/after", "2")                             # one call, no exception
    kv = client.get("uet/after")
    assert (kv.value, kv.mod_revision, kv.version) == (b"2", revision, 1)  # applied once
    assert client.status()["endpoint"] != cluster.endpoints[victim]
    assert client.txn([etcd.absent("uet/claim")], [etcd.put("uet/claim", "pod")]).succeeded
    cluster.start(victim)                                               # back: served again, no manual step
    assert [kv.key for kv in first_on(cluster, victim).range("uet/")] == [b"uet/after", b"uet/before", b"uet/claim"]


def test_sigkill_of_the_leader_last_used_fails_a_read_over_within_the_call(etcd_cluster):
    cluster = etcd_cluster(members=3)
    leader = cluster.leader()
    client = first_on(cluster, leader, request_timeout=15)
    client.put("uet/before", "1")
    cluster.kill(leader)
    # a follower holds the read until a new leader is elected, then says "leader changed"; retried
    assert client.get("uet/before").value == b"1"
    assert client.put("uet/after", "2") > 0


def test_a_write_sent_towards_a_dead_leader_is_code_11_and_never_sent_twice(etcd_cluster):
    # etcd 3.4: a follower that forwards a write to a leader that just died holds it
    # for 7 s and then cannot say whether it was applied; the client must not resend it.
    cluster = etcd_cluster(members=3)
    leader = cluster.leader()
    client = first_on(cluster, leader, request_timeout=3)
    client.put("uet/before", "1")
    cluster.kill(leader)
    try:
        client.put("uet/k", "v")
    except CniError as e:
        assert e.code == ERR_TRY_AGAIN
        assert "may have been applied" in e.msg or "may still be applied" in e.details, (e.msg, e.details)
    client.request_timeout = 15
    kv = client.get("uet/k")
    assert kv is None or (kv.value, kv.version) == (b"v", 1)
    assert client.put("uet/after", "2") > 0                              # the next call goes through


def test_a_write_a_follower_holds_for_a_dead_leader_is_given_up_in_time_to_read_its_outcome(etcd_cluster):
    """Right after the leader's SIGKILL a follower forwards a write to it and holds it for etcd's 7 s,
    longer than the call: the client gives up on it at half the call, as possibly applied (never
    "no endpoint answered" at the deadline), and the next call (a read of the outcome) answers once a
    new leader is elected, within its own request_timeout."""
    cluster = etcd_cluster(members=3)
    leader = cluster.leader()
    follower = (leader + 1) % 3
    client = first_on(cluster, follower, request_timeout=5)
    client.put("uet/before", "1")
    cluster.kill(leader)
    try:
        client.put("uet/k", "v")
    except CniError as e:
        assert (e.code, e.msg) == (ERR_TRY_AGAIN, f"etcd: {cluster.endpoints[follower]} did not answer a write "
                                                  "in time; it may have been applied"), (e.msg, e.details)
    kv = client.get("uet/k")
    assert kv is None or (kv.value, kv.version) == (b"v", 1)
    assert client.put("uet/after", "2") > 0


def test_sigterm_of_the_leader_fails_over_within_the_call(etcd_cluster):
    cluster = etcd_cluster(members=3)
    leader = cluster.leader()
    client = first_on(cluster, leader)
    client.put("uet/before", "1")
    cluster.stop(leader)
    assert client.txn([etcd.absent("uet/x")], [etcd.put("uet/x", "1")]).succeeded


@pytest.mark.parametrize("survivor", ["leader", "follower"])
def test_two_of_three_down_is_code_11_at_the_request_timeout(etcd_cluster, survivor):
    cluster = etcd_cluster(members=3)
    leader = cluster.leader()
    keep = leader if survivor == "leader" else (leader + 1) % 3
    client = first_on(cluster, keep, request_timeout=2)
    client.put("uet/before", "1")
    for i in range(3):
        if i != keep:
            cluster.kill(i)
    for call, args in ((client.put, ("uet/k", "v")), (client.get, ("uet/before",)),
                       (client.txn, ([etcd.absent("uet/k")], [etcd.put("uet/k", "v")]))):
        error, elapsed = timed_failure(call, *args)
        assert error.code == ERR_TRY_AGAIN
        assert error.msg == "etcd: no endpoint answered within 2s", error.msg
        assert all(url in error.details for url in cluster.endpoints), error.details
        assert 2 - 0.05 <= elapsed <= 2 + MARGIN, (call.__name__, elapsed)
    # one member back: quorum again, the same client carries on
    cluster.start(*(i for i in range(3) if i != keep))
    client.request_timeout = 15
    assert client.put("uet/k", "v") > 0
    assert client.get("uet/before").value == b"1"


def test_all_members_down_names_every_endpoint_then_recovers(etcd_cluster):
    cluster = etcd_cluster(members=3)
    client = cluster.client(request_timeout=1.5)
    client.put("uet/before", "1")
    for i in range(3):
        cluster.kill(i)
    for call, args in ((client.put, ("uet/k", "v")), (client.range, ("uet/",)), (client.status, ())):
        error, elapsed = timed_failure(call, *args)
        assert (error.code, error.msg) == (ERR_TRY_AGAIN, "etcd: no endpoint answered within 1.5s")
        assert error.details == "; ".join(f"{url}: connection refused" for url in cluster.endpoints)
        assert 1.5 - 0.05 <= elapsed <= 1.5 + MARGIN, elapsed
    cluster.start(0, 1, 2)
    assert client.put("uet/k", "v") > 0                                 # no manual step
    assert client.get("uet/before").value == b"1"


def test_cluster_coming_back_during_a_call_answers_that_call(etcd_cluster):
    cluster = etcd_cluster(members=3)
    client = cluster.client(request_timeout=30)
    client.put("uet/before", "1")
    for i in range(3):
        cluster.kill(i)
    result = {}
    # the call runs in a thread; members start from this (the main) thread, see tests/etcd.py
    worker = threading.Thread(target=lambda: result.update(rev=client.put("uet/k", "v")))
    worker.start()
    try:
        cluster.start(0, 1, 2)
    finally:
        worker.join(40)
    assert result.get("rev", 0) > 0
    assert cluster.client().get("uet/k").value == b"v"


def test_tls_with_client_certificates_and_failover(etcd_cluster):
    cluster = etcd_cluster(members=3, tls=True)
    follower = (cluster.leader() + 1) % 3
    client = first_on(cluster, follower)
    assert client.txn([etcd.absent("uet/a")], [etcd.put("uet/a", "1")]).succeeded
    assert not client.txn([etcd.absent("uet/a")], [etcd.put("uet/a", "2")]).succeeded
    cluster.kill(follower)
    assert client.put("uet/b", "2") > 0
    assert [kv.value for kv in client.range("uet/")] == [b"1", b"2"]
    assert etcd.client_from_config(cluster.config()).get("uet/a").value == b"1"


@pytest.mark.parametrize("case, msg", [
    ("wrong CA", "etcd.trustedCAFile: {other_ca!r} does not verify the certificate of {url}: "
                 "certificate verify failed: unable to get local issuer certificate"),
    ("no client certificate", "etcd.certFile: not given, and {url} requires a client certificate: "
                              "sslv3 alert bad certificate"),
    ("client certificate of another CA", "etcd.certFile: {url} refused the client certificate {other_cert!r}: "
                                         "sslv3 alert bad certificate"),
])
def test_tls_certificate_refusals_are_code_7_at_once_naming_the_file(etcd_cluster, case, msg):
    """A certificate refusal is the config's mistake, not etcd down: code 7 naming the file and TLS's
    reason, after one round of the endpoints (a dead one first in the list changes nothing), not code
    11 at the deadline. The deadline is the longest a config may give: waiting it out would hang."""
    cluster = etcd_cluster(members=1, tls=True)
    tls = cluster.tls
    files = {"wrong CA": dict(cert_file=tls.cert, key_file=tls.key, ca_file=tls.other_ca),
             "no client certificate": dict(ca_file=tls.ca),
             "client certificate of another CA": dict(cert_file=tls.other_cert, key_file=tls.other_key,
                                                      ca_file=tls.ca)}[case]
    url = cluster.endpoints[0]
    dead = "https://127.0.0.1:9"
    for endpoints in ([url], [dead, url]):
        for call, args in (("get", ("uet/k",)), ("put", ("uet/k", "v"))):
            for _ in range(10):                       # TLS 1.3 refuses a client certificate in several ways
                client = etcd.Client(endpoints, request_timeout=etcd.MAX_TIMEOUT, **files)   # fresh: no connection
                with pytest.raises(CniError) as e:
                    getattr(client, call)(*args)
                assert (e.value.code, e.value.msg) == (ERR_INVALID_CONFIG, msg.format(url=url, **vars(tls))), \
                    e.value.msg
                assert f"{url}: TLS: " in e.value.details and f"{dead}: connection refused" in e.value.details \
                    if dead in endpoints else e.value.details.startswith(f"{url}: TLS: "), e.value.details
    assert cluster.client().get("uet/k") is None                         # nothing written


def test_a_certificate_refused_by_one_member_while_another_answers_is_that_member_lost(etcd_cluster):
    """Only when no member answers is a certificate refusal the answer: one member refusing (its own
    certificate expired, say) while another serves is one member lost, as a dead one."""
    cluster = etcd_cluster(members=1, tls=True)
    with socket.socket() as other:                       # a TLS member of another CA, first in the list
        other.bind(("127.0.0.1", 0))
        other.listen(4)
        worker = threading.Thread(target=serve_tls_once, args=(other, cluster.tls), daemon=True)
        worker.start()
        client = etcd.Client([f"https://127.0.0.1:{other.getsockname()[1]}"] + cluster.endpoints,
                             request_timeout=5, **cluster.client_tls)
        assert client.put("uet/k", "v") > 0
        worker.join(10)
    assert cluster.client().get("uet/k").value == b"v"


def serve_tls_once(listener, tls):
    """Accept one connection and handshake with a certificate of the other CA (the client refuses it)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.other_cert, tls.other_key)
    conn, _ = listener.accept()
    try:
        with ctx.wrap_socket(conn, server_side=True):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def test_plain_http_to_a_tls_member_is_code_11(etcd_cluster):
    cluster = etcd_cluster(members=1, tls=True)
    url = cluster.endpoints[0].replace("https://", "http://")
    error, _ = timed_failure(etcd.Client([url], request_timeout=1).get, "uet/k")
    assert error.code == ERR_TRY_AGAIN and error.details.startswith(f"{url}: ")
