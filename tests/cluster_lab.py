"""A Kubernetes node around an underlay pod, in network namespaces (issue 20's tests).

    far host ─(10.99.0.0/24)─ router ─(192.168.50.0/24, the LAN)─ node's master ─ pods' macvlan/ipvlan
                                 └─(172.16.0.0/24, the uplink)─ node (InternalIP 172.16.0.2, default route)
    node: cni0-like bridge (Debian's Go `bridge` plugin + host-local) with a backend pod serving TCP 8080,
          kube-proxy's nftables-mode rules for a ClusterIP service 10.96.0.10:80 (and fd00:96::10)

The node has an address on the master (192.168.50.2) and on its uplink; the router filters
reverse paths strictly, so a reply that leaves the wrong way is dropped, as a real one would.
Both families everywhere. Every name carries the prefix `ca`; everything is removed at the end.
"""

import ipaddress
import json
import subprocess
import time

from tests import netns as nsutil
from tests.plugins import run_plugin, run_reference

LAN4, LAN6 = "192.168.50", "fd00:50:"
SERVICE4, SERVICE6 = "10.96.0.10", "fd00:96::10"
SERVICE_CIDRS = ["10.96.0.0/16", "fd00:96::/112"]
CLUSTER4, CLUSTER6 = "10.244.0.0/24", "fd00:244::/64"
FAR4, FAR6 = "10.99.0.20", "fd00:99::20"
NODE_UPLINK4, NODE_UPLINK6 = "172.16.0.2", "fd00:16::2"
NODE_LAN4, NODE_LAN6 = "192.168.50.2", "fd00:50::2"
PORT = 8080

