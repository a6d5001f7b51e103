"""The CNI contract (spec 1.1.0), in one place for every underlay plugin.

Environment per verb, CNI_ARGS, errors, IPAM delegation and dispatch. Plugins
build results in the newest (1.1.0) form (cni/results.py) and raise CniError;
`run` prints what the caller's cniVersion asks for and, with `logFile`, writes
the operation log (cni/oplog.py).

Start-up cost matters (every pod attach pays it), so this module imports only
what the VERSION path needs; the rest is imported where it is used.
"""

import json
import os
import re
import sys

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

# Spec error codes.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_NOT_AVAILABLE_DISRUPTIVE = 51
# underlay's own codes (100+ are plugin-defined).
ERR_CHECK_FAILED = 100       # CHECK found state that differs from prevResult
ERR_NO_ADDRESS = 101         # no address can be given: exhausted, taken, duplicate
ERR_LINK = 102               # the kernel refused a link operation
ERR_NOT_PERMITTED = 103      # the plugin lacks a privilege it needs (CAP_SYS_ADMIN, CAP_NET_ADMIN): run it as root
ERR_INTERNAL = 999

# \Z, not $: "$" also matches before a trailing newline, and "abc\n" must not pass.
VALID_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")

# CNI_ARGS keys every underlay plugin understands. The K8S_* keys are what
# every Kubernetes runtime sends; accepting them keeps a missing IgnoreUnknown
# from breaking a pod.
KNOWN_ARGS = frozenset({
    "IgnoreUnknown", "IP", "MAC",
    "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID",
})

# GC's list of attachments to keep, under the spec's name and libcni 1.2.0's (Request.valid_attachments).
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
OLD_VALID_ATTACHMENTS = "cni.dev/attachments"

# Which CNI_* variables each verb requires (spec 1.1.0 section "Parameters").
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
# The oldest config version that allows a verb.
MIN_VERSION = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


class CniError(Exception):
    """An error the plugin reports to the runtime as CNI error JSON."""

    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def config_error(field, problem):
    return CniError(ERR_INVALID_CONFIG, f"{field}: {problem}")


def version_key(version, field="cniVersion"):
    try:
        major, minor, patch = (int(p) for p in version.split("."))
        return (major, minor, patch)
    except (AttributeError, ValueError):
        raise CniError(ERR_DECODE, f"{field}: {version!r} is not a version of the form X.Y.Z") from None


# --------------------------------------------------------------------------
# The request: environment plus stdin.

class Request:
    """One invocation: the verb, the CNI_* environment and the decoded config."""

    def __init__(self, command, env, config, stdin):
        self.command = command
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.netns = env.get("CNI_NETNS", "")
        self.ifname = env.get("CNI_IFNAME", "")
        self.path = [p for p in env.get("CNI_PATH", "").split(":") if p]
        self.env = env
        self.config = config
        self.stdin = stdin
        self.version = config.get("cniVersion", "0.1.0")
        self.args = parse_cni_args(env.get("CNI_ARGS", ""))
        self.warnings = []   # what a config check found and let pass: stderr and the log
        self.ipam_config = None   # an in-process IPAM's config, loaded early (load_ipam_config)

    @property
    def network(self):
        return self.config["name"]

    def valid_attachments(self):
        """GC: the attachments to keep, as a set of (containerID, ifname).

        Spec 1.1.0 names the list `cni.dev/valid-attachments`; libcni 1.2.0 sent it as
        `cni.dev/attachments` and later sends both (containernetworking/cni #1101), so the
        newer name counts when it is there (and not null), else the older one. A malformed
        list is refused (code 7): read as "nothing is valid", it would release everything."""
        key = VALID_ATTACHMENTS
        if self.config.get(key) is None and self.config.get(OLD_VALID_ATTACHMENTS) is not None:
            key = OLD_VALID_ATTACHMENTS
        listed = self.config.get(key)
        if listed is None:
            return set()
        if not isinstance(listed, list):
            raise CniError(ERR_INVALID_CONFIG, f"{key}: must be a list of {{containerID, ifname}} objects")
        valid = set()
        for i, a in enumerate(listed):
            if not (isinstance(a, dict) and isinstance(a.get("containerID"), str) and isinstance(a.get("ifname"), str)):
                raise CniError(ERR_INVALID_CONFIG, f"{key}[{i}]: must be an object with string containerID and ifname")
            valid.add((a["containerID"], a["ifname"]))
        return valid

    def prev_result(self):
        """prevResult in the newest form, or None."""
        prev = self.config.get("prevResult")
        if prev is None:
            return None
        from cni.results import upconvert_result
        return upconvert_result(prev, self.version, "prevResult")


