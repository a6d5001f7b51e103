"""Our plugins driven through libcni: the Go driver in cnitool/, conflists, attachments.

The driver is cnitool on Debian's libcni (see cnitool/main.go); it runs inside
a test "host" netns (`ip netns exec`) with its own NETCONFPATH and result cache.
"""

import copy
import glob
import ipaddress
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

from tests.plugins import Outcome

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "conf" / "examples"
DOCKER = ROOT / "conf" / "docker"
NADS = ROOT / "conf" / "nads"
SCHEMAS = ROOT / "conf" / "schema"
DRIVER_SRC = pathlib.Path(__file__).resolve().parent / "cnitool"
LIBCNI_SRC = "/usr/share/gocode/src/github.com/containernetworking/cni"
OUR_PLUGINS = {"macvlan": "cni.plugins.macvlan", "ipvlan": "cni.plugins.ipvlan", "host-local": "ipam.host_local",
               "cluster-access": "cni.plugins.cluster_access"}
REFERENCE_DIR = "/usr/lib/cni"


def version_key(version):
    return tuple(int(p) for p in (version or "0.1.0").split("."))


# --------------------------------------------------------------------------
# Conflists

def load_example(name):
    """A conflist of conf/examples, or of another directory when given as "docker/<file>"."""
    path = DOCKER / name.split("/", 1)[1] if name.startswith("docker/") else EXAMPLES / name
    with open(path) as f:
        return json.load(f)


def kernel_needs(conflist):
    """The kernel features (tests/vm) attaching this conflist needs beyond macvlan."""
    ours = conflist["plugins"][0]
    needs = set()
    if ours["type"] == "ipvlan":
        needs.add("ipvlan")
    if "vlan" in ours or "." in ours.get("master", ""):
        needs.add("8021q")
    if ours.get("internal"):
        needs.add("dummy")
    return sorted(needs)


def load_nad(name):
    """(NetworkAttachmentDefinition, its config as a conflist). A single-plugin config
    becomes a one-plugin list, as libcni's ConfListFromConf makes it."""
    import yaml
    with open(NADS / name) as f:
        nad = yaml.safe_load(f)
    config = json.loads(nad["spec"]["config"])
    if "plugins" not in config:
        config = {"cniVersion": config.get("cniVersion"), "name": config["name"], "plugins": [config]}
    return nad, config


def localize(conflist, master, data_dir, state_dir=None, name=None):
    """An example made runnable here: our master, a private dataDir and stateDir."""
    conflist = copy.deepcopy(conflist)
    if name:
        conflist["name"] = name
    for plugin in conflist["plugins"]:
        if "master" in plugin:
            _, dot, vid = plugin["master"].rpartition(".")
            plugin["master"] = f"{master}.{vid}" if dot and vid.isdigit() else master  # keep an 802.1q parent
        if plugin.get("type") in OUR_PLUGINS and plugin["type"] != "cluster-access" and state_dir:
            plugin["stateDir"] = state_dir
        if plugin.get("type") == "tuning" and state_dir:
            plugin["dataDir"] = os.path.join(state_dir, "tuning")  # else /run/cni/tuning
        ipam = plugin.get("ipam") or {}
        if ipam.get("type") == "host-local":
            ipam["dataDir"] = data_dir
    return conflist


def effective_version(conflist, libcni_version):
    """The version libcni runs a conflist at: libcni 1.2's rule for cniVersions
    (the highest of cniVersions and cniVersion it implements), else cniVersion."""
    version = conflist.get("cniVersion", "")
    listed = conflist.get("cniVersions")
    if listed is None:
        return version or "0.1.0"
    usable = [v for v in listed + ([version] if version else [])
              if version_key(v) <= version_key(libcni_version)]
    return max(usable, key=version_key) if usable else (version or "0.1.0")


def plugin_configs(conflist, version):
    """Each plugin's config as the runtime hands it over (name and cniVersion injected)."""
    return [dict(p, name=conflist["name"], cniVersion=version) for p in conflist["plugins"]]


def schema(name):
    with open(SCHEMAS / f"{name}.json") as f:
        return json.load(f)


def validate_plugin_config(config):
    """Validate one plugin config against conf/schema; returns the schemas used."""
    import jsonschema
    used = []
    kind = config.get("type")
    if kind in OUR_PLUGINS:
        jsonschema.validate(config, schema(kind))
        used.append(kind)
    ipam = config.get("ipam") or {}
    if ipam.get("type") == "host-local":
        jsonschema.validate(config, schema("host-local"))
        used.append("host-local")
    return used


