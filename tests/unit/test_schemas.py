"""The validators generated from conf/schema are current and agree with jsonschema.

jsonschema is the reference validator; the plugins run fastjsonschema's output
(cni/schemas/) to keep ~60 ms of imports off every exec. Agreement is checked on
the corpus in tests/unit/corpus/<schema>.json and on mutations of its good configs.
"""

import copy
import importlib
import json
import pathlib
import shutil
import subprocess
import sys

import jsonschema
import pytest

from cni import config as netconf
from cni.errors import ERR_INVALID_CONFIG, CniError

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPORA = sorted((ROOT / "tests" / "unit" / "corpus").glob("*.json"))


def load_corpus(path):
    corpus = json.loads(path.read_text())
    schema = json.loads((ROOT / "conf" / "schema" / f"{corpus['schema']}.json").read_text())
    generated = importlib.import_module("cni.schemas." + corpus["schema"].replace("-", "_"))
    return corpus, jsonschema.Draft7Validator(schema), generated


def generated_accepts(generated, config):
    try:
        generated.validate(config)
        return True
    except generated.JsonSchemaValueException:
        return False


def cases(kind):
    for path in CORPORA:
        corpus = json.loads(path.read_text())
        for i, case in enumerate(corpus[kind]):
            yield pytest.param(path, i, id=f"{path.stem}-{kind}{i}-{case['why']}")


def test_there_is_a_corpus_for_host_local():
    assert ROOT / "tests" / "unit" / "corpus" / "host-local.json" in CORPORA


