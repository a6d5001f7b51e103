"""Real etcd for tests: Debian's etcd-server (3.4), one member or a cluster, on 127.0.0.1 only.

The pytest fixture `etcd_cluster` (registered for every test directory by the
root conftest.py) is a factory; every cluster it made is stopped and its
directory removed at teardown, also when the test fails:

    def test_x(etcd_cluster):
        cluster = etcd_cluster(members=3, tls=False)   # started and healthy
        client = cluster.client()                      # ipam.etcd.Client on every endpoint
        cluster.kill(0)                                # SIGKILL member 0, waits for it to die
        cluster.stop(1)                                # SIGTERM (SIGKILL after 10 s), waits
        cluster.start(0, 1)                            # same data dir and ports; waits for health
        cluster.start(0, wait=False)                   # e.g. a lone member that cannot reach quorum

Outside pytest: `with EtcdCluster(members=3) as cluster: ...` (started on entry).

EtcdCluster(members=1, tls=False, quota_bytes=64 MiB, request_timeout=...):
    .endpoints         client URLs in member order, e.g. ["http://127.0.0.1:2xxxx", ...]
    .client(**kw)      ipam.etcd.Client(self.endpoints, **self.client_tls, **kw)
    .config(**extra)   the `etcd` object of a network config: {"endpoints": [...], "certFile": ...}
    .client_tls        {"cert_file", "key_file", "ca_file"} for Client(...), {} without TLS
    .tls               TlsFiles (paths) or None: ca, cert, key (a client certificate of that CA),
                       server_cert, server_key, other_ca, other_cert, other_key (a second CA and a
                       client certificate it signed: a wrong CA, a wrong client certificate)
    .kill(i) / .stop(i) / .start(*i, wait=True) / .running(i)
    .wait_healthy(*i, timeout=30)   polls GET /health until each member says true
    .leader()          index of the member that is leader now (polls until one is)
    .log(i)            member i's log (zap, level warn)
    .close()           stops every member and removes the directory (idempotent)

Members use free ports below the kernel's ephemeral range (so no outgoing
connection takes a port while its member is down), each member its own data
dir under one mkdtemp("uet-etcd-") directory, auto-compaction by revision,
a 64 MiB backend quota, few kept WALs and snapshots. Each member still
preallocates a 64 MB WAL segment (etcd has no flag for that). TLS certificates
(EC P-256) are made with openssl per cluster; the server certificate carries
clientAuth too, because etcd's JSON gateway dials its own gRPC port with it.
Peers always talk plain http on loopback. Members die with the test process
(PR_SET_PDEATHSIG) if it is killed before teardown; that signal follows the
thread that started a member, so start members from the test's main thread
(run the code under test in other threads instead).
"""

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30.0
PORT_RANGE = (20000, 32000)          # below ip_local_port_range (32768-60999)
_taken_ports = set()


class TlsFiles:
    def __init__(self, directory):
        j = lambda name: os.path.join(directory, name)  # noqa: E731
        self.ca, self.cert, self.key = j("ca.pem"), j("client.pem"), j("client.key")
        self.server_cert, self.server_key = j("server.pem"), j("server.key")
        self.other_ca, self.other_cert, self.other_key = j("other-ca.pem"), j("other-client.pem"), j("other-client.key")
        os.makedirs(directory)
        self._make_ca("ca", "uet-ca")
        self._make_ca("other-ca", "uet-other-ca")
        self._make_cert("server", "ca", "uet-server",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                        "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n")
        self._make_cert("client", "ca", "uet-client", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
        self._make_cert("other-client", "other-ca", "uet-client",
                        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")

    def _openssl(self, *args):
        run = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=os.path.dirname(self.ca))
        if run.returncode:
            raise RuntimeError(f"openssl {' '.join(args)}: {run.stderr.strip()}")

    def _make_ca(self, name, cn):
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "3", "-subj", f"/CN={cn}",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def _make_cert(self, name, ca, cn, extensions):
        directory = os.path.dirname(self.ca)
        with open(os.path.join(directory, f"{name}.ext"), "w") as f:
            f.write(extensions)
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                      "-set_serial", str(random.getrandbits(63)), "-days", "3", "-extfile", f"{name}.ext",
                      "-out", f"{name}.pem")


def _free_port():
    for _ in range(1000):
        port = random.randrange(*PORT_RANGE)
        if port in _taken_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken_ports.add(port)
        return port
    raise RuntimeError("no free port for etcd")


def _die_with_parent():
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Member:
    def __init__(self, index, directory, client_port, peer_port, scheme):
        self.index = index
        self.name = f"uet{index}"
        self.data_dir = os.path.join(directory, f"{self.name}.data")
        self.log_path = os.path.join(directory, f"{self.name}.log")
        self.client_url = f"{scheme}://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.proc = None


