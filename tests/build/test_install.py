"""`make install` / build/install.sh into a temporary DESTDIR."""

import json
import os
import shutil
import subprocess

import pytest

from tests.bundle import PLUGINS, ROOT

PREFIX = "/opt/cni/bin"


def make(*args, **env):
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=120)


def install(*args, source=None):
    argv = [str(ROOT / "build" / "install.sh")]
    if source:
        argv += ["--from", str(source)]
    return subprocess.run(argv + list(args), capture_output=True, text=True, cwd=ROOT, timeout=120)


def version(path):
    out = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=60)
    assert out.returncode == 0, out
    return json.loads(out.stdout)


def manifest(target):
    return (target / ".underlay-manifest").read_text().split()


def bundles(target):
    return sorted(p.name for p in target.iterdir() if p.name.startswith(".underlay-") and p.is_dir())


@pytest.fixture
def destdir(tmp_path):
    return tmp_path / "dest"


@pytest.fixture
def target(destdir):
    return destdir / PREFIX.lstrip("/")


@pytest.fixture
def foreign_macvlan(target):
    """The reference macvlan, already installed under the plain name."""
    target.mkdir(parents=True)
    shutil.copy("/usr/lib/cni/macvlan", target / "macvlan")
    return (target / "macvlan").read_bytes()


@pytest.fixture
def rebuilt(bundle, tmp_path):
    """A copy of dist/bin whose bundle differs (as after a rebuild)."""
    copy = tmp_path / "rebuilt"
    shutil.copytree(bundle.bin_dir, copy, symlinks=True)
    (copy / ".underlay" / "_internal" / "REBUILT").write_text("another build\n")
    return copy


def test_make_install_puts_links_to_one_bundle(bundle, destdir, target):
    out = make("install", f"DESTDIR={destdir}")
    assert out.returncode == 0, out.stderr
    (only,) = bundles(target)
    for plugin in PLUGINS:
        assert os.readlink(target / plugin) == f"{only}/handoff"
        assert version(target / plugin)["underlay"] == bundle.info
    assert sorted(manifest(target)) == sorted([only, *PLUGINS, "/usr/local/bin/underlay"])
    assert not (target / "underlay").exists()                          # the command is not a plugin
    assert os.readlink(destdir / "usr/local/bin/underlay") == f"{PREFIX}/{only}/underlay"


def test_refuses_to_replace_a_foreign_plugin_and_changes_nothing(bundle, destdir, target, foreign_macvlan):
    out = make("install", f"DESTDIR={destdir}")
    assert out.returncode != 0
    assert "refusing to replace" in out.stderr and "macvlan" in out.stderr
    assert (target / "macvlan").read_bytes() == foreign_macvlan
    assert sorted(p.name for p in target.iterdir()) == ["macvlan"]     # nothing else installed either


def test_force_replaces_it(bundle, destdir, target, foreign_macvlan):
    out = make("install", f"DESTDIR={destdir}", "FORCE=1")
    assert out.returncode == 0, out.stderr
    assert "replacing" in out.stdout
    assert (target / "macvlan").is_symlink()
    assert version(target / "macvlan")["underlay"] == bundle.info


def test_links_of_an_install_before_the_thin_client_are_ours_and_upgraded(bundle, destdir, target):
    """Installs before cni/handoff.c linked the plugin names to the bundle's executable itself."""
    assert make("install", f"DESTDIR={destdir}").returncode == 0
    bundle_dir = os.path.dirname(os.readlink(target / "macvlan"))
    old = target / ".old-link"
    os.symlink(f"{bundle_dir}/underlay", old)
    os.replace(old, target / "macvlan")
    out = make("install", f"DESTDIR={destdir}")
    assert out.returncode == 0, out.stderr
    assert os.readlink(target / "macvlan") == f"{bundle_dir}/handoff"


def test_prefixed_names_coexist_with_the_reference(bundle, destdir, target, foreign_macvlan):
    out = make("install", f"DESTDIR={destdir}", "PLUGIN_PREFIX=underlay-")
    assert out.returncode == 0, out.stderr
    assert (target / "macvlan").read_bytes() == foreign_macvlan
    for plugin in PLUGINS:
        assert version(target / f"underlay-{plugin}")["underlay"] == bundle.info
    assert not (target / "host-local").exists()


def test_reinstall_over_own_files(bundle, destdir, target):
    assert make("install", f"DESTDIR={destdir}").returncode == 0
    before = bundles(target)
    out = make("install", f"DESTDIR={destdir}")
    assert out.returncode == 0, out.stderr
    assert bundles(target) == before                     # same build: same bundle, reused
    assert version(target / "host-local")["underlay"] == bundle.info


def test_upgrade_keeps_previous_bundle_for_execs_in_flight(bundle, rebuilt, destdir, target):
    dest = ["--destdir", str(destdir)]
    assert install(*dest).returncode == 0
    (first,) = bundles(target)
    assert install(*dest, source=rebuilt).returncode == 0
    second = (set(bundles(target)) - {first}).pop()
    assert bundles(target) == sorted([first, second])    # the old one stays for running execs
    assert os.readlink(target / "macvlan") == f"{second}/handoff"
    assert install(*dest).returncode == 0                # back to the first: the second stays, none more
    assert bundles(target) == sorted([first, second])
    assert os.readlink(target / "macvlan") == f"{first}/handoff"


