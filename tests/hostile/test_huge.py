"""Huge inputs fail fast or work, in bounded memory; nothing is expanded per address.

Each case runs host-local as a real process under GNU time (peak RSS) and reports
its wall time and RSS in the terminal summary ("hostile input: huge inputs").
Time is reported, never asserted (it depends on the machine and its load): that
the work grows with the exclusions and not with the addresses is checked by
counting it (lines of Python executed, test_work_grows_with_the_input_not_the_addresses);
an exec's timeout only catches a hang.
"""

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni import registry
from ipam import ranges
from tests.plugins import plugin_argv, plugin_env

HANG = 300          # seconds: an exec's timeout (a plain ADD takes ~0.05 s, 100 000 exclusions ~3 s)
RSS_MB = 250        # per exec; a plain ADD peaks at ~20 MB, 10 MB of stdin at ~70 MB
MB = 1_000_000


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def measured(command, stdin, cid="c1", args=""):
    """(outcome JSON or None, exit code, seconds, peak RSS in MB) of one exec."""
    with tempfile.NamedTemporaryFile("r") as report:
        argv = ["/usr/bin/time", "-f", "%M", "-o", report.name] + plugin_argv("host-local")
        start = time.monotonic()
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=HANG,
                              env=plugin_env(command, container_id=cid, netns="/x", path="/x", args=args))
        seconds = time.monotonic() - start
        rss_mb = int(report.read().split()[-1]) / 1024
    assert b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return out, proc.returncode, seconds, rss_mb


def conf(data_dir, name="big", version="1.1.0", **ipam):
    return {"cniVersion": version, "name": name, "ipam": dict({"type": "host-local", "dataDir": data_dir}, **ipam)}


class Figures:
    def __init__(self, record_property):
        self.record = record_property

    def run(self, label, command, config, expect, **kw):
        stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
        out, code, seconds, rss = measured(command, stdin, **kw)
        self.record(f"figure:{label} ({command}, {len(stdin) / MB:.1f} MB stdin)",
                    f"{seconds * 1000:.0f} ms, {rss:.0f} MB RSS")
        if expect == "ok":
            assert code == 0, out
        else:
            assert code == 1 and out["code"] == expect, out
        assert rss < RSS_MB, f"{label}: {rss:.0f} MB"
        return out


@pytest.fixture
def figures(record_property):
    if not os.access("/usr/bin/time", os.X_OK):
        pytest.fail("/usr/bin/time (Debian package `time`, build/apt-packages.txt) is missing")
    return Figures(record_property)


def test_10_mb_stdin(figures, data_dir):
    padded = conf(data_dir, ranges=[[{"subnet": "10.0.0.0/8"}]], padding="x" * (10 * MB))
    out = figures.run("10 MB config (a long unknown key)", "ADD", padded, "ok")
    assert out["ips"][0]["address"] == "10.0.0.2/8"
    figures.run("10 MB config (a long unknown key)", "DEL", padded, "ok")
    figures.run("10 MB of '['", "ADD", b"[" * (10 * MB), 6)
    figures.run("10 MB number", "ADD", b'{"name": "n", "x": ' + b"7" * (10 * MB) + b"}", 6)
    figures.run("10 MB of garbage", "ADD", os.urandom(10 * MB), 6)
    many_sets = conf(data_dir, ranges=[[{"subnet": f"10.{i // 256}.{i % 256}.0/24"}] for i in range(60_000)])
    figures.run("60 000 range sets", "ADD", many_sets, 7)   # one address each: refused, not 60 000 leases
    too_wide = conf(data_dir, name="wide", ranges=[[{"subnet": f"10.{i // 256}.{i % 256}.0/24"} for i in range(60_000)]])
    figures.run("one range set of 60 000 ranges", "ADD", too_wide, 7)
    wide = conf(data_dir, name="wide", ranges=[[{"subnet": f"10.{i // 256}.{i % 256}.0/24"} for i in range(4096)]])
    out = figures.run("one range set of 4 096 ranges (the most)", "ADD", wide, "ok")
    assert out["ips"][0]["address"] == "10.0.0.2/24"


