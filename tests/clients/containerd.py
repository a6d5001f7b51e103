"""containerd with its CRI plugin, private to a test session, and a CRI v1 client.

The daemon gets its own root, state, socket and config: the CRI plugin's
bin_dir is the session's CNI bin dir (our plugins plus Debian's loopback),
conf_dir a directory holding one of our conflists, netns mounts under its
state dir, `restrict_oom_score_adj = true` (needed on this machine). Plugins
that would write outside (opt: /opt/containerd) are disabled. The pause image
is built here as a docker-archive tarball (Debian's static busybox as sleep)
and imported with ctr.

The CRI client is generated from cri/api.proto (a subset of k8s.io/cri-api v1)
with grpcio-tools into a temp dir at session start.
"""

import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

from tests.clients import cleanup
from tests.netns import unique

PAUSE_IMAGE = "registry.k8s.io/pause:3.6"
BUSYBOX = "/bin/busybox"
# containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir is
SHIM_SOCKET_DIR = "/run/containerd"
PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri")


# --------------------------------------------------------------------------
# The pause image

def _tar_bytes(entries):
    """A tar archive in memory from (name, TarInfo fields, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, fields, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def pause_image_tarball(path, reference=PAUSE_IMAGE):
    """A docker-archive of a one-layer image whose entrypoint sleeps forever:
    /bin/sleep is Debian's static busybox (it picks the applet from argv[0])."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    layer = _tar_bytes([
        ("bin", {"type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ("bin/sleep", {"mode": 0o755}, busybox),
        ("etc", {"type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ("etc/passwd", {"mode": 0o644}, b"root:x:0:0:root:/:/bin/sleep\n"),
    ])
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": ["/bin/sleep"], "Cmd": ["2147483647"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "underlay tests: busybox sleep as pause"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference], "Layers": [layer_name]}]).encode()
    with open(path, "wb") as f:
        f.write(_tar_bytes([
            (diff_id.split(":")[1], {"type": tarfile.DIRTYPE, "mode": 0o755}, None),
            (layer_name, {"mode": 0o644}, layer),
            (config_name, {"mode": 0o644}, config),
            ("manifest.json", {"mode": 0o644}, manifest),
        ]))


# --------------------------------------------------------------------------
# The CRI client

def generate_cri(out_dir):
    """Compile cri/api.proto into out_dir; returns (api_pb2, api_pb2_grpc) modules."""
    from grpc_tools import protoc
    import grpc_tools
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
                        f"--grpc_python_out={out_dir}", os.path.join(PROTO_DIR, "api.proto")])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR}/api.proto (exit {code})")
    # the generated api_pb2_grpc does `import api_pb2`: load both with out_dir on sys.path
    sys.path.insert(0, out_dir)
    try:
        for name in ("api_pb2", "api_pb2_grpc"):
            sys.modules.pop(name, None)
        return importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc")
    finally:
        sys.path.remove(out_dir)


class CriClient:
    """RuntimeService v1 over the daemon's unix socket."""

    def __init__(self, socket_path, pb, pb_grpc):
        import grpc
        self.pb = pb
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)

    def version(self, timeout=5):
        return self.runtime.Version(self.pb.VersionRequest(version="v1"), timeout=timeout)

    def run_pod_sandbox(self, name, namespace="default", uid=None, cgroup_parent="", log_dir="", timeout=120):
        pb = self.pb
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid or name, namespace=namespace, attempt=0),
            hostname=name, log_directory=log_dir,
            labels={"io.kubernetes.pod.name": name, "underlay.test": "clients"},
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent, security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))
        return self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=timeout).pod_sandbox_id

    def status(self, sandbox_id, verbose=True, timeout=30):
        return self.runtime.PodSandboxStatus(
            self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose), timeout=timeout)

    def stop(self, sandbox_id, timeout=120):
        self.runtime.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=timeout)

    def remove(self, sandbox_id, timeout=120):
        self.runtime.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=timeout)

    def close(self):
        self.channel.close()


def netns_path(status_response):
    """The sandbox's netns path, from the verbose info containerd returns."""
    info = json.loads(status_response.info["info"])
    for ns in info["runtimeSpec"]["linux"]["namespaces"]:
        if ns["type"] == "network":
            return ns["path"]
    raise AssertionError("no network namespace in the sandbox's runtime spec")


# --------------------------------------------------------------------------
# The daemon

class Containerd:
    """A containerd of our own; `close` stops it, its shims and removes every trace."""

    def __init__(self, bin_dir, conf_dir):
        self.dir = tempfile.mkdtemp(prefix="underlay-containerd-")
        self.socket = os.path.join(self.dir, "containerd.sock")
        self.state = os.path.join(self.dir, "state")
        self.config = os.path.join(self.dir, "config.toml")
        self.log = os.path.join(self.dir, "containerd.log")
        self.proc = None
        self.cgroup_parent = "/" + unique("ulcri")
        self.shim_dir_existed = os.path.exists(SHIM_SOCKET_DIR)
        with open(self.config, "w") as f:
            f.write(f"""version = 2
root = "{self.dir}/root"
state = "{self.state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{self.dir}/runc"
""")

    def start(self, timeout=60):
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": self.dir,
               "TMPDIR": self.dir}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["containerd", "--config", self.config], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start (exit {self.proc.poll()}):\n{self.tail()}")
            time.sleep(0.05)

    def ctr(self, *args, timeout=120):
        proc = subprocess.run(["ctr", "--address", self.socket, "--namespace", "k8s.io"] + list(args),
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout

    def tail(self, lines=40):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def close(self):
        """Stop the daemon (TERM, then KILL), kill the shims it started, unmount, remove."""
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=20)
        finally:
            # the shims (containerd-shim-runc-v2 -address <our socket>) and the pods in our cgroup
            cleanup.kill_all(text=self.dir, cgroup=self.cgroup_parent)
            cleanup.unmount_under(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
            cleanup.remove_cgroup(self.cgroup_parent)
            if not self.shim_dir_existed:
                cleanup.remove_empty_tree(SHIM_SOCKET_DIR)
