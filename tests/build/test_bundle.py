"""The built executables (dist/bin): names, VERSION, about, host-local, imports, size, no Python needed."""

import importlib.util
import io
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import types

import pytest

from tests.bundle import PLUGINS, ROOT

# bytes, all executables together: issue 4's 15 MB, plus OpenSSL (libssl + libcrypto, 5.4 MB), which
# cluster-ipam's https:// etcd endpoints need and which the bundle carries rather than depend on the node's
SIZE_LIMIT = 21_000_000

# Modules the frozen executables must never import, on any verb. Cumulative
# cost of each from a bare interpreter, measured with
#   PYTHONPATH=<site-packages> python3.11 -S -X importtime -c "import <m>"
# (best of 3, ms; they overlap, so they do not add up). A name also denies
# its submodules.
DENY_ALWAYS = {
    "inspect": 9.8,            # PyInstaller's pyi_rth_inspect runtime hook pulls it (with zipfile)
    "zipfile": 11.7,
    "asyncio": 32.0,
    "jsonschema": 57.5,        # the plugins use the generated validators in cni/schemas
    "fastjsonschema": 12.7,
    "dataclasses": 11.4,       # imports inspect
    "importlib.metadata": 25.2,
    "importlib.resources": 14.4,
    "pkg_resources": None,
    "tempfile": 8.3,
    "shutil": 6.7,
    "argparse": 6.5,
    "email": 15.1,
    "http": 20.1,
    "urllib.request": 24.6,
    "ssl": 11.3,
    "unittest": 15.9,
    "pydoc": 18.2,
    "xml": 7.6,
    "uuid": 6.9,
    "secrets": 10.0,
    "multiprocessing.pool": None,
    "multiprocessing.managers": None,
    # cni/net/netlink.py speaks rtnetlink itself; `import pyroute2` costs 110-130 ms (REFERENCE.md)
    "pyroute2": 110.0,
    "multiprocessing": 10.1,
}

# VERSION prints an answer computed at build time: no contract, no plugin.
DENY_VERSION = dict(DENY_ALWAYS, **{
    "cni.contract": None, "cni.dispatch": None, "ipam": None, "cni.net.netlink": None, "pyroute2": None,
    "json": 5.9, "re": 4.3, "enum": 3.1, "ipaddress": 3.0, "ctypes": 2.3, "socket": 5.8,
    "typing": 7.4, "logging": 10.7, "multiprocessing": 10.1, "subprocess": 8.2, "traceback": 7.1,
})

# host-local needs no netlink at all: none of what pyroute2 drags in.
DENY_HOST_LOCAL = dict(DENY_ALWAYS, **{
    "pyroute2": None, "cni.net.netlink": None, "typing": 7.4, "logging": 10.7, "multiprocessing": 10.1,
    "platform": 6.2, "pickle": 6.1, "subprocess": 8.2, "ctypes": 2.3, "socket": 5.8, "threading": 3.1,
    "traceback": 7.1,
})


def denied(modules, deny):
    return sorted(m for m in modules if any(m == d or m.startswith(d + ".") for d in deny))


def host_local_conf(data_dir, version="1.0.0"):
    return json.dumps({"cniVersion": version, "name": "buildnet", "type": "macvlan",
                       "ipam": {"type": "host-local", "dataDir": str(data_dir),
                                "ranges": [[{"subnet": "10.123.0.0/24"}]]}}).encode()


def cni_env(command, cid="ctr1"):
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/underlay-build-test",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}


# -- shape ------------------------------------------------------------------------------

def test_every_plugin_is_a_link_to_the_thin_client_beside_one_onedir_executable(bundle):
    assert bundle.plugins == list(PLUGINS)
    for plugin in PLUGINS:
        assert os.readlink(bundle.path(plugin)) == ".underlay/handoff"
    for name in ("underlayd", "underlay"):   # not plugins: no thin path in front of them
        assert os.readlink(bundle.bin_dir / name) == ".underlay/underlay"
    assert bundle.exe.is_file() and os.access(bundle.exe, os.X_OK)
    assert (bundle.dir / "_internal").is_dir()   # onedir: nothing is unpacked at run time
    client = bundle.dir / "handoff"
    assert client.read_bytes()[:4] == b"\x7fELF" and os.access(client, os.X_OK)
    assert client.stat().st_size < 96 << 10, client.stat().st_size   # musl's libc linked in