def parse_cni_args(text):
    """CNI_ARGS "K=V;K=V" -> dict; IP is split into a list. Errors are code 4."""
    args = {}
    if not text:
        return args
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {pair!r} is not of the form KEY=VALUE")
        args[key] = value
    ignore = args.get("IgnoreUnknown", "")
    if ignore and ignore.lower() not in ("1", "true", "0", "false"):
        raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: IgnoreUnknown={ignore!r} must be 1, true, 0 or false")
    if ignore.lower() not in ("1", "true"):
        unknown = sorted(k for k in args if k not in KNOWN_ARGS)
        if unknown:
            raise CniError(ERR_INVALID_ENV,
                           f"CNI_ARGS: unknown key {unknown[0]!r} (set IgnoreUnknown=1 to ignore unknown keys)")
    if "IP" in args:
        args["IP"] = [ip.strip() for ip in args["IP"].split(",") if ip.strip()]
    return args


# Longest names that still fit a file name (255 bytes): a network is a directory of
# the store, and "<containerID>@<ifname>" (ifname <= 15) names an index file.
MAX_NETWORK_NAME = 255
MAX_CONTAINER_ID = 255 - 1 - 15


def check_container_id(container_id):
    if not container_id:
        raise CniError(ERR_UNKNOWN_CONTAINER, "CNI_CONTAINERID is empty")
    if len(container_id) > MAX_CONTAINER_ID:
        raise CniError(ERR_INVALID_ENV, f"CNI_CONTAINERID is {len(container_id)} characters long; "
                                        f"at most {MAX_CONTAINER_ID} are supported")
    if not VALID_ID.match(container_id):
        raise CniError(ERR_INVALID_ENV,
                       f"CNI_CONTAINERID {container_id!r} has invalid characters "
                       "(allowed: letters, digits, '_', '.', '-', starting with a letter or digit)")


def check_ifname(ifname):
    problem = None
    if not ifname:
        problem = "is empty"
    elif any("\ud800" <= c <= "\udfff" for c in ifname):
        problem = "is not valid UTF-8"   # undecodable env bytes arrive as surrogates
    elif len(ifname.encode()) > 15:
        problem = "is longer than 15 bytes"
    elif ifname in (".", ".."):
        problem = "may not be '.' or '..'"
    elif any(c in ifname for c in "/:\0") or any(c.isspace() for c in ifname):
        problem = "contains '/', ':', NUL or whitespace"
    if problem:
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {ifname!r} {problem}")


def check_network_name(name):
    if not isinstance(name, str) or not name:
        raise CniError(ERR_INVALID_CONFIG, "name: missing network name")
    if len(name) > MAX_NETWORK_NAME:
        raise CniError(ERR_INVALID_CONFIG, f"name: the network name is {len(name)} characters long; "
                                           f"at most {MAX_NETWORK_NAME} are supported")
    if not VALID_ID.match(name):
        raise CniError(ERR_INVALID_CONFIG,
                       f"name: network name {name!r} has invalid characters "
                       "(allowed: letters, digits, '_', '.', '-', starting with a letter or digit)")


# A network config is a handful of levels deep; anything far deeper is an attack on
# the recursive code (json, copies, validators) that later walks it.
MAX_DEPTH = 64


def decode_config(stdin):
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(ERR_DECODE, f"error decoding network config from stdin: {e}") from None
    except RecursionError:
        raise CniError(ERR_DECODE, "error decoding network config from stdin: nested too deeply") from None
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, "network config on stdin must be a JSON object")
    check_structure(config, MAX_DEPTH)
    return config


