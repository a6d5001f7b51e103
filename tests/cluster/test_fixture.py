"""The etcd fixture itself: members start, die, come back, and leave nothing behind."""

import os
import subprocess

import pytest

from tests.etcd import EtcdCluster

pytestmark = pytest.mark.etcd


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_three_members_kill_and_restart_keep_data():
    with EtcdCluster(members=3) as cluster:
        assert len(set(cluster.endpoints)) == 3
        assert all(url.startswith("http://127.0.0.1:") for url in cluster.endpoints)
        cluster.client().put("uet/k", "v")
        leader = cluster.leader()
        cluster.kill(leader)
        assert not cluster.running(leader)
        cluster.stop((leader + 1) % 3)
        cluster.start(leader, (leader + 1) % 3)
        assert all(cluster.running(i) for i in range(3))
        assert cluster.client().get("uet/k").value == b"v"
        pids = [m.proc.pid for m in cluster.members]
        directory = cluster.dir
    assert not os.path.exists(directory)
    assert not any(_alive(pid) for pid in pids)


def test_close_after_a_failing_test_still_cleans_up():
    cluster = EtcdCluster(members=1)
    with pytest.raises(ZeroDivisionError):
        with cluster:
            pid = cluster.members[0].proc.pid
            1 / 0
    assert not os.path.exists(cluster.dir) and not _alive(pid)


def test_tls_certificates():
    with EtcdCluster(members=1, tls=True) as cluster:
        tls = cluster.tls
        text = subprocess.run(["openssl", "x509", "-in", tls.server_cert, "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
        assert "IP Address:127.0.0.1" in text
        verify = lambda ca, cert: subprocess.run(["openssl", "verify", "-CAfile", ca, cert],  # noqa: E731
                                                 capture_output=True).returncode
        assert verify(tls.ca, tls.cert) == 0 and verify(tls.other_ca, tls.other_cert) == 0
        assert verify(tls.ca, tls.other_cert) != 0
        assert cluster.endpoints[0].startswith("https://")
        assert cluster.config()["trustedCAFile"] == tls.ca


def test_factory_fixture_starts_healthy_members(etcd_cluster):
    first, second = etcd_cluster(), etcd_cluster(members=3)
    assert not set(first.endpoints) & set(second.endpoints)
    assert first.client().put("uet/a", "1") > 0
    assert second.client().put("uet/a", "1") > 0
