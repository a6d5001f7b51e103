"""The CNI contract (spec 1.1.0), in one place for every underlay plugin.

What a plugin is asked: the environment per verb, CNI_ARGS, the config on
stdin and the version rules, read into a Request (read_request), and which
IPAM a config names. Running a verb on it (the answer, the operation log,
IPAM delegation, the hand-off to underlayd) is cni/dispatch.py's; the error
type and codes are cni/errors.py's.

Start-up cost matters (every pod attach pays it), so this module imports only
what every invocation needs; the rest is imported where it is used.
"""

import json
import re

from cni.errors import (ERR_DECODE, ERR_INCOMPATIBLE_VERSION, ERR_INVALID_CONFIG, ERR_INVALID_ENV,
                        ERR_UNKNOWN_CONTAINER, CniError)

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

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

MAX_WARNINGS = 20   # a config with thousands of unknown keys gets a few lines (stderr, the log), not thousands


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
        self.warnings = []   # what a config check found and let pass: stderr and the log (MAX_WARNINGS of them)
        self.ipam_config = None   # an in-process IPAM's config, loaded early (load_ipam_config)
        self.defer_sync = False   # an in-process IPAM's ADD leaves its lease's fsync running: the main
        #                           plugin waits for it (dispatch.wait_ipam_synced) before it answers

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


def json_number(text):
    """A JSON number written with a fraction or an exponent. JSON has one number type: an integral
    one (1500.0, 1e3) is the integer the schemas' "integer" fields accept (tests/unit/corpus), so it
    is read as one; the kernel's netlink attributes take nothing else."""
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


def decode_config(stdin):
    try:
        config = json.loads(stdin, parse_float=json_number)
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
