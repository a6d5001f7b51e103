"""Network namespaces and links for tests: unique names, always removed.

Tests never touch the machine's own interfaces: each builds a "host" netns with
veth parents and puts pods in further namespaces.
"""

import itertools
import os
import subprocess

_counter = itertools.count()
PREFIX = os.environ.get("UNDERLAY_TEST_PREFIX", "")  # one engineer's names apart from another's


def unique(prefix):
    """A short unique name (fits IFNAMSIZ) for this process: prefix + pid + counter."""
    return f"{PREFIX}{prefix}{os.getpid() % 100000:x}{next(_counter):x}"[-15:]


def sh(*argv, ns=None, check=True):
    if ns:
        argv = ("ip", "netns", "exec", ns) + argv
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def add_netns(name):
    sh("ip", "netns", "add", name)
    sh("ip", "link", "set", "lo", "up", ns=name)
    return name


def add_parent(host, name=None, peer=None):
    """A veth pair in netns `host`, both ends up: `name` (default m...) is a parent for the
    plugins, `peer` (default p...) stays beside it. Returns (name, peer)."""
    name, peer = name or unique("m"), peer or unique("p")
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer, ns=host)
    for link in (name, peer):
        sh("ip", "link", "set", link, "up", ns=host)
    return name, peer


def del_netns(name):
    sh("ip", "netns", "del", name, check=False)


def netns_path(name):
    return f"/run/netns/{name}"


def links(ns):
    """Link names in a netns."""
    out = sh("ip", "-o", "link", "show", ns=ns).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


def link_json(ns, name):
    import json
    out = sh("ip", "-d", "-j", "link", "show", "dev", name, ns=ns).stdout
    return json.loads(out)[0]


def addrs(ns, name):
    import json
    out = sh("ip", "-j", "addr", "show", "dev", name, ns=ns).stdout
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"]
                  if a.get("scope") == "global")


def ping(ns, address, count=1, timeout=2):
    argv = ["ping", "-c", str(count), "-W", str(timeout)]
    if ":" in address:
        argv.append("-6")
    return sh(*argv, address, ns=ns, check=False).returncode == 0


def link_stats(ns, name):
    import json
    out = sh("ip", "-s", "-j", "link", "show", "dev", name, ns=ns).stdout
    return json.loads(out)[0]["stats64"]
