#!/usr/bin/env python3
"""One DHCP acquire (and release) against a real Kea on a LAN netns, timed. A script, not a test:
it prints, asserts nothing.

  sudo .venv/bin/python tests/bench/dhcp_acquire.py [--iterations 20] [--family 4|6]

A "host" netns with a veth master, the LAN netns on its peer with Kea (tests/lan.py), one pod netns
with a macvlan child; each iteration acquires a new lease (a new client id) on it, then releases
it. Reported: the median and spread of acquire (DISCOVER..ACK / Solicit..Reply, sockets opened and
closed included) and of release; everything is removed at the end.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cni.net.netns import open_netns  # noqa: E402
from ipam.dhcp import client  # noqa: E402
from tests import lan as lanmod  # noqa: E402
from tests import netns as nsutil  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    args = parser.parse_args()
    host, lan_ns, pod = nsutil.unique("dwbh"), nsutil.unique("dwbl"), nsutil.unique("dwbp")
    server = fd = None
    workdir = tempfile.mkdtemp(prefix="dw-bench-")
    try:
        for ns in (host, lan_ns, pod):
            nsutil.add_netns(ns)
        master, peer = nsutil.add_parent(host)
        nsutil.sh("ip", "link", "set", peer, "netns", lan_ns, ns=host)
        nsutil.sh("sysctl", "-qw", f"net.ipv6.conf.{peer}.accept_dad=0", ns=lan_ns)
        nsutil.sh("ip", "addr", "add", f"{lanmod.SERVER4}/24", "dev", peer, ns=lan_ns)
        nsutil.sh("ip", "addr", "add", f"{lanmod.SERVER6}/64", "dev", peer, "nodad", ns=lan_ns)
        nsutil.sh("ip", "link", "set", peer, "up", ns=lan_ns)
        lanmod.wait_for(lambda: lanmod.usable_link_local(lan_ns, peer))
        lan = lanmod.Lan(lan_ns, peer, host, master)
        server = (lanmod.Kea4 if args.family == 4 else lanmod.Kea6)(lan, workdir).start()
        ifname = "eth0"
        nsutil.sh("ip", "link", "add", ifname, "link", master, "netns", pod, "type", "macvlan", "mode", "bridge",
                  ns=host)
        nsutil.sh("ip", "link", "set", ifname, "up", ns=pod)
        mac = nsutil.link_json(pod, ifname)["address"]
        fd = open_netns(nsutil.netns_path(pod))
        if args.family == 6:   # the link-local address's DAD, once, outside the figures
            client.acquire(fd, ifname, 6, client.Identity(mac, b"warm-up", 1, None), client.Options(), 30)
        acquires, releases = [], []
        for i in range(args.iterations):
            identity = client.Identity(mac, b"bench-%d" % i, 1, f"bench-{i}")
            start = time.perf_counter()
            lease = client.acquire(fd, ifname, args.family, identity, client.Options(), 30)
            acquires.append(time.perf_counter() - start)
            nsutil.sh("ip", "addr", "add", f"{lease.address}/{lease.prefixlen}", "dev", ifname,
                      *(["nodad"] if args.family == 6 else []), ns=pod)
            start = time.perf_counter()
            client.release(fd, lease)
            releases.append(time.perf_counter() - start)
            nsutil.sh("ip", "addr", "del", f"{lease.address}/{lease.prefixlen}", "dev", ifname, ns=pod)
        for name, values in (("acquire", acquires), ("release", releases)):
            ms = sorted(v * 1000 for v in values)
            print(f"DHCPv{args.family} {name}: median {statistics.median(ms):.1f} ms, min {ms[0]:.1f}, "
                  f"max {ms[-1]:.1f} ({len(ms)} runs, Kea {server.name})")
    finally:
        if fd is not None:
            os.close(fd)
        if server is not None:
            server.kill()
        for ns in (pod, lan_ns, host):
            nsutil.del_netns(ns)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
