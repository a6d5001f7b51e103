"""What a fork of the agent costs its workers: page faults, counted (never timed)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A process with free blocks scattered over all of pymalloc's pools (as a start-up leaves them); a forked
# child then allocates 8 700 objects (~2 MiB) and counts its minor faults (each first write to one of
# the parent's pages is a copy-on-write fault), before and after fill_free_blocks.
FORKED_ALLOCATIONS = r"""
import os, resource, sys
sys.path.insert(0, sys.argv[1])
from cni.agent import server

def child_faults():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        kept = [bytes(size) for _ in range(300) for size in range(8, 470, 16)]
        os.write(w, str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before).encode())
        os._exit(0)
    os.close(w)
    faults = int(os.read(r, 100))
    os.close(r)
    os.waitpid(pid, 0)
    return faults

heap = [bytes(size) for _ in range(2000) for size in range(8, 470, 16)]
del heap[::2]
scattered = child_faults()
blocks, size = server.fill_free_blocks()
left = sum(server.free_blocks().values())
print(scattered, blocks, size, left, child_faults())
"""


def test_a_worker_s_allocations_land_packed_once_the_free_blocks_are_filled():
    out = subprocess.run([sys.executable, "-c", FORKED_ALLOCATIONS, ROOT], capture_output=True, text=True,
                         check=True).stdout
    scattered, blocks, size, left, filled = map(int, out.split())
    assert blocks > 20000 and size > 4 << 20     # the half of the heap freed was found
    assert left < blocks // 10                   # and filled (what is left: the fresh pools begun since)
    # scattered: every page of the freed half is written to; packed: only as many as the objects need
    assert filled < scattered * 3 // 4, (scattered, filled)


def test_free_blocks_are_read_per_size_class():
    free = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "from cni.agent import server; print(server.free_blocks())", ROOT],
                          capture_output=True, text=True, check=True).stdout
    free = eval(free)
    assert sorted(free) == list(range(16, 513, 16))
    assert all(isinstance(count, int) and count >= 0 for count in free.values())


def test_an_agent_started_without_fd_2_fills_nothing_and_starts():
    out = subprocess.run([sys.executable, "-c", "import os, sys; os.close(2); sys.path.insert(0, sys.argv[1]); "
                          "from cni.agent import server; print(server.fill_free_blocks())", ROOT],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(0, 0)"
