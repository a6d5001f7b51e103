"""Hypothesis strategies for what a runtime, or a cluster user writing a NAD, can hand a plugin.

Inputs start from configs that are valid or nearly so (so ADD often succeeds and
the allocation, rollback and DEL paths run), then get mutated: values replaced
by junk of every JSON type (huge and non-finite numbers, unicode, NUL, deep
nesting), keys dropped or added. The environment and CNI_ARGS are drawn the
same way. Paths the plugins write to (dataDir, stateDir, logFile) always point
into the sandbox, or are relative, so a case that escapes is seen, not suffered.
"""

import ipaddress
import json

from hypothesis import strategies as st

from cni.contract import SUPPORTED_VERSIONS

# -- scalars ------------------------------------------------------------------------

NASTY_TEXT = ["", " ", "\x00", "a\x00b", "..", "../..", "/", "//", "../../../../etc/passwd", "\n", "a\nb",
              "\u202e", "\U0001f600", "é", "\ud800", "\ufeff", "x" * 300, "x" * 5000, "%s%n", "${HOME}",
              "null", "true", "1e999", "-0", "0x10", "10.0.0.1", "::1", "10.0.0.0/8", "::/0", "0.0.0.0/0",
              "eth0", "lo", "host-local", "macvlan", "..\\..", "C:\\", "\t", "=", ";", "a=b;c"]

texts = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=40),
                  st.text(alphabet=st.characters(codec="utf-8"), max_size=20))
numbers = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 1, 15, 16, 255, 256, 4094, 4095, 65535, 65536, 2**31 - 1, 2**31, 2**32,
                     2**63, 2**64, 10**100, -10**100]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1.0, 1500.0, 1e308, -0.0, 3600.0000001]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(texts, inner, max_size=4)),
                    max_leaves=10)


def chance(draw, p):
    """True with probability about p (hypothesis favours the ends of an integer range: use the middle)."""
    return 250 <= draw(st.integers(0, 1000)) < 250 + round(p * 1000)


@st.composite
def mostly(draw, valid, hostile, p=0.15):
    """Usually a value of `valid`; with probability p one of `hostile`."""
    return draw(hostile) if chance(draw, p) else draw(valid)


def deep(depth):
    """A list nested `depth` levels deep."""
    value = []
    for _ in range(depth):
        value = [value]
    return value


# -- addresses related to a subnet --------------------------------------------------

SUBNETS_V4 = ["10.1.0.0/24", "10.2.0.0/30", "10.3.0.0/28", "192.168.50.0/24", "10.0.0.0/8", "10.4.0.0/16"]
SUBNETS_V6 = ["fd00::/64", "fd01::/126", "fd02::/120", "2001:db8::/32", "fd03::/48"]


@st.composite
def ip_near(draw, subnet):
    """An address in, at the edges of, or just outside `subnet`, as text."""
    net = ipaddress.ip_network(subnet)
    size = net.num_addresses
    offset = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 5, size // 2, size - 2, size - 1, size, size + 1, -1]),
                            st.integers(min_value=0, max_value=min(size, 2**20))))
    value = int(net.network_address) + offset
    top = 2**32 - 1 if net.version == 4 else 2**128 - 1
    value = min(max(value, 0), top)
    return str(ipaddress.ip_address(value) if net.version == 6 else ipaddress.IPv4Address(value))


@st.composite
def exclusion(draw, subnet):
    net = ipaddress.ip_network(subnet)
    kind = draw(st.sampled_from(["ip", "cidr", "range", "junk"]))
    if kind == "ip":
        return draw(ip_near(subnet))
    if kind == "cidr":
        plen = draw(st.integers(min_value=max(net.prefixlen - 2, 0), max_value=net.max_prefixlen))
        return f"{draw(ip_near(subnet))}/{plen}"
    if kind == "range":
        return f"{draw(ip_near(subnet))}-{draw(ip_near(subnet))}"
    return draw(texts)


@st.composite
def a_range(draw, subnet):
    r = {"subnet": subnet}
    for key in ("rangeStart", "rangeEnd", "gateway"):
        if chance(draw, 1 / 4):
            r[key] = draw(ip_near(subnet))
    if chance(draw, 1 / 4):
        r["exclude"] = draw(st.lists(exclusion(subnet), max_size=4))
    return r


