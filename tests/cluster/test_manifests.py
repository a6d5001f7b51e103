"""conf/manifests/etcd.yaml, the etcd-tls part of conf/manifests/daemonset.yaml and the cluster-ipam
NetworkAttachmentDefinitions in conf/nads: their shape, that they agree with each other (addresses,
Secret names, certificate paths), that the installer's copy step works, and that a real etcd accepts
the manifest's flags and serves cluster-ipam with a NAD's own etcd section."""

import os
import shutil
import subprocess
import time

import jsonschema
import pytest
import yaml

from cni import contract
from ipam import cluster
from tests.clients import libcni
from tests.etcd import ETCD, TlsFiles, _die_with_parent, _free_port
from tests.plugins import ROOT, run_plugin

MANIFESTS = ROOT / "conf" / "manifests"
CLUSTER_NADS = sorted(p.name for p in libcni.NADS.glob("*.yaml")
                      if (libcni.load_nad(p.name)[1]["plugins"][0].get("ipam") or {}).get("type") == "cluster-ipam")


def docs(name):
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def of_kind(found, kind):
    return [d for d in found if d["kind"] == kind]


def etcd_args(statefulset):
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = {}
    for arg in container["args"]:
        key, _, value = arg.partition("=")
        assert key.startswith("--") and key not in args, arg
        args[key[2:]] = value
    return container, args


@pytest.fixture(scope="module")
def etcd_manifest():
    return docs("etcd.yaml")


def test_cluster_nads_exist_for_each_documented_use():
    configs = {name: libcni.load_nad(name)[1]["plugins"][0]["ipam"] for name in CLUSTER_NADS}
    assert len(configs) >= 4
    assert any(len(c.get("ranges", [])) == 2 for c in configs.values()), "dual-stack"
    assert any(c.get("sticky") is True for c in configs.values()), "sticky"
    assert any("range" in c for c in configs.values()), "a whereabouts config moved over"


