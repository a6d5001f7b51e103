"""logFile / logLevel: one line per operation, never on stdout, never secrets, never fatal."""

import json
import os
import stat

import pytest

from tests.hostile.harness import Sandbox, invoke
from tests.netns import netns_path
from tests.plugins import run_plugin

SECRET = "s3cr3t-t0ken-value"


def env(command="ADD", cid="c1", **extra):
    return dict({"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none",
                 "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
                 "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1;TOKEN={SECRET}"}, **extra)


def host_local_conf(sb, log, level=None, **extra):
    conf = {"cniVersion": "1.1.0", "name": "net1", "type": "host-local", "logFile": log,
            "kubeconfig": f"/etc/{SECRET}", "runtimeConfig": {"token": SECRET},
            "ipam": {"type": "host-local", "dataDir": sb.data, "ranges": [[{"subnet": "10.1.0.0/29"}]],
                     "password": SECRET}}
    if level:
        conf["logLevel"] = level
    conf.update(extra)
    return json.dumps(conf).encode()


def lines(path):
    with open(path) as f:
        text = f.read()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def sb():
    with Sandbox(netns_too=False) as sandbox:
        yield sandbox


def test_one_line_per_operation_with_who_what_and_outcome(sb):
    log = os.path.join(sb.root, "x.log")
    stdin = host_local_conf(sb, log)
    add = invoke("host-local", env("ADD"), stdin)
    assert add.ok
    assert not invoke("host-local", env("ADD"), stdin).ok       # duplicate: 101
    assert invoke("host-local", env("CHECK"), host_local_conf(sb, log, prevResult=add.json)).ok
    assert invoke("host-local", env("DEL"), stdin).ok
    assert not invoke("host-local", env("ADD", cid="../x"), stdin).ok  # refused before the verb runs
    entries = lines(log)
    assert [(e["command"], e["result"]) for e in entries] == [
        ("ADD", "ok"), ("ADD", "error"), ("CHECK", "ok"), ("DEL", "ok"), ("ADD", "error")]
    first = entries[0]
    assert first["plugin"] == "host-local" and first["network"] == "net1" and first["containerID"] == "c1"
    assert first["ifname"] == "eth0" and first["pod"] == "ns1/pod1" and first["ips"] == ["10.1.0.2/29"]
    assert first["time"].endswith("Z") and first["pid"] == os.getpid()
    assert entries[1]["code"] == 101 and "duplicate allocation" in entries[1]["msg"]
    assert entries[4]["code"] == 4 and entries[4]["containerID"] == "../x"
    assert "netns" not in first and "details" not in entries[1]          # debug only
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_never_a_secret(sb):
    log = os.path.join(sb.root, "x.log")
    for command in ("ADD", "CHECK", "DEL", "GC", "STATUS"):
        invoke("host-local", env(command), host_local_conf(sb, log, level="debug"))
    with open(log) as f:
        text = f.read()
    assert len(text.splitlines()) == 5
    assert SECRET not in text and "TOKEN" not in text and "kubeconfig" not in text


def test_levels(sb):
    quiet, loud = os.path.join(sb.root, "x.log"), os.path.join(sb.root, "log")
    for path, level in ((quiet, "error"), (loud, "debug")):
        stdin = host_local_conf(sb, path, level=level)
        assert invoke("host-local", env("ADD", cid="c" + level), stdin).ok
        assert not invoke("host-local", env("ADD", cid="c" + level), stdin).ok
        assert invoke("host-local", env("DEL", cid="c" + level), stdin).ok
    assert [e["result"] for e in lines(quiet)] == ["error"]
    debug = lines(loud)
    assert [e["result"] for e in debug] == ["ok", "error", "ok"]
    assert debug[0]["netns"] == "/run/netns/none" and debug[0]["cniVersion"] == "1.1.0"


def test_stdout_carries_only_the_result(sb, tmp_path):
    """As a process: stdout is exactly the result; a logFile that *is* stdout is refused, not written."""
    log = os.path.join(sb.root, "x.log")
    out = run_plugin("host-local", "ADD", host_local_conf(sb, log), container_id="c1", netns="/x", path="/x")
    assert out.ok and list(json.loads(out.stdout)) == ["cniVersion", "ips", "dns"]
    assert out.stderr == "host-local: warning: unknown key 'password' in ipam is not used\n"   # never its value
    assert [e["command"] for e in lines(log)] == ["ADD"]
    # the runtime redirected stdout to a file that the config also names as logFile
    import subprocess
    from tests.plugins import plugin_argv, plugin_env
    result = tmp_path / "result.json"
    with open(result, "wb") as f:
        proc = subprocess.run(plugin_argv("host-local"), input=host_local_conf(sb, str(result)), stdout=f,
                              stderr=subprocess.PIPE, env=plugin_env("ADD", container_id="c2", netns="/x", path="/x"))
    assert proc.returncode == 0
    assert json.loads(result.read_text())["ips"][0]["address"] == "10.1.0.3/29"   # one JSON document, no log line
    assert b"is the plugin's stdout" in proc.stderr


@pytest.mark.parametrize("target", ["missing-dir", "directory", "fifo", "symlink", "foreign", "relative",
                                    "dev-null", "not-a-string", "nul"])