def check_structure(config, limit):
    """Refuse nesting deeper than `limit` and strings that are not valid Unicode (a JSON
    "\\ud800" escape decodes to a lone surrogate that no path, link name or encoder takes).
    Iterative: no recursion to exhaust."""
    stack = [(config, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise CniError(ERR_DECODE, f"network config on stdin is nested more than {limit} levels deep")
        for item in (value if isinstance(value, list) else (x for kv in value.items() for x in kv)):
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
            elif isinstance(item, str) and not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    raise CniError(ERR_DECODE, f"network config on stdin holds invalid Unicode: "
                                               f"{item[:100]!r}") from None


def negotiate_version(config):
    """Pick the config's cniVersion; a bare `cniVersions` list gets its highest we support."""
    version = config.get("cniVersion")
    if version is None and isinstance(config.get("cniVersions"), list):
        listed = config["cniVersions"]
        ours = [v for v in listed if v in SUPPORTED_VERSIONS]
        if not ours:
            raise CniError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                           f"config lists {listed!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
        version = max(ours, key=version_key)
    if version is None or version == "":
        version = "0.1.0"  # as libcni: no version is the first one
    if not isinstance(version, str):
        raise CniError(ERR_DECODE, f"cniVersion: {version!r} must be a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    return version


def command_hint(command):
    """The verb a wrong CNI_COMMAND most likely meant: `add`, `Del`, `DELETE`, `CHEK`."""
    from cni.spelling import near_miss
    upper = command.upper() if isinstance(command, str) else ""
    for verb in REQUIRED_ENV:
        if upper == verb or len(upper) >= 3 and (upper.startswith(verb) or verb.startswith(upper)):
            return verb
    return near_miss(upper, REQUIRED_ENV) if len(upper) >= 3 else None


def known_version(stdin):
    """The cniVersion an error answers in when read_request failed: the config's, if it
    decodes and names one we speak; else the newest."""
    try:
        return negotiate_version(decode_config(stdin))
    except (CniError, TypeError):
        return CURRENT_VERSION


def read_request(env, stdin_bytes):
    """Validate the environment and stdin for the verb in CNI_COMMAND."""
    command = env.get("CNI_COMMAND", "")
    if command not in REQUIRED_ENV:
        hint = command_hint(command)
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND: unknown command {command!r}" +
                       (f"; did you mean {hint!r}?" if hint else f" (one of {', '.join(REQUIRED_ENV)})"))
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"required environment variables [{','.join(missing)}] missing")
    config = decode_config(stdin_bytes)
    version = negotiate_version(config)
    check_network_name(config.get("name"))
    if command in ("ADD", "CHECK", "DEL"):
        check_container_id(env["CNI_CONTAINERID"])
        check_ifname(env["CNI_IFNAME"])
    minimum = MIN_VERSION.get(command)
    if minimum and version_key(version) < version_key(minimum):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}",
                       f"{command} needs cniVersion {minimum} or newer")
    config["cniVersion"] = version
    return Request(command, env, config, stdin_bytes)


# --------------------------------------------------------------------------
# IPAM delegation.

def ipam_type(config):
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        return None
    kind = ipam.get("type")
    if kind is None:
        return None
    if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
        raise CniError(ERR_INVALID_CONFIG, f"ipam.type: {kind!r} is not a plugin name")
    return kind


def load_ipam_config(request):
    """An in-process IPAM's config, loaded and checked now: a main plugin calls this before it
    changes anything, so a bad ipam section costs no link to undo. delegate_ipam hands it on."""
    from cni import registry
    module = registry.in_process_ipam(ipam_type(request.config))
    if module is not None:
        import importlib
        load = getattr(importlib.import_module(module), "load_config", None)   # an IPAM may have none
        request.ipam_config = load(request) if load else None


def delegate_ipam(request, command):
    """Run the IPAM plugin's `command`; return its result (newest form) for ADD."""
    from cni import registry
    kind = ipam_type(request.config)
    module = registry.in_process_ipam(kind)   # our own IPAM: in-process, no second exec
    if module is not None:
        import importlib
        verbs = importlib.import_module(module).VERBS
        sub = Request(command, dict(request.env, CNI_COMMAND=command), request.config, request.stdin)
        sub.version = request.version
        sub.warnings = request.warnings
        sub.ipam_config = request.ipam_config if command == request.command else None
        return verbs[command](sub)
    return exec_plugin(kind, request, command)


def find_in_path(name, path):
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ERR_INVALID_CONFIG, f"ipam.type: plugin {name!r} not found in CNI_PATH {':'.join(path)!r}")


