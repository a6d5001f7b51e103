"""Reading a request: CNI_* environment per verb, stdin decoding, version negotiation."""

import json

import pytest

from cni.contract import SUPPORTED_VERSIONS, read_request
from cni.errors import ERR_DECODE, ERR_INCOMPATIBLE_VERSION, ERR_INVALID_CONFIG, ERR_INVALID_ENV, CniError

FULL_ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p1", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin"}


def env(command, **changes):
    """FULL_ENV for `command`, with variables changed (None drops one)."""
    result = dict(FULL_ENV, CNI_COMMAND=command)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def conf(version="1.1.0", **extra):
    return json.dumps(dict({"cniVersion": version, "name": "net1"}, **extra)).encode()


def refused(environ, stdin=None):
    with pytest.raises(CniError) as e:
        read_request(environ, conf() if stdin is None else stdin)
    return e.value


# -- which verbs need which variables -----------------------------------------

@pytest.mark.parametrize("command, variable", [
    (command, variable)
    for command, needs in {
        "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
        "GC": ("CNI_PATH",),
    }.items()
    for variable in needs
])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_required_variable_missing(command, variable, how):
    e = refused(env(command, **{variable: None if how == "unset" else ""}))
    assert e.code == ERR_INVALID_ENV
    assert variable in e.msg


