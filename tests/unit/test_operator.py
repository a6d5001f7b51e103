"""The operator command's parsing, checks and formatting, without a store or a subprocess."""

import json

import pytest

from cni import config as netconf
from cni.operator import UsageError, configs, hostlocal, output, parse_valid, read_valid_from, validate

# -- output -----------------------------------------------------------------------------


def test_table_aligns_text_left_and_numbers_right():
    text = output.table([("NAME", "n"), ("FREE", "f")], [{"n": "a", "f": 5}, {"n": "long-name", "f": 1234}])
    assert text == ("NAME       FREE\n"
                    "a             5\n"
                    "long-name  1234\n")


def test_table_shows_missing_values_as_a_dash():
    assert output.table([("A", "a"), ("B", "b")], [{"a": None, "b": "x"}]) == "A  B\n-  x\n"


@pytest.mark.parametrize("container, full, shown", [
    ("0123456789abcdef", False, "0123456789ab"), ("0123456789abcdef", True, "0123456789abcdef"),
    ("short", False, "short"), (None, False, "-"),
])
def test_short_container_ids(container, full, shown):
    assert output.short(container, full) == shown


def test_table_prints_no_escape_sequences():
    assert output.table([("C", "c")], [{"c": "\x1b[31mevil\n"}]) == "C\n?[31mevil?\n"


def test_when_is_utc():
    assert output.when(0) == "1970-01-01T00:00:00Z" and output.when(None) is None


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "3601", "soon"])
def test_lock_timeout_is_bounded(text, capsys):
    from cni.operator import main
    with pytest.raises(SystemExit) as e:
        main(["leases", "--lock-timeout", text])
    assert e.value.code == 2 and "(0, 3600]" in capsys.readouterr().err


# -- the GC valid list ------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [("c1/eth0", ("c1", "eth0")), ("a.b-c/net1", ("a.b-c", "net1"))])
def test_parse_valid(text, parsed):
    assert parse_valid(text) == parsed


@pytest.mark.parametrize("text", ["c1", "c1/", "/eth0", ""])
def test_parse_valid_refuses(text):
    with pytest.raises(UsageError, match="CONTAINERID/IFNAME"):
        parse_valid(text)


@pytest.mark.parametrize("document, valid, name", [
    ({"name": "n", "cni.dev/valid-attachments": [{"containerID": "c", "ifname": "e"}]}, {("c", "e")}, "n"),
    ({"cni.dev/attachments": [{"containerID": "c", "ifname": "e"}]}, {("c", "e")}, None),   # the older key
    ({"cni.dev/valid-attachments": [], "cni.dev/attachments": [{"containerID": "c", "ifname": "e"}]}, set(), None),
    ({"cni.dev/valid-attachments": None}, set(), None),          # libcni's "none"
    # null is no list: the older key counts then, as the plugins' GC reads it (Request.valid_attachments)
    ({"cni.dev/valid-attachments": None, "cni.dev/attachments": [{"containerID": "c", "ifname": "e"}]},
     {("c", "e")}, None),
    ([{"containerID": "c", "ifname": "e"}], {("c", "e")}, None),
])
def test_read_valid_from(tmp_path, document, valid, name):
    path = tmp_path / "gc.json"
    path.write_text(json.dumps(document))
    assert read_valid_from(str(path)) == (valid, name)


@pytest.mark.parametrize("document, problem", [
    ({"name": "n"}, "no cni.dev/valid-attachments"),
    ({"cni.dev/valid-attachments": {"containerID": "c"}}, "must be a list"),
    ([{"containerID": "c"}], r"valid-attachments\[0\]: must be an object"),
    (["c/eth0"], r"valid-attachments\[0\]"),
    ({"cni.dev/attachments": [{"ifname": "e"}]}, r"cni.dev/attachments\[0\]"),
    ("c/eth0", "must be a list"),
])
def test_read_valid_from_refuses(tmp_path, document, problem):
    path = tmp_path / "gc.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UsageError, match=problem):
        read_valid_from(str(path))


# -- gc_plan ----------------------------------------------------------------------------

def lease(container, ifname="eth0", netns=None, address="10.1.0.2"):
    return hostlocal.Lease("net1", address, container, ifname, netns, None)


