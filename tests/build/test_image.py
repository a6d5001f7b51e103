"""The installer image's build context (conf/image) and the DaemonSet (conf/manifests)."""

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.bundle import PLUGINS, ROOT

MANIFEST = ROOT / "conf" / "manifests" / "daemonset.yaml"


def instructions(containerfile):
    """(INSTRUCTION, [args]) per logical line of a Containerfile."""
    text = re.sub(r"\\\n", " ", containerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copy_sources(args):
    if args.startswith("["):
        parts = json.loads(args)
    else:
        parts = shlex.split(args)
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1], parts[-1]


@pytest.fixture(scope="module")
def context(bundle, tmp_path_factory):
    directory = tmp_path_factory.mktemp("image") / "context"
    proc = subprocess.run([str(ROOT / "conf" / "image" / "context.sh"), str(directory)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return directory


def test_every_copy_source_is_in_the_context(context):
    steps = instructions(context / "Containerfile")
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    (base,) = [a for word, a in steps if word == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert ":" in base and not base.endswith(":latest"), "pin the base image"
    copies = [args for word, args in steps if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        assert "--from" not in args, "single-stage: everything comes from the context"
        sources, _ = copy_sources(args)
        for source in sources:
            assert (context / source).exists(), f"COPY source {source} missing from the context"


def test_entrypoint_is_copied_into_the_image(context):
    steps = instructions(context / "Containerfile")
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    destinations = {copy_sources(args)[1] for word, args in steps if word == "COPY"}
    assert entry[-1] in destinations


def test_context_carries_the_bundle_and_links(bundle, context):
    for plugin in PLUGINS:
        assert os.readlink(context / "bin" / plugin) == ".underlay/handoff"
    assert (context / "bin" / ".underlay" / "underlay").read_bytes() == bundle.exe.read_bytes()


@pytest.fixture
def busybox_path(tmp_path):
    """A PATH holding only busybox applets: the installer image's userland."""
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.fail("busybox is missing: install it (build/apt-packages.txt)")
    applets = tmp_path / "busybox-bin"
    applets.mkdir()
    subprocess.run([busybox, "--install", "-s", str(applets)], check=True)
    return str(applets)


def run_installer(context, host_bin, busybox_path, **env):
    env = dict({"PATH": busybox_path, "UNDERLAY_SRC": str(context / "bin"), "CNI_BIN_DIR": str(host_bin)}, **env)
    return subprocess.run([os.path.join(busybox_path, "sh"), str(context / "install-cni.sh")], env=env,
                          capture_output=True, text=True, timeout=60)


def test_installer_copies_into_the_hosts_bin_dir_under_busybox(context, busybox_path, tmp_path):
    host_bin = tmp_path / "host" / "opt" / "cni" / "bin"
    host_bin.mkdir(parents=True)
    shutil.copy("/bin/true", host_bin / "macvlan")       # a reference plugin already there

    proc = run_installer(context, host_bin, busybox_path)
    assert proc.returncode != 0 and "refusing to replace" in proc.stderr
    assert not (host_bin / "macvlan").is_symlink() and not (host_bin / "host-local").exists()

    proc = run_installer(context, host_bin, busybox_path, PLUGIN_PREFIX="underlay-")
    assert proc.returncode == 0, proc.stderr
    for plugin in PLUGINS:
        out = subprocess.run([str(host_bin / f"underlay-{plugin}")], env={"CNI_COMMAND": "VERSION"},
                             capture_output=True)
        assert out.returncode == 0 and json.loads(out.stdout)["underlay"]
    assert not (host_bin / "macvlan").is_symlink()

    proc = run_installer(context, host_bin, busybox_path, FORCE="1")
    assert proc.returncode == 0, proc.stderr
    assert (host_bin / "macvlan").is_symlink()


def test_installer_needs_the_host_mount(context, busybox_path, tmp_path):
    proc = run_installer(context, tmp_path / "not-mounted", busybox_path)
    assert proc.returncode != 0 and "is not mounted" in proc.stderr


# -- the DaemonSet --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemonset():
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def test_daemonset_kind_and_selector(daemonset):
    assert daemonset["apiVersion"] == "apps/v1" and daemonset["kind"] == "DaemonSet"
    assert daemonset["metadata"]["namespace"] == "kube-system"
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_daemonset_mounts_hosts_cni_bin_dir_where_the_installer_writes(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # the other init container, etcd-tls, copies cluster-ipam's client certificate (tests/cluster)
    (install,) = [c for c in pod["initContainers"] if c["name"] == "install"]
    (mount,) = install["volumeMounts"]
    assert volumes[mount["name"]]["hostPath"]["path"] == "/opt/cni/bin"
    assert not mount.get("readOnly")
    env = {e["name"]: e["value"] for e in install["env"]}
    assert env["CNI_BIN_DIR"] == mount["mountPath"]
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*|", env["PLUGIN_PREFIX"])   # as build/install.sh accepts
    assert env["FORCE"] == "0"          # never replace the reference plugins by default


def test_daemonset_runs_underlayd_with_what_it_needs(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert agent["command"] == ["/underlay/bin/underlayd"]
    args = agent["args"]
    assert args[args.index("--socket") + 1] == "/run/underlay/underlay.sock"   # the plugins' default
    port = int(args[args.index("--metrics") + 1].rsplit(":", 1)[1])
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in ("/run/underlay", "/run/netns", "/var/lib/cni", "/opt/cni/bin"):
        assert volumes[mounts[path]["name"]] == path, path
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"
    assert mounts["/opt/cni/bin"]["readOnly"] is True
    assert pod["hostPID"] is True and pod["hostNetwork"] is True


def test_daemonset_image_is_pinned_to_this_version(daemonset):
    from cni import __version__
    pod = daemonset["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["initContainers"] + pod["containers"]}
    assert len(images) == 1
    (image,) = images
    assert image.rsplit(":", 1)[1] == __version__


def test_daemonset_security_context_is_minimal(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    for container in pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    # underlayd does what an exec'd plugin does as root (setns, links): privileged, read-only root
    sc = pod["containers"][0]["securityContext"]
    assert sc["privileged"] is True and sc["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def test_daemonset_runs_on_every_linux_node(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["hostNetwork"] is True           # before pod networking works on the node
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"]["kubernetes.io/os"] == "linux"


# -- a real image build (podman, offline) ---------------------------------------------------

PODMAN_RUN_FLAGS = [  # what podman needs on this kind of machine (../shared/REFERENCE.md §4)
    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
]


@pytest.fixture
def podman(tmp_path):
    """podman, plus a local stand-in for the busybox base image (no registry here); images removed after."""
    binary = shutil.which("podman")
    if not binary:
        pytest.fail("podman is missing: install it (build/apt-packages.txt)")
    busybox = shutil.which("busybox")
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    subprocess.run([busybox, "--install", "-s", str(rootfs / "bin")], check=True)
    for applet in (rootfs / "bin").iterdir():     # point the applets at the copy inside the image
        if applet.is_symlink():
            applet.unlink()
            applet.symlink_to("busybox")
    tag = f"{os.getpid()}-{tmp_path.name}".lower().replace("_", "-")
    base, image = f"localhost/underlay-test-base:{tag}", f"localhost/underlay-test:{tag}"
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([binary, "import", "-q", "-", base], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    try:
        yield binary, base, image
    finally:
        subprocess.run([binary, "rmi", "-f", image, base], capture_output=True)


@pytest.mark.clients
def test_image_builds_and_installs_into_a_host_dir(context, podman, tmp_path):
    binary, base, image = podman
    # --network none: podman's default network would leave a cni-podman0 bridge on the machine
    proc = subprocess.run([binary, "build", "-q", "--network", "none", "--build-arg", f"BASE={base}", "-t", image, str(context)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    host_bin = tmp_path / "hostbin"
    host_bin.mkdir()
    # as the DaemonSet runs it: read-only root, no capabilities, no privilege escalation
    proc = subprocess.run([binary, "run", "--rm", "--network", "none", *PODMAN_RUN_FLAGS, "--read-only", "--cap-drop", "ALL",
                           "--security-opt", "no-new-privileges", "-e", "PLUGIN_PREFIX=underlay-",
                           "-v", f"{host_bin}:/host/opt/cni/bin", image],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for plugin in PLUGINS:
        out = subprocess.run([str(host_bin / f"underlay-{plugin}")], env={"CNI_COMMAND": "VERSION"},
                             capture_output=True)
        assert out.returncode == 0 and json.loads(out.stdout)["underlay"], out