@pytest.mark.parametrize("command, dropped", [
    ("DEL", ("CNI_NETNS",)),                     # the netns may be gone already
    ("GC", ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")),
    ("STATUS", ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")),
])
def test_optional_variables(command, dropped):
    request = read_request(env(command, **{v: None for v in dropped}), conf())
    assert request.command == command
    assert request.netns == ("" if "CNI_NETNS" in dropped else FULL_ENV["CNI_NETNS"])


def test_request_fields():
    request = read_request(env("ADD", CNI_PATH="/a::/b", CNI_ARGS="IP=10.0.0.9"), conf("0.4.0"))
    assert (request.container_id, request.netns, request.ifname) == ("c1", "/run/netns/p1", "eth0")
    assert request.path == ["/a", "/b"]
    assert request.args == {"IP": ["10.0.0.9"]}
    assert request.version == "0.4.0"
    assert request.network == "net1"


@pytest.mark.parametrize("command", ["", "FOO", "add", "Add", "DELETE"])
def test_unknown_command(command):
    e = refused(env(command))
    assert e.code == ERR_INVALID_ENV
    assert "CNI_COMMAND" in e.msg


def test_bad_cni_args_are_env_errors():
    e = refused(env("ADD", CNI_ARGS="FOO=bar"))
    assert e.code == ERR_INVALID_ENV and "CNI_ARGS" in e.msg


# -- container ID and interface name rules ------------------------------------

@pytest.mark.parametrize("container_id", [
    "c", "0", "abc123", "A-b_c.d", "7f3e" * 16, "k8s_POD_web-0_default_1f2e.3",
])
def test_container_id_accepted(container_id):
    assert read_request(env("ADD", CNI_CONTAINERID=container_id), conf()).container_id == container_id


@pytest.mark.parametrize("container_id", [
    "-abc", ".abc", "_abc", "../etc", "a/b", "/abs", "a b", "a\tb", "a@b", "a:b", "é", "abc\n", "a\nb", "a\0b",
])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_container_id_refused(container_id, command):
    e = refused(env(command, CNI_CONTAINERID=container_id), conf())
    assert e.code == ERR_INVALID_ENV
    assert "CNI_CONTAINERID" in e.msg


@pytest.mark.parametrize("ifname", ["eth0", "net1", "a", "x" * 15, "eth0.100", "veth-a_b", "é" * 7, "a@b"])
def test_ifname_accepted(ifname):
    assert read_request(env("ADD", CNI_IFNAME=ifname), conf()).ifname == ifname


@pytest.mark.parametrize("ifname, problem", [
    ("x" * 16, "longer than 15"),
    ("é" * 8, "longer than 15"),          # 16 bytes: the kernel counts bytes
    (".", "'.' or '..'"),
    ("..", "'.' or '..'"),
    ("a/b", "'/'"),
    ("../x", "'/'"),
    ("a:b", "':'"),
    ("a b", "whitespace"),
    ("a\tb", "whitespace"),
    ("eth0\n", "whitespace"),
    ("a\0b", "NUL"),
])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_ifname_refused(ifname, problem, command):
    e = refused(env(command, CNI_IFNAME=ifname), conf())
    assert e.code == ERR_INVALID_ENV
    assert "CNI_IFNAME" in e.msg and problem in e.msg


# -- stdin ----------------------------------------------------------------------

@pytest.mark.parametrize("stdin", [b"", b"{", b"not json", b"[1, 2]", b'"net"', b"null", b"\xff\xfe{}"])
def test_bad_json_is_decode_error(stdin):
    e = refused(env("ADD"), stdin)
    assert e.code == ERR_DECODE


@pytest.mark.parametrize("name", [None, "", 5, "../x", "a/b", "/etc", "..", ".", "-net", "net\n", "n\0et", "a b"])
def test_bad_network_name(name):
    config = {"cniVersion": "1.0.0"}
    if name is not None:
        config["name"] = name
    e = refused(env("ADD"), json.dumps(config).encode())
    assert e.code == ERR_INVALID_CONFIG
    assert "name" in e.msg


# -- versions -------------------------------------------------------------------

@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_supported_versions(version):
    assert read_request(env("ADD"), conf(version)).version == version


@pytest.mark.parametrize("config", [{"name": "net1"}, {"name": "net1", "cniVersion": ""}])
def test_missing_version_means_010(config):
    request = read_request(env("ADD"), json.dumps(config).encode())
    assert request.version == "0.1.0"
    assert request.config["cniVersion"] == "0.1.0"


@pytest.mark.parametrize("version", ["2.0.0", "0.5.0", "1.2.0", "0.0.1", "1.0", "1.0.0.0", "v1.0.0", "latest",
                                     " 1.0.0"])
def test_unsupported_version(version):
    e = refused(env("ADD"), conf(version))
    assert e.code == ERR_INCOMPATIBLE_VERSION


@pytest.mark.parametrize("version", [1, 1.0, ["1.0.0"], {"v": 1}, True])
def test_version_of_wrong_type(version):
    e = refused(env("ADD"), json.dumps({"cniVersion": version, "name": "n"}).encode())
    assert e.code == ERR_DECODE


@pytest.mark.parametrize("command, too_old, oldest", [
    ("CHECK", ["0.1.0", "0.2.0", "0.3.0", "0.3.1"], "0.4.0"),
    ("STATUS", ["0.1.0", "0.3.1", "0.4.0", "1.0.0"], "1.1.0"),
    ("GC", ["0.1.0", "0.3.1", "0.4.0", "1.0.0"], "1.1.0"),
])
def test_verb_needs_version(command, too_old, oldest):
    for version in too_old:
        e = refused(env(command), conf(version))
        assert e.code == ERR_INCOMPATIBLE_VERSION, version
        assert command in e.msg
        assert oldest in e.details
    for version in SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.index(oldest):]:
        assert read_request(env(command), conf(version)).version == version


@pytest.mark.parametrize("versions, chosen", [
    (["0.3.1", "0.4.0", "1.0.0"], "1.0.0"),
    (["1.0.0", "0.4.0"], "1.0.0"),                   # order does not matter
    (["0.4.0", "1.1.0", "9.9.9"], "1.1.0"),          # versions we do not know are skipped
    (["0.3.10", "0.3.1"], "0.3.1"),
    (["0.2.0"], "0.2.0"),
])
def test_cni_versions_list(versions, chosen):
    request = read_request(env("ADD"), json.dumps({"cniVersions": versions, "name": "net1"}).encode())
    assert request.version == chosen
    assert request.config["cniVersion"] == chosen


def test_cni_version_wins_over_list():
    stdin = json.dumps({"cniVersion": "0.4.0", "cniVersions": ["1.0.0"], "name": "net1"}).encode()
    assert read_request(env("ADD"), stdin).version == "0.4.0"


@pytest.mark.parametrize("versions", [["2.0.0"], ["9.9.9", "1.2.0"], []])
def test_cni_versions_list_without_ours(versions):
    e = refused(env("ADD"), json.dumps({"cniVersions": versions, "name": "net1"}).encode())
    assert e.code == ERR_INCOMPATIBLE_VERSION


# -- GC's valid attachments under either name (containernetworking/cni #1101) --------------

A = [{"containerID": "a", "ifname": "eth0"}]
B = [{"containerID": "b", "ifname": "net1"}, {"containerID": "b", "ifname": "net2"}]
NEW, OLD = "cni.dev/valid-attachments", "cni.dev/attachments"


@pytest.mark.parametrize("keys, valid", [
    ({NEW: A}, {("a", "eth0")}),
    ({OLD: B}, {("b", "net1"), ("b", "net2")}),     # a runtime sending only the older name
    ({NEW: A, OLD: B}, {("a", "eth0")}),            # both: the spec's name counts
    ({NEW: None, OLD: B}, {("b", "net1"), ("b", "net2")}),
    ({NEW: [], OLD: B}, set()),                     # an empty list is an answer: nothing to keep
    ({NEW: None}, set()),
    ({OLD: None}, set()),
    ({}, set()),
])
def test_valid_attachments(keys, valid):
    request = read_request(env("GC"), conf(**keys))
    assert request.valid_attachments() == valid


@pytest.mark.parametrize("keys, field", [
    ({NEW: {"containerID": "a"}}, NEW),
    ({OLD: "a"}, OLD),
    ({OLD: [{"containerID": "a"}]}, OLD + "[0]"),
    ({NEW: None, OLD: [{"containerID": "a", "ifname": 5}]}, OLD + "[0]"),
    ({NEW: A + ["a"]}, NEW + "[1]"),
])
def test_malformed_valid_attachments_are_refused(keys, field):
    request = read_request(env("GC"), conf(**keys))
    with pytest.raises(CniError) as e:
        request.valid_attachments()
    assert e.value.code == ERR_INVALID_CONFIG and e.value.msg.startswith(field + ": ")
