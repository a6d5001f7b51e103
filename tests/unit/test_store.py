"""DiskStore in-process: what exec tests cannot set up (a coarse clock, fsync counts, a full disk)."""

import errno
import io
import json
import os
import time

import pytest

from cni import dispatch, files, registry
from cni.errors import ERR_IO, CniError
from ipam import allocator, host_local, ranges
from ipam.stores.lease_files import LeaseFiles
from ipam.stores.lease_index import AttachmentIndex
from ipam.stores.disk import DiskStore


@pytest.fixture
def data_dir(tmp_path):
    yield str(tmp_path / "networks")
    files.wait_synced()   # a store's background fsyncs end with its test


def net_dir(data_dir):
    return os.path.join(data_dir, "net1")


def write(path, content):
    with open(path, "wb") as f:
        f.write(content)


def test_change_in_the_same_clock_tick_as_ours_is_noticed(data_dir):
    """A coarse clock gives a change right after ours the same mtime as ours: it must still be seen."""
    with DiskStore(data_dir, "net1") as store:
        assert store.reserve("10.1.0.2", "c1", "eth0")
        ours = os.fstat(store.files.dir_fd).st_mtime_ns    # the time of our last change
    # the reference writes a lease in the same tick: the kernel stamps the directory with that same time
    write(os.path.join(net_dir(data_dir), "10.1.0.9"), b"other\r\neth0")
    os.utime(net_dir(data_dir), ns=(ours, ours))
    with DiskStore(data_dir, "net1") as store:
        assert store.ips_of("other", "eth0") == ["10.1.0.9"]
        assert store.ips_of("c1", "eth0") == ["10.1.0.2"]


def test_index_trusted_while_nothing_changed(data_dir, monkeypatch):
    with DiskStore(data_dir, "net1") as store:
        assert store.reserve("10.1.0.2", "c1", "eth0")
    monkeypatch.setattr(AttachmentIndex, "rebuild_index", lambda self: pytest.fail("rebuilt a current index"))
    with DiskStore(data_dir, "net1") as store:
        assert store.ips_of("c1", "eth0") == ["10.1.0.2"]


