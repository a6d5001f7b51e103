"""Network configs as an operator has them: a config, a conflist, or Kubernetes YAML.

Read by the operator's command (`underlay validate`, `pools`, ...) and by underlayd (its
pool figures, its healing): both import it from here.

A file is JSON (a network config, or a conflist with `plugins`) or YAML with one
or more documents: NetworkAttachmentDefinitions (their spec.config holds the
JSON), a `List` of them, or other kinds, which are skipped. Each network comes
out with its plugins as a runtime would hand them over: the list's name and
cniVersion copied into each one (libcni does the same).
"""

import json
import os
import re
from dataclasses import dataclass, field

from cni import contract, registry
from cni.errors import CniError

NAD_KIND = "NetworkAttachmentDefinition"
DEFAULT_CONFIG_DIR = "/etc/cni/net.d"
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
FIELD = re.compile(r"^([A-Za-z_][\w./-]*(?:\[\d+\])*(?:\.[\w/-]+(?:\[\d+\])*)*)(?::\s*|\s+)(.*)$", re.S)


def files_in(directory):
    """The config files of a directory as a runtime reads it, sorted; OSError if it cannot be listed."""
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.endswith(CONFIG_SUFFIXES)]


def ipam_users(paths, accepts):
    """(found, problems) of the configs at `paths`: found, (path, Network, Plugin, ipam section) of
    each plugin whose ipam type `accepts(type)`; problems, the files' errors as lines. What
    `underlay pools` and underlayd (its pool figures, its healing) read the configured networks by."""
    found, problems = [], []
    for path in paths:
        networks, bad = load(path)
        problems += [p.line() for p in bad if p.severity == "error"]
        for network in networks:
            for plugin in network.plugins:
                ipam = plugin.config.get("ipam") if isinstance(plugin.config.get("ipam"), dict) else {}
                if accepts(ipam.get("type")):
                    found.append((path, network, plugin, ipam))
    return found, problems


def is_host_local(kind):
    return isinstance(kind, str) and registry.plugin_for(kind) == "host-local"


def is_cluster_ipam(kind):
    return isinstance(kind, str) and registry.plugin_for(kind) == "cluster-ipam"


def split_field(msg):
    """A plugin's error message -> (field, rest): they start with the field they name."""
    msg = msg.removeprefix("invalid network config: ")
    match = FIELD.match(msg)
    if match and match.group(1) != "config":
        return match.group(1), match.group(2)
    return "config", msg.removeprefix("config ")


@dataclass
class Problem:
    severity: str            # "error" or "warning"
    file: str
    where: str               # "" or "document 2" (YAML)
    network: str | None
    field: str               # the config field, e.g. plugins[0].ipam.exclude[1]
    message: str

    def line(self):
        place = self.file + (f" ({self.where})" if self.where else "")
        network = f"network {self.network}" if self.network else "no network"
        return f"{self.severity}: {place}: {network}: {self.field}: {self.message}"

    def as_json(self):
        return {"severity": self.severity, "file": self.file, "where": self.where or None,
                "network": self.network, "field": self.field, "message": self.message}


@dataclass
class Plugin:
    field: str               # "" for a single config, "plugins[1]" in a list
    config: dict

    def at(self, name):
        """The full field name of `name` (a field of this plugin's config)."""
        return f"{self.field}.{name}" if self.field and name else (self.field or name)


@dataclass
class Network:
    file: str
    where: str
    name: str | None
    plugins: list = field(default_factory=list)
    nad: str | None = None   # namespace/name of the NetworkAttachmentDefinition it came from

    def problem(self, severity, field_name, message):
        return Problem(severity, self.file, self.where, self.name, field_name, message)