def leases(data_dir, net):
    """{ip: content} of host-local's lease files for a network."""
    path = os.path.join(data_dir, net)
    if not os.path.isdir(path):
        return {}
    out = {}
    for entry in os.scandir(path):
        if entry.is_file() and not entry.name.startswith((".", "last_reserved_ip.")) \
                and ("." in entry.name or ":" in entry.name):
            with open(entry.path, "rb") as f:
                out[entry.name] = f.read()
    return out


def _interval(text):
    if "-" in text:
        first, last = (ipaddress.ip_address(t.strip()) for t in text.split("-", 1))
        return int(first), int(last)
    if "/" in text:
        net = ipaddress.ip_network(text, strict=False)
        return int(net.network_address), int(net.broadcast_address)
    return int(ipaddress.ip_address(text)), int(ipaddress.ip_address(text))


def host_local_ranges(ipam):
    """[(subnet, first, last, range dict)] of a host-local section, legacy form included."""
    ranges = [r for s in ipam.get("ranges") or [] for r in s]
    if ipam.get("subnet"):
        ranges.append(ipam)
    out = []
    for r in ranges:
        subnet = ipaddress.ip_network(r["subnet"])
        first = int(ipaddress.ip_address(r["rangeStart"])) if r.get("rangeStart") else int(subnet.network_address) + 1
        last = int(ipaddress.ip_address(r["rangeEnd"])) if r.get("rangeEnd") else int(subnet.broadcast_address)
        out.append((subnet, first, last, r))
    return out


def never_handed_out(ipam):
    """(first, last) intervals host-local must never hand out: network, broadcast,
    gateways (default: network+1), aux and excluded addresses."""
    texts = list(ipam.get("exclude") or []) + list((ipam.get("auxAddresses") or {}).values())
    for subnet, _, _, r in host_local_ranges(ipam):
        texts += r.get("exclude") or [] if r is not ipam else []
        texts.append(r.get("gateway") or str(subnet.network_address + 1))
        texts.append(str(subnet.network_address))
        if subnet.version == 4:
            texts.append(str(subnet.broadcast_address))
    return [_interval(t) for t in texts]


def allowed(address, ipam):
    """Whether host-local may hand out `address` (a.b.c.d/len) under this ipam section."""
    ip = ipaddress.ip_interface(address).ip
    value = int(ip)
    if any(lo <= value <= hi for lo, hi in never_handed_out(ipam)):
        return False
    return any(ip in subnet and first <= value <= last for subnet, first, last, _ in host_local_ranges(ipam))


# --------------------------------------------------------------------------
# The Go driver