def test_index_trusted_on_a_filesystem_with_whole_second_times(data_dir, monkeypatch):
    real_utime = os.utime
    monkeypatch.setattr(os, "utime", lambda path, ns: real_utime(path, ns=(ns[0], ns[1] // 10**9 * 10**9)))
    with DiskStore(data_dir, "net1") as store:
        assert store.reserve("10.1.0.2", "c1", "eth0")
    monkeypatch.setattr(AttachmentIndex, "rebuild_index", lambda self: pytest.fail("rebuilt a current index"))
    with DiskStore(data_dir, "net1") as store:
        assert store.ips_of("c1", "eth0") == ["10.1.0.2"]


def synced_inodes(monkeypatch, slow=0.0):
    """Record the (device, inode) of every fsync, in order; `slow` seconds each (an ADD that did
    not wait for its sync would answer first)."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        time.sleep(slow)
        real_fsync(fd)
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def inode(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_the_lease_then_its_directory_synced_once_per_allocation_in_a_nearly_full_range(data_dir, monkeypatch):
    [s] = ranges.range_sets({"ranges": [[{"subnet": "10.1.0.0/26"}]]})
    os.makedirs(net_dir(data_dir))
    for i in range(2, 62):
        write(os.path.join(net_dir(data_dir), f"10.1.0.{i}"), b"other\r\neth0")
    synced = synced_inodes(monkeypatch)
    with DiskStore(data_dir, "net1") as store:
        synced.clear()  # the rebuild does not fsync, but do not count it either way
        r, value = allocator.allocate(s, store, "c1", "eth0")
        assert r.text(value) == "10.1.0.62"
    files.wait_synced()
    assert synced == [inode(os.path.join(net_dir(data_dir), "10.1.0.62")), inode(net_dir(data_dir))]
    assert sorted(n for n in os.listdir(net_dir(data_dir)) if n.startswith(".tmp-")) == []


HOST_LOCAL = {"cniVersion": "1.1.0", "name": "net1", "type": "macvlan",
              "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}


def run_host_local(data_dir, stdout):
    config = dict(HOST_LOCAL, ipam=dict(HOST_LOCAL["ipam"], dataDir=data_dir))
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p1", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin"}
    return dispatch.run(registry.EXECUTABLES["host-local"], host_local.VERBS, env=env,
                        stdin=json.dumps(config).encode(), stdout=stdout, stderr=io.StringIO())


def test_host_local_add_answers_once_the_lease_and_its_link_are_synced(data_dir, monkeypatch):
    synced = synced_inodes(monkeypatch, slow=0.2)
    seen_at_answer = []

    class Stdout(io.StringIO):
        def write(self, text):
            seen_at_answer.append(list(synced))
            return super().write(text)
    stdout = Stdout()
    assert run_host_local(data_dir, stdout) == 0, stdout.getvalue()
    assert json.loads(stdout.getvalue())["ips"][0]["address"] == "10.1.0.2/24"
    assert seen_at_answer == [[inode(os.path.join(net_dir(data_dir), "10.1.0.2")), inode(net_dir(data_dir))]]


def test_host_local_add_whose_lease_cannot_be_synced_fails_and_keeps_nothing(data_dir, monkeypatch):
    def broken(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "fsync", broken)
    stdout = io.StringIO()
    assert run_host_local(data_dir, stdout) == 1
    error = json.loads(stdout.getvalue())
    assert error["code"] == ERR_IO and "could not be made durable" in error["msg"], error
    with DiskStore(data_dir, "net1") as store:
        assert store.attachments() == {}
    assert [n for n in os.listdir(net_dir(data_dir)) if n[0].isdigit() or n.startswith(".tmp-")] == []


def test_failed_write_is_an_io_error(data_dir, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CniError) as e:
        with DiskStore(data_dir, "net1") as store:
            monkeypatch.setattr(os, "link", full)
            store.reserve("10.1.0.2", "c1", "eth0")
    assert e.value.code == ERR_IO
    assert "No space left on device" in e.value.msg
    assert [n for n in os.listdir(net_dir(data_dir)) if n.startswith(".tmp-")] == []


@pytest.mark.parametrize("content", [b"../../escape\r\neth0", b"../../../escape\r\neth0", b"c1\r\n../../escape",
                                     b"{tmp}/abs\r\neth0", b"c1\r\n..", b"a b\r\neth0"])
def test_lease_content_never_picks_a_path(data_dir, tmp_path, content):
    content = content.replace(b"{tmp}", str(tmp_path).encode())   # an absolute path, inside this test's dir
    os.makedirs(net_dir(data_dir))
    write(os.path.join(net_dir(data_dir), "10.1.0.7"), content)
    with DiskStore(data_dir, "net1") as store:
        assert store.attachments() == {}
        assert not store.reserve("10.1.0.7", "c2", "eth0")    # still taken
    written = sorted(os.path.relpath(os.path.join(d, n), tmp_path)
                     for d, dirs, files in os.walk(tmp_path) for n in dirs + files)
    assert written == ["networks", "networks/net1", "networks/net1/.underlay-index",
                       "networks/net1/.underlay-index/.stamp", "networks/net1/10.1.0.7", "networks/net1/lock"]


def test_rebuild_reads_old_id_only_leases(data_dir):
    os.makedirs(net_dir(data_dir))
    write(os.path.join(net_dir(data_dir), "10.1.0.7"), b"old-ctr")
    write(os.path.join(net_dir(data_dir), "10.1.0.8"), b"new-ctr\r\neth0\n")
    with DiskStore(data_dir, "net1") as store:
        assert store.attachments() == {("old-ctr", None): ["10.1.0.7"], ("new-ctr", "eth0"): ["10.1.0.8"]}
        assert store.ips_of("old-ctr", "net1") == ["10.1.0.7"]    # an id-only lease matches any ifname


def test_del_reads_only_its_own_leases(data_dir, monkeypatch):
    """DEL finds an attachment through the index: with 300 leases it reads one lease file, not 300."""
    import json

    from cni.contract import read_request
    from ipam import host_local

    os.makedirs(net_dir(data_dir))
    for i in range(300):
        write(os.path.join(net_dir(data_dir), f"10.1.{i // 250}.{i % 250 + 2}"), f"pre{i}\r\neth0".encode())
    conf = json.dumps({"cniVersion": "1.0.0", "name": "net1",
                       "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.1.0.0/16"}]]}})
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "pre7", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    host_local.cmd_del(read_request(dict(env, CNI_CONTAINERID="warm-up"), conf.encode()))   # builds the index
    reads = []
    real_read = LeaseFiles._read
    monkeypatch.setattr(LeaseFiles, "_read", lambda self, name, dir_fd=None: (reads.append(name),
                                                                           real_read(self, name, dir_fd))[1])
    host_local.cmd_del(read_request(env, conf.encode()))
    assert not os.path.exists(os.path.join(net_dir(data_dir), "10.1.0.9"))
    assert len(os.listdir(net_dir(data_dir))) == 299 + 2              # + lock, .underlay-index
    assert [name for name in reads if name[0].isdigit()] == ["10.1.0.9"]