def plan(leases, valid, rebooted=False):
    snap = hostlocal.Snapshot("net1", "/nowhere", leases, rebooted)
    return [(v.release, v.reason) for v in hostlocal.gc_plan(snap, valid)]


def test_gc_plan_follows_the_valid_list():
    assert plan([lease("keep"), lease("drop"), lease("old", None)], {("keep", "eth0"), ("old", "net1")}) == [
        (False, "in the valid list"),
        (True, "not in the valid list"),
        (False, "in the valid list"),       # an old lease with no ifname: kept for any ifname of its container
    ]


def test_gc_plan_heals_after_a_reboot_only():
    gone = lease("dead", netns="/run/netns/uop-never-there")
    assert plan([gone], {("dead", "eth0")}) == [
        (False, "in the valid list, but its netns /run/netns/uop-never-there is gone")]
    assert plan([gone], {("dead", "eth0")}, rebooted=True) == [
        (True, "after a reboot: its netns /run/netns/uop-never-there is gone")]


def test_gc_plan_empty_and_foreign_leases():
    assert plan([lease(None, None)], set()) == [(True, "empty lease file: belongs to nobody")]
    (release, reason), = plan([lease("not a container id!")], set())
    assert not release and "never releases it" in reason


# -- configs ----------------------------------------------------------------------------

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return str(path)


def test_a_conflist_hands_each_plugin_the_lists_name_and_version(tmp_path):
    path = write(tmp_path, "a.conflist", {"cniVersion": "1.0.0", "name": "n", "plugins": [
        {"type": "macvlan"}, {"type": "tuning", "name": "ignored"}]})
    (network,), problems = configs.load(path)
    assert problems == [] and network.name == "n"
    assert [(p.field, p.config) for p in network.plugins] == [
        ("plugins[0]", {"type": "macvlan", "name": "n", "cniVersion": "1.0.0"}),
        ("plugins[1]", {"type": "tuning", "name": "n", "cniVersion": "1.0.0"}),
    ]


def test_nads_in_several_documents_and_a_list(tmp_path):
    nad = ("kind: NetworkAttachmentDefinition\nmetadata: {name: %s, namespace: ns}\n"
           "spec: {config: '{\"cniVersion\": \"1.0.0\", \"type\": \"macvlan\"}'}\n")
    text = (nad % "one") + "---\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + \
        "kind: List\nitems:\n" + "".join("- " + line + "\n" if i == 0 else "  " + line + "\n"
                                         for i, line in enumerate((nad % "two").splitlines())) + \
        "---\nkind: NetworkAttachmentDefinition\nmetadata: {name: three}\n"
    networks, problems = configs.load(write(tmp_path, "nads.yaml", text))
    assert [(n.name, n.nad, n.where) for n in networks] == [
        ("one", "ns/one", "document 1, NetworkAttachmentDefinition ns/one"),     # named by its NAD (Multus)
        ("two", "ns/two", "document 3, item 0, NetworkAttachmentDefinition ns/two"),
    ]
    (p,) = problems
    assert (p.severity, p.network, p.field) == ("warning", "three", "spec.config")


@pytest.mark.parametrize("name, text, problem", [
    ("a.conf", "{", "is not valid JSON"),
    ("a.yaml", "a: [", "valid YAML at line"),
    ("a.yaml", "kind: NetworkAttachmentDefinition\nspec: {config: '{'}\n", "is not valid JSON"),
    ("a.conf", "[]", "must be a JSON object"),
    ("a.conflist", '{"name": "n", "plugins": []}', "non-empty list"),
    ("a.conf", "[" * 100000 + "]" * 100000, "nested too deeply"),
    ("a.conf", '{"a": ' * 100 + "1" + "}" * 100, "nested"),
    ("a.conf", '{"name": "\\ud800"}', "holds invalid Unicode"),
], ids=["json", "yaml", "nad-json", "not-object", "no-plugins", "deep-recursion", "deep", "surrogate"])
def test_files_that_do_not_parse(tmp_path, name, text, problem):
    _, problems = configs.load(write(tmp_path, name, text))
    assert problem in problems[0].message and problems[0].severity == "error"


# -- validate ---------------------------------------------------------------------------