def exec_plugin(name, request, command):
    import subprocess
    binary = find_in_path(name, request.path)
    env = dict(request.env, CNI_COMMAND=command)
    stdin = json.dumps(request.config).encode()
    try:
        proc = subprocess.run([binary], input=stdin, env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(ERR_IO, f"running IPAM plugin {name!r} ({command}): {e}") from None
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            raise CniError(int(err["code"]), f"{name}: {err.get('msg', '')}", err.get("details", ""))
        except (ValueError, KeyError, TypeError):
            raise CniError(ERR_INTERNAL, f"IPAM plugin {name!r} failed ({command}, exit {proc.returncode})",
                           (out or proc.stderr).decode(errors="replace")[-2000:]) from None
    if command != "ADD":
        return None
    from cni.results import upconvert_result
    try:
        try:
            return upconvert_result(json.loads(out), request.version, f"{name} result")
        except ValueError as e:
            raise CniError(ERR_DECODE, f"IPAM plugin {name!r} printed no valid result: {e}") from None
    except CniError:
        # it has taken addresses we will never use (nor the caller's undo, which needs a result)
        try:
            exec_plugin(name, request, "DEL")
        except CniError:
            pass  # the refusal is the error that matters
        raise


# --------------------------------------------------------------------------
# Dispatch.

def error_json(error, version):
    return {"cniVersion": version, "code": error.code, "msg": error.msg, "details": error.details}


USAGE = """\
{about}

A CNI plugin: a container runtime runs it with the network config (JSON) on
stdin and the CNI_* variables below; it prints the result, or an error
{{"code", "msg"}}, as JSON on stdout.

CNI_COMMAND      the verb: {verbs}
CNI_CONTAINERID  the container's ID (ADD, CHECK, DEL)
CNI_NETNS        path of the container's network namespace (ADD, CHECK; DEL when it still exists)
CNI_IFNAME       the interface name in the container (ADD, CHECK, DEL)
CNI_PATH         directories of the other CNI plugins, ':'-separated (ADD, CHECK, DEL, GC)
CNI_ARGS         optional KEY=VALUE;...: IP=, MAC=, K8S_POD_*; IgnoreUnknown=1 for other keys

CNI protocol versions supported: {versions}
Example: CNI_COMMAND=VERSION {program}

Documentation: README.md and docs/ in the underlay source tree; every config
key is described in conf/schema/*.json there.
"""


def usage(verbs, about, program):
    names = [v for v in REQUIRED_ENV if v in verbs or v == "VERSION"]
    return USAGE.format(about=about, verbs=", ".join(names), versions=", ".join(SUPPORTED_VERSIONS),
                        program=program)


def run(verbs, about, env=None, stdin=None, stdout=None, stderr=None, argv=(), program="PLUGIN"):
    """Run one invocation; return the process exit code.

    verbs maps "ADD", "DEL", "CHECK", "STATUS", "GC" to functions taking a
    Request; ADD returns a newest-form result. With `logFile` in the config,
    one line per invocation is appended there (cni/oplog.py). `argv` (the
    command line, never used by runtimes) only asks for --help / -h.
    """
    env = os.environ if env is None else env
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if "--help" in argv or "-h" in argv:
        stdout.write(usage(verbs, about, program))
        return 0
    command = env.get("CNI_COMMAND", "")
    if not command:
        stderr.write(f"{about}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
        return 0
    if command == "VERSION":
        from cni import version_info
        stdout.write(json.dumps({"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS),
                                 "underlay": version_info()}) + "\n")
        return 0
    version = CURRENT_VERSION
    request = result = error = None
    try:
        if stdin is None:
            stdin = sys.stdin.buffer.read()
        request = read_request(env, stdin)
        version = request.version
        verb = verbs.get(command)
        if verb is None:
            raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND: {command} is not supported by this plugin")
        result = verb(request)
        if command == "ADD":
            from cni.results import convert_result
            stdout.write(json.dumps(convert_result(result, version)) + "\n")
        return 0
    except CniError as e:
        error = e
        if request is None:
            version = known_version(stdin)
    except Exception as e:  # never a bare traceback: the runtime only reads stdout
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        details = f"{type(e).__name__}: {e} (at {os.path.basename(where.filename)}:{where.lineno})"
        error = CniError(ERR_INTERNAL, f"internal error: {e}", details)
    finally:
        if error is not None:
            stdout.write(json.dumps(error_json(error, version)) + "\n")
        warnings = request.warnings if request is not None else []
        for warning in warnings[:MAX_WARNINGS]:
            stderr.write(f"{plugin_name(about)}: warning: {warning}\n")
        if len(warnings) > MAX_WARNINGS:
            stderr.write(f"{plugin_name(about)}: warning: and {len(warnings) - MAX_WARNINGS} more\n")
        if request is not None and request.config.get("logFile") or request is None and has_log_file(stdin):
            from cni import oplog
            config = request.config if request is not None else oplog.peek_config(stdin)
            if config is not None and config.get("logFile"):
                oplog.log_operation(config, about, env, request, result, error, stdout, stderr)
    return 1


MAX_WARNINGS = 20   # a config with thousands of unknown keys gets a few lines, not thousands


def plugin_name(about):
    """'macvlan' from the about line 'CNI macvlan plugin (underlay ...)'."""
    return about.split()[1] if about.startswith("CNI ") and len(about.split()) > 1 else about


def has_log_file(stdin):
    """Cheap test before importing the log: could this undecoded stdin name a logFile?"""
    return isinstance(stdin, bytes) and b"logFile" in stdin


def program_name():
    """How the user called us, for --help: `macvlan`, or `python3 -m cni.plugins.macvlan` from source."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "PLUGIN"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if name.endswith(".py") and spec is not None:
        return f"python3 -m {spec.name}"
    return name


def main(verbs, about, plugin=None):
    """The executable's main: hands the invocation to underlayd when it answers (cni/handoff.py)."""
    if plugin is not None:
        from cni import handoff
        code = handoff.hand_off(plugin)
        if code is not None:
            sys.exit(code)
    sys.exit(run(verbs, about, argv=sys.argv[1:], program=program_name()))
