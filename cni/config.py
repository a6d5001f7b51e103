"""Network config checks shared by the plugins.

The JSON Schemas in conf/schema are the source of truth; the plugins run the
validators generated from them ahead of time (build/gen_validators.py), which
cost ~0.3 ms to import instead of jsonschema's ~60 ms.
"""

import importlib

from cni.contract import ERR_INVALID_CONFIG, CniError


def validate(schema, config):
    """Check config against conf/schema/<schema>.json; code 7 naming the field."""
    module = importlib.import_module("cni.schemas." + schema.replace("-", "_"))
    try:
        module.validate(config)
    except module.JsonSchemaValueException as e:
        raise CniError(ERR_INVALID_CONFIG, f"invalid network config: {field_message(e.message)}",
                       f"rule: {e.rule}") from None


def field_message(message):
    """fastjsonschema says 'data.ipam.ranges[0] must be array'; we say 'ipam.ranges[0] must be array'."""
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

