"""Opt-in phase timestamps of one served invocation, for tests/bench/breakdown.py.

A caller whose environment has UNDERLAY_TRACE_PHASES=PATH (an absolute file, in the caller's
mount namespace) gets one JSON line appended there by its worker once it has answered: the
worker's own marks (accepted, ready sent, request received, context taken on, plugin start and done,
answer sent, closed) and spans inside the plugin (config, IPAM, fsync, each netlink
round trip, the result), all CLOCK_MONOTONIC seconds, comparable with the compiled client's
line (cni/handoff.c writes one to the same file) and the bench's own clock.

Without the variable nothing here runs but `mark` (a time.monotonic() into a list, seven a
request); the spans' wrappers are put on in the one worker that serves a traced request, after it
took on the caller's context, and die with it: the next request's worker never has them.
"""

import _thread
import json
import os
import sys
import time

from cni import config, contract, dispatch
from cni.net import netlink, netns

VARIABLE = "UNDERLAY_TRACE_PHASES"

marks = []     # (name, monotonic seconds) of this worker
spans = []     # (name, start, end) inside the plugin, when traced
preloaded = set()   # sys.modules when the traced plugin started: what it imported itself is the rest
cpu_start = []      # time.process_time() when the traced plugin started
plugin_thread = []  # the thread that runs the traced plugin: spans are its own


def mark(name):
    marks.append((name, time.monotonic()))


def traced():
    path = os.environ.get(VARIABLE, "")
    return path if path.startswith("/") else None


def timed(owner, attr, name):
    """Wrap owner.attr (a function) so that each call adds a span."""
    inner = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        if _thread.get_ident() not in plugin_thread:   # the lease's background fsync: its wait is the span
            return inner(*args, **kwargs)
        start = time.monotonic()
        try:
            return inner(*args, **kwargs)
        finally:
            spans.append((name, start, time.monotonic()))
    setattr(owner, attr, wrapper)


MESSAGES = {16: "NEWLINK", 17: "DELLINK", 18: "GETLINK", 19: "SETLINK", 20: "NEWADDR", 21: "DELADDR",
            22: "GETADDR", 24: "NEWROUTE", 25: "DELROUTE", 26: "GETROUTE", 28: "NEWNEIGH", 29: "DELNEIGH",
            30: "GETNEIGH", 32: "NEWRULE", 33: "DELRULE", 34: "GETRULE"}


class TimedSocket:
    """A netlink socket whose round trips are spans: from a send to the last receive before the next."""

    def __init__(self, sock, owner=None):
        self._sock = sock
        self.owner = owner or self   # a dup()'s sends are trips of the socket whose replies it reads
        self.trip = None

    def send(self, data, *args):
        kind = int.from_bytes(data[4:6], "little")
        self.owner.trip = [f"netlink {MESSAGES.get(kind, kind)}", time.monotonic(), None]
        spans.append(self.owner.trip)
        return self._sock.send(data, *args)

    def dup(self):
        """The descriptor a request is sent on from a thread (netlink.Sending)."""
        return TimedSocket(self._sock.dup(), self)

    def recv(self, *args):
        data = self._sock.recv(*args)
        if self.trip is not None:
            self.trip[2] = time.monotonic()
        return data

    def __getattr__(self, name):
        return getattr(self._sock, name)


def install():
    """The spans' wrappers, in this (traced) worker only."""
    preloaded.update(sys.modules)
    plugin_thread.append(_thread.get_ident())
    cpu_start.append(time.process_time())
    timed(contract, "read_request", "read request (stdin JSON, env)")
    timed(config, "validate", "config: schema")
    timed(dispatch, "load_ipam_config", "config: IPAM's")
    timed(dispatch, "delegate_ipam", "IPAM")
    results = sys.modules.get("cni.results")   # dispatch's alone to import (tests/unit/test_imports.py)
    if results is not None:
        timed(results, "convert_result", "result")
    timed(netns, "open_netns", "open pod netns")
    timed(netns, "setns", "setns")
    timed(os, "fsync", "fsync")
    timed(dispatch, "wait_ipam_synced", "lease's fsync (waited for)")
    etcd = sys.modules.get("ipam.etcd")
    if etcd is not None:
        timed(etcd.Client, "_call", "etcd request")
    init = netlink.Netlink.__init__

    def traced_init(nl, *args, **kwargs):
        start = time.monotonic()
        init(nl, *args, **kwargs)
        spans.append(("netlink socket", start, time.monotonic()))
        nl.sock = TimedSocket(nl.sock)
    netlink.Netlink.__init__ = traced_init


def write(path, plugin):
    """Append this worker's line to `path` (after the answer: not in the caller's time)."""
    line = json.dumps({"who": "worker", "pid": os.getpid(), "plugin": plugin,
                       "verb": os.environ.get("CNI_COMMAND", ""), "marks": marks,
                       "imported": sorted(set(sys.modules) - preloaded),
                       "cpu since the plugin started": time.process_time() - cpu_start[0] if cpu_start else None,
                       "spans": [list(span) for span in spans]})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)