def test_generated_validators_are_current():
    proc = subprocess.run([sys.executable, "build/gen_validators.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_notices_a_stale_validator(tmp_path):
    """--check itself can fail: change a schema in a copy of the tree and it must say so."""
    for part in ("build/gen_validators.py", "conf/schema", "cni/schemas"):
        source, target = ROOT / part, tmp_path / part
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True)
            shutil.copy(source, target)
    schema_path = tmp_path / "conf/schema/host-local.json"
    schema = json.loads(schema_path.read_text())
    schema["properties"]["name"]["minLength"] = 2
    schema_path.write_text(json.dumps(schema))
    proc = subprocess.run([sys.executable, "build/gen_validators.py", "--check"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "cni/schemas/host_local.py" in proc.stdout


@pytest.mark.parametrize("path, index", cases("good"))
def test_good_config(path, index):
    corpus, reference, generated = load_corpus(path)
    config = corpus["good"][index]["config"]
    assert reference.is_valid(config), [e.message for e in reference.iter_errors(config)]
    assert generated_accepts(generated, config)
    netconf.validate(corpus["schema"], config)


@pytest.mark.parametrize("path, index", cases("bad"))
def test_bad_config(path, index):
    corpus, reference, generated = load_corpus(path)
    case = corpus["bad"][index]
    assert not reference.is_valid(case["config"])
    assert not generated_accepts(generated, case["config"])
    with pytest.raises(CniError) as e:
        netconf.validate(corpus["schema"], case["config"])
    assert e.value.code == ERR_INVALID_CONFIG
    assert e.value.msg.startswith("invalid network config: ")
    assert case["field"] in e.value.msg


# Values that probe every type rule: each replaces each node of each good config.
PROBES = [None, True, False, 0, -1, 1, 255, 256, 1.5, 3600, 3601, "", "x", "10.1.0.0/24", [], ["x"], [[]],
          [{}], {}, {"subnet": "10.1.0.0/24"}, {"containerID": "c", "ifname": "e"}]


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, prefix + (i,))


def replaced(config, path, value):
    config = copy.deepcopy(config)
    if not path:
        return value
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


def mutations(config):
    for path in paths(config):
        for value in PROBES:
            yield replaced(config, path, value)
        if path:  # and the node removed
            parent = copy.deepcopy(config)
            node = parent
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
            yield parent


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.stem)
def test_agreement_on_mutations(path):
    corpus, reference, generated = load_corpus(path)
    checked = disagreements = 0
    examples = []
    for case in corpus["good"]:
        for config in mutations(case["config"]):
            checked += 1
            if reference.is_valid(config) != generated_accepts(generated, config):
                disagreements += 1
                examples.append(json.dumps(config)[:300])
    assert checked > 1000
    assert disagreements == 0, examples[:5]


# -- errors speak in words: every pattern (and format) has a sentence --------------------------

SCHEMAS = sorted((ROOT / "conf" / "schema").glob("*.json"))
MINIMAL = {"host-local": {"name": "n", "ipam": {"type": "host-local"}}, "macvlan": {"name": "n"},
           "ipvlan": {"name": "n"}, "cluster-access": {"name": "n"},
           "dhcp": {"name": "n", "ipam": {"type": "dhcp"}},
           "cluster-ipam": {"name": "n", "ipam": {"type": "cluster-ipam", "etcd": {"endpoints": ["http://e:2379"]}}}}
# values to try against a rule: the first one it refuses is used
CANDIDATES = ["relative/path", "a/b", "a b", "x\x01y", "", ".", ".."]


def schema_rules(node, path="data"):
    """(path, rule, value of the rule) of every pattern, format and not in a raw schema."""
    if not isinstance(node, dict):
        return
    for rule in ("pattern", "format", "not"):
        if rule in node:
            yield path, rule, node[rule], node
    for key, child in node.get("properties", {}).items():
        yield from schema_rules(child, f"{path}.{key}")
    for key, child in node.get("definitions", {}).items():
        yield from schema_rules(child, f"definitions.{key}")
    if isinstance(node.get("items"), dict):
        yield from schema_rules(node["items"], f"{path}[]")


@pytest.mark.parametrize("schema_path", SCHEMAS, ids=lambda p: p.stem)
def test_every_pattern_and_format_has_a_sentence(schema_path):
    rules = list(schema_rules(json.loads(schema_path.read_text())))
    assert any(rule == "pattern" for _, rule, _, _ in rules)   # the walk finds them at all
    for path, rule, _, node in rules:
        if rule in ("pattern", "format"):
            message = node.get(rule + "Message")
            assert message and "^" not in message and "\\" not in message, (path, rule)


def violating(schema, path, rule, pattern):
    import re
    config = copy.deepcopy(MINIMAL[schema])
    keys = path.split(".")[1:]
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if rule == "pattern":
        value = next(v for v in CANDIDATES if v and not re.search(pattern, v))
    else:
        value = "."
    last = keys[-1]
    if last.endswith("[]"):   # an array of such values: one bad item after a good one
        good = next(v for v in node[last[:-2]] if re.search(pattern, v)) if node.get(last[:-2]) else value
        node[last[:-2]] = [good, value]
    else:
        node[last] = value
    if keys[0] == "hostShim":
        node.setdefault("address", "10.1.0.250")
        node.setdefault("name", "shim0")
    return config, value


@pytest.mark.parametrize("schema_path", SCHEMAS, ids=lambda p: p.stem)
def test_a_pattern_failure_is_a_sentence(schema_path):
    schema = schema_path.stem
    module = netconf.schema_module(schema)
    raw = {(path, rule): value for path, rule, value, _ in schema_rules(json.loads(schema_path.read_text()))}
    assert set(module.MESSAGES) == {k for k in raw if k[1] in ("pattern", "format")} | \
        {k for k in module.MESSAGES if k[1] in ("not", "oneOf")}
    for (path, rule), sentence in module.MESSAGES.items():
        if rule == "oneOf":
            continue   # blockSize's: tests/exec/test_config_rules.py, as the plugin answers it
        assert path.count("[]") <= int(path.endswith("[]")), "extend violating() for arrays inside arrays"
        config, value = violating(schema, path, rule, raw[(path, rule)])
        with pytest.raises(CniError) as e:
            netconf.validate(schema, config)
        field = path.removeprefix("data.").replace("[]", "[1]")
        assert e.value.msg == f"invalid network config: {field} {sentence}; got {value!r}", (path, rule)
        assert "pattern" not in e.value.msg and "^" not in e.value.msg


def test_the_log_file_message_of_the_issue():
    with pytest.raises(CniError) as e:
        netconf.validate("macvlan", {"name": "n", "logFile": "ops.log"})
    assert e.value.msg == ("invalid network config: logFile must be an absolute path (starting with '/') without "
                           "control characters; got 'ops.log'")