def build_driver(out_dir):
    """Build cnitool/ against Debian's libcni, offline; returns the executable's path.

    The sources are copied first so that `go` never writes into the checkout.
    """
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("`go` not found: install Debian's golang-go (build/apt-packages.txt, build/deps.sh)")
    if not os.path.isdir(os.path.join(LIBCNI_SRC, "libcni")):
        raise RuntimeError(f"libcni source missing at {LIBCNI_SRC}: install Debian's golang-github-appc-cni-dev")
    src = os.path.join(out_dir, "src")
    os.makedirs(src)
    for name in ("go.mod", "main.go"):
        shutil.copy(DRIVER_SRC / name, src)
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOTOOLCHAIN="local", GO111MODULE="on",
               GOWORK="off", CGO_ENABLED="0")
    if "GOCACHE" not in env and "HOME" not in env and "XDG_CACHE_HOME" not in env:
        env["GOCACHE"] = os.path.join(out_dir, "gocache")
    exe = os.path.join(out_dir, "cnitool")
    proc = subprocess.run([go, "build", "-o", exe, "."], cwd=src, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the libcni driver failed:\n{proc.stdout}{proc.stderr}")
    return exe


class Driver:
    """One libcni "runtime": a conflist dir, a result cache, a CNI_PATH, a node netns."""

    def __init__(self, exe, bin_dir, host_ns=None):
        self.exe = exe
        self.bin_dir = bin_dir
        self.host_ns = host_ns
        self.root = tempfile.mkdtemp(prefix="underlay-libcni-")
        self.net_dir = os.path.join(self.root, "net.d")
        self.cache_dir = os.path.join(self.root, "cache")
        os.makedirs(self.net_dir)
        self.conflists = {}
        self.libcni_version = json.loads(subprocess.run([exe, "version"], capture_output=True, text=True,
                                                        check=True).stdout)["libcni"]

    def install(self, conflist):
        """Write a conflist into NETCONFPATH; returns the network name."""
        name = conflist["name"]
        with open(os.path.join(self.net_dir, f"{name}.conflist"), "w") as f:
            json.dump(conflist, f, indent=2)
        self.conflists[name] = conflist
        return name

    def version_of(self, name):
        return effective_version(self.conflists[name], self.libcni_version)

    def run(self, verb, net, netns=None, ifname="eth0", container_id=None, args=None, cap_args=None,
            valid=None, timeout=120):
        argv = [self.exe, verb, net] + ([netns] if netns else [])
        if self.host_ns:
            argv = ["ip", "netns", "exec", self.host_ns] + argv
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "NETCONFPATH": self.net_dir, "CNI_PATH": self.bin_dir, "CNI_CACHE_DIR": self.cache_dir,
               "CNI_IFNAME": ifname}
        if container_id:
            env["CNI_CONTAINERID"] = container_id
        if args:
            env["CNI_ARGS"] = args if isinstance(args, str) else ";".join(f"{k}={v}" for k, v in args.items())
        if cap_args is not None:
            env["CAP_ARGS"] = json.dumps(cap_args)
        if valid is not None:
            env["CNI_VALID_ATTACHMENTS"] = json.dumps([{"containerID": c, "ifname": i} for c, i in valid])
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
        outcome = Outcome(proc)
        assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout, \
            f"traceback from a plugin under libcni {verb}: {outcome}"
        return outcome

    def add(self, net, netns, **kw):
        return self.run("add", net, netns, **kw)

    def check(self, net, netns, **kw):
        return self.run("check", net, netns, **kw)

    def delete(self, net, netns, **kw):
        return self.run("del", net, netns, **kw)

    def status(self, net):
        return self.run("status", net)

    def gc(self, net, valid=None):
        return self.run("gc", net, valid=valid)

    def cached(self, net=None):
        """{(network, containerID, ifname): entry} of libcni's result cache."""
        out = {}
        for path in glob.glob(os.path.join(self.cache_dir, "results", "*")):
            with open(path) as f:
                entry = json.load(f)
            if net is None or entry.get("networkName") == net:
                out[(entry["networkName"], entry["containerId"], entry["ifName"])] = entry
        return out

    def forget(self, net, container_id, ifname):
        """Drop a cache entry, as a runtime that lost its state (reboot, reinstall) would."""
        os.unlink(os.path.join(self.cache_dir, "results", f"{net}-{container_id}-{ifname}"))

    def cleanup(self):
        """DEL whatever the cache still holds (best effort), then remove the cache and conflists."""
        for (net, cid, ifname), entry in self.cached().items():
            if net in self.conflists:
                self.run("del", net, "/nonexistent/netns", ifname=ifname, container_id=cid, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------
# What Multus makes of a result

def network_status(network, result, default=False):
    """Multus's network-status entries for one delegate's result (its CreateNetworkStatus):
    one per sandbox interface, its IPs those whose `interface` points at it, the gateways
    of its 0/0 routes, the result's dns."""
    entries = []
    interfaces = result.get("interfaces") or []
    for index, iface in enumerate(interfaces):
        if not iface.get("sandbox"):
            continue
        ips = [ip for ip in result.get("ips") or [] if ip.get("interface") == index]
        gateways = []
        for route in result.get("routes") or []:
            if ipaddress.ip_network(route["dst"]).prefixlen == 0:
                family = ipaddress.ip_network(route["dst"]).version
                gw = route.get("gw") or next((ip.get("gateway") for ip in ips if ip.get("gateway") and
                                              ipaddress.ip_address(ip["gateway"]).version == family), None)
                if gw:
                    gateways.append(gw)
        entry = {"name": network, "interface": iface["name"], "mac": iface.get("mac"),
                 "ips": [ip["address"].split("/")[0] for ip in ips], "default": default,
                 "dns": result.get("dns") or {}}
        if "mtu" in iface:
            entry["mtu"] = iface["mtu"]
        if gateways:
            entry["gateway"] = gateways
        entries.append(entry)
    return entries