def test_the_thin_client_is_static_and_position_independent(bundle):
    """A runtime's exec of a plugin reaches the client's main() with no dynamic loader to run (it cost
    ~0.3 ms of every served request): no PT_INTERP, no PT_DYNAMIC needing libraries; still a PIE
    (ET_DYN), so its addresses are randomized."""
    elf = (bundle.dir / "handoff").read_bytes()
    assert elf[4] == 2 and elf[5] == 1, "a 64-bit little-endian ELF"   # what struct's formats below read
    e_type, = struct.unpack_from("<H", elf, 16)
    e_phoff, = struct.unpack_from("<Q", elf, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 54)
    kinds = [struct.unpack_from("<I", elf, e_phoff + i * e_phentsize)[0] for i in range(e_phnum)]
    PT_INTERP, ET_DYN = 3, 3
    assert PT_INTERP not in kinds, "the client names a dynamic loader"
    assert e_type == ET_DYN, "the client is not position-independent"


def test_all_executables_fit_in_the_size_limit(bundle):
    total = sum(os.lstat(os.path.join(d, f)).st_size
                for d, _, files in os.walk(bundle.bin_dir) for f in files)
    assert total <= SIZE_LIMIT, f"dist/bin holds {total} bytes"


def test_checkout_carries_no_build_module():
    tracked = subprocess.run(["git", "ls-files", "cni/_build.py"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout == ""
    ignored = subprocess.run(["git", "check-ignore", "-q", "cni/_build.py"], cwd=ROOT)
    assert ignored.returncode == 0


# -- VERSION and about ------------------------------------------------------------------

def contract_version_answer(build, monkeypatch):
    """What cni.dispatch prints for VERSION, from the checkout, with this build's cni._build."""
    from cni import dispatch, registry
    module = types.ModuleType("cni._build")
    module.BUILD = build
    monkeypatch.setitem(sys.modules, "cni._build", module)
    out = io.StringIO()
    assert dispatch.run(registry.EXECUTABLES["macvlan"], {}, env={"CNI_COMMAND": "VERSION"}, stdin=b"{}", stdout=out,
                        stderr=io.StringIO()) == 0
    return json.loads(out.getvalue())


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("stdin", [b'{"cniVersion": "1.0.0"}', b'{"cniVersion": "0.4.0"}', b""])
def test_version_is_the_contracts_answer(bundle, monkeypatch, plugin, stdin):
    proc = bundle.run(plugin, {"CNI_COMMAND": "VERSION"}, stdin)   # the compiled client answers it
    assert proc.returncode == 0 and proc.stderr == b""
    answer = json.loads(proc.stdout)
    assert answer == contract_version_answer(bundle.info["build"], monkeypatch)
    frozen = bundle.run(plugin, {"CNI_COMMAND": "VERSION"}, stdin, argv=[str(bundle.exe), plugin])
    assert frozen.returncode == 0 and frozen.stdout == proc.stdout, frozen
    from cni import __version__
    assert answer["underlay"]["version"] == __version__
    assert answer["underlay"]["build"].split()[0]    # git describe, then the build time


@pytest.mark.parametrize("plugin", PLUGINS)
def test_version_runs_no_python_and_the_bundles_imports_nothing_denied(bundle, tmp_path, plugin):
    listing = tmp_path / "modules"
    proc = bundle.run(plugin, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}', list_modules=listing)
    assert proc.returncode == 0 and not listing.exists()   # the compiled client answered
    proc, modules = bundle.modules(plugin, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}', tmp_path,
                                   argv=[str(bundle.exe), plugin])
    assert proc.returncode == 0
    assert denied(modules, DENY_VERSION) == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_about_line_names_plugin_and_version(bundle, tmp_path, plugin):
    proc, modules = bundle.modules(plugin, {}, b"", tmp_path)
    assert proc.returncode == 0 and proc.stdout == b""
    about = proc.stderr.decode()
    assert f"(underlay {bundle.info['version']}" in about
    assert "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in about
    deny = DENY_HOST_LOCAL if plugin == "host-local" else DENY_ALWAYS
    assert denied(modules, deny) == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_about_line_names_build(bundle, plugin):
    proc = bundle.run(plugin, {})
    assert bundle.info["build"] in proc.stderr.decode()


def test_the_thin_path_runs_no_python_and_the_python_client_imports_only_what_connecting_needs(bundle, tmp_path):
    """Handed to the bundle's underlayd, an ADD by a plugin's name starts no interpreter at all
    (the compiled client, cni/handoff.c); by `underlay host-local` (the Python client, cni/handoff.py)
    it imports VERSION's modules plus _socket and cni.handoff."""
    from tests.agent import Agent
    agent = Agent(command=[str(bundle.path("underlayd"))])
    try:
        env = dict(cni_env("ADD"), UNDERLAY_SOCKET=agent.socket)
        listing = tmp_path / "modules-compiled"
        proc = bundle.run("host-local", env, host_local_conf(tmp_path / "networks"), list_modules=listing)
        assert proc.returncode == 0, proc
        assert json.loads(proc.stdout)["ips"][0]["address"] == "10.123.0.2/24"
        assert [s[:3] for s in agent.wait_served(1)] == [("host-local", "ADD", 0)]
        assert not listing.exists()    # no Python ran in the caller: it would have listed its modules

        env = dict(cni_env("ADD", cid="ctr2"), UNDERLAY_SOCKET=agent.socket)
        proc, thin = bundle.modules("host-local", env, host_local_conf(tmp_path / "networks"), tmp_path,
                                    argv=[str(bundle.exe), "host-local"])
        assert proc.returncode == 0, proc
        assert json.loads(proc.stdout)["ips"][0]["address"] == "10.123.0.3/24"
        assert [s[:3] for s in agent.wait_served(2)][1] == ("host-local", "ADD", 0)
        _, version = bundle.modules("host-local", {"CNI_COMMAND": "VERSION"}, b"", tmp_path,
                                    argv=[str(bundle.exe), "host-local"])
        assert sorted(set(thin) - set(version)) == ["_socket", "cni.handoff"]
    finally:
        agent.close()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_help_prints_usage_and_imports_nothing_denied(bundle, tmp_path, plugin):
    proc, modules = bundle.modules(plugin, {"CNI_COMMAND": "ADD"}, b"", tmp_path, argv=[bundle.path(plugin), "--help"])
    assert proc.returncode == 0 and proc.stderr == b"", proc
    text = proc.stdout.decode()
    assert text.startswith(f"CNI {plugin} ") and "CNI_CONTAINERID" in text and "README.md and docs/" in text
    assert f"Example: CNI_COMMAND=VERSION {plugin}" in text
    deny = DENY_HOST_LOCAL if plugin == "host-local" else DENY_ALWAYS
    assert denied(modules, deny) == []
    proc = bundle.run(None, {}, argv=[str(bundle.exe), plugin, "-h"])
    assert proc.returncode == 0 and proc.stdout.decode().startswith(f"CNI {plugin} "), proc


def test_help_under_a_name_we_do_not_know_lists_the_names(bundle, tmp_path):
    os.symlink(bundle.exe, tmp_path / "ucf-unknown")
    for flag in ("--help", "-h"):
        proc = bundle.run(None, {}, argv=[str(tmp_path / "ucf-unknown"), flag])
        assert proc.returncode == 0 and b"call me as one of macvlan, ipvlan, cluster-access, host-local" in proc.stdout, proc


# -- host-local through the executable --------------------------------------------------

def test_host_local_add_check_del(bundle, tmp_path):
    data = tmp_path / "networks"
    conf = host_local_conf(data)
    proc, modules = bundle.modules("host-local", cni_env("ADD"), conf, tmp_path)
    assert proc.returncode == 0, proc
    result = json.loads(proc.stdout)
    assert result["ips"][0]["address"] == "10.123.0.2/24"
    assert (data / "buildnet" / "10.123.0.2").read_bytes() == b"ctr1\r\neth0"
    assert denied(modules, DENY_HOST_LOCAL) == []

    check_conf = json.loads(conf)
    check_conf["prevResult"] = result
    proc = bundle.run("host-local", cni_env("CHECK"), json.dumps(check_conf).encode())
    assert proc.returncode == 0, proc

    proc, modules = bundle.modules("host-local", cni_env("DEL"), conf, tmp_path)
    assert proc.returncode == 0 and proc.stdout == b"", proc
    assert not (data / "buildnet" / "10.123.0.2").exists()
    assert denied(modules, DENY_HOST_LOCAL) == []
    assert bundle.run("host-local", cni_env("DEL"), conf).returncode == 0   # idempotent


def test_errors_are_cni_json_not_tracebacks(bundle, tmp_path):
    proc = bundle.run("host-local", cni_env("ADD"), b"{not json")
    assert proc.returncode != 0
    error = json.loads(proc.stdout)
    assert set(error) == {"cniVersion", "code", "msg", "details"} and error["code"] == 6
    assert b"Traceback" not in proc.stderr


# -- names ------------------------------------------------------------------------------

@pytest.fixture
def entry():
    spec = importlib.util.spec_from_file_location("underlay_entry", ROOT / "build" / "entry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, program", [
    (["macvlan"], "macvlan"), (["/opt/cni/bin/ipvlan"], "ipvlan"), (["host-local"], "host-local"),
    (["cluster-ipam"], "cluster-ipam"), (["underlay-cluster-ipam"], "cluster-ipam"),
    (["underlay-macvlan"], "macvlan"), (["underlay-host-local"], "host-local"), (["u_ipvlan"], "ipvlan"),
    (["underlayd"], "underlayd"), (["underlay"], "underlay"), (["underlay", "leases"], "underlay"),
    (["underlay", "host-local"], "host-local"), (["underlay", "underlay-macvlan"], "macvlan"),
    (["underlay", "underlayd"], "underlayd"), (["underlay", "underlay", "leases"], "underlay"),
    (["bridge"], None), (["macvlan.old"], None), ([""], None), (["host-local", "macvlan"], "host-local"),
])
def test_entry_picks_program_by_name(entry, argv, program):
    assert entry.program_for(list(argv)) == program


def test_entry_called_with_a_plugins_name_runs_as_if_called_by_it(entry):
    argv = ["/opt/cni/bin/.underlay-1/underlay", "underlay-macvlan", "--help"]
    assert entry.program_for(argv) == "macvlan"
    assert argv == ["underlay-macvlan", "--help"]


@pytest.mark.parametrize("before, after", [
    ({"LD_LIBRARY_PATH": "/b/_internal", "_PYI_ARCHIVE_FILE": "/b/u", "_PYI_PARENT_PROCESS_LEVEL": "-1",
      "CNI_COMMAND": "ADD"}, {"CNI_COMMAND": "ADD"}),
    ({"LD_LIBRARY_PATH": "/b/_internal:/opt/lib", "LD_LIBRARY_PATH_ORIG": "/opt/lib"},
     {"LD_LIBRARY_PATH": "/opt/lib"}),
    ({"LD_LIBRARY_PATH": "/b/_internal:", "LD_LIBRARY_PATH_ORIG": ""}, {"LD_LIBRARY_PATH": ""}),
])
def test_entry_restores_the_runtimes_environment(entry, before, after):
    environ = dict(before)
    entry.restore_environment(environ)
    assert environ == after


def test_prefixed_and_direct_names_run_the_same_plugin(bundle, tmp_path):
    for name in ("underlay-host-local", "cni-host-local"):
        os.symlink(bundle.exe, tmp_path / name)
        proc = bundle.run(None, {"CNI_COMMAND": "VERSION"}, argv=[str(tmp_path / name)])
        assert proc.returncode == 0 and json.loads(proc.stdout)["underlay"] == bundle.info
    proc = bundle.run(None, {}, argv=[str(bundle.exe), "host-local"])
    assert proc.returncode == 0 and b"host-local" in proc.stderr

    os.symlink(bundle.exe, tmp_path / "bridge")
    proc = bundle.run(None, {"CNI_COMMAND": "VERSION"}, argv=[str(tmp_path / "bridge")])
    assert proc.returncode == 2 and b"call me as one of macvlan, ipvlan, cluster-access, host-local, cluster-ipam, dhcp" in proc.stderr


# -- no Python on the node --------------------------------------------------------------

def test_bundle_ignores_python_environment_and_checkout(bundle, tmp_path):
    """A copy elsewhere runs with a hostile PYTHONPATH/PYTHONHOME: nothing comes from outside the bundle."""
    copy = tmp_path / "bin"
    shutil.copytree(bundle.bin_dir, copy, symlinks=True)
    decoy = tmp_path / "decoy" / "cni"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('imported the decoy')\n")
    env = dict(cni_env("ADD"), PYTHONPATH=str(decoy.parent), PYTHONHOME=str(tmp_path / "nohome"),
               PYTHONSTARTUP=str(decoy / "__init__.py"))
    proc = subprocess.run([str(copy / "host-local")], input=host_local_conf(tmp_path / "data"), env=env,
                          capture_output=True, cwd=decoy.parent, timeout=60)
    assert proc.returncode == 0, proc
    assert json.loads(proc.stdout)["ips"]


def system_libraries(bundle):
    """Shared objects from outside the bundle that its executable and libraries load.

    The bootloader starts without LD_LIBRARY_PATH (system libz, libdl), then
    restarts itself with the bundle's _internal on it, for libpython and the
    extension modules.
    """
    internal = bundle.dir / "_internal"
    objects = [(bundle.exe, None), (bundle.dir / "handoff", None)] + [(p, str(internal)) for p in internal.rglob("*")
                                      if ".so" in p.name and p.is_file()]
    found = set()
    for obj, library_path in objects:
        env = dict(os.environ)
        env.pop("LD_LIBRARY_PATH", None)
        if library_path:
            env["LD_LIBRARY_PATH"] = library_path
        out = subprocess.run(["ldd", str(obj)], capture_output=True, text=True, env=env).stdout
        for line in out.splitlines():
            for word in line.split():
                if word.startswith("/") and not word.startswith(str(bundle.dir)):
                    found.add(word)
    return found


def test_needs_only_system_libraries(bundle):
    libs = system_libraries(bundle)
    # a Python of its own (pyenv, /opt) must not leak in; Debian's own lives in /usr, with the system's libraries
    prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)} - {"/usr", "/"}
    assert not [lib for lib in libs if any(os.path.realpath(lib).startswith(p) for p in prefixes)], libs
    names = {os.path.basename(lib).split(".so")[0] for lib in libs}
    assert names <= {"libc", "libdl", "libm", "libpthread", "libz", "librt", "libutil", "ld-linux-x86-64"}, names


