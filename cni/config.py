"""Network config checks shared by the plugins.

The JSON Schemas in conf/schema are the source of truth; the plugins run the
validators generated from them ahead of time (build/gen_validators.py), which
cost ~0.3 ms to import instead of jsonschema's ~60 ms. The same generated
modules carry the keys known at each place of a config (KEYS, for
key_problems) and the schema's sentence for each pattern (MESSAGES), so an
error never quotes a regular expression.
"""

import importlib

from cni.errors import ERR_INVALID_CONFIG, CniError

# Verbs that refuse a likely typo in a key. DEL, GC and STATUS only warn: a config
# that was ADDed before this rule existed must still be torn down.
STRICT_VERBS = ("ADD", "CHECK")


def schema_module(schema):
    return importlib.import_module("cni.schemas." + schema.replace("-", "_"))


def validate(schema, config, request=None):
    """Check config against conf/schema/<schema>.json; code 7 naming the field.

    Unknown keys: a near miss of a known key at the same place is refused (with a
    request, only on ADD and CHECK; otherwise it is a warning like any other
    unknown key); the warnings go to request.warnings (stderr and the log)."""
    module = schema_module(schema)
    strict = request is None or request.command in STRICT_VERBS
    problems = key_problems(schema, config)
    if strict:
        for path, key, suggestion in problems:
            if suggestion is not None:
                raise CniError(ERR_INVALID_CONFIG, f"unknown key {clipped(key)} in {place(path)}; "
                                                   f"did you mean {suggestion!r}?")
    try:
        module.validate(config)
    except module.JsonSchemaValueException as e:
        raise CniError(ERR_INVALID_CONFIG, f"invalid network config: {rule_message(module, e)}",
                       f"rule: {e.rule}") from None
    if request is not None:
        for path, key, suggestion in problems:
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            request.warnings.append(f"unknown key {clipped(key)} in {place(path)} is not used{hint}")


def place(path):
    return clipped(path, quote=False) if path else "the network config"


def key_problems(schema, config):
    """Unknown keys of `config` at the places conf/schema/<schema>.json lists keys for:
    [(field path, key, the known key it is probably a typo of, or None)], place by place
    (breadth first), each place's keys in config order.

    The field path is "" for the top level, else like "ipam.ranges[0][0]". Places whose
    keys are free (runtimeConfig, args, auxAddresses, a main plugin's ipam section) are
    not looked at. Used by the plugins (validate) and by `underlay validate`."""
    problems = []
    pending = [(schema_module(schema).KEYS, config, "")]
    for spot, value, path in pending:   # grows as it goes: breadth first, in config order
        if isinstance(value, dict):
            known = spot.get("keys")
            unknown = [key for key in value if key not in known] if known is not None else ()
            if unknown:
                from cni.spelling import near_miss   # only now: a clean config never imports it
                problems += [(path, key, near_miss(key, known)) for key in unknown]
            children = spot.get("props", {})
            pending += [(children[key], value[key], f"{path}.{key}" if path else key)
                        for key in value if key in children]
        elif isinstance(value, list) and "items" in spot:
            pending += [(spot["items"], item, f"{path}[{i}]") for i, item in enumerate(value)]
    return problems


def known_only(schema, config):
    """A copy of `config` without the keys conf/schema/<schema>.json does not know, at the places
    key_problems looks at: what the plugin reads of it, nothing a config may carry besides."""
    def keep(spot, value):
        if isinstance(value, dict):
            known, children = spot.get("keys"), spot.get("props", {})
            return {key: keep(children.get(key, {}), item) for key, item in value.items()
                    if known is None or key in known}
        if isinstance(value, list) and "items" in spot:
            return [keep(spot["items"], item) for item in value]
        return value
    return keep(schema_module(schema).KEYS, config)


def rule_message(module, e):
    """fastjsonschema says 'data.ipam.ranges[0] must be array'; we say 'ipam.ranges[0] must be array',
    and a pattern's sentence instead of the pattern."""
    import re
    name = e.name if isinstance(e.name, str) else "data"
    sentence = module.MESSAGES.get((re.sub(r"\[\d+\]", "[]", name), e.rule))
    message = f"{name} {sentence}; got {clipped(e.value)}" if sentence else e.message
    return field_message(message)


def clipped(value, limit=100, quote=True):
    """A value for a message: repr'd (or not) and cut short, so a hostile key cannot bloat stderr."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def field_message(message):
    if message.startswith("data."):
        return message[len("data."):]
    if message.startswith("data "):
        return "config " + message[len("data "):]
    return message


def parse_cidr(text, field, code=ERR_INVALID_CONFIG):
    """'10.9.0.0/16' -> an ipaddress network: the one rule for every prefix in a config or
    a result (subnets, exclusions, route destinations). It must carry its prefix length
    (libcni refuses a result without one) and no host bits (which the reference ignores
    in one place and the kernel refuses in another): code 7 naming the field, saying
    what was probably meant."""
    import ipaddress
    if not isinstance(text, str):
        raise CniError(code, f"{field}: {text!r} is not a CIDR (address/prefix)")
    if "/" not in text:
        try:
            bits = ipaddress.ip_address(text).max_prefixlen
        except ValueError:
            raise CniError(code, f"{field}: {text!r} is not a CIDR (address/prefix)") from None
        raise CniError(code, f"{field}: {text!r} is not a CIDR: the prefix length is missing "
                             f"(address/prefix, e.g. {text}/{bits} for this address alone)")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CniError(code, f"{field}: {text!r} is not a valid CIDR (address/prefix)") from None
    raise CniError(code, f"{field}: {text} has host bits set; for a /{network.prefixlen} "
                         f"the network address is {network.network_address} ({network})")

