"""The error a plugin reports to the runtime, and its codes.

Every module of cni/ and ipam/ takes CniError and the codes from here. This
module imports nothing of the project (tests/unit/test_imports.py holds it
to that), so it can sit under everything without closing an import circle.
"""

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
ERR_NO_GATEWAY = 104         # gatewayDetection: a gateway did not answer (wrong master, VLAN not trunked)
ERR_INTERNAL = 999


class CniError(Exception):
    """An error the plugin reports to the runtime as CNI error JSON."""

    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def config_error(field, problem):
    return CniError(ERR_INVALID_CONFIG, f"{field}: {problem}")