def test_100_000_exclusions(figures, data_dir):
    # every other address of 10.0.0.0-10.3.13.63 excluded, one by one
    singles = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(1, 200_001, 2)]
    config = conf(data_dir, ranges=[[{"subnet": "10.0.0.0/8", "exclude": singles}]])
    assert figures.run("100 000 single-address exclusions in a /8", "ADD", config, "ok")["ips"][0]["address"] \
        == "10.0.0.2/8"
    figures.run("100 000 single-address exclusions in a /8", "STATUS", config, "ok")
    figures.run("100 000 single-address exclusions in a /8", "DEL", config, "ok")
    # 60 000 /24s (10.0.0.0-10.234.95.255), then 40 000 single addresses right after them
    blocks = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(60_000)] + \
             [str(ipaddress.IPv4Address("10.234.96.0") + k) for k in range(40_000)]
    config = conf(data_dir, ranges=[[{"subnet": "10.0.0.0/8"}]], exclude=blocks)
    out = figures.run("100 000 top-level CIDR and address exclusions", "ADD", config, "ok", cid="c2")
    assert out["ips"][0]["address"] == f"{ipaddress.IPv4Address('10.234.96.0') + 40_000}/8"  # the first one left
    out = figures.run("100 000 exclusions, requested IP", "ADD", config, "ok", cid="c3", args="IP=10.250.0.1")
    assert out["ips"][0]["address"] == "10.250.0.1/8"
    out = figures.run("100 000 exclusions, requested IP excluded", "ADD", config, 4, cid="c4", args="IP=10.200.0.1")
    assert "excluded by ipam.exclude[51200] (10.200.0.0/24)" in out["msg"]


@pytest.mark.parametrize("subnet, excluded, free", [
    ("10.0.0.0/8", ["10.0.0.0/9", "10.128.0.0/10", "10.192.0.0/11", "10.224.0.0/12", "10.240.0.0/13",
                    "10.248.0.0/14", "10.252.0.0/15", "10.254.0.0/16", "10.255.0.0/17", "10.255.128.0-10.255.255.251"],
     ["10.255.255.252", "10.255.255.253", "10.255.255.254"]),
    ("fd00::/64", ["fd00::/65", "fd00::8000:0:0:0/66", "fd00::c000:0:0:0-fd00::ffff:ffff:ffff:fffc"],
     ["fd00::ffff:ffff:ffff:fffd", "fd00::ffff:ffff:ffff:fffe", "fd00::ffff:ffff:ffff:ffff"]),
])
def test_huge_ranges_fill_up_and_say_so(figures, data_dir, subnet, excluded, free):
    """A /8 and a /64 with all but three addresses excluded: three ADDs get exactly those, the
    fourth answers 101 with the tally, STATUS 50; found by jumping intervals, not by walking."""
    config = conf(data_dir, name="huge", ranges=[[{"subnet": subnet, "exclude": excluded}]])
    label = f"a {subnet.split('/')[1]} with 3 free addresses"
    got = [figures.run(label, "ADD", config, "ok", cid=f"p{i}")["ips"][0]["address"].split("/")[0]
           for i in range(3)]
    assert got == free
    out = figures.run(label, "ADD", config, 101, cid="p3")
    total = 2 ** (32 - 8) - 2 if subnet.startswith("10.") else 2 ** 64 - 1
    assert f"{total} addresses" in out["msg"] and "3 in use" in out["msg"], out
    figures.run(label, "STATUS", config, 50)
    plain = conf(data_dir, name="plain", ranges=[[{"subnet": subnet}]])
    figures.run(f"a plain {subnet.split('/')[1]}", "ADD", plain, "ok", cid="q")
    figures.run(f"a plain {subnet.split('/')[1]}", "STATUS", plain, "ok")


# -- the work grows with the input, not with the addresses ------------------------------------------

COUNT_LINES = """
import atexit, itertools, runpy, sys
lines = itertools.count()
def trace(frame, event, arg):
    next(lines)
    return trace
atexit.register(lambda: open(sys.argv[1], "w").write(str(next(lines))))
sys.settrace(trace)
runpy.run_module(sys.argv[2], run_name="__main__", alter_sys=True)
"""