@pytest.mark.root
def test_runs_in_a_root_with_no_python(bundle, tmp_path):
    """chroot into a tree holding only the bundle and the system libraries (no Python at all)."""
    root = tmp_path / "root"
    shutil.copytree(bundle.bin_dir, root / "opt" / "cni" / "bin", symlinks=True)
    for lib in system_libraries(bundle):
        target = root / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, target)   # follows the library's own symlink
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n1", "type": "macvlan",
                       "ipam": {"type": "host-local", "dataDir": "/var/lib/cni/networks",
                                "ranges": [[{"subnet": "10.9.0.0/24"}]]}}).encode()
    for command in ("VERSION", "ADD", "DEL"):
        proc = subprocess.run([chroot, str(root), "/opt/cni/bin/host-local"], input=conf,
                              env=cni_env(command), capture_output=True, timeout=60)
        assert proc.returncode == 0, (command, proc)
        if command == "ADD":
            assert json.loads(proc.stdout)["ips"][0]["address"] == "10.9.0.2/24"
            assert (root / "var/lib/cni/networks/n1/10.9.0.2").exists()
    proc = subprocess.run([chroot, str(root), "/opt/cni/bin/macvlan"], env={}, capture_output=True, timeout=60)
    assert proc.returncode == 0 and b"CNI macvlan plugin" in proc.stderr, proc