# a TCP server on both families: "backend <peer address>" to each connection
SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(("%s %s\\n" % (sys.argv[2], peer[0].replace("::ffff:", ""))).encode())
    c.close()
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(c.recv(200).decode().strip())
"""

# kube-proxy's nftables mode (pkg/proxy/nftables), one service with one endpoint (an IPv6
# endpoint's ':' become '.' in its chain name: nft 1.0.6 takes no quoted chain names): the
# prerouting and output hooks jump to `services`, a verdict map sends the ClusterIP:port to the
# service chain, which marks traffic from outside the cluster CIDR for masquerade and hands it to
# the endpoint chain's DNAT; postrouting masquerades what is marked.
KUBE_PROXY = """
table {family} kube-proxy {{
  map service-ips {{
    type {addr_type} . inet_proto . inet_service : verdict
    elements = {{ {service} . tcp . 80 : goto service-CA2WEB-default/web/tcp/http }}
  }}
  chain mark-for-masquerade {{
    meta mark set meta mark or 0x4000
  }}
  chain masquerading {{
    meta mark & 0x4000 == 0 return
    meta mark set meta mark xor 0x4000
    masquerade fully-random
  }}
  chain services {{
    {proto} daddr . meta l4proto . th dport vmap @service-ips
  }}
  chain nat-prerouting {{
    type nat hook prerouting priority -100; policy accept;
    jump services
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain nat-postrouting {{
    type nat hook postrouting priority 100; policy accept;
    jump masquerading
  }}
  chain service-CA2WEB-default/web/tcp/http {{
    {proto} daddr {service} tcp dport 80 {proto} saddr != {cluster} jump mark-for-masquerade
    goto endpoint-CA2WEB-default/web/tcp/http__{backend_name}/{port}
  }}
  chain endpoint-CA2WEB-default/web/tcp/http__{backend_name}/{port} {{
    {proto} saddr {backend} jump mark-for-masquerade
    meta l4proto tcp dnat to {backend_dnat}
  }}
}}
"""


def sh(*argv, ns=None):
    return nsutil.sh(*argv, ns=ns)


def sysctl(ns, key, value=None):
    """Write (or, without value, read) a sysctl of netns `ns` (no procps: a bare Debian has none)."""
    path = "/proc/sys/" + key.replace(".", "/")
    if value is None:
        return sh("cat", path, ns=ns).stdout.strip()
    sh("sh", "-c", f"echo {value} > {path}", ns=ns)


def veth(ns_a, name_a, ns_b, name_b):
    sh("ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b, ns=ns_a)
    sh("ip", "link", "set", name_a, "up", ns=ns_a)
    sh("ip", "link", "set", name_b, "up", ns=ns_b)


def address(ns, link, *cidrs):
    for cidr in cidrs:
        sh("ip", "addr", "add", cidr, "dev", link, *(["nodad"] if ":" in cidr else []), ns=ns)


def until(condition, what, within=30):
    """Poll `condition` until it holds; the deadline only ends a wait for what never comes."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


class Lab:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.namespaces = []
        self.servers = []
        self.node = self.netns("can")
        self.lan = self.netns("cal")      # the router
        self.far = self.netns("caf")      # a host in another subnet, behind the router
        self.master = nsutil.unique("cam")
        self.bridge = nsutil.unique("cab")
        self.backend = None
        self.cluster_pods = []

    def netns(self, prefix):
        name = nsutil.unique(prefix)
        self.namespaces.append(name)
        nsutil.add_netns(name)
        return name

    def build(self, node_rp_filter=1, forwarding=True, cluster=True):
        router, node, far = self.lan, self.node, self.far
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1),
                           ("net.ipv4.conf.all.rp_filter", 1), ("net.ipv4.conf.default.rp_filter", 1)):
            sysctl(router, key, value)
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
            sysctl(node, key, node_rp_filter)
        sysctl(node, "net.ipv4.ip_forward", 1 if forwarding else 0)
        sysctl(node, "net.ipv6.conf.all.forwarding", 1 if forwarding else 0)
        veth(node, self.master, router, "lan")
        address(node, self.master, f"{NODE_LAN4}/24", f"{NODE_LAN6}/64")
        address(router, "lan", f"{LAN4}.1/24", f"{LAN6}:1/64")
        veth(node, "uplink", router, "uplink")
        address(node, "uplink", f"{NODE_UPLINK4}/24", f"{NODE_UPLINK6}/64")
        address(router, "uplink", "172.16.0.1/24", "fd00:16::1/64")
        sh("ip", "route", "add", "default", "via", "172.16.0.1", ns=node)
        sh("ip", "-6", "route", "add", "default", "via", "fd00:16::1", ns=node)
        veth(router, "far", far, "eth0")
        address(router, "far", "10.99.0.1/24", "fd00:99::1/64")
        address(far, "eth0", f"{FAR4}/24", f"{FAR6}/64")
        sh("ip", "route", "add", "default", "via", "10.99.0.1", ns=far)
        sh("ip", "-6", "route", "add", "default", "via", "fd00:99::1", ns=far)
        self.serve(far, "far")
        if cluster:
            self.build_cluster()
        return self

    def build_cluster(self):
        """The primary pod network as the Go bridge plugin makes it, a backend pod, the service rules."""
        self.backend = self.netns("cak")
        conf = self.bridge_conf()
        added = run_reference("bridge", "ADD", conf, in_netns=self.node, container_id="ca-backend",
                              netns=nsutil.netns_path(self.backend), ifname="eth0")
        assert added.ok, added
        ips = {ipaddress.ip_interface(ip["address"]).version: str(ipaddress.ip_interface(ip["address"]).ip)
               for ip in added.json["ips"]}
        self.backend_ips = ips
        until(lambda: not self.tentative(self.backend), "the backend's IPv6 address is usable")
        self.serve(self.backend, "backend")
        rules = KUBE_PROXY.format(family="ip", addr_type="ipv4_addr", proto="ip", service=SERVICE4,
                                  cluster="10.244.0.0/16", backend=ips[4], backend_name=ips[4], port=PORT,
                                  backend_dnat=f"{ips[4]}:{PORT}")
        rules += KUBE_PROXY.format(family="ip6", addr_type="ipv6_addr", proto="ip6", service=SERVICE6,
                                   cluster="fd00:244::/56", backend=ips[6], port=PORT,
                                   backend_name=ips[6].replace(":", "."),
                                   backend_dnat=f"[{ips[6]}]:{PORT}")
        proc = subprocess.run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], input=rules, text=True,
                              capture_output=True)
        assert proc.returncode == 0, proc.stderr

    def cluster_pod(self, pod, cid):
        """eth0 of a pod on the cluster's primary network (the Go bridge), with its default routes."""
        added = run_reference("bridge", "ADD", self.bridge_conf(), in_netns=self.node, container_id=cid,
                              netns=nsutil.netns_path(pod), ifname="eth0")
        assert added.ok, added
        self.cluster_pods.append((pod, cid))
        until(lambda: not self.tentative(pod), "the pod's IPv6 address on eth0 is usable")
        return added.json

    def bridge_conf(self):
        return {"cniVersion": "0.4.0", "name": "ca-cluster", "type": "bridge", "bridge": self.bridge,
                "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": str(self.tmp / "cluster-ipam"),
                         "ranges": [[{"subnet": CLUSTER4}], [{"subnet": CLUSTER6}]],
                         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}

    def tentative(self, ns):
        return sh("ip", "-6", "addr", "show", "tentative", ns=ns).stdout.strip() != ""

    def serve(self, ns, label):
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", SERVER, str(PORT), label],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def close(self):
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for pod, cid in self.cluster_pods:
            run_reference("bridge", "DEL", self.bridge_conf(), in_netns=self.node, container_id=cid,
                          netns=nsutil.netns_path(pod), ifname="eth0")
        if self.backend:
            run_reference("bridge", "DEL", self.bridge_conf(), in_netns=self.node, container_id="ca-backend",
                          netns=nsutil.netns_path(self.backend), ifname="eth0")
        for name in self.namespaces:
            nsutil.del_netns(name)