class EtcdCluster:
    def __init__(self, members=1, tls=False, quota_bytes=64 << 20):
        if not os.access(ETCD, os.X_OK):
            raise RuntimeError(f"{ETCD} not found: install Debian's etcd-server (make deps)")
        self.size, self.quota_bytes = members, quota_bytes
        self.dir = tempfile.mkdtemp(prefix="uet-etcd-")
        self.tls = None
        self.members = []
        self._token = f"uet-{random.getrandbits(48):x}"
        try:
            self.tls = TlsFiles(os.path.join(self.dir, "tls")) if tls else None
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # -- what tests use ----------------------------------------------------

    @property
    def endpoints(self):
        return [m.client_url for m in self.members]

    @property
    def client_tls(self):
        if not self.tls:
            return {}
        return {"cert_file": self.tls.cert, "key_file": self.tls.key, "ca_file": self.tls.ca}

    def client(self, **kw):
        from ipam import etcd
        return etcd.Client(self.endpoints, **{**self.client_tls, **kw})

    def config(self, **extra):
        conf = {"endpoints": self.endpoints}
        if self.tls:
            conf.update(certFile=self.tls.cert, keyFile=self.tls.key, trustedCAFile=self.tls.ca)
        conf.update(extra)
        return conf

    def running(self, i):
        proc = self.members[i].proc
        return proc is not None and proc.poll() is None

    def kill(self, i):
        self._signal(i, signal.SIGKILL, 10)

    def stop(self, i):
        self._signal(i, signal.SIGTERM, 10)

    def start(self, *indexes, wait=True):
        for i in indexes:
            if not self.running(i):
                self._spawn(self.members[i])
        if wait:
            self.wait_healthy(*indexes)

    def wait_healthy(self, *indexes, timeout=START_TIMEOUT):
        indexes = indexes or range(len(self.members))
        deadline = time.monotonic() + timeout
        for i in indexes:
            member = self.members[i]
            while True:
                if not self.running(i):
                    raise RuntimeError(f"etcd member {i} exited ({member.proc and member.proc.returncode}):\n"
                                       f"{self.log(i)[-3000:]}")
                status, doc = self._get(member, "/health")
                if status == 200 and doc.get("health") == "true":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {i} not healthy within {timeout:g}s (last: {status} {doc}):\n"
                                       f"{self.log(i)[-3000:]}")
                time.sleep(0.02)

    def leader(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if self.running(m.index):
                    status, doc = self._post(m, "/v3/maintenance/status")
                    if status == 200 and doc.get("leader") and doc["leader"] == doc["header"]["member_id"]:
                        return m.index
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader within {timeout:g}s")
            time.sleep(0.02)

    def log(self, i):
        try:
            with open(self.members[i].log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        self.close_members()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        self.start_all()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- starting ------------------------------------------------------------

    def start_all(self):
        """Starts every member on fresh ports; a port lost to a race is retried on others."""
        for attempt in range(3):
            self._layout()
            for m in self.members:
                self._spawn(m)
            try:
                self.wait_healthy()
                return
            except RuntimeError:
                clash = any("address already in use" in self.log(m.index) for m in self.members)
                self.close_members()
                if not clash or attempt == 2:
                    raise

    def close_members(self):
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.kill()
            if m.proc is not None:
                m.proc.wait()
            shutil.rmtree(m.data_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(m.log_path)
            _taken_ports.difference_update({int(m.client_url.rsplit(":", 1)[1]), int(m.peer_url.rsplit(":", 1)[1])})

    def _layout(self):
        scheme = "https" if self.tls else "http"
        self.members = [_Member(i, self.dir, _free_port(), _free_port(), scheme) for i in range(self.size)]

    def _spawn(self, m):
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        args = [ETCD, "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-token", self._token,
                "--initial-cluster-state", "new",
                "--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000",
                "--quota-backend-bytes", str(self.quota_bytes),
                "--snapshot-count", "10000", "--max-wals", "2", "--max-snapshots", "2",
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
        if self.tls:
            args += ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                     "--client-cert-auth", "--trusted-ca-file", self.tls.ca]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                      start_new_session=True, preexec_fn=_die_with_parent)

    def _signal(self, i, sig, grace):
        proc = self.members[i].proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- plain HTTP to one member (independent of ipam.etcd, which is under test) --

    def _connection(self, m):
        host, port = m.client_url.split("://", 1)[1].rsplit(":", 1)
        if not self.tls:
            return http.client.HTTPConnection(host, int(port), timeout=2)
        ctx = ssl.create_default_context(cafile=self.tls.ca)
        ctx.load_cert_chain(self.tls.cert, self.tls.key)
        return http.client.HTTPSConnection(host, int(port), timeout=2, context=ctx)

    def _request(self, m, method, path, body=None):
        conn = self._connection(m)
        try:
            conn.request(method, path, body=body)
            answer = conn.getresponse()
            data = answer.read()
            try:
                return answer.status, json.loads(data)
            except ValueError:
                return answer.status, {"raw": data[:200]}
        except (OSError, http.client.HTTPException) as e:
            return None, {"error": str(e)}
        finally:
            conn.close()

    def _get(self, m, path):
        return self._request(m, "GET", path)

    def _post(self, m, path, body="{}"):
        return self._request(m, "POST", path, body)


@pytest.fixture
def etcd_cluster():
    """Factory: etcd_cluster(members=1, tls=False, quota_bytes=...) -> a started EtcdCluster."""
    made = []

    def make(members=1, tls=False, **kw):
        cluster = EtcdCluster(members, tls, **kw)
        made.append(cluster)
        cluster.start_all()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            for i in range(len(cluster.members)):
                tail = cluster.log(i)[-1500:]
                if tail:
                    print(f"--- etcd member {i} log (tail) ---\n{tail}")
            cluster.close()