# -- macvlan through the executable (root: a host netns with a veth parent) ----------------

@pytest.mark.root
def test_macvlan_add_check_del_imports_nothing_denied(bundle, host_ns, master, pod_ns, tmp_path):
    from tests import netns as ns
    pod = pod_ns()
    conf = {"cniVersion": "1.0.0", "name": "buildmv", "type": "macvlan", "master": master,
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "networks"),
                     "ranges": [[{"subnet": "10.124.0.0/24"}]]}}
    env = dict(cni_env("ADD"), CNI_NETNS=ns.netns_path(pod))
    argv = ["ip", "netns", "exec", host_ns, bundle.path("macvlan")]
    proc, modules = bundle.modules("macvlan", env, json.dumps(conf).encode(), tmp_path, argv=argv)
    assert proc.returncode == 0, proc
    result = json.loads(proc.stdout)
    assert ns.addrs(pod, "eth0") == ["10.124.0.2/24"]
    assert denied(modules, DENY_ALWAYS) == []

    conf["prevResult"] = result
    for command in ("CHECK", "DEL"):
        proc, modules = bundle.modules("macvlan", dict(env, CNI_COMMAND=command), json.dumps(conf).encode(),
                                       tmp_path, argv=argv)
        assert proc.returncode == 0, (command, proc)
        assert denied(modules, DENY_ALWAYS) == []
    assert "eth0" not in ns.links(pod)