def test_a_link_someone_replaced_is_no_longer_ours(bundle, destdir, target):
    dest = ["--destdir", str(destdir)]
    assert install(*dest).returncode == 0
    (target / "ipvlan").unlink()
    shutil.copy("/usr/lib/cni/ipvlan", target / "ipvlan")
    out = install(*dest)
    assert out.returncode != 0 and "ipvlan" in out.stderr
    out = install(*dest, "--uninstall")
    assert out.returncode == 0, out.stderr
    assert "left" in out.stdout and (target / "ipvlan").read_bytes() == open("/usr/lib/cni/ipvlan", "rb").read()
    assert sorted(p.name for p in target.iterdir()) == ["ipvlan"]


def test_make_uninstall_removes_only_what_it_installed(bundle, destdir, target, foreign_macvlan):
    assert make("install", f"DESTDIR={destdir}", "PLUGIN_PREFIX=underlay-").returncode == 0
    out = make("uninstall", f"DESTDIR={destdir}")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in target.iterdir()) == ["macvlan"]
    assert (target / "macvlan").read_bytes() == foreign_macvlan


def test_never_replaces_a_directory(bundle, destdir, target):
    (target / "host-local").mkdir(parents=True)
    out = install("--destdir", str(destdir), "--force")
    assert out.returncode != 0 and "is a directory" in out.stderr


@pytest.mark.parametrize("prefix", ["../x-", "a/b-", ".hidden-", "sp ace-"])
def test_rejects_prefixes_that_are_not_plain_names(bundle, destdir, prefix):
    out = install("--destdir", str(destdir), "--plugin-prefix", prefix)
    assert out.returncode != 0 and "--plugin-prefix" in out.stderr
    assert not destdir.exists()


# -- the operator's command on PATH -----------------------------------------------------

@pytest.fixture
def root(tmp_path):
    """A real (DESTDIR-less) install into throw-away directories: the links then work as installed."""
    return tmp_path / "root"


def test_underlay_command_is_installed_on_path_and_runs(bundle, root):
    prefix, bin_dir = root / "opt/cni/bin", root / "usr/local/bin"
    out = install("--prefix", str(prefix), "--bin-dir", str(bin_dir))
    assert out.returncode == 0, out.stderr
    (only,) = bundles(prefix)
    assert os.readlink(bin_dir / "underlay") == f"{prefix}/{only}/underlay"
    proc = subprocess.run([str(bin_dir / "underlay"), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and bundle.info["build"] in proc.stdout, proc
    proc = subprocess.run([str(bin_dir / "underlay"), "validate", str(ROOT / "conf/nads/macvlan-vlan.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "0 error(s)" in proc.stdout, proc


def test_underlayd_through_a_link_to_an_installed_plugin_as_the_systemd_unit_says(bundle, root, tmp_path):
    """conf/systemd/underlayd.service: `ln -s /opt/cni/bin/macvlan /usr/local/sbin/underlayd`. The
    plugin is the compiled client; called by another program's name it runs that program."""
    unit = (ROOT / "conf/systemd/underlayd.service").read_text()
    assert "ln -s /opt/cni/bin/macvlan /usr/local/sbin/underlayd" in unit
    prefix = root / "opt/cni/bin"
    assert install("--prefix", str(prefix)).returncode == 0
    link = tmp_path / "sbin" / "underlayd"
    link.parent.mkdir()
    os.symlink(prefix / "macvlan", link)
    proc = subprocess.run([str(link), "--help"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr.startswith("usage: underlayd"), proc
    socket_path = tmp_path / "run" / "u.sock"
    agent = subprocess.Popen([str(link), "--socket", str(socket_path), "--config-dir", str(tmp_path / "none")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
    try:
        line = agent.stdout.readline().decode()
        assert line.startswith(f"underlayd: serving on {socket_path}"), line
    finally:
        agent.terminate()
        agent.wait(timeout=60)


def test_upgrade_and_uninstall_carry_the_command_along(bundle, rebuilt, root):
    prefix, bin_dir = root / "opt/cni/bin", root / "bin"
    args = ["--prefix", str(prefix), "--bin-dir", str(bin_dir)]
    assert install(*args).returncode == 0
    (first,) = bundles(prefix)
    assert install(*args, source=rebuilt).returncode == 0
    second = (set(bundles(prefix)) - {first}).pop()
    assert os.readlink(bin_dir / "underlay") == f"{prefix}/{second}/underlay"
    out = install("--prefix", str(prefix), "--uninstall")
    assert out.returncode == 0, out.stderr
    assert not os.path.lexists(bin_dir / "underlay")
    assert list(prefix.iterdir()) == []


def test_never_replaces_someone_elses_underlay_even_with_force(bundle, root):
    prefix, bin_dir = root / "opt/cni/bin", root / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "underlay").write_text("#!/bin/sh\necho another program\n")
    out = install("--prefix", str(prefix), "--bin-dir", str(bin_dir), "--force")
    assert out.returncode != 0 and "refusing to replace" in out.stderr and "underlay" in out.stderr, out
    assert (bin_dir / "underlay").read_text() == "#!/bin/sh\necho another program\n"
    assert not prefix.exists() or list(prefix.iterdir()) == []         # nothing installed either


def test_bin_dir_must_be_absolute(bundle, destdir):
    out = install("--destdir", str(destdir), "--bin-dir", "usr/bin")
    assert out.returncode != 0 and "--bin-dir" in out.stderr
