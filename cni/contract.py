"""The CNI contract (spec 1.1.0), in one place for every underlay plugin.

Environment per verb, CNI_ARGS, errors, result versions 0.1.0 ... 1.1.0 and
IPAM delegation. Plugins build results in the newest (1.1.0) form and raise
CniError; `run` prints what the caller's cniVersion asks for.

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

    @property
    def network(self):
        return self.config["name"]

    def prev_result(self):
        """prevResult in the newest form, or None."""
        prev = self.config.get("prevResult")
        if prev is None:
            return None
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


def read_request(env, stdin_bytes):
    """Validate the environment and stdin for the verb in CNI_COMMAND."""
    command = env.get("CNI_COMMAND", "")
    if command not in REQUIRED_ENV:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND: unknown command {command!r}")
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
# Results. A plugin builds the 1.1.0 form:
#   {"interfaces": [{"name","mac","mtu","sandbox"}], "ips": [{"address","gateway","interface"}],
#    "routes": [{"dst","gw","mtu","advmss","priority","table","scope"}], "dns": {...}}

ROUTE_FIELDS_1_0 = ("dst", "gw")
INTERFACE_FIELDS_1_0 = ("name", "mac", "sandbox")


def ip_version(address):
    return "6" if ":" in address else "4"


def convert_result(result, version):
    """Newest-form result -> the JSON object for `version`."""
    key = version_key(version)
    if key < (0, 3, 0):
        return _to_020(result, version)
    out = {"cniVersion": version}
    interfaces = result.get("interfaces") or []
    routes = result.get("routes") or []
    ips = [dict(ip) for ip in result.get("ips") or []]
    if key < (1, 1, 0):
        interfaces = [{k: v for k, v in i.items() if k in INTERFACE_FIELDS_1_0} for i in interfaces]
        routes = [{k: v for k, v in r.items() if k in ROUTE_FIELDS_1_0} for r in routes]
    if key < (1, 0, 0):
        for ip in ips:
            ip["version"] = ip_version(ip["address"])
    if interfaces:
        out["interfaces"] = interfaces
    if ips:
        out["ips"] = ips
    if routes:
        out["routes"] = routes
    out["dns"] = result.get("dns") or {}
    return out


def _to_020(result, version):
    out = {"cniVersion": version}
    for ip in result.get("ips") or []:
        family = "ip" + ip_version(ip["address"])
        if family in out:
            continue  # 0.2.0 carries one address per family
        entry = {"ip": ip["address"]}
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        routes = [{k: r[k] for k in ROUTE_FIELDS_1_0 if k in r}
                  for r in result.get("routes") or [] if ip_version(r["dst"]) == family[2]]
        if routes:
            entry["routes"] = routes
        out[family] = entry
    out["dns"] = result.get("dns") or {}
    return out


def upconvert_result(result, version, field="result"):
    """A result in `version`'s form (prevResult, an exec'd IPAM's output) -> newest form."""
    if not isinstance(result, dict):
        raise CniError(ERR_DECODE, f"{field} must be a JSON object")
    try:
        if version_key(version) < (0, 3, 0):
            ips, routes = [], []
            for family in ("ip4", "ip6"):
                entry = result.get(family)
                if entry is None:
                    continue
                ip = {"address": entry["ip"]}
                if entry.get("gateway"):
                    ip["gateway"] = entry["gateway"]
                ips.append(ip)
                routes.extend(dict(r) for r in entry.get("routes") or [])
            return check_result_values({"ips": ips, "routes": routes, "dns": dict(result.get("dns") or {})}, field)
        ips = []
        for ip in result.get("ips") or []:
            ip = {k: v for k, v in ip.items() if k != "version"}
            if not isinstance(ip.get("address"), str):
                raise CniError(ERR_DECODE, f"{field}.ips[].address must be a string")
            ips.append(ip)
        return check_result_values({
            "interfaces": [dict(i) for i in result.get("interfaces") or []],
            "ips": ips,
            "routes": [dict(r) for r in result.get("routes") or []],
            "dns": dict(result.get("dns") or {}),
        }, field)
    except CniError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise CniError(ERR_DECODE, f"{field} is malformed: {type(e).__name__}: {e}") from None


ROUTE_INTS = ("mtu", "advmss", "priority", "table", "scope")