@st.composite
def range_sets(draw):
    sets = []
    for _ in range(draw(st.integers(1, 3))):
        family = draw(st.sampled_from([SUBNETS_V4, SUBNETS_V6]))
        subnets = draw(st.lists(st.sampled_from(family), min_size=1, max_size=2, unique=True))
        sets.append([draw(a_range(s)) for s in subnets])
    return sets


def any_ip():
    return st.one_of(ip_near(SUBNETS_V4[0]), ip_near(SUBNETS_V6[0]), ip_near(SUBNETS_V4[1]), texts)


@st.composite
def routes(draw):
    out = []
    for _ in range(draw(st.integers(0, 3))):
        route = {"dst": draw(st.sampled_from(["0.0.0.0/0", "::/0", "192.168.0.0/16", "10.9.0.0/24", "fd09::/64"]))}
        if draw(st.booleans()):
            route["gw"] = draw(any_ip())
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            if chance(draw, 1 / 6):
                route[key] = draw(st.integers(0, 300))
        out.append(route)
    return out


# -- whole configs ----------------------------------------------------------------------

VERSIONS = mostly(st.sampled_from(SUPPORTED_VERSIONS),
                  st.one_of(st.sampled_from(["0.5.0", "2.0.0", "1.1", "", "1.0.0 ", "01.0.0", "1.0.0\n"]), scalars))
NAMES = mostly(st.sampled_from(["net1", "net1", "net2", "a.b-c_d", "N" * 64]),
               st.one_of(st.sampled_from(["n" * 255, "n" * 256, "../x", ".hidden", "a/b", "-x"]), texts))


@st.composite
def host_local_ipam(draw, sandbox):
    ipam = {"type": "host-local", "dataDir": draw(st.sampled_from([sandbox.data, sandbox.data, sandbox.data,
                                                                   sandbox.root + "/data2/x"]))}
    if chance(draw, 1 / 6):
        subnet = draw(st.sampled_from(SUBNETS_V4))
        ipam.update({"subnet": subnet, **{k: v for k, v in draw(a_range(subnet)).items() if k != "exclude"}})
    if draw(st.integers(0, 6)) or "subnet" not in ipam:
        ipam["ranges"] = draw(range_sets())
    if chance(draw, 1 / 4):
        ipam["exclude"] = draw(st.lists(st.one_of(exclusion(SUBNETS_V4[0]), exclusion(SUBNETS_V6[0])), max_size=4))
    if chance(draw, 1 / 4):
        ipam["auxAddresses"] = draw(st.dictionaries(texts, any_ip(), max_size=3))
    if chance(draw, 1 / 3):
        ipam["routes"] = draw(routes())
    if chance(draw, 1 / 7):
        ipam["resolvConf"] = draw(st.sampled_from(["/etc/resolv.conf", "/nonexistent", "/dev/null", "/dev/zero",
                                                   "/proc/self/status", sandbox.fifo, sandbox.root, "relative"]))
    if chance(draw, 1 / 7):
        ipam["lockTimeout"] = draw(st.one_of(numbers, st.sampled_from([0.5, 1, 3600])))
    return ipam


@st.composite
def prev_result(draw):
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    ips = draw(st.lists(st.one_of(ip_near(SUBNETS_V4[0]), ip_near(SUBNETS_V6[0])), max_size=3))
    if version in ("0.1.0", "0.2.0"):
        result = {"cniVersion": version}
        for ip in ips:
            result["ip6" if ":" in ip else "ip4"] = {"ip": f"{ip}/24", "gateway": "10.1.0.1"}
        return result
    result = {"cniVersion": version,
              "interfaces": [{"name": draw(st.sampled_from(["eth0", "net1", "m1"])), "mac": "02:00:00:00:00:01",
                              "sandbox": draw(st.sampled_from(["/run/netns/x", ""]))}],
              "ips": [{"address": f"{ip}/{64 if ':' in ip else 24}", "interface": 0} for ip in ips],
              "routes": draw(routes()), "dns": {}}
    if version < "1.0.0":
        for ip in result["ips"]:
            ip["version"] = "6" if ":" in ip["address"] else "4"
    return result


DHCP_OPTIONS = ["host-name", "routers", "classless-static-routes", "subnet-mask", "dhcp-client-identifier",
                "domain-name-servers", 12, 61, 1, 254, 0, 255, -1, 2**64, "12", "HOST-NAME", "nonexistent", ""]


