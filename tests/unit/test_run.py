"""dispatch.run with injected environment, stdin and stdout: what a runtime sees."""

import io
import json

import pytest

from cni import contract, dispatch, errors, registry, results
from cni.errors import CniError

PLUGIN = registry.Executable("test", __name__, "main", None, "CNI test plugin")
ABOUT = dispatch.about_line(PLUGIN)   # "CNI test plugin (underlay <version>, build <build>)"
ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p1", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
RESULT = {"ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}], "routes": [{"dst": "0.0.0.0/0"}],
          "dns": {}}


class Plugin:
    """Verbs that record their calls; `fail` makes them raise."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def verb(self, name):
        def call(request):
            self.calls.append((name, request))
            if self.fail:
                raise self.fail
            return RESULT if name == "ADD" else None
        return call

    def verbs(self, names=("ADD", "DEL", "CHECK", "STATUS", "GC")):
        return {name: self.verb(name) for name in names}


def run(command, config=None, plugin=None, verbs=None, **env):
    plugin = plugin or Plugin()
    stdout, stderr = io.StringIO(), io.StringIO()
    environ = dict(ENV, **env)
    if command is not None:
        environ["CNI_COMMAND"] = command
    stdin = config if isinstance(config, bytes) else json.dumps(config or {"cniVersion": "1.1.0",
                                                                           "name": "net1"}).encode()
    code = dispatch.run(PLUGIN, plugin.verbs() if verbs is None else verbs, env=environ,
                        stdin=stdin, stdout=stdout, stderr=stderr)
    return code, stdout.getvalue(), stderr.getvalue(), plugin


def error_of(stdout):
    error = json.loads(stdout)
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert isinstance(error["code"], int) and isinstance(error["msg"], str) and isinstance(error["details"], str)
    return error


def test_about():
    code, out, err, plugin = run(None)
    assert code == 0 and out == "" and not plugin.calls
    lines = err.splitlines()
    assert lines[0] == ABOUT
    assert lines[1] == "CNI protocol versions supported: " + ", ".join(contract.SUPPORTED_VERSIONS)


def test_empty_command_is_about():
    code, out, err, _ = run("")
    assert code == 0 and out == "" and err.startswith(ABOUT + "\n")


@pytest.mark.parametrize("stdin", [b"", b"garbage", b'{"cniVersion": "0.4.0"}'])
def test_version(stdin):
    code, out, err, plugin = run("VERSION", stdin)
    assert code == 0 and err == "" and not plugin.calls
    info = json.loads(out)
    assert info["cniVersion"] == "1.1.0"
    assert info["supportedVersions"] == list(contract.SUPPORTED_VERSIONS)


@pytest.mark.parametrize("version", contract.SUPPORTED_VERSIONS)
def test_add_prints_the_callers_version(version):
    code, out, err, plugin = run("ADD", {"cniVersion": version, "name": "net1"})
    assert code == 0 and err == ""
    assert json.loads(out) == results.convert_result(RESULT, version)
    assert [name for name, _ in plugin.calls] == ["ADD"]


@pytest.mark.parametrize("command", ["DEL", "CHECK", "STATUS", "GC"])
def test_other_verbs_print_nothing(command):
    code, out, err, plugin = run(command)
    assert (code, out, err) == (0, "", "")
    assert [name for name, _ in plugin.calls] == [command]


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_plugin_error(version):
    plugin = Plugin(fail=CniError(errors.ERR_NO_ADDRESS, "no free address", "range set 0"))
    code, out, err, _ = run("ADD", {"cniVersion": version, "name": "net1"}, plugin=plugin)
    assert code != 0 and err == ""
    assert error_of(out) == {"cniVersion": version, "code": 101, "msg": "no free address", "details": "range set 0"}


@pytest.mark.parametrize("command, env, stdin, code", [
    ("ADD", {"CNI_NETNS": ""}, None, errors.ERR_INVALID_ENV),
    ("ADD", {"CNI_IFNAME": "a/b"}, None, errors.ERR_INVALID_ENV),
    ("FOO", {}, None, errors.ERR_INVALID_ENV),
    ("ADD", {}, b"{not json", errors.ERR_DECODE),
    ("ADD", {}, b'{"cniVersion": "7.0.0", "name": "n"}', errors.ERR_INCOMPATIBLE_VERSION),
    ("ADD", {}, b'{"cniVersion": "1.0.0"}', errors.ERR_INVALID_CONFIG),
    ("CHECK", {}, b'{"cniVersion": "0.3.1", "name": "n"}', errors.ERR_INCOMPATIBLE_VERSION),
    ("GC", {}, b'{"cniVersion": "1.0.0", "name": "n"}', errors.ERR_INCOMPATIBLE_VERSION),
])
def test_request_errors(command, env, stdin, code):
    exit_code, out, err, plugin = run(command, stdin, **env)
    assert exit_code != 0 and err == "" and not plugin.calls
    assert error_of(out)["code"] == code


def test_verb_the_plugin_lacks():
    code, out, _, _ = run("GC", verbs=Plugin().verbs(("ADD", "DEL")))
    assert code != 0
    error = error_of(out)
    assert error["code"] == errors.ERR_INVALID_ENV and "GC" in error["msg"]


@pytest.mark.parametrize("exception", [ValueError("boom"), KeyError("ipam"), ZeroDivisionError("division by zero"),
                                       OSError(28, "No space left on device")])
def test_unexpected_exception_is_error_999(exception):
    code, out, err, _ = run("ADD", {"cniVersion": "0.4.0", "name": "net1"}, plugin=Plugin(fail=exception))
    assert code != 0
    assert err == ""  # no traceback anywhere
    error = error_of(out)
    assert error["code"] == errors.ERR_INTERNAL
    assert error["cniVersion"] == "0.4.0"
    assert f"{type(exception).__name__}: {exception}" in error["details"]
    assert "Traceback" not in out


# -- --help, near-miss verbs, the version an error answers in ----------------------------

@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["x", "--help"]])
def test_help_prints_usage_on_stdout_and_exits_0(argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = dispatch.run(PLUGIN, Plugin().verbs(("ADD", "DEL")), env={"CNI_COMMAND": "ADD"},
                        stdin=b"", stdout=stdout, stderr=stderr, argv=argv, program="testplugin")
    text = stdout.getvalue()
    assert code == 0 and stderr.getvalue() == ""
    assert text.startswith(ABOUT + "\n")
    assert "CNI_COMMAND      the verb: ADD, DEL, VERSION\n" in text   # the verbs this plugin has
    for variable in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"):
        assert f"\n{variable} " in text
    assert "README.md and docs/" in text and "conf/schema" in text
    assert "Example: CNI_COMMAND=VERSION testplugin" in text
    assert "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in text


def test_without_help_argv_is_ignored():
    stdout = io.StringIO()
    dispatch.run(PLUGIN, Plugin().verbs(), env=dict(ENV, CNI_COMMAND="DEL"),
                 stdin=b'{"cniVersion": "1.0.0", "name": "n"}', stdout=stdout, stderr=io.StringIO(),
                 argv=["--verbose"])
    assert stdout.getvalue() == ""


@pytest.mark.parametrize("command, hint", [
    ("add", "ADD"), ("Add", "ADD"), ("ADDD", "ADD"), ("del", "DEL"), ("DELETE", "DEL"), ("delete", "DEL"),
    ("check", "CHECK"), ("CHEK", "CHECK"), ("status", "STATUS"), ("STAUTS", "STATUS"), ("gc", "GC"),
    ("version", "VERSION"), ("VERISON", "VERSION"),
])
def test_a_near_miss_verb_gets_a_hint(command, hint):
    code, out, _, plugin = run(command)
    assert code != 0 and not plugin.calls
    error = error_of(out)
    assert error["code"] == errors.ERR_INVALID_ENV
    assert error["msg"] == f"CNI_COMMAND: unknown command {command!r}; did you mean {hint!r}?"


@pytest.mark.parametrize("command", ["FOO", "X", "ad", "RUN", "DROP"])
def test_an_unknown_verb_lists_the_verbs(command):
    error = error_of(run(command)[1])
    assert error["code"] == errors.ERR_INVALID_ENV and "did you mean" not in error["msg"]
    assert error["msg"].endswith("(one of ADD, CHECK, DEL, GC, STATUS, VERSION)")


@pytest.mark.parametrize("command, env, stdin, version", [
    ("add", {}, b'{"cniVersion": "0.3.1", "name": "n"}', "0.3.1"),                  # before decoding
    ("ADD", {"CNI_IFNAME": ""}, b'{"cniVersion": "0.4.0", "name": "n"}', "0.4.0"),  # env missing
    ("ADD", {}, b'{"cniVersion": "1.0.0", "name": "a/b"}', "1.0.0"),               # name
    ("ADD", {"CNI_IFNAME": "a/b"}, b'{"cniVersion": "0.2.0", "name": "n"}', "0.2.0"),
    ("ADD", {"CNI_CONTAINERID": "-x"}, b'{"cniVersion": "0.1.0", "name": "n"}', "0.1.0"),
    ("CHECK", {}, b'{"cniVersion": "0.3.1", "name": "n"}', "0.3.1"),                # verb too new
    ("ADD", {}, b'{"cniVersions": ["0.3.1", "0.4.0"], "name": "a b"}', "0.4.0"),
    ("ADD", {"CNI_ARGS": "FOO=1"}, b'{"name": "n"}', "0.1.0"),                      # no version is 0.1.0
    # not known: the newest
    ("ADD", {}, b'{"cniVersion": "7.0.0", "name": "n"}', "1.1.0"),
    ("ADD", {}, b'{"cniVersion": 1, "name": "n"}', "1.1.0"),
    ("ADD", {}, b'{not json', "1.1.0"),
])
def test_an_error_answers_in_the_configs_version(command, env, stdin, version):
    exit_code, out, _, plugin = run(command, stdin, **env)
    assert exit_code != 0 and not plugin.calls
    assert error_of(out)["cniVersion"] == version


def test_warnings_go_to_stderr_after_the_answer_clipped_to_a_few_lines():
    def add(request):
        request.warnings.extend(f"unknown key 'k{i}' in ipam is not used" for i in range(25))
        return RESULT
    stdout, stderr = io.StringIO(), io.StringIO()
    code = dispatch.run(PLUGIN, {"ADD": add}, env=dict(ENV, CNI_COMMAND="ADD"),
                        stdin=b'{"cniVersion": "1.0.0", "name": "n"}', stdout=stdout, stderr=stderr)
    assert code == 0 and json.loads(stdout.getvalue())["ips"]
    lines = stderr.getvalue().splitlines()
    assert lines[0] == "test: warning: unknown key 'k0' in ipam is not used"
    assert len(lines) == 21 and lines[-1] == "test: warning: and 5 more"
