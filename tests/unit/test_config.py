"""cni/config.py: the one CIDR rule, near-miss keys, messages in words."""

import ipaddress

import pytest

from cni import config as netconf
from cni.errors import CniError


@pytest.mark.parametrize("text, network", [
    ("10.9.0.0/16", "10.9.0.0/16"), ("0.0.0.0/0", "0.0.0.0/0"), ("10.9.0.1/32", "10.9.0.1/32"),
    ("fd00::/64", "fd00::/64"), ("::/0", "::/0"),
])
def test_cidr(text, network):
    assert netconf.parse_cidr(text, "f") == ipaddress.ip_network(network)


@pytest.mark.parametrize("text, message", [
    ("10.9.0.0", "routes[0].dst: '10.9.0.0' is not a CIDR: the prefix length is missing "
                 "(address/prefix, e.g. 10.9.0.0/32 for this address alone)"),
    ("fd00::", "routes[0].dst: 'fd00::' is not a CIDR: the prefix length is missing "
               "(address/prefix, e.g. fd00::/128 for this address alone)"),
    ("10.9.0.1/16", "routes[0].dst: 10.9.0.1/16 has host bits set; for a /16 the network address is "
                    "10.9.0.0 (10.9.0.0/16)"),
    ("192.168.50.101/30", "routes[0].dst: 192.168.50.101/30 has host bits set; for a /30 the network address "
                          "is 192.168.50.100 (192.168.50.100/30)"),
    ("10.9.0.0/33", "routes[0].dst: '10.9.0.0/33' is not a valid CIDR (address/prefix)"),
    ("banana", "routes[0].dst: 'banana' is not a CIDR (address/prefix)"),
    ("", "routes[0].dst: '' is not a CIDR (address/prefix)"),
    (None, "routes[0].dst: None is not a CIDR (address/prefix)"),
    (16, "routes[0].dst: 16 is not a CIDR (address/prefix)"),
])
def test_cidr_refused(text, message):
    with pytest.raises(CniError) as e:
        netconf.parse_cidr(text, "routes[0].dst")
    assert (e.value.code, e.value.msg) == (7, message)


# -- unknown keys: a near miss is refused, any other kept with a warning ------------------

def host_local(**ipam):
    return {"cniVersion": "1.0.0", "name": "n", "type": "macvlan",
            "ipam": dict({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}, **ipam)}


def macvlan(**extra):
    return dict({"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "master": "eth0",
                 "ipam": {"type": "host-local"}}, **extra)


