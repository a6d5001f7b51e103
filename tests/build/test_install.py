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
        lines = [agent.stdout.readline().decode()]
        while "warm" in lines[-1]:   # the warm-up's lines (one per sample) come first; "" at EOF ends it
            lines.append(agent.stdout.readline().decode())
        assert lines[-1].startswith(f"underlayd: serving on {socket_path}"), lines
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


# -- copied by hand, as CNI plugins often are ---------------------------------------------

VERBS = ("VERSION", "ADD", "CHECK", "DEL", "STATUS", "GC")


def run_copied(path, command, cni_version="1.0.0"):
    """Exec as a runtime does: the CNI_* environment and a config carrying cniVersion on stdin."""
    conf = {"cniVersion": cni_version, "name": "copied", "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.124.0.0/24", "dataDir": str(path.parent / "leases")}}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/underlay-copied",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(path.parent), "UNDERLAY_AGENT": "0"}   # in-process: the bundle
    return subprocess.run([str(path)], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)


def copy_by_shell(command, dest):
    """`command` run in the checkout with $DEST set, as an operator types it."""
    dest.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["sh", "-c", command], cwd=ROOT, env=dict(os.environ, DEST=str(dest)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("command", [
    'cp dist/bin/* "$DEST"/',                 # the usual way: skips the hidden .underlay/
    'install -m755 dist/bin/* "$DEST"/',
    'cp -L dist/bin/* "$DEST"/',
    'cp dist/bin/host-local "$DEST"/',        # one plugin alone
])
def test_a_copy_without_the_bundle_fails_every_verb_saying_how_to_install(bundle, tmp_path, command):
    dest = tmp_path / "cni-bin"
    copy_by_shell(command, dest)
    assert not (dest / "_internal").exists()
    for plugin in [p for p in PLUGINS if (dest / p).exists()]:
        for verb in VERBS:
            proc = run_copied(dest / plugin, verb)
            assert proc.returncode != 0, (plugin, verb, proc)
            error = json.loads(proc.stdout)
            # in the config's cniVersion (not our current 1.1.0), code 5 (I/O), never 999
            assert error["cniVersion"] == "1.0.0" and error["code"] == 5, (plugin, verb, error)
            assert f"{plugin}: incomplete install: no bundle beside {dest / plugin}" in error["msg"], error
            assert f"{dest}/_internal/ is missing" in error["msg"] or f"{dest}/underlay:" in error["msg"], error
            assert "`make install`" in error["details"], error
            assert f"cp -a dist/bin/. {dest}/" in error["details"], error


def test_a_copy_without_the_bundle_answers_in_our_version_when_the_configs_is_unknown(bundle, tmp_path):
    dest = tmp_path / "cni-bin"
    copy_by_shell('cp dist/bin/macvlan "$DEST"/', dest)
    assert json.loads(run_copied(dest / "macvlan", "ADD", "9.9.9").stdout)["cniVersion"] == "1.1.0"
    proc = subprocess.run([str(dest / "macvlan")], env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60)
    assert proc.returncode != 0 and json.loads(proc.stdout)["cniVersion"] == "1.1.0", proc


def test_cp_r_of_the_files_leaves_links_no_runtime_can_exec(bundle, tmp_path):
    """`cp -r dist/bin/*` copies the links as links, to the .underlay/ it skipped: every verb, VERSION
    included, fails at exec (the runtime's "failed to find plugin"), never half."""
    dest = tmp_path / "cni-bin"
    copy_by_shell('cp -r dist/bin/* "$DEST"/', dest)
    for plugin in PLUGINS:
        assert (dest / plugin).is_symlink() and not (dest / plugin).exists()
        with pytest.raises(FileNotFoundError):
            run_copied(dest / plugin, "VERSION")


@pytest.mark.parametrize("command", [
    'cp -a dist/bin/. "$DEST"/',
    'cp dist/bin/* "$DEST"/ && cp -a dist/bin/. "$DEST"/',   # the fix the error suggests, over the bad copy
])
def test_a_copy_with_the_hidden_bundle_works(bundle, tmp_path, command):
    dest = tmp_path / "cni-bin"
    copy_by_shell(command, dest)
    for plugin in PLUGINS:
        proc = run_copied(dest / plugin, "VERSION")
        assert proc.returncode == 0 and json.loads(proc.stdout)["underlay"] == bundle.info, proc
    add = run_copied(dest / "host-local", "ADD")
    assert add.returncode == 0 and json.loads(add.stdout)["ips"][0]["address"] == "10.124.0.2/24", add
    assert run_copied(dest / "host-local", "DEL").returncode == 0
