"""Path traversal and symlink attacks on the files host-local, macvlan and ipvlan keep.

Names that become paths (the network name, CNI_CONTAINERID, CNI_IFNAME, master and
hostShim names) are tried with '../', '/', NUL, very long values and more, under
every verb; each case gets the fuzz checks (tests/hostile/harness.py) plus: nothing
in the sandbox outside `data/<network>/` and `state/`, and the victim files
untouched. Then every file and directory of the stores is replaced by a symlink
in turn: the plugins refuse (and say so) or skip it, and never write through it.
"""

import json
import os
import shutil
import stat

import pytest

from cni import contract
from tests.hostile.harness import Sandbox, exercise, invoke

HOSTILE = ["../victim", "../../victim", "../../../../../../tmp/victim", "a/b", "/abs", "..", ".", "./x",
           "a\x00b", "\x00", "x" * 240, "x" * 256, "x" * 5000, "a\nb", "a b", ".hidden", "-x", "é", "\udcff",
           "a:b", "x/..", "...", "victim.json", "lock", ".underlay-index", "last_reserved_ip.0", "10.1.0.2",
           "%2e%2e%2fvictim", "..\\victim", "\u202e..", "a" * 239]
VERBS = ["ADD", "DEL", "CHECK", "GC", "STATUS"]
VICTIM = "precious: never written, never removed\n"