# the list (exlude top and per range, auxAdresses, rangStart, route, resolveConf, mdoe) and more
NEAR_MISSES = [
    ("host-local", host_local(exlude=["10.1.0.5"]), ("ipam", "exlude", "exclude")),
    ("host-local", host_local(ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64", "exlude": []}]]),
     ("ipam.ranges[1][0]", "exlude", "exclude")),
    ("host-local", host_local(auxAdresses={"gw": "10.1.0.1"}), ("ipam", "auxAdresses", "auxAddresses")),
    ("host-local", host_local(ranges=[[{"subnet": "10.1.0.0/24", "rangStart": "10.1.0.9"}]]),
     ("ipam.ranges[0][0]", "rangStart", "rangeStart")),
    ("host-local", host_local(route=[{"dst": "0.0.0.0/0"}]), ("ipam", "route", "routes")),
    ("host-local", host_local(resolveConf="/etc/resolv.conf"), ("ipam", "resolveConf", "resolvConf")),
    ("host-local", host_local(routes=[{"dst": "0.0.0.0/0", "gateway": "10.1.0.1"}]), None),  # not close to gw
    ("host-local", host_local(routes=[{"dst": "0.0.0.0/0", "prority": 5}]), ("ipam.routes[0]", "prority", "priority")),
    ("host-local", host_local(datadir="/x"), ("ipam", "datadir", "dataDir")),
    ("host-local", host_local(range_start="10.1.0.5"), ("ipam", "range_start", "rangeStart")),
    ("host-local", dict(host_local(), runtimeConfig={"ipRanges": [[{"subnet": "10.2.0.0/24", "rangeEnd": "x",
                                                                     "gatway": "10.2.0.1"}]]}),
     ("runtimeConfig.ipRanges[0][0]", "gatway", "gateway")),
    ("macvlan", macvlan(mdoe="bridge"), ("", "mdoe", "mode")),
    ("macvlan", macvlan(Master="eth1"), ("", "Master", "master")),
    ("macvlan", macvlan(linkInContainers=True), ("", "linkInContainers", "linkInContainer")),
    ("macvlan", macvlan(dns={"namservers": ["10.1.0.53"]}), ("dns", "namservers", "nameservers")),
    ("macvlan", macvlan(hostShim={"name": "s0", "address": "10.1.0.250", "route": ["10.1.0.0/24"]}),
     ("hostShim", "route", "routes")),
    ("ipvlan", macvlan(flags="private"), ("", "flags", "flag")),
    ("ipvlan", macvlan(mdoe="l3"), ("", "mdoe", "mode")),
]


@pytest.mark.parametrize("schema, config, problem", NEAR_MISSES)
def test_key_problems_finds_near_misses(schema, config, problem):
    found = [p for p in netconf.key_problems(schema, config) if p[2] is not None]
    assert found == ([problem] if problem else [])


@pytest.mark.parametrize("schema, config, problem", [c for c in NEAR_MISSES if c[2]])
def test_a_near_miss_is_refused_naming_both_keys(schema, config, problem):
    path, key, suggestion = problem
    with pytest.raises(CniError) as e:
        netconf.validate(schema, config)
    where = path or "the network config"
    assert (e.value.code, e.value.msg) == (7, f"unknown key {key!r} in {where}; did you mean {suggestion!r}?")


@pytest.mark.parametrize("schema, config, expected", [
    # unknown, but no near miss: reported without a suggestion
    ("macvlan", macvlan(future={"x": 1}, vlanId=5), [("", "future", None), ("", "vlanId", None)]),
    ("host-local", host_local(somethingNew=1, ranges=[[{"subnet": "10.1.0.0/24", "note": "rack 4"}]]),
     [("ipam", "somethingNew", None), ("ipam.ranges[0][0]", "note", None)]),
    # places whose keys are someone else's are never looked at
    ("host-local", dict(host_local(), master="eth0", mdoe="bridge", hostShim={}), []),   # the main plugin's
    ("macvlan", macvlan(ipam={"type": "whereabouts", "range": "10.1.0.0/24", "exlude": []}), []),  # the IPAM's
    ("macvlan", macvlan(runtimeConfig={"portMappings": [], "bandwidth": {}, "mca": "x"}), []),   # the runtime's
    ("macvlan", macvlan(args={"cni": {"ipz": []}, "K8S_POD_NAME": "p"}, prevResult={"ipz": []},
                        capabilities={"mca": True}), []),
    ("host-local", host_local(auxAddresses={"exlude": "10.1.0.9"}), []),                      # names, not keys
    ("host-local", dict(host_local(), **{"cni.dev/valid-attachments": [{"containerID": "c", "ifname": "e",
                                                                         "ifName": "x"}]}), []),
    ("macvlan", macvlan(**{"cni.dev/attachments": [], "cni.dev/valid-attachments": None, "cniVersions": []}), []),
    # not objects where the schema expects them: the schema says so, not key_problems
    ("host-local", dict(host_local(), ipam=["x"]), []),
    ("host-local", host_local(ranges={"exlude": 1}), []),
])
def test_key_problems(schema, config, expected):
    assert netconf.key_problems(schema, config) == expected


class FakeRequest:
    def __init__(self, command):
        self.command = command
        self.warnings = []


@pytest.mark.parametrize("command", ["DEL", "GC", "STATUS"])
def test_teardown_verbs_only_warn_about_a_near_miss(command):
    """A config ADDed before this rule existed must still be torn down."""
    request = FakeRequest(command)
    netconf.validate("host-local", host_local(exlude=["10.1.0.5"]), request)
    assert request.warnings == ["unknown key 'exlude' in ipam is not used; did you mean 'exclude'?"]


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_add_and_check_warn_about_other_unknown_keys(command):
    request = FakeRequest(command)
    netconf.validate("macvlan", macvlan(future=1), request)
    assert request.warnings == ["unknown key 'future' in the network config is not used"]
    with pytest.raises(CniError):
        netconf.validate("macvlan", macvlan(mdoe="bridge"), request)


# -- near misses themselves -------------------------------------------------------------------

@pytest.mark.parametrize("word, known, expected", [
    ("mdoe", ["mode", "mtu"], "mode"),             # two letters swapped
    ("exlude", ["exclude"], "exclude"),            # one missing
    ("routes", ["route"], "route"),                # one extra
    ("mtv", ["mtu", "mac"], "mtu"),                # one changed
    ("RangeStart", ["rangeStart"], "rangeStart"),  # case
    ("range-start", ["rangeStart"], "rangeStart"),
    ("lnkInContaner", ["linkInContainer"], "linkInContainer"),   # two edits in a long word
    ("vlanId", ["vlan"], None),                    # two edits in a short one: another plugin's key
    ("ipMasq", ["ipam"], None),
    ("hairpinMode", ["mode"], None),
    ("name", ["name"], None),                      # known is no miss
    ("x", ["mtu"], None),
    (5, ["mtu"], None),
])
def test_near_miss(word, known, expected):
    from cni.spelling import near_miss
    assert near_miss(word, known) == expected


# Keys of the reference plugins, Multus, whereabouts and the runtimes' capabilities that may sit
# beside ours in a config: none may be taken for a typo of one of ours (apart from case and
# '_' spellings of our own keys, which are).
FOREIGN_KEYS = """bridge isGateway isDefaultGateway forceAddress ipMasq ipMasqBackend hairpinMode promiscMode
vlanTrunk preserveDefaultVlan macspoofchk enabledad disableContainerInterface portMappings snat markMasqBit
externalSetMarkChain conditionsV4 conditionsV6 backend iptablesAdminChainName sysctl promisc allmulti txQLen
ingressRate ingressBurst egressRate egressBurst bandwidth vrfname table addresses daemonSocketPath provide
request kubeconfig kubernetes delegates clusterNetwork defaultNetworks logToStderr confDir cniDir binDir
readinessindicatorfile namespaceIsolation globalNamespaces auxiliaryCIDRs vlanId linkMTU deviceID pciBusID
spoofchk trust link_state min_tx_rate max_tx_rate vlanQoS vlanProto datastore_type etcd_endpoints policy
ipRanges aliases cgroupPath infinibandGUID io.kubernetes.cri.pod-annotations plugins disableCheck disableGC
ipv6 ipv4 subnets mac_address macAddress hwaddr ifname containerID sandbox interface interfaces ips ip""".split()


@pytest.mark.parametrize("schema", ["macvlan", "ipvlan"])
def test_no_foreign_key_is_taken_for_a_typo(schema):
    from cni.spelling import near_miss
    known = netconf.schema_module(schema).KEYS["keys"]
    assert [(k, near_miss(k, known)) for k in FOREIGN_KEYS if near_miss(k, known)] == []


def test_a_hostile_key_is_clipped_in_messages():
    request = FakeRequest("ADD")
    netconf.validate("host-local", host_local(**{"x" * 10_000 + "\n": 1}), request)
    [warning] = request.warnings
    assert len(warning) < 200 and "\n" not in warning and warning.endswith("... in ipam is not used")