@st.composite
def dhcp_ipam(draw):
    """The reference dhcp IPAM's section and ours (families, prefixLength6)."""
    ipam = {"type": "dhcp"}
    for key, values in (("timeout", [0.5, 10, "10s", "1m30s", "500ms", "0s", "1h", "10", "-1s", "s", 301, 0]),
                        ("broadcast", [True, False]),
                        ("families", [["ipv4"], ["ipv6"], ["ipv4", "ipv6"], [], ["ipv5"], ["ipv4", "ipv4"]]),
                        ("prefixLength6", [64, 128, 0, 129, -1, 56]),
                        ("daemonSocketPath", ["/run/cni/dhcp.sock", "", "../x"])):
        if chance(draw, 1 / 4):
            ipam[key] = draw(mostly(st.sampled_from(values), scalars, p=0.3))
    if chance(draw, 1 / 4):
        ipam["request"] = [{"option": draw(st.sampled_from(DHCP_OPTIONS)),
                            **({"skipDefault": draw(scalars)} if chance(draw, 1 / 4) else {})}
                           for _ in range(draw(st.integers(0, 3)))]
    if chance(draw, 1 / 4):
        provide = []
        for _ in range(draw(st.integers(0, 3))):
            entry = {"option": draw(st.sampled_from(DHCP_OPTIONS))}
            for key, values in (("value", ["pod-1", "a" * 254, "-x", "", "é", "a.b-c"]),
                                ("fromArg", ["K8S_POD_NAME", "K8S_POD_NAMESPACE", "Unknown", ""])):
                if draw(st.booleans()):
                    entry[key] = draw(mostly(st.sampled_from(values), scalars, p=0.3))
            provide.append(entry)
        ipam["provide"] = provide
    return ipam


UNREACHABLE_ETCD = "http://127.0.0.1:1"   # nothing listens on port 1: refused at once


@st.composite
def etcd_section(draw, sandbox):
    endpoints = [sandbox.etcd] if sandbox.etcd else [UNREACHABLE_ETCD]
    conf = {"endpoints": draw(mostly(st.just(endpoints), st.one_of(
        st.sampled_from([[], [UNREACHABLE_ETCD], ["127.0.0.1:1"], ["https://127.0.0.1:1"], ["ftp://x"],
                         ["http://"], ["http://[::1"], ["http://127.0.0.1:99999"], endpoints * 2,
                         ["http://" + "a" * 64], ["http://a..b:2379"], ["http://" + "a." * 127 + "a"]]),
        st.lists(texts, max_size=2)), p=0.2))}
    for key, values in (("prefix", ["/underlay/ipam", "/fz", "/", "fz", "", "/a/../b"]),
                        ("dialTimeout", [0.5, 2, 0, -1, 10**9]),
                        ("requestTimeout", [1, 5, 0, 1e308]),
                        ("certFile", ["/nonexistent", "", sandbox.root]),
                        ("keyFile", ["/nonexistent", ""]),
                        ("trustedCAFile", ["/nonexistent", "/dev/null"])):
        if chance(draw, 1 / 8):
            conf[key] = draw(mostly(st.sampled_from(values), scalars, p=0.3))
    return conf


