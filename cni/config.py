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
