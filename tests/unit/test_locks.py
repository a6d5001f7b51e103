"""cni/locks.py: the bounded flock every store and record of underlay takes."""

import os
import subprocess
import sys
import time

import pytest

from cni import locks
from cni.errors import CniError

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def held(tmp_path):
    path = str(tmp_path / "unt-lock")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        yield path, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_free_lock_is_taken_at_once(tmp_path):
    fd = os.open(tmp_path / "unt-free", os.O_RDWR | os.O_CREAT)
    try:
        locks.lock(fd, 0.1, "free")
        assert locks.holder_pid(fd) == os.getpid()
    finally:
        os.close(fd)


def test_a_held_lock_is_code_11_naming_the_holder_after_the_timeout(held):
    path, pid = held
    fd = os.open(path, os.O_RDWR)
    try:
        start = time.monotonic()
        with pytest.raises(CniError) as caught:
            locks.lock(fd, 0.3, path)
        waited = time.monotonic() - start
    finally:
        os.close(fd)
    assert caught.value.code == 11
    assert caught.value.msg == f"try again later: {path} is held by pid {pid} for over 0.3s"
    print(f"waited {waited:.2f}s for a 0.3s timeout")
    assert waited >= 0.3