@st.composite
def cluster_ipam(draw, sandbox):
    """host-local's section, plus etcd, node, blockSize, sticky...; sometimes whereabouts' keys instead."""
    ipam = draw(host_local_ipam(sandbox))
    ipam["type"] = "cluster-ipam"
    ipam["etcd"] = draw(etcd_section(sandbox))
    for key, values in (("node", ["fz-node", "n" * 253, "n" * 254, "a/b", "a b", ""]),
                        ("blockSize", [24, 26, 28, 30, 8, 31, 7, {"ipv4": 28, "ipv6": 120}, {"ipv6": 200}, {}]),
                        ("sticky", [True, False]),
                        ("stickySeconds", [1, 300, 0, -1, 366 * 86400 + 1, 0.5]),
                        ("reuseCooldown", [0, 1, "30s", -1, 1e308]),
                        ("conflictCooldown", [0, 60, "1m", -5]),
                        ("network_name", ["blue", "", "a/b", "x" * 254, "\n"]),
                        ("dns", [{"nameservers": ["10.1.0.53"]}, {"nameservers": "10.1.0.53"}, {"x": 1}])):
        if chance(draw, 1 / 8):
            ipam[key] = draw(mostly(st.sampled_from(values), scalars, p=0.3))
    if chance(draw, 1 / 5):   # a whereabouts config, taken as it is
        for key in ("ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "exclude"):
            ipam.pop(key, None)
        subnet = draw(st.sampled_from(SUBNETS_V4 + SUBNETS_V6))
        ipam["range"] = draw(st.one_of(st.just(subnet), st.builds(
            lambda a, b, p: f"{a}-{b}/{p}", ip_near(subnet), ip_near(subnet), st.integers(0, 130)),
            st.sampled_from(["10.1.0.1/16", "10.1.0.0", "/24", "-/24", "10.1.0.1-/24"])))
        for key in ("range_start", "range_end", "gateway"):
            if chance(draw, 1 / 4):
                ipam[key] = draw(ip_near(subnet))
        if chance(draw, 1 / 4):
            ipam["exclude"] = draw(st.lists(exclusion(subnet), max_size=3))
        if chance(draw, 1 / 4):
            ipam["ipRanges"] = [{"range": draw(st.sampled_from(SUBNETS_V4 + SUBNETS_V6 + ["junk"])),
                                 **({"exclude": draw(st.lists(exclusion(SUBNETS_V6[0]), max_size=2))}
                                    if chance(draw, 1 / 3) else {})} for _ in range(draw(st.integers(0, 2)))]
    if chance(draw, 1 / 10):   # whereabouts' etcd keys
        ipam.pop("etcd")
        ipam["etcd_host"] = draw(mostly(st.sampled_from([UNREACHABLE_ETCD, "127.0.0.1:1", "::1", "a,b", "", "a..b",
                                                         "x" * 64 + ":1"]),
                                        scalars, p=0.3))
        for key in ("etcd_cert_file", "etcd_username", "etcd_password", "kubernetes", "leader_lease_duration"):
            if chance(draw, 1 / 6):
                ipam[key] = draw(scalars)
    return ipam


def any_ipam(draw, sandbox):
    """The ipam section of a main plugin: host-local (most often), our other IPAMs, empty, none, junk."""
    kind = draw(st.sampled_from(["host-local"] * 3 + ["cluster-ipam", "dhcp", "empty", "none", "other"]))
    if kind == "host-local":
        return draw(host_local_ipam(sandbox))
    if kind == "cluster-ipam":
        return draw(cluster_ipam(sandbox))
    if kind == "dhcp":
        return draw(dhcp_ipam())
    if kind == "empty":
        return {}
    if kind == "other":
        return {"type": draw(st.one_of(st.sampled_from(["static", "../host-local", "."]), texts))}
    return None


@st.composite
def hostile_prev_result(draw):
    """A prevResult of a wrong shape: junk, wrong types inside, references out of range."""
    base = draw(prev_result())
    kind = draw(st.sampled_from(["junk", "interfaces", "ips", "index", "address", "version", "routes"]))
    if kind == "junk":
        return draw(junk)
    if kind == "interfaces":
        base["interfaces"] = draw(st.one_of(junk, st.lists(junk, max_size=2)))
    elif kind == "ips":
        base["ips"] = draw(st.one_of(junk, st.lists(junk, min_size=1, max_size=2)))
    elif kind == "index":
        for ip in base.get("ips", []):
            ip["interface"] = draw(st.one_of(st.sampled_from([-1, 1, 5, True, 2**64, "0", None, 0.0]), scalars))
    elif kind == "address":
        base["ips"] = [{"address": draw(st.one_of(any_ip(), st.sampled_from(["10.1.0.5", "10.1.0.5/33", "/24"]))),
                        "interface": 0, "gateway": draw(any_ip())}]
    elif kind == "version":
        base["cniVersion"] = draw(st.one_of(st.sampled_from(["0.1.0", "1.1.0", "9.9.9", ""]), scalars))
    else:
        base["routes"] = draw(st.one_of(junk, st.lists(st.fixed_dictionaries({"dst": any_ip()}), max_size=2)))
    return base


@st.composite
def chained_prev_result(draw, sandbox, version):
    """What macvlan answered for the pod's eth0 (Sandbox pod_eth0: 10.1.0.5/24, fd00::5/64), in the
    config's version as a runtime passes it (mostly)."""
    if version not in SUPPORTED_VERSIONS or chance(draw, 1 / 8):
        version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    ips = draw(st.lists(st.sampled_from([("10.1.0.5/24", "10.1.0.1"), ("fd00::5/64", "fd00::1"),
                                         ("10.1.0.5/24", None)]), min_size=1, max_size=2, unique=True))
    if version < "0.3.0":
        result = {"cniVersion": version}
        for address, gw in ips:
            result["ip6" if ":" in address else "ip4"] = {"ip": address, **({"gateway": gw} if gw else {})}
        return result
    result = {"cniVersion": version,
              "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": sandbox.pod}],
              "ips": [{"address": a, "interface": 0, **({"gateway": gw} if gw else {})} for a, gw in ips]}
    if version < "1.0.0":
        for ip in result["ips"]:
            ip["version"] = "6" if ":" in ip["address"] else "4"
    return result