def load(path):
    """(networks, problems) of one file; a file that cannot be read or parsed is one problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return [], [Problem("error", path, "", None, "file", f"cannot read it: {e.strerror}")]
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return [], [Problem("error", path, "", None, "file", "is not UTF-8 text")]
    try:
        document = json.loads(text)
    except RecursionError:
        return [], [Problem("error", path, "", None, "file", "is nested too deeply")]
    except ValueError as json_error:
        if path.endswith(".json") or path.endswith(".conf") or path.endswith(".conflist"):
            return [], [Problem("error", path, "", None, "file", f"is not valid JSON: {json_error}")]
        return from_yaml(path, text)
    return from_json(path, "", document, None)


def from_json(path, where, document, nad, default_name=None):
    if not isinstance(document, dict):
        return [], [Problem("error", path, where, None, "config", "must be a JSON object")]
    try:
        contract.check_structure(document, contract.MAX_DEPTH)   # what the plugins refuse at decode
    except CniError as e:
        return [], [Problem("error", path, where, None, "config", e.msg.replace("network config on stdin", "it"))]
    name = document.get("name") if isinstance(document.get("name"), str) else default_name
    network = Network(path, where, name, nad=nad)
    if "plugins" in document:
        plugins = document["plugins"]
        if not isinstance(plugins, list) or not plugins:
            return [network], [network.problem("error", "plugins", "must be a non-empty list of plugin configs")]
        for i, plugin in enumerate(plugins):
            if not isinstance(plugin, dict):
                return [network], [network.problem("error", f"plugins[{i}]", "must be an object")]
            config = dict(plugin)
            for key in ("name", "cniVersion"):   # as libcni builds each plugin's config
                if key in document:
                    config[key] = document[key]
            if name and "name" not in config:
                config["name"] = name
            network.plugins.append(Plugin(f"plugins[{i}]", config))
    else:
        config = dict(document)
        if name and "name" not in config:
            config["name"] = name
        network.plugins.append(Plugin("", config))
    return [network], []


def from_yaml(path, text):
    import yaml   # only YAML files pay for it
    try:
        documents = list(yaml.safe_load_all(text))
    except RecursionError:
        return [], [Problem("error", path, "", None, "file", "is nested too deeply")]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        return [], [Problem("error", path, "", None, "file", f"is neither JSON nor valid YAML{at}: "
                                                            f"{getattr(e, 'problem', None) or e}")]
    networks, problems = [], []
    items = []
    for n, document in enumerate(documents, 1):
        if isinstance(document, dict) and document.get("kind") == "List" and isinstance(document.get("items"), list):
            items += [(f"document {n}, item {i}", item) for i, item in enumerate(document["items"])]
        else:
            items.append((f"document {n}" if len(documents) > 1 else "", document))
    for where, document in items:
        if document is None:
            continue
        if not isinstance(document, dict):
            problems.append(Problem("error", path, where, None, "document", "is not a mapping"))
            continue
        if document.get("kind") != NAD_KIND:
            if "kind" not in document and ("type" in document or "plugins" in document):
                found, more = from_json(path, where, document, None)   # a config written as YAML
                networks += found
                problems += more
            continue   # a DaemonSet beside the NADs: not ours to check
        meta = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
        nad = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        where = f"{where}, " if where else ""
        where += f"{NAD_KIND} {nad}"
        spec = document.get("spec") if isinstance(document.get("spec"), dict) else {}
        config = spec.get("config")
        if config in (None, ""):
            problems.append(Problem("warning", path, where, meta.get("name"), "spec.config",
                                    "empty: Multus then reads the config from each node's CNI config "
                                    "directory, which is not checked here"))
            continue
        if not isinstance(config, str):
            problems.append(Problem("error", path, where, meta.get("name"), "spec.config",
                                    "must be a string holding the JSON config"))
            continue
        try:
            parsed = json.loads(config)
        except RecursionError:
            problems.append(Problem("error", path, where, meta.get("name"), "spec.config", "is nested too deeply"))
            continue
        except ValueError as e:
            problems.append(Problem("error", path, where, meta.get("name"), "spec.config",
                                    f"is not valid JSON: {e}"))
            continue
        found, more = from_json(path, where, parsed, nad, default_name=meta.get("name"))
        networks += found
        problems += more
    return networks, problems