def test_etcd_statefulset_shape(etcd_manifest):
    (sts,) = of_kind(etcd_manifest, "StatefulSet")
    assert sts["apiVersion"] == "apps/v1" and sts["spec"]["replicas"] == 3
    assert {d["metadata"]["namespace"] for d in etcd_manifest} == {"kube-system"}   # the DaemonSet's, for Secrets
    headless = [s for s in of_kind(etcd_manifest, "Service") if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [sts["spec"]["serviceName"]]
    assert headless[0]["spec"]["publishNotReadyAddresses"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container, args = etcd_args(sts)
    name, svc, ns = sts["metadata"]["name"], sts["spec"]["serviceName"], sts["metadata"]["namespace"]
    members = dict(m.split("=", 1) for m in args["initial-cluster"].split(","))
    assert members == {f"{name}-{i}": f"https://{name}-{i}.{svc}.{ns}.svc:2380" for i in range(3)}
    assert args["name"] == "$(POD_NAME)"
    assert {e["name"] for e in container["env"]} >= {"POD_NAME"}
    # TLS both ways, client certificates required, for clients and peers
    assert args["client-cert-auth"] == "true" and args["peer-client-cert-auth"] == "true"
    assert args["listen-client-urls"].startswith("https://") and args["listen-peer-urls"].startswith("https://")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    (tls_volume,) = [n for n, v in volumes.items() if "secret" in v]
    assert volumes[tls_volume]["secret"]["secretName"] == "underlay-etcd-server"
    for key in ("cert-file", "key-file", "trusted-ca-file", "peer-cert-file", "peer-key-file", "peer-trusted-ca-file"):
        assert os.path.dirname(args[key]) == mounts[tls_volume], key
    # compaction and quota: every claim is a revision
    assert args["auto-compaction-mode"] == "revision" and int(args["auto-compaction-retention"]) > 0
    assert int(args["quota-backend-bytes"]) >= 1 << 30
    assert mounts["data"] == os.path.dirname(args["data-dir"])
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    (pdb,) = of_kind(etcd_manifest, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def member_ips(etcd_manifest):
    (sts,) = of_kind(etcd_manifest, "StatefulSet")
    name = sts["metadata"]["name"]
    ips = {}
    for svc in of_kind(etcd_manifest, "Service"):
        pod = svc["spec"].get("selector", {}).get("statefulset.kubernetes.io/pod-name")
        if pod:
            assert svc["spec"]["ports"][0]["port"] == 2379
            ips[pod] = svc["spec"]["clusterIP"]
    assert sorted(ips) == [f"{name}-{i}" for i in range(3)], "one Service with a fixed ClusterIP per member"
    return ips


def daemonset_tls():
    (ds,) = docs("daemonset.yaml")
    pod = ds["spec"]["template"]["spec"]
    (copy,) = [c for c in pod["initContainers"] if c["name"] == "etcd-tls"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e["value"] for e in copy["env"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in copy["volumeMounts"]}
    return ds, copy, env, mounts


def test_daemonset_copies_the_client_secret_where_the_nads_point():
    ds, copy, env, mounts = daemonset_tls()
    secret = mounts[env["TLS_FROM"]]["secret"]
    assert secret["secretName"] == "underlay-etcd-client" and secret["optional"] is True
    host_dir = mounts[env["TLS_TO"]]["hostPath"]["path"]
    assert mounts[env["TLS_TO"]]["hostPath"]["type"] == "DirectoryOrCreate"
    assert host_dir.startswith("/etc/cni/net.d/") and not host_dir.endswith("/")
    sc = copy["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"] and not sc["privileged"]
    for name in CLUSTER_NADS:
        etcd = libcni.load_nad(name)[1]["plugins"][0]["ipam"]["etcd"]
        assert {os.path.dirname(etcd[k]) for k in ("certFile", "keyFile", "trustedCAFile")} == {host_dir}, name
        assert {os.path.basename(etcd[k]) for k in ("certFile", "keyFile", "trustedCAFile")} == \
            {"tls.crt", "tls.key", "ca.crt"}, name


def test_nads_name_the_members_fixed_cluster_ips(etcd_manifest):
    ips = member_ips(etcd_manifest)
    for name in CLUSTER_NADS:
        etcd = libcni.load_nad(name)[1]["plugins"][0]["ipam"]["etcd"]
        assert etcd["endpoints"] == [f"https://{ip}:2379" for ip in ips.values()], name


@pytest.mark.parametrize("name", CLUSTER_NADS)
def test_cluster_nad_config_is_valid_for_cluster_ipam(name):
    nad, conflist = libcni.load_nad(name)
    for config in libcni.plugin_configs(conflist, conflist["cniVersion"]):
        jsonschema.validate(config, libcni.schema("cluster-ipam"))
        conf = cluster.ClusterConfig(config, contract.Request("ADD", {}, config, b""))   # the plugin's loader
        assert conf.range_sets and all(s.ranges for s in conf.range_sets)


def test_etcd_tls_copy_step(tmp_path):
    """The init container's script under busybox sh: a Secret volume's files (symlinks into ..data,
    as kubelet makes them) copied whole, 0600; with no Secret (optional), nothing and exit 0."""
    _, copy, env, _ = daemonset_tls()
    sh = shutil.which("busybox")
    argv = ([sh, "sh"] if sh else ["/bin/sh"]) + copy["command"][1:]
    src, dst = tmp_path / "secret", tmp_path / "host"
    (src / "..data").mkdir(parents=True)
    dst.mkdir()
    for f in ("ca.crt", "tls.crt", "tls.key"):
        (src / "..data" / f).write_text(f"content of {f}\n")
        (src / f).symlink_to(f"..data/{f}")
    run = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "TLS_FROM": str(src), "TLS_TO": str(dst)},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(dst)) == ["ca.crt", "tls.crt", "tls.key"]
    for f in os.listdir(dst):
        assert (dst / f).read_text() == f"content of {f}\n" and not (dst / f).is_symlink()
        assert (dst / f).stat().st_mode & 0o777 == 0o600
    empty, dst2 = tmp_path / "no-secret", tmp_path / "host2"
    empty.mkdir()
    dst2.mkdir()
    run = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "TLS_FROM": str(empty), "TLS_TO": str(dst2)},
                         capture_output=True, text=True)
    assert run.returncode == 0 and os.listdir(dst2) == [], run.stderr