@st.composite
def cluster_access_config(draw, config, sandbox):
    """cluster-access's own keys: it follows macvlan or ipvlan in a conflist, prevResult in hand."""
    def cidrs(valid):
        return mostly(st.lists(st.sampled_from(valid), min_size=1, max_size=2),
                      st.lists(st.one_of(st.sampled_from(["10.96.0.1/12", "10.96.0.0/33", "junk", "", "::/129"]),
                                         texts), min_size=1, max_size=2), p=0.1)
    for key, values, p in (("mode", st.sampled_from(["auto", "primary", "secondary"]), 1 / 2),
                           ("serviceCIDRs", cidrs(["10.96.0.0/12", "fd96::/108"]), 3 / 4),
                           ("clusterCIDRs", cidrs(["10.244.0.0/16", "0.0.0.0/0", "fd44::/64"]), 1 / 4),
                           ("routes", cidrs(["192.168.7.0/24", "fd07::/64", "10.1.0.0/24"]), 1 / 4),
                           ("nodeAddresses", st.lists(mostly(st.sampled_from(["10.1.0.9", "fd00::9", "192.0.2.1"]),
                                                             any_ip(), p=0.1), max_size=2), 1 / 4),
                           ("vethName", mostly(st.sampled_from(["veth0", "v" * 15, "eth1"]), st.sampled_from(
                               ["v" * 16, "lo", "eth0", "a/b", "..", "a:b", ""]), p=0.3), 1 / 4),
                           ("defaultRoute", st.booleans(), 1 / 4),
                           ("capabilities", st.sampled_from([{"mac": True}, {"ips": True}, {}]), 1 / 8)):
        if chance(draw, p):
            config[key] = draw(mostly(values, scalars, p=0.05))
    if not chance(draw, 1 / 7):
        config["prevResult"] = draw(mostly(chained_prev_result(sandbox, config.get("cniVersion")), st.one_of(
            prev_result(), hostile_prev_result()), p=0.3))


@st.composite
def plugin_config(draw, plugin, sandbox):
    config = {"cniVersion": draw(VERSIONS), "name": draw(NAMES), "type": plugin}
    if chance(draw, 1 / 9):
        del config["cniVersion"]
        config["cniVersions"] = draw(st.lists(VERSIONS, max_size=3))
    if plugin == "host-local":
        config["ipam"] = draw(host_local_ipam(sandbox))
    elif plugin == "cluster-ipam":
        config["ipam"] = draw(cluster_ipam(sandbox))
    elif plugin == "dhcp":
        config["ipam"] = draw(dhcp_ipam())
    elif plugin == "cluster-access":
        draw(cluster_access_config(config, sandbox))
    else:
        config["stateDir"] = sandbox.state
        ipam = any_ipam(draw, sandbox)
        if ipam is not None:
            config["ipam"] = ipam
        config["master"] = draw(mostly(st.sampled_from(sandbox.masters), st.one_of(st.sampled_from(
            ["eth0", "m1.50", "eth0.5000", "x" * 15, "../../../victim", "a/b", "..", "x" * 16]), texts), p=0.3))
        for key, values in (("mode", ["bridge", "private", "vepa", "passthru", "l2", "l3", "l3s", "BRIDGE"]),
                            ("flag", ["bridge", "private", "vepa", "x"]),
                            ("mtu", [0, 1280, 1500, 9000, 65536, -1]),
                            ("mac", ["02:00:00:00:00:01", "01:00:5e:00:00:01", "zz", "02:00:00:00:00:0"]),
                            ("vlan", [1, 50, 4094, 0, 4095]),
                            ("internal", [True, False]),
                            ("linkInContainer", [True, False]),
                            ("bcqueuelen", [0, 100, 2**32])):
            if chance(draw, 1 / 6):
                config[key] = draw(mostly(st.sampled_from(values), scalars, p=0.3))
        if chance(draw, 1 / 7):
            config["hostShim"] = {"name": draw(st.sampled_from(["ulshim0", "../../victim", "a/b", ".."])),
                                  "address": draw(any_ip()), "routes": draw(st.lists(st.sampled_from(
                                      ["10.1.0.0/24", "fd00::/64", "junk"]), max_size=2))}
        if chance(draw, 1 / 6):
            config["dns"] = {"nameservers": ["10.1.0.53"], "search": ["example"]}
    if plugin != "cluster-access" and chance(draw, 1 / 5):
        config["prevResult"] = draw(mostly(prev_result(), hostile_prev_result(), p=0.2))
    if chance(draw, 1 / 6):
        config["runtimeConfig"] = {"ips": draw(st.lists(any_ip(), max_size=2))}
        if draw(st.booleans()):
            config["runtimeConfig"]["ipRanges"] = draw(range_sets())
        if draw(st.booleans()):
            config["runtimeConfig"]["mac"] = draw(st.sampled_from(["02:00:00:00:00:09", "junk"]))
    if chance(draw, 1 / 7):
        config["args"] = {"cni": {"ips": draw(st.lists(any_ip(), max_size=2))}}
    if chance(draw, 1 / 6):
        config["cni.dev/valid-attachments"] = draw(st.one_of(
            st.none(), st.lists(st.fixed_dictionaries({"containerID": st.sampled_from(["c1", "bystander"]),
                                                       "ifname": st.sampled_from(["eth0", "net1"])}), max_size=3),
            junk))
    if chance(draw, 1 / 9):
        config["logFile"] = draw(st.sampled_from([sandbox.root + "/log/x.log", sandbox.root + "/x.log",
                                                  sandbox.fifo, sandbox.root, "/dev/null", "relative.log", ""]))
        if draw(st.booleans()):
            config["logLevel"] = draw(st.one_of(st.sampled_from(["error", "info", "debug"]), scalars))
    return config


