"""cni/files.py: the boot ID and the atomic whole-file write (no root needed)."""

import os

import pytest

from cni import files


def test_boot_id_is_this_boots_and_empty_without_proc(monkeypatch, tmp_path):
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert files.boot_id() == f.read().strip() != ""
    monkeypatch.setattr(files, "BOOT_ID", str(tmp_path / "missing"))
    assert files.boot_id() == ""


def test_replace_writes_the_whole_file_0600_and_leaves_no_temp(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    files.replace(str(path), b"new content")
    assert path.read_bytes() == b"new content"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["record.json"]


def test_replace_relative_to_a_directory_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        files.replace("stamp", b"1", fd)
        files.replace("stamp", b"2", fd, sync=True)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["stamp"] and (tmp_path / "stamp").read_bytes() == b"2"


def test_a_failed_rename_removes_the_temp_and_keeps_the_old_file(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_text("x")      # rename over a non-empty directory fails
    with pytest.raises(OSError):
        files.replace(str(tmp_path / "dir"), b"data")
    assert sorted(os.listdir(tmp_path)) == ["dir"]


def test_write_temp_names_its_files_as_debris_is_recognised(tmp_path):
    name = files.write_temp(b"body", directory=str(tmp_path), sync=True)
    assert os.path.basename(name).startswith(files.TMP_PREFIX) and open(name, "rb").read() == b"body"
    files.remove(name)
    files.remove(name)                                   # gone already: fine
    assert os.listdir(tmp_path) == []


def test_replace_if_changed_reads_first_and_writes_only_a_difference(tmp_path):
    path = str(tmp_path / "record.json")
    assert files.replace_if_changed(path, b"one") is True            # missing: written
    before = os.stat(path)
    assert files.replace_if_changed(path, b"one") is False           # same: left as it is
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    for data in (b"on", b"one!", b"two"):                            # shorter, longer, other: rewritten
        assert files.replace_if_changed(path, data) is True and open(path, "rb").read() == data
    assert os.stat(path).st_ino != before.st_ino and os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["record.json"]


def test_replace_if_changed_replaces_a_symlink_never_its_target(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"same")
    os.symlink(target, tmp_path / "record.json")
    assert files.replace_if_changed(str(tmp_path / "record.json"), b"same") is True   # not read through it
    assert not os.path.islink(tmp_path / "record.json") and target.read_bytes() == b"same"


def test_overwrite_writes_in_place_shorter_or_longer_and_creates_0600(tmp_path):
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        files.overwrite("hint", b"10.1.0.250", dir_fd)
        inode = os.stat(tmp_path / "hint").st_ino
        assert (tmp_path / "hint").read_bytes() == b"10.1.0.250"
        assert os.stat(tmp_path / "hint").st_mode & 0o777 == 0o600
        files.overwrite("hint", b"10.1.0.3", dir_fd)
        assert (tmp_path / "hint").read_bytes() == b"10.1.0.3"
        files.overwrite("hint", b"10.1.0.200", dir_fd)
        assert (tmp_path / "hint").read_bytes() == b"10.1.0.200"
        assert os.stat(tmp_path / "hint").st_ino == inode   # in place: no rename
    finally:
        os.close(dir_fd)


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo", "directory"])
def test_overwrite_never_writes_through_what_was_planted(tmp_path, planted):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    path = tmp_path / "hint"
    if planted == "symlink":
        path.symlink_to(target)
    elif planted == "hardlink":
        os.link(target, path)
    elif planted == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    if planted == "directory":
        with pytest.raises(OSError):
            files.overwrite(str(path), b"10.1.0.3")   # as replace(): a rename cannot replace it
    else:
        files.overwrite(str(path), b"10.1.0.3")    # never blocks on a FIFO
        assert path.read_bytes() == b"10.1.0.3" and not path.is_symlink()
    assert target.read_bytes() == b"precious"