def work(tmp_path, subnet, exclude, cid="c1"):
    """Trace events (lines, calls) of one host-local ADD from the checkout: a count of the work
    done, the same on any machine under any load."""
    config = conf(str(tmp_path / cid), ranges=[[{"subnet": subnet, "exclude": exclude}]])
    counted = tmp_path / f"{cid}.count"
    proc = subprocess.run([sys.executable, "-c", COUNT_LINES, str(counted), registry.module_of("host-local")],
                          input=json.dumps(config).encode(), capture_output=True, timeout=HANG,
                          env=plugin_env("ADD", container_id=cid, netns="/x", path="/x"))
    assert proc.returncode == 0, proc
    return int(counted.read_text())


def singles(n):
    """n single-address exclusions: every other address from 10.0.0.1 on."""
    return [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(1, 2 * n + 1, 2)]


def test_work_grows_with_the_input_not_the_addresses(tmp_path):
    """Twice the exclusions is about twice the work (n log n at most, nothing quadratic), and a /8
    or a /64 nearly all excluded costs what a /24 does (nothing walks the addresses one by one)."""
    none, half, full = (work(tmp_path, "10.0.0.0/8", singles(n), f"s{n}") for n in (0, 50_000, 100_000))
    print(f"\ntrace events: {none} (no exclusion), {half} (50 000), {full} (100 000)")
    assert full - none < 2.5 * (half - none), (none, half, full)
    small = work(tmp_path, "10.0.0.0/24", ["10.0.0.0/25", "10.0.0.128-10.0.0.251"], "small")
    for subnet, exclude in (("10.0.0.0/8", ["10.0.0.0/9", "10.128.0.0/10", "10.192.0.0/11", "10.224.0.0/12",
                                            "10.240.0.0/13", "10.248.0.0/14", "10.252.0.0/15", "10.254.0.0/16",
                                            "10.255.0.0/17", "10.255.128.0-10.255.255.251"]),
                            ("fd00::/64", ["fd00::/65", "fd00::8000:0:0:0/66",
                                           "fd00::c000:0:0:0-fd00::ffff:ffff:ffff:fffc"])):
        big = work(tmp_path, subnet, exclude, f"big{subnet.split('/')[1]}")
        print(f"trace events: {small} (a /24, 4 free), {big} (a {subnet} with 3 free)")
        assert big < 2 * small, (subnet, small, big)


# -- the fast address parser says exactly what ipaddress says ------------------------------------

def reference(text):
    import ipaddress
    try:
        if "-" in text:
            a, _, b = text.partition("-")
            a, b = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
            return "error" if a.version != b.version or int(b) < int(a) else (a.version, int(a), int(b))
        if "/" in text:   # host bits are masked (with a warning): the network the CIDR names
            n = ipaddress.ip_network(text, strict=False)
            return n.version, int(n.network_address), int(n.broadcast_address)
        a = ipaddress.ip_address(text)
        return a.version, int(a), int(a)
    except ValueError:
        return "error"


def octet():
    return st.one_of(st.integers(0, 300).map(str), st.sampled_from(["01", "00", "0x1", "", " 1", "1 ", "+1", "٣"]))


address_like = st.one_of(
    st.builds(lambda *o: ".".join(o), octet(), octet(), octet(), octet()),
    st.builds(lambda *o: ".".join(o), octet(), octet(), octet()),
    st.lists(st.one_of(st.integers(0, 0x1ffff).map(lambda v: f"{v:x}"), st.sampled_from(["", "0000", "00000"])),
             min_size=1, max_size=9).map(":".join),
    st.sampled_from(["::", "::1", "fe80::1%eth0", "::ffff:1.2.3.4", "1::2::3", ":::"]),
    st.text(max_size=12))
exclusion_like = st.one_of(
    address_like,
    st.builds(lambda a, p: f"{a}/{p}", address_like, st.one_of(st.integers(0, 130).map(str),
                                                              st.sampled_from(["", "024", " 8", "+8", "٣"]))),
    st.builds(lambda a, b: f"{a}-{b}", address_like, address_like))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])   # no timing
@given(exclusion_like)
def test_fast_parser_agrees_with_ipaddress(text):
    ranges.use_fast_parsing(range(ranges.FAST_PARSING_FROM))
    try:
        fast = ranges.parse_exclusion(text, "x")
    except Exception as e:   # a CniError is "error"; anything else is a bug
        assert type(e).__name__ == "CniError", e
        fast = "error"
    assert fast == reference(text)