# -- nothing the plugins import is left out of the bundle ----------------------------------

def bundled_modules(bundle):
    """Every module name the frozen executable can import."""
    import _imp
    import zipfile
    from PyInstaller.archive.readers import CArchiveReader
    archive = CArchiveReader(str(bundle.exe))
    names = set(archive.toc) | set(archive.open_embedded_archive("PYZ.pyz").toc)
    internal = bundle.dir / "_internal"
    with zipfile.ZipFile(internal / "base_library.zip") as base:
        for entry in base.namelist():
            if entry.endswith(".pyc"):
                name = entry[:-len(".pyc")].replace("/", ".")
                names.add(name[:-len(".__init__")] if name.endswith(".__init__") else name)
    for ext in (internal / "python3.11" / "lib-dynload").glob("*.so"):
        names.add(ext.name.split(".")[0])
    return names, lambda name: name in sys.builtin_module_names or _imp.is_frozen(name)


def imports_of(path):
    """Absolute module names a source file imports, at any depth (lazy imports included)."""
    import ast
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name


def is_package(module):
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        return False
    return bool(spec and spec.submodule_search_locations)


def test_every_import_of_the_plugins_is_bundled(bundle):
    """A module excluded from the bundle would fail only on the path that imports it lazily."""
    names, builtin = bundled_modules(bundle)
    sources = [p for d in ("cni", "ipam") for p in (ROOT / d).rglob("*.py")
               if "__pycache__" not in p.parts and p.name != "_build.py"]
    missing = set()
    for source in sources:        # our own modules, some imported by name (cni.schemas.<type>)
        name = ".".join(source.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if name not in names:
            missing.add(f"{name} (ours)")
    for source in sources:
        for module, attribute in imports_of(source):
            parts = module.split(".")
            wanted = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            if attribute and is_package(module) and importlib.util.find_spec(f"{module}.{attribute}"):
                wanted.add(f"{module}.{attribute}")        # a submodule, not a name in the module
            missing |= {f"{m} (by {source.relative_to(ROOT)})" for m in wanted
                        if m not in names and not builtin(m)}
    assert not missing, sorted(missing)


ENV_IPAM = """#!/bin/sh
env > "$(dirname "$0")/env.$CNI_COMMAND"
cat > /dev/null
if [ "$CNI_COMMAND" = ADD ]; then
    echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.125.0.5/24", "gateway": "10.125.0.1"}]}'
fi
"""


@pytest.mark.root
@pytest.mark.parametrize("library_path", [None, "/opt/runtime-libs"])
def test_delegated_ipam_sees_the_runtimes_environment(bundle, host_ns, master, pod_ns, tmp_path, library_path):
    """An IPAM plugin exec'd by the frozen macvlan gets no LD_LIBRARY_PATH into our bundle, no _PYI_*."""
    from tests import netns as ns
    ipam_dir = tmp_path / "ipam"
    ipam_dir.mkdir()
    (ipam_dir / "envipam").write_text(ENV_IPAM)
    (ipam_dir / "envipam").chmod(0o755)
    pod = pod_ns()
    conf = json.dumps({"cniVersion": "1.0.0", "name": "envnet", "type": "macvlan", "master": master,
                       "ipam": {"type": "envipam"}}).encode()
    env = dict(cni_env("ADD"), CNI_NETNS=ns.netns_path(pod), CNI_PATH=str(ipam_dir))
    if library_path:
        env["LD_LIBRARY_PATH"] = library_path
    argv = ["ip", "netns", "exec", host_ns, bundle.path("macvlan")]
    for command in ("ADD", "DEL"):
        proc = bundle.run("macvlan", dict(env, CNI_COMMAND=command), conf, argv=argv)
        assert proc.returncode == 0, (command, proc)
        seen = dict(line.split("=", 1) for line in (ipam_dir / f"env.{command}").read_text().splitlines()
                    if "=" in line)
        assert not [k for k in seen if k.startswith("_PYI_")], seen
        assert seen.get("LD_LIBRARY_PATH") == library_path
        assert "LD_LIBRARY_PATH_ORIG" not in seen
        assert seen["CNI_COMMAND"] == command and seen["CNI_NETNS"] == ns.netns_path(pod)