def check_result_values(result, field):
    """A result from outside (prevResult, an exec'd IPAM) is applied to interfaces and routes
    as it is: every address, gateway and route is checked first (code 7 naming it)."""
    import ipaddress

    def bad(where, value, what):
        return CniError(ERR_INVALID_CONFIG, f"{field}.{where}: {value!r} is not {what}")

    def check(parse, where, value, what):
        try:
            if not isinstance(value, str):
                raise ValueError
            parse(value)
        except ValueError:
            raise bad(where, value, what) from None

    def natural(where, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(where, value, "a non-negative integer")

    for i, ip in enumerate(result["ips"]):
        check(ipaddress.ip_interface, f"ips[{i}].address", ip["address"], "an address/prefix")
        if ip.get("gateway") not in (None, ""):
            check(ipaddress.ip_address, f"ips[{i}].gateway", ip["gateway"], "an IP address")
        if "interface" in ip:
            natural(f"ips[{i}].interface", ip["interface"])
    for i, route in enumerate(result["routes"]):
        check(lambda v: ipaddress.ip_network(v, strict=False), f"routes[{i}].dst", route.get("dst"), "a CIDR")
        if route.get("gw") not in (None, ""):
            check(ipaddress.ip_address, f"routes[{i}].gw", route["gw"], "an IP address")
        for key in ROUTE_INTS:
            if route.get(key) is not None:
                natural(f"routes[{i}].{key}", route[key])
    for i, interface in enumerate(result.get("interfaces", [])):
        for key in ("name", "mac", "sandbox"):
            if interface.get(key) is not None and not isinstance(interface[key], str):
                raise bad(f"interfaces[{i}].{key}", interface[key], "a string")
    return result


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
    try:
        return upconvert_result(json.loads(out), request.version, f"{name} result")
    except ValueError as e:
        raise CniError(ERR_DECODE, f"IPAM plugin {name!r} printed no valid result: {e}") from None


# --------------------------------------------------------------------------
# Dispatch.

def error_json(error, version):
    return {"cniVersion": version, "code": error.code, "msg": error.msg, "details": error.details}


def run(verbs, about, env=None, stdin=None, stdout=None, stderr=None):
    """Run one invocation; return the process exit code.

    verbs maps "ADD", "DEL", "CHECK", "STATUS", "GC" to functions taking a
    Request; ADD returns a newest-form result. With `logFile` in the config,
    one line per invocation is appended there (see log_operation).
    """
    env = os.environ if env is None else env
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
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
            stdout.write(json.dumps(convert_result(result, version)) + "\n")
        return 0
    except CniError as e:
        error = e
    except Exception as e:  # never a bare traceback: the runtime only reads stdout
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        details = f"{type(e).__name__}: {e} (at {os.path.basename(where.filename)}:{where.lineno})"
        error = CniError(ERR_INTERNAL, f"internal error: {e}", details)
    finally:
        if error is not None:
            stdout.write(json.dumps(error_json(error, version)) + "\n")
        config = request.config if request is not None else peek_config(stdin)
        if config is not None and config.get("logFile"):
            log_operation(config, about, env, request, result, error, stdout, stderr)
    return 1


# --------------------------------------------------------------------------
# The operation log: `logFile` and `logLevel` in the network config.
#
# One JSON object per line, appended after the answer is on stdout, with a
# fixed set of fields: never the config or the environment as a whole (a
# config may carry credentials of other plugins in a chain). Strings are
# clipped and JSON-escaped, so hostile values can neither forge lines nor
# grow the file without bound. Nothing here is imported or run unless
# logFile is set, and no failure here changes the operation's answer.

LOG_LEVELS = ("error", "info", "debug")
LOG_MAGIC = b'{"time": '   # every line starts so: we append only to files that look like ours
LOG_CLIP = 500


def peek_config(stdin):
    """The decoded config for the log when read_request failed before decoding it; else None."""
    if not isinstance(stdin, (bytes, str)) or b"logFile" not in (stdin if isinstance(stdin, bytes) else b""):
        return None
    try:
        return decode_config(stdin)
    except CniError:
        return None


def clip(value):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= LOG_CLIP else text[:LOG_CLIP] + f"...({len(text)} chars)"


def log_operation(config, about, env, request, result, error, stdout, stderr):
    path, level = config.get("logFile"), config.get("logLevel", "info")
    level = LOG_LEVELS.index(level) if level in LOG_LEVELS else 1
    if error is None and level < 1:
        return
    try:
        import time
        now = time.time()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "plugin": about.split()[1] if about.startswith("CNI ") else about,
            "pid": os.getpid(),
            "command": clip(env.get("CNI_COMMAND", "")),
            "network": clip(config.get("name", "")),
            "containerID": clip(env.get("CNI_CONTAINERID", "")),
            "ifname": clip(env.get("CNI_IFNAME", "")),
        }
        args = request.args if request is not None else {}
        if args.get("K8S_POD_NAME"):
            entry["pod"] = clip(f"{args.get('K8S_POD_NAMESPACE', '')}/{args['K8S_POD_NAME']}")
        if level >= 2:
            entry["netns"] = clip(env.get("CNI_NETNS", ""))
            entry["cniVersion"] = clip(config.get("cniVersion", ""))
            handoff = sys.modules.get("cni.handoff")
            if handoff is not None and handoff.status:
                entry["agent"] = clip(handoff.status)   # served by underlayd, or why not
        if error is None:
            entry["result"] = "ok"
            if isinstance(result, dict):
                entry["ips"] = [clip(ip.get("address")) for ip in result.get("ips") or []]
        else:
            entry.update(result="error", code=error.code, msg=clip(error.msg))
            if level >= 2 and error.details:
                entry["details"] = clip(error.details)
        line = json.dumps(entry) + "\n"
        append_log(path, line.encode(), stdout)
    except Exception as e:
        try:
            stderr.write(f"underlay: logFile {clip(path)!r}: {clip(getattr(e, 'strerror', None) or str(e))}; "
                         "not logged\n")
        except Exception:
            pass


def append_log(path, data, stdout):
    """Append to `path`: a regular file, not a symlink, not stdout, and new, empty or ours."""
    import errno
    import stat
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("must be an absolute path")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY |
                 os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        try:
            out = os.fstat(stdout.fileno())
            same = (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino)
        except (AttributeError, ValueError, OSError):
            same = False  # no file behind stdout (an in-process caller's buffer)
        if same:
            raise OSError(errno.EINVAL, "is the plugin's stdout, which carries the result")
        if st.st_size and os.pread(fd, len(LOG_MAGIC), 0) != LOG_MAGIC:
            raise OSError(errno.EINVAL, "exists and is not an underlay log; refusing to append to it")
        os.write(fd, data)
    finally:
        os.close(fd)


def main(verbs, about, plugin=None):
    """The executable's main: hands the invocation to underlayd when it answers (cni/handoff.py)."""
    if plugin is not None:
        from cni import handoff
        code = handoff.hand_off(plugin)
        if code is not None:
            sys.exit(code)
    sys.exit(run(verbs, about))
