"""host-local's files: the reference format, permissions, path safety, and the self-healing index."""

import os
import stat

import pytest

from tests.exec.conftest import addresses, error

V4 = "10.1.0.0/24"


def tree(root):
    """Every path under root (relative), with symlinks not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


@pytest.mark.both_paths
def test_lease_file_content_and_layout(hl):
    conf = hl.config(V4, "fd00:1::/64")
    assert hl.add(conf, "c1", "net1").ok
    net = hl.net_dir()
    assert sorted(n for n in os.listdir(net) if not n.startswith(".")) == [
        "10.1.0.2", "fd00:1::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    for ip in ("10.1.0.2", "fd00:1::2"):
        with open(os.path.join(net, ip), "rb") as f:
            assert f.read() == b"c1\r\nnet1"
    with open(os.path.join(net, "last_reserved_ip.0"), "rb") as f:
        assert f.read() == b"10.1.0.2"
    with open(os.path.join(net, "last_reserved_ip.1"), "rb") as f:
        assert f.read() == b"fd00:1::2"
    assert os.path.getsize(os.path.join(net, "lock")) == 0


@pytest.mark.both_paths
def test_modes(hl):
    os.umask(0o022)  # the tests' umask must not be what makes this pass
    conf = hl.config(V4)
    assert hl.add(conf).ok
    assert hl.add(conf, "c2").ok
    assert hl.delete(conf, "c2").ok
    for rel in tree(hl.data_dir) + ["."]:
        path = os.path.join(hl.data_dir, rel)
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        expected = 0o700 if os.path.isdir(path) else 0o600
        assert mode == expected, f"{rel}: {oct(mode)}"


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".", "net\u0000x", "net\n", ".hidden"])
def test_network_name_cannot_leave_data_dir(hl, tmp_path, name):
    out = hl.add(hl.config(V4, name=name))
    error(out, 7, "name")
    assert not os.path.exists(hl.data_dir)
    assert sorted(os.listdir(tmp_path)) == []


# (NUL cannot be passed in an environment variable; tests/unit/test_request.py covers it)
@pytest.mark.parametrize("cid", ["../escape", "../../x", "a/b", "/abs", ".", "..", "x/../../y"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_container_id_cannot_leave_data_dir(hl, tmp_path, cid, command):
    out = hl.run(command, hl.config(V4), cid=cid)
    error(out, 4, "CNI_CONTAINERID")
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("ifname", ["../x", "a/b", "..", "."])
def test_ifname_cannot_leave_data_dir(hl, tmp_path, ifname):
    error(hl.add(hl.config(V4), ifname=ifname), 4, "CNI_IFNAME")
    assert sorted(os.listdir(tmp_path)) == []


def test_symlink_as_network_dir_is_refused(hl, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    os.makedirs(hl.data_dir)
    os.symlink(target, hl.net_dir())
    conf = hl.config(V4)
    error(hl.add(conf), 5, "is a symlink", "refusing to follow it")
    error(hl.delete(conf), 5, "is a symlink")
    assert os.listdir(target) == []


def test_symlink_as_index_dir_is_refused(hl, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    conf = hl.config(V4)
    assert hl.add(conf).ok
    index = os.path.join(hl.net_dir(), ".underlay-index")
    for name in os.listdir(index):
        os.unlink(os.path.join(index, name))
    os.rmdir(index)
    os.symlink(target, index)
    error(hl.add(conf, "c2"), 5, "is a symlink")
    assert os.listdir(target) == []


def test_symlink_as_lease_file_is_not_followed(hl, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    conf = hl.config("10.1.0.0/29")
    os.makedirs(hl.net_dir())
    os.symlink(victim, os.path.join(hl.net_dir(), "10.1.0.2"))
    os.symlink(victim, os.path.join(hl.net_dir(), "last_reserved_ip.0"))
    assert addresses(hl.add(conf)) == ["10.1.0.3"]           # .2 is taken by whatever that is
    error(hl.add(conf, "c2", args="IP=10.1.0.2"), 101, "requested IP 10.1.0.2 is already allocated")
    assert hl.delete(conf).ok
    assert addresses(hl.add(conf, "c3")) == ["10.1.0.4"]
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(os.path.join(hl.net_dir(), "10.1.0.2"))


def test_data_dir_itself_is_never_followed_through_a_symlink(hl, tmp_path):
    """A symlink at dataDir (one planted in a writable parent) is refused and reported; the dataDir's
    parents resolve as usual, so put the real path in the config to move the store."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, hl.data_dir)
    error(hl.add(hl.config(V4)), 5, f"ipam.dataDir {hl.data_dir} is a symlink; refusing to follow it")
    error(hl.add(hl.config(V4, dataDir=hl.data_dir + "/")), 5, "is a symlink")
    assert os.listdir(real) == []
    linked_parent = tmp_path / "via"
    os.symlink(real, linked_parent)
    assert hl.add(hl.config(V4, dataDir=str(linked_parent / "networks"))).ok
    assert os.path.exists(real / "networks" / "net1" / "10.1.0.2")


