"""`pip install .` (not editable) into a fresh virtual environment: its console scripts work.

A plain install once shipped without cni/schemas/ (every ADD answered 999); this
builds the wheel from the checkout as a user would and drives the installed
console scripts, not the checkout, through a real ADD, CHECK and DEL.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from cni import registry
from tests import netns as nsutil
from tests.bundle import ROOT

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def test_console_scripts_are_the_registry():
    """pyproject's console scripts are the registry's executables, CNI plugins prefixed as installed."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {}
    for e in registry.EXECUTABLES.values():
        script = registry.INSTALL_PREFIX + e.name if e.is_cni_plugin else e.name
        expected[script] = f"{e.module}:main"
    assert scripts == expected


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with `pip install <checkout>`; its bin directory."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # build in a copy: a build in the checkout would leave build/lib and *.egg-info there
    src = venv.parent / "src"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            target = src / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((ROOT / name).read_bytes())
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return venv / "bin"


def run(bin_dir, script, command, conf, cwd, **env):
    """Run an installed console script from a directory that is not the checkout."""
    environ = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
               "CNI_CONTAINERID": "wheel1", "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir), **env}
    proc = subprocess.run([str(bin_dir / script)], input=json.dumps(conf).encode(), env=environ,
                          capture_output=True, cwd=cwd, timeout=60)
    assert b"Traceback" not in proc.stderr, proc.stderr
    return proc


def test_installed_package_imports_from_site_packages_not_the_checkout(installed, tmp_path):
    python = installed / "python"
    proc = subprocess.run([str(python), "-c", "import cni.schemas.host_local, cni, ipam; print(cni.__file__)"],
                          capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout and str(ROOT) not in proc.stdout


def test_installed_host_local_add_check_del(installed, tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "wheelnet", "type": "macvlan",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "data"),
                     "ranges": [[{"subnet": "192.0.2.0/29", "exclude": ["192.0.2.2"]}]]}}
    add = run(installed, "underlay-host-local", "ADD", conf, tmp_path, CNI_NETNS="/proc/self/ns/net")
    assert add.returncode == 0, add.stdout
    result = json.loads(add.stdout)
    assert [ip["address"] for ip in result["ips"]] == ["192.0.2.3/29"]
    assert (tmp_path / "data" / "wheelnet" / "192.0.2.3").read_bytes() == b"wheel1\r\neth0"
    check = run(installed, "underlay-host-local", "CHECK", dict(conf, prevResult=result), tmp_path,
                CNI_NETNS="/proc/self/ns/net")
    assert check.returncode == 0, check.stdout
    assert run(installed, "underlay-host-local", "DEL", conf, tmp_path).returncode == 0
    assert not (tmp_path / "data" / "wheelnet" / "192.0.2.3").exists()


@pytest.mark.root
def test_installed_macvlan_attaches_a_pod(installed, tmp_path, host_ns, master, pod_ns):
    host, pod = host_ns, pod_ns()
    conf = {"cniVersion": "1.0.0", "name": "wheelnet", "type": "underlay-macvlan", "master": master,
            "ipam": {"type": "underlay-host-local", "dataDir": str(tmp_path / "data"),
                     "ranges": [[{"subnet": "198.51.100.0/24"}]]}}
    netns = nsutil.netns_path(pod)
    argv = ["ip", "netns", "exec", host, str(installed / "underlay-macvlan")]
    env = {"PATH": f"{installed}:/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": "wheel2",
           "CNI_IFNAME": "net1", "CNI_PATH": str(installed), "CNI_NETNS": netns}
    add = subprocess.run(argv, input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND="ADD"),
                         capture_output=True, cwd=tmp_path, timeout=60)
    assert add.returncode == 0, add.stdout + add.stderr
    assert nsutil.addrs(pod, "net1") == ["198.51.100.2/24"]
    delete = subprocess.run(argv, input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND="DEL"),
                            capture_output=True, cwd=tmp_path, timeout=60)
    assert delete.returncode == 0, delete.stdout + delete.stderr
    assert "net1" not in nsutil.links(pod)
    assert not (tmp_path / "data" / "wheelnet" / "198.51.100.2").exists()


def test_installed_underlay_command_reads_what_the_installed_plugin_wrote(installed, tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "wheelnet", "type": "macvlan",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "data"), "ranges": [[{"subnet": "192.0.2.0/29"}]]}}
    assert run(installed, "underlay-host-local", "ADD", conf, tmp_path, CNI_NETNS="/proc/self/ns/net").returncode == 0
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(installed / "underlay"), "leases", "--data-dir", str(tmp_path / "data"), "-o", "json"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [(r["address"], r["container"]) for r in json.loads(proc.stdout)] == [("192.0.2.2", "wheel1")]
    # NAD YAML: PyYAML is one of the package's dependencies
    proc = subprocess.run([str(installed / "underlay"), "validate", str(ROOT / "conf/nads/macvlan-vlan.yaml")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0 and "0 error(s)" in proc.stdout, proc.stdout + proc.stderr