@pytest.mark.etcd
def test_etcd_takes_the_manifests_flags_and_serves_a_nads_config(etcd_manifest, tmp_path):
    """Debian's etcd started with the StatefulSet's own arguments (one member on 127.0.0.1, the TLS
    files made here), then cluster-ipam ADD/DEL with cluster-macvlan.yaml's ipam section pointed at it."""
    (sts,) = of_kind(etcd_manifest, "StatefulSet")
    _, args = etcd_args(sts)
    tls = TlsFiles(str(tmp_path / "tls"))
    client, peer, metrics = _free_port(), _free_port(), _free_port()
    local = {"name": "uci0", "data-dir": str(tmp_path / "data"),
             "listen-client-urls": f"https://127.0.0.1:{client}",
             "advertise-client-urls": f"https://127.0.0.1:{client}",
             "listen-peer-urls": f"https://127.0.0.1:{peer}",
             "initial-advertise-peer-urls": f"https://127.0.0.1:{peer}",
             "initial-cluster": f"uci0=https://127.0.0.1:{peer}",
             "listen-metrics-urls": f"http://127.0.0.1:{metrics}",
             "cert-file": tls.server_cert, "key-file": tls.server_key, "trusted-ca-file": tls.ca,
             "peer-cert-file": tls.server_cert, "peer-key-file": tls.server_key, "peer-trusted-ca-file": tls.ca,
             "quota-backend-bytes": str(64 << 20)}
    assert set(local) <= set(args), set(local) - set(args)
    argv = [ETCD] + [f"--{k}={local.get(k, v)}" for k, v in args.items()]
    log = open(tmp_path / "etcd.log", "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
    try:
        _, conflist = libcni.load_nad("cluster-macvlan.yaml")
        (config,) = libcni.plugin_configs(conflist, conflist["cniVersion"])
        config["ipam"]["etcd"].update(endpoints=[f"https://127.0.0.1:{client}"], certFile=tls.cert,
                                      keyFile=tls.key, trustedCAFile=tls.ca, prefix="/uci-manifest")
        config["ipam"].update(node="n1", dataDir=str(tmp_path / "node"))
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "etcd.log").read_text()[-3000:]
            added = run_plugin("cluster-ipam", "ADD", config, container_id="c1", netns="/run/netns/uci-none")
            if added.ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert added.ok, (added, (tmp_path / "etcd.log").read_text()[-2000:])
        [ip] = added.json["ips"]
        assert libcni.allowed(ip["address"], config["ipam"]) and ip["gateway"] == "10.40.0.1", ip
        assert run_plugin("cluster-ipam", "DEL", config, container_id="c1", netns="/run/netns/uci-none").ok
        assert cluster.leases(config) == []
    finally:
        proc.kill()
        proc.wait()
        log.close()


def test_whereabouts_readme_example_is_accepted_as_it_is(tmp_path):
    """Issue 12: a config written for whereabouts is accepted as it is. whereabouts' own README example
    excludes "192.168.2.229/30" (whereabouts masks host bits: .228-.231); cluster-ipam must take it,
    with the same meaning, not refuse it with code 7."""
    ipam = {"type": "cluster-ipam", "range": "192.168.2.225/28",
            "exclude": ["192.168.2.229/30", "192.168.2.236/32"],
            "etcd": {"endpoints": ["http://127.0.0.1:9"], "requestTimeout": 0.5}, "node": "n1",
            "dataDir": str(tmp_path / "n1")}
    config = {"cniVersion": "0.3.1", "name": "whereabouts-conf", "type": "macvlan", "master": "eth1", "ipam": ipam}
    out = run_plugin("cluster-ipam", "ADD", config, container_id="c1", netns="/run/netns/uci-none")
    # etcd is not there: the config must get as far as asking it (code 11), not be refused (code 7)
    assert out.cni_code == 11, out