# -- the index heals itself ------------------------------------------------------------------

def write_lease(hl, ip, content):
    with open(os.path.join(hl.net_dir(), ip), "wb") as f:
        f.write(content)


def test_lease_created_behind_its_back(hl):
    conf = hl.config(V4)
    assert hl.add(conf, "c1").ok
    write_lease(hl, "10.1.0.9", b"other\r\neth0")          # as the reference, or a writer we crashed in
    error(hl.add(conf, "other"), 101, "10.1.0.9 has been allocated to other/eth0", "duplicate allocation")
    assert hl.delete(conf, "other").ok
    assert sorted(hl.leases()) == ["10.1.0.2"]


def test_lease_removed_behind_its_back(hl):
    conf = hl.config(V4)
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.2"]
    os.unlink(os.path.join(hl.net_dir(), "10.1.0.2"))      # as the reference's DEL would
    assert addresses(hl.add(conf, "c1")) == ["10.1.0.3"]   # not "duplicate allocation"


def test_orphan_temp_file_is_removed(hl):
    conf = hl.config(V4)
    assert hl.add(conf, "c1").ok
    orphan = os.path.join(hl.net_dir(), ".tmp-99999-1")
    with open(orphan, "wb") as f:
        f.write(b"dead\r\neth0")
    assert hl.add(conf, "c2").ok
    assert not os.path.exists(orphan)


def test_empty_lease_file_is_reclaimed(hl):
    """An empty lease (a reference writer killed mid-write, #498) belongs to nobody."""
    conf = hl.config("10.1.0.0/30")                          # a single usable address: 10.1.0.2
    os.makedirs(hl.net_dir())
    write_lease(hl, "10.1.0.2", b"")
    assert addresses(hl.add(conf)) == ["10.1.0.2"]


def test_whitespace_only_lease_file_is_reclaimed(hl):
    conf = hl.config("10.1.0.0/30")
    os.makedirs(hl.net_dir())
    write_lease(hl, "10.1.0.2", b"\r\n")
    assert addresses(hl.add(conf)) == ["10.1.0.2"]


def test_index_removed(hl):
    conf = hl.config(V4)
    assert hl.add(conf, "c1").ok
    index = os.path.join(hl.net_dir(), ".underlay-index")
    for name in os.listdir(index):
        os.unlink(os.path.join(index, name))
    os.rmdir(index)
    assert hl.delete(conf, "c1").ok
    assert hl.leases() == {}


def test_stray_files_are_left_alone(hl):
    conf = hl.config(V4)
    os.makedirs(hl.net_dir())
    for name, content in [("notes.txt", b""), ("README", b"hi"), ("10.1.0.5.bak", b"")]:
        write_lease(hl, name, content)
    assert hl.add(conf).ok
    assert hl.delete(conf).ok
    for name in ("notes.txt", "README", "10.1.0.5.bak"):
        assert os.path.exists(os.path.join(hl.net_dir(), name))


def test_no_temp_files_left(hl):
    conf = hl.config("10.1.0.0/28")
    for i in range(5):
        assert hl.add(conf, f"c{i}").ok
    error(hl.add(conf, "c0"), 101, "duplicate")
    assert hl.delete(conf, "c1").ok
    assert [n for n in tree(hl.data_dir) if os.path.basename(n).startswith(".tmp-")] == []


def test_lease_content_cannot_make_a_path(hl, tmp_path):
    """The index is named after the lease's owner: a planted '../' owner must not write outside."""
    conf = hl.config("10.1.0.0/29")
    os.makedirs(hl.net_dir())
    write_lease(hl, "10.1.0.2", b"../../../escape\r\neth0")
    write_lease(hl, "10.1.0.3", b"c9\r\n../../escape")
    assert addresses(hl.add(conf)) == ["10.1.0.4"]
    assert hl.delete(conf).ok
    assert sorted(os.listdir(tmp_path)) == ["networks"]
    assert tree(hl.data_dir) == sorted(["net1", "net1/.underlay-index", "net1/.underlay-index/.stamp",
                                        "net1/10.1.0.2", "net1/10.1.0.3", "net1/last_reserved_ip.0", "net1/lock"])