def route_dev(ns, destination, source):
    """The interface a packet from `source` to `destination` leaves the netns by."""
    family = "-6" if ":" in destination else "-4"
    return json.loads(sh("ip", family, "-j", "route", "get", destination, "from", source, ns=ns).stdout)[0]["dev"]


def connect(ns, address, port=80, timeout=10):
    """The first line a TCP server at address:port answers the pod (ns) with, or None."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", CLIENT, address, str(port), str(timeout)],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


# -- attaching pods ---------------------------------------------------------------

def macvlan_conf(lab, data_dir, state_dir, families=(4, 6), name="ca-lan", plugin="macvlan", default=True,
                 reference=False):
    """The LAN network on our macvlan (or `plugin`, Debian's Go one when `reference`); `default`:
    with default routes via the router, as a primary network has."""
    ranges, routes = [], []
    if 4 in families:
        ranges.append([{"subnet": f"{LAN4}.0/24", "rangeStart": f"{LAN4}.10", "rangeEnd": f"{LAN4}.200",
                        "gateway": f"{LAN4}.1"}])
        routes.append({"dst": "0.0.0.0/0"})
    if 6 in families:
        ranges.append([{"subnet": f"{LAN6}:/64", "rangeStart": f"{LAN6}:10", "rangeEnd": f"{LAN6}:200",
                        "gateway": f"{LAN6}:1"}])
        routes.append({"dst": "::/0"})
    return {"cniVersion": "1.0.0", "name": name, "type": plugin, "master": lab.master,
            **({"stateDir": state_dir} if not reference else {}),
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": ranges,
                     **({"routes": routes} if default else {})}}


def access_conf(name="ca-lan", **settings):
    return {"cniVersion": "1.0.0", "name": name, "type": "cluster-access", **settings}


def run_chain(plugins, command, lab, pod, cid, ifname="eth0", prev=None, reference=()):
    """Run a chain the way libcni does: ADD in order, each given the result so far; DEL and CHECK
    in reverse (DEL) or in order (CHECK) with the final result. Returns (last outcome, result)."""
    order = list(reversed(plugins)) if command == "DEL" else list(plugins)
    result, out = prev, None
    for conf in order:
        if result is not None:
            conf = dict(conf, prevResult=result)
        runner = run_reference if conf["type"] in reference else run_plugin
        out = runner(conf["type"], command, conf, in_netns=lab.node, container_id=cid,
                     netns=nsutil.netns_path(pod) if pod else "", ifname=ifname)
        if not out.ok:
            return out, result
        if command == "ADD":
            result = out.json
    return out, result


def pod_addresses(result, version):
    return [str(ipaddress.ip_interface(ip["address"]).ip) for ip in result["ips"]
            if ipaddress.ip_interface(ip["address"]).version == version]


def routes(ns, *args):
    out = []
    for family in ("-4", "-6"):
        out += json.loads(sh("ip", family, "-j", "route", "show", *args, ns=ns).stdout or "[]")
    return out


def rules(ns):
    out = []
    for family in ("-4", "-6"):
        out += json.loads(sh("ip", family, "-j", "rule", "show", ns=ns).stdout or "[]")
    return out


def snapshot(ns):
    """What a DEL must leave as it was: links, routes of every table, rules, permanent neighbours.
    The local table is left out: the kernel fills it as link-local addresses finish their DAD."""
    return {"links": sorted(nsutil.links(ns)),
            "routes": sorted(json.dumps(r, sort_keys=True) for r in routes(ns, "table", "all")
                             if r.get("table") != "local"),
            "rules": sorted(json.dumps(r, sort_keys=True) for r in rules(ns)),
            "neigh": sorted(sh("ip", "neigh", "show", "nud", "permanent", ns=ns).stdout.splitlines())}