def paths(value, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from paths(item, prefix + (i,))


PROTECTED = {"dataDir", "stateDir", "logFile"}  # writes land here: keep them in the sandbox


@st.composite
def mutated(draw, config, sandbox):
    """config with 0..3 mutations: a value replaced, a key dropped or added."""
    config = json.loads(json.dumps(config))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        where = draw(st.sampled_from(list(paths(config))))
        path, value = where
        if path and path[-1] in PROTECTED:
            odd = draw(junk)   # a wrong type, never a path of its own choosing
            if not isinstance(odd, str) and odd is not None:
                parent = config
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = odd
            continue
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "deep"]))
        if not path:
            if op == "add" and isinstance(config, dict):
                config[draw(texts)] = draw(junk)
            continue
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if op == "replace":
            parent[key] = draw(junk)
        elif op == "deep":
            parent[key] = deep(draw(st.sampled_from([50, 400])))
        elif op == "drop":
            del parent[key]
        elif op == "add" and isinstance(value, dict):
            value[draw(texts)] = draw(junk)
        elif op == "add" and isinstance(value, list):
            value.append(draw(junk))
    if chance(draw, 1 / 31):
        return draw(junk)  # not even an object
    # missing or null means the default (/var/lib/cni/...): keep those writes in the sandbox
    if isinstance(config, dict):
        if config.get("stateDir") in (None, ""):
            config["stateDir"] = sandbox.state
        if isinstance(config.get("ipam"), dict) and config["ipam"].get("dataDir") in (None, ""):
            config["ipam"]["dataDir"] = sandbox.data
    return config


def encode(draw, config):
    """The stdin bytes: JSON, sometimes broken or not UTF-8."""
    text = json.dumps(config, allow_nan=True)
    kind = draw(st.sampled_from(["json"] * 40 + ["cut", "bom", "utf16", "binary", "nul", "twice", "deep"]))
    if kind == "cut":
        return text[:draw(st.integers(0, len(text)))].encode()
    if kind == "bom":
        return b"\xff\xfe" + text.encode()
    if kind == "utf16":
        return text.encode("utf-16")
    if kind == "binary":
        return draw(st.binary(max_size=64))
    if kind == "nul":
        return (text + "\x00").encode()
    if kind == "twice":
        return text.encode() + b" " + text.encode()   # two documents
    if kind == "deep":
        depth = draw(st.sampled_from([1000, 100000]))   # deeper than any recursive decoder goes
        return b'{"cniVersion": "1.0.0", "name": "net1", "x": ' + b"[" * depth + b"]" * depth + b"}"
    return text.encode()