def test_a_log_that_cannot_be_used_never_breaks_the_operation(sb, target):
    victim = os.path.join(sb.root, "victim")
    with open(victim, "w") as f:
        f.write("root:x:0:0:root:/root:/bin/bash\n")
    paths = {"missing-dir": os.path.join(sb.root, "nope", "x.log"), "directory": sb.root, "fifo": sb.fifo,
             "symlink": os.path.join(sb.root, "log"), "foreign": victim, "relative": "x.log",
             "dev-null": "/dev/null", "not-a-string": 7, "nul": sb.root + "/x\u0000.log"}
    if target == "symlink":
        os.symlink(victim, paths["symlink"])
    conf = json.loads(host_local_conf(sb, paths[target]))
    for key in ("logFile",):
        conf[key] = paths[target]
    stdin = json.dumps(conf).encode()
    add = invoke("host-local", env("ADD"), stdin)
    if target in ("relative", "not-a-string", "nul"):
        assert not add.ok and add.cni_code == 7 and "logFile" in add.json["msg"]   # the schema says why
    else:
        assert add.ok, add
    assert invoke("host-local", env("DEL"), stdin).ok
    if target not in ("relative", "not-a-string", "nul"):
        assert "underlay: logFile" in add.stderr, add
    with open(victim) as f:
        assert f.read() == "root:x:0:0:root:/root:/bin/bash\n"
    assert sorted(os.listdir(sb.cwd)) == []              # "x.log" relative to the plugin's cwd: not written
    assert not os.path.exists(os.path.join(sb.root, "nope"))


def test_hostile_values_cannot_forge_or_bloat_lines(sb):
    log = os.path.join(sb.root, "x.log")
    conf = json.loads(host_local_conf(sb, log))
    conf["name"] = "evil\n{\"time\": \"forged\"}" + "x" * 1_000_000
    out = invoke("host-local", env("ADD"), json.dumps(conf).encode())
    assert out.cni_code == 7
    entries = lines(log)
    assert len(entries) == 1 and entries[0]["network"].startswith("evil\n{")
    assert os.path.getsize(log) < 4000


def test_every_plugin_logs(sb):
    """macvlan and ipvlan log through the same dispatch.run (here failing on a netns that is no netns)."""
    log = os.path.join(sb.root, "x.log")
    for plugin in ("macvlan", "ipvlan"):
        conf = {"cniVersion": "1.0.0", "name": "net1", "type": plugin, "master": "m1", "logFile": log,
                "stateDir": sb.state, "ipam": {"type": "host-local", "dataDir": sb.data,
                                               "ranges": [[{"subnet": "10.1.0.0/29"}]]}}
        out = invoke(plugin, env("ADD", CNI_NETNS=sb.not_netns), json.dumps(conf).encode())
        assert out.cni_code == 4
    assert [(e["plugin"], e["code"]) for e in lines(log)] == [("macvlan", 4), ("ipvlan", 4)]


@pytest.mark.root
def test_macvlan_add_and_del_logged_in_real_namespaces(host_ns, master, pod_ns, tmp_path):
    log = tmp_path / "ops.log"
    pod = pod_ns()
    conf = {"cniVersion": "1.1.0", "name": "lognet", "type": "macvlan", "master": master, "logFile": str(log),
            "stateDir": str(tmp_path / "state"),
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "data"), "ranges": [[{"subnet": "10.7.0.0/24"}]]}}
    kw = {"container_id": "podA", "netns": netns_path(pod), "ifname": "net1", "in_netns": host_ns}
    add = run_plugin("macvlan", "ADD", conf, **kw)
    assert add.ok and add.stderr == "", add
    assert run_plugin("macvlan", "DEL", conf, **kw).ok
    entries = lines(log)
    assert [(e["plugin"], e["command"], e["result"]) for e in entries] == [
        ("macvlan", "ADD", "ok"), ("macvlan", "DEL", "ok")]
    assert entries[0]["ips"] == ["10.7.0.2/24"] and entries[0]["containerID"] == "podA"


def test_no_log_no_file_and_no_logging_module(tmp_path):
    """Without logFile nothing is written anywhere, and the stdlib logging module is never imported by us."""
    import subprocess
    import sys
    code = ("import sys, io, json; from cni import dispatch, registry; from ipam import host_local;"
            "conf = json.dumps({'cniVersion': '1.1.0', 'name': 'n', 'ipam': {'type': 'host-local', "
            f"'dataDir': '{tmp_path}/d', 'ranges': [[{{'subnet': '10.1.0.0/24'}}]]}}}}).encode();"
            "env = {'CNI_COMMAND': 'ADD', 'CNI_CONTAINERID': 'c', 'CNI_NETNS': '/x', 'CNI_IFNAME': 'e', 'CNI_PATH': '/x'};"
            "rc = dispatch.run(registry.EXECUTABLES['host-local'], host_local.VERBS, env=env, stdin=conf,"
            " stdout=io.StringIO());"
            "print(rc, 'logging' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(__import__("tests.plugins").plugins.ROOT)))
    assert proc.stdout.split() == ["0", "False"], proc
    assert sorted(os.listdir(tmp_path)) == ["d"]