def base_config(sb, plugin, name="net1"):
    conf = {"cniVersion": "1.1.0", "name": name, "type": plugin,
            "ipam": {"type": "host-local", "dataDir": sb.data, "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    if plugin != "host-local":
        conf.update(master="m1", stateDir=sb.state)
    return conf


def base_env(sb, command, cid="c1", ifname="eth0"):
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": sb.not_netns, "CNI_IFNAME": ifname,
            "CNI_PATH": sb.bin}


def plant_victims(sb):
    victims = {}
    for rel in ("victim", "victim.json", "data/victim", "data/victim.json", "state/victim.json", "state/links/victim.json"):
        path = os.path.join(sb.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(VICTIM)
        victims[path] = VICTIM
    return victims


def check_tree(sb, victims):
    """Only data/<valid name>/..., state/... and the victims exist; the victims unchanged."""
    for path, content in victims.items():
        with open(path) as f:
            assert f.read() == content, f"{path} was written"
    allowed_top = {"data", "state", "bin", "cwd", "dhcp", "fifo", "not-a-netns", "victim", "victim.json"}
    assert set(os.listdir(sb.root)) <= allowed_top, os.listdir(sb.root)
    assert os.listdir(sb.cwd) == [] and os.listdir(sb.dhcp) == []
    for name in os.listdir(sb.data):   # network directories: only names the contract allows
        assert name in ("victim", "victim.json") or contract.VALID_ID.match(name) and len(name) <= 255, name


def test_names_cannot_leave_the_stores(count_cases):
    failures, cases = [], 0
    with Sandbox() as sb:
        victims = plant_victims(sb)
        sb.outside = sb.outside_state()
        for plugin in ("host-local", "macvlan", "ipvlan"):
            for value in HOSTILE:
                for command in VERBS:
                    variants = [("name", base_config(sb, plugin, name=value), base_env(sb, command)),
                                ("CNI_CONTAINERID", base_config(sb, plugin), base_env(sb, command, cid=value)),
                                ("CNI_IFNAME", base_config(sb, plugin), base_env(sb, command, ifname=value))]
                    if plugin != "host-local":
                        variants += [("master", dict(base_config(sb, plugin), master=value), base_env(sb, command)),
                                     ("hostShim.name", dict(base_config(sb, plugin), hostShim={
                                         "name": value, "address": "10.1.0.250"}), base_env(sb, command))]
                    for field, conf, env in variants:
                        cases += 1
                        stdin = json.dumps(conf).encode(errors="surrogatepass")
                        try:
                            exercise(sb, plugin, env, stdin)
                            check_tree(sb, victims)
                        except AssertionError as e:
                            failures.append(f"{plugin} {command} {field}={value!r}: {str(e)[-600:]}")
    count_cases("traversal: hostile names x verbs x plugins", cases)
    assert not failures, f"{len(failures)} of {cases} cases failed:\n" + "\n".join(failures[:20])


# -- symlinks -------------------------------------------------------------------------

def prepared_store(sb):
    """net1 with one lease of c1 (10.1.0.2) and every file a store has."""
    conf = json.dumps(base_config(sb, "host-local")).encode()
    assert invoke("host-local", base_env(sb, "ADD"), conf).ok
    return conf, os.path.join(sb.data, "net1")


def replace_with_symlink(path, target):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


STORE_PATHS = ["data", "data/net1", "data/net1/lock", "data/net1/10.1.0.2", "data/net1/last_reserved_ip.0",
               "data/net1/.underlay-index", "data/net1/.underlay-index/c1@eth0", "data/net1/.underlay-index/.stamp"]


@pytest.mark.parametrize("rel", STORE_PATHS)
@pytest.mark.parametrize("target_kind", ["file", "dir", "dangling"])
def test_store_paths_replaced_by_symlinks_are_never_followed(rel, target_kind, count_cases):
    with Sandbox(netns_too=False) as sb:
        conf, net = prepared_store(sb)
        target = os.path.join(sb.root, "target")
        if target_kind == "file":
            with open(target, "w") as f:
                f.write(VICTIM)
        elif target_kind == "dir":
            os.mkdir(target, 0o700)
        replace_with_symlink(os.path.join(sb.root, rel), target)
        seen = set()
        for command, cid in (("ADD", "c2"), ("ADD", "c1"), ("CHECK", "c1"), ("STATUS", "c1"), ("GC", "c1"),
                             ("DEL", "c1"), ("DEL", "c2")):
            env = base_env(sb, command, cid=cid)
            stdin = conf
            if command == "CHECK":
                stdin = json.dumps(dict(base_config(sb, "host-local"), prevResult={
                    "cniVersion": "1.1.0", "ips": [{"address": "10.1.0.2/24"}]})).encode()
            if command == "GC":
                stdin = json.dumps(dict(base_config(sb, "host-local"), **{"cni.dev/valid-attachments": [
                    {"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "eth0"}]})).encode()
            out = invoke("host-local", env, stdin)
            if not out.ok:
                assert out.cni_code in (5, 50, 100, 101), out
                if out.cni_code in (5, 50):
                    seen.add(out.json["msg"])
            # never through the link: a file target keeps its content, a directory stays empty
            if target_kind == "file":
                with open(target) as f:
                    assert f.read() == VICTIM, f"{command}: wrote through {rel}"
            elif target_kind == "dir":
                assert os.listdir(target) == [], f"{command}: wrote through {rel} into the directory"
            else:
                assert not os.path.exists(target), f"{command}: created the target of {rel}"
            assert os.path.islink(os.path.join(sb.root, rel)) or rel.endswith(("last_reserved_ip.0", ".stamp",
                                                                              "c1@eth0")), rel
        if rel in ("data", "data/net1", "data/net1/lock", "data/net1/.underlay-index"):
            assert any("is a symlink; refusing to follow it" in m for m in seen), seen   # refused and reported
    count_cases("symlink: store paths x targets (7 verbs each)", 1)


def test_state_dir_records_replaced_by_symlinks_are_never_followed(count_cases):
    """macvlan's records of the links it made: a symlinked record or temp file is not written through."""
    from cni.net import parents
    with Sandbox(netns_too=False) as sb:
        target = os.path.join(sb.root, "victim")
        with open(target, "w") as f:
            f.write(VICTIM)
        with parents.Records(sb.state) as records:
            os.symlink(target, records._path("ul0"))
            os.symlink(target, f"{records._path('ul1')}.{os.getpid()}.tmp")
            with pytest.raises(Exception) as e:
                records.get("ul0")
            assert "Too many levels of symbolic links" in str(e.value)
            records.save("ul1", {"kind": "dummy", "network": "n", "users": {"n/c/eth0"}})
            records.forget("ul0")
        with open(target) as f:
            assert f.read() == VICTIM
        assert not os.path.islink(records._path("ul1"))
        lock = os.path.join(sb.state, "links.lock")
        os.unlink(lock)
        os.symlink(target, lock)
        with pytest.raises(OSError):
            with parents.Records(sb.state):
                pass
        with open(target) as f:
            assert f.read() == VICTIM
    count_cases("symlink: state dir records", 3)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_modes_do_not_depend_on_the_umask(umask, count_cases):
    with Sandbox(netns_too=False) as sb:
        old = os.umask(umask)
        try:
            conf = dict(base_config(sb, "host-local"), logFile=os.path.join(sb.root, "x.log"))
            for cid in ("c1", "c2"):
                assert invoke("host-local", base_env(sb, "ADD", cid=cid), json.dumps(conf).encode()).ok
            assert invoke("host-local", base_env(sb, "DEL", cid="c2"), json.dumps(conf).encode()).ok
            from cni.net import parents
            with parents.Records(sb.state) as records:
                records.save("ul0", {"kind": "dummy", "network": "n", "users": {"n/c/eth0"}})
        finally:
            os.umask(old)
        checked = 0
        for top in (sb.data, sb.state):
            for dirpath, dirs, files in os.walk(top):
                assert stat.S_IMODE(os.lstat(dirpath).st_mode) == 0o700, dirpath
                for name in files:
                    assert stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode) == 0o600, name
                    checked += 1
        assert stat.S_IMODE(os.stat(os.path.join(sb.root, "x.log")).st_mode) == 0o600
        assert checked >= 6
    count_cases("modes: files 0600, directories 0700", 1)