# -- environment ----------------------------------------------------------------------

ARG_KEYS = ["IgnoreUnknown", "IP", "MAC", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
            "K8S_POD_UID", "Unknown", "", "ip", "IP "]


@st.composite
def cni_args(draw):
    if chance(draw, 1 / 11):
        return draw(texts)
    pairs = []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.one_of(st.sampled_from(ARG_KEYS), texts))
        if key == "IP":
            value = ",".join(draw(st.lists(any_ip(), max_size=3)))
        elif key == "IgnoreUnknown":
            value = draw(st.sampled_from(["1", "true", "TRUE", "0", "false", "yes", ""]))
        elif key == "MAC":
            value = draw(st.sampled_from(["02:00:00:00:00:07", "junk", ""]))
        else:
            value = draw(texts)
        sep = draw(st.sampled_from(["=", "=", "=", "", "=="]))
        pairs.append(f"{key}{sep}{value}")
    return draw(st.sampled_from([";", ";", ";;", ","])).join(pairs)


COMMANDS = ["ADD"] * 6 + ["DEL"] * 3 + ["CHECK", "CHECK", "STATUS", "GC", "GC"]
ODD_COMMANDS = ["VERSION", "", "add", "FOO", "ADD ", "DEL\n"]
CONTAINER_IDS = ["c1", "c1", "c2", "bystander", "a" * 64, "ctr.1-x_y"]
ODD_CONTAINER_IDS = ["a" * 200, "a" * 239, "a" * 240, "a" * 300, "-a", ".a", "a/b", "../x", "a\x00b", "a b", "é"]
IFNAMES = ["eth0", "eth0", "net1", "e" * 15]
ODD_IFNAMES = ["e" * 16, "..", ".", "a/b", "a:b", "a b", "é" * 8, "é" * 7, "a\x00", "eth0\n"]


@st.composite
def environment(draw, sandbox, allow_nul=True):
    """A valid environment with 0-3 variables made hostile (or dropped)."""
    env = {
        "CNI_COMMAND": draw(st.sampled_from(COMMANDS)),
        "CNI_CONTAINERID": draw(st.sampled_from(CONTAINER_IDS)),
        "CNI_NETNS": sandbox.pod,
        "CNI_IFNAME": draw(st.sampled_from(IFNAMES)),
        "CNI_PATH": sandbox.bin,
        "CNI_ARGS": draw(st.sampled_from(["", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
                                          "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1"])),
    }
    hostile = {
        "CNI_COMMAND": st.one_of(st.sampled_from(ODD_COMMANDS), texts),
        "CNI_CONTAINERID": st.one_of(st.sampled_from(ODD_CONTAINER_IDS), texts),
        "CNI_NETNS": st.one_of(st.sampled_from(["", "/nonexistent/ns", sandbox.fifo, sandbox.root,
                                                "/proc/self/ns/net", "/dev/null", "/proc/1/ns/net", "relative"]),
                               texts),
        "CNI_IFNAME": st.one_of(st.sampled_from(ODD_IFNAMES), texts),
        "CNI_PATH": st.one_of(st.sampled_from(["", "/nonexistent", sandbox.bin + ":", ":::"]), texts),
        "CNI_ARGS": cni_args(),
    }
    for key in draw(st.lists(st.sampled_from(sorted(hostile)), max_size=3, unique=True)):
        if chance(draw, 1 / 6):
            del env[key]
        else:
            env[key] = draw(hostile[key])
    if not allow_nul:
        env = {k: v.replace("\x00", "") for k, v in env.items()}
    return env


class Case(tuple):
    """(env, stdin) whose repr stays readable when stdin is megabytes of brackets."""

    def __repr__(self):
        env, stdin = self
        shown = stdin if len(stdin) <= 2000 else stdin[:1000] + b"..." + stdin[-200:]
        return f"Case(env={env!r}, stdin={shown!r} ({len(stdin)} bytes))"


@st.composite
def case(draw, plugin, sandbox, allow_nul=True):
    """Case(env, stdin bytes) for one invocation of `plugin`."""
    config = draw(mutated(draw(plugin_config(plugin, sandbox)), sandbox))
    env = draw(environment(sandbox, allow_nul))
    if not allow_nul:
        env = {k: v.encode(errors="replace").decode() for k, v in env.items()}
    return Case((env, encode(draw, config)))