@pytest.mark.parametrize("msg, field, rest", [
    ("invalid network config: ipam.ranges[0] must be array", "ipam.ranges[0]", "must be array"),
    ("ipam.ranges[0][1].subnet: 10.0.0.1/24 has host bits set", "ipam.ranges[0][1].subnet",
     "10.0.0.1/24 has host bits set"),
    ("ipam.auxAddresses.router: 10.2.0.1 lies outside", "ipam.auxAddresses.router", "10.2.0.1 lies outside"),
    ("invalid network config: config must contain ['name'] properties", "config", "must contain ['name'] properties"),
    ("cni.dev/valid-attachments must be array", "cni.dev/valid-attachments", "must be array"),
])
def test_split_field(msg, field, rest):
    assert validate.split_field(msg) == (field, rest)


def problems_of(tmp_path, config):
    return [(p.severity, p.field, p.message) for p in validate.check_files([write(tmp_path, "c.conf", config)])]


def conf(**ipam):
    return {"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "master": "eth1",
            "ipam": dict({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}, **ipam)}


def test_prefixed_types_are_ours():
    assert validate.main_plugin("underlay-macvlan") == "macvlan"
    assert validate.main_plugin("bridge") is None and validate.main_plugin("host-local") is None
    assert validate.is_host_local("underlay-host-local") and not validate.is_host_local("whereabouts")


def test_host_local_checks_run_without_touching_anything(tmp_path):
    assert problems_of(tmp_path, conf()) == []
    (p,) = problems_of(tmp_path, conf(routes=[{"dst": "10.9.0.0/33"}]))
    assert p[:2] == ("error", "ipam.routes[0].dst")
    (p,) = problems_of(tmp_path, conf(resolvConf="/nonexistent/resolv.conf"))
    assert p[:2] == ("warning", "ipam.resolvConf")


def test_plugins_of_other_makers_are_left_alone(tmp_path):
    config = {"cniVersion": "1.0.0", "name": "n", "type": "bridge", "whatever": 1}
    assert problems_of(tmp_path, config) == []


def test_key_problems_become_errors_and_warnings(tmp_path, monkeypatch):
    """The thin call to cni.config.key_problems (the config engineer's): near misses are errors."""
    def fake(schema, config):
        return {"macvlan": [("", "mdoe", "mode"), ("ipam", "ignored-here", None)],
                "host-local": [("ipam", "exlude", "exclude"), ("ipam", "myKey", None), ("", "master", None)]}[schema]
    monkeypatch.setattr(netconf, "key_problems", fake, raising=False)
    assert sorted(problems_of(tmp_path, conf())) == sorted([
        ("error", "mdoe", "unknown key 'mdoe'; did you mean 'mode'? (the plugin refuses it)"),
        ("error", "ipam.exlude", "unknown key 'exlude'; did you mean 'exclude'? (the plugin refuses it)"),
        ("warning", "ipam.myKey", "unknown key 'myKey' (kept and ignored by the plugin)"),
    ])


def test_near_miss_keys_with_the_real_key_problems(tmp_path):
    config = conf(exlude=["10.1.0.0/28"])
    config["ipam"]["ranges"][0][0]["rangStart"] = "10.1.0.10"
    found = {p[1]: p for p in problems_of(tmp_path, config)}
    assert found["ipam.exlude"][0] == "error" and "'exclude'" in found["ipam.exlude"][2]
    assert found["ipam.ranges[0][0].rangStart"][0] == "error" and "'rangeStart'" in found["ipam.ranges[0][0].rangStart"][2]


def test_network_of_points_at_the_recorded_network_holding_the_address_and_skips_bad_records():
    """who-has on a cluster-ipam dataDir: a record no ADD could have written is passed over, and only
    the loader's refusal (CniError) is: any other exception is a bug and must surface."""
    from cni.operator import cluster
    good = {"type": "cluster-ipam", "range": "10.91.0.0/24", "node": "n1", "dataDir": "/var/lib/uj",
            "etcd": {"endpoints": ["http://127.0.0.1:2379"]}}
    recorded = {"abad": ("/var/lib/uj/abad/RECORD", dict(good, range="not a range")),
                "bnoranges": ("/var/lib/uj/bnoranges/RECORD", {"type": "cluster-ipam", "dataDir": "/var/lib/uj"}),
                "cgood": ("/var/lib/uj/cgood/RECORD", good)}
    assert cluster.network_of("10.91.0.7", recorded) == "cgood"
    assert cluster.network_of("10.92.0.7", recorded) is None
