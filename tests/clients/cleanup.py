"""Removing what a client daemon leaves on the machine: its processes (by PID),
its mounts, its cgroups. Used by the podman and containerd fixtures, also after
a failed test."""

import os
import signal
import subprocess
import time

CGROUP_ROOT = "/sys/fs/cgroup"


def processes_mentioning(text):
    """PIDs whose command line contains `text` (a private dir or socket path)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def cgroup_pids(name):
    """PIDs in cgroup /<name> (and below) of every hierarchy."""
    pids = set()
    for hierarchy in _hierarchies():
        for dirpath, _, files in os.walk(os.path.join(CGROUP_ROOT, hierarchy, name.strip("/"))):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(p) for p in f.read().split())
                except OSError:
                    pass
    pids.discard(os.getpid())
    return sorted(pids)


def kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_all(text=None, cgroup=None, rounds=3):
    """SIGKILL, by PID, the processes naming `text` and those in `cgroup`, until none is left."""
    for _ in range(rounds):
        pids = (processes_mentioning(text) if text else []) + (cgroup_pids(cgroup) if cgroup else [])
        if not pids:
            return
        kill(pids)
        time.sleep(0.2)


def unmount_under(path):
    """Lazily unmount everything mounted below `path`, deepest first."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(path.rstrip("/") + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_cgroup(name):
    """rmdir cgroup /<name> and what is below it in every hierarchy, deepest first;
    a cgroup still in use stays."""
    for hierarchy in _hierarchies():
        top = os.path.join(CGROUP_ROOT, hierarchy, name.strip("/"))
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def remove_empty_tree(path):
    """Remove `path` if it holds nothing but empty directories."""
    for dirpath, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def _hierarchies():
    try:
        return [h for h in os.listdir(CGROUP_ROOT) if os.path.isdir(os.path.join(CGROUP_ROOT, h))]
    except OSError:
        return []
