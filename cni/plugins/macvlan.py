"""macvlan: give a pod a macvlan child of a node interface, straight on its network.

Modes bridge (default), private, vepa and passthru; a fixed MAC from
runtimeConfig.mac, CNI_ARGS MAC= or `mac`, in that order; `bcqueuelen`.
The ADD/DEL/CHECK story is cni/plugins/child_link.py's.

Run from a checkout: `python3 -m cni.plugins.macvlan` with the CNI_* environment.
"""

import errno

from cni.plugins import child_link
from cni.net import iface, netlink
from cni.errors import ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_LINK, ERR_UNSUPPORTED_FIELD, CniError

ARPHRD_ETHER = 1


class Conf(child_link.Conf):
    def __init__(self, request, strict=True):
        super().__init__(request, "macvlan", "bridge", strict)
        self.bcqueuelen = request.config.get("bcqueuelen")
        self.mac = self._mac(request) if strict else None
        if strict and self.mode == "passthru" and self.shim:
            raise CniError(ERR_INVALID_CONFIG, "hostShim: cannot be used with mode passthru: passthru takes "
                                               "the master for one attachment, leaving none for the shim")

    def _mac(self, request):
        """MAC priority: runtimeConfig.mac > CNI_ARGS MAC= > mac."""
        runtime = request.config.get("runtimeConfig") or {}
        for field, value, code in (("runtimeConfig.mac", runtime.get("mac"), ERR_INVALID_CONFIG),
                                   ("CNI_ARGS MAC", request.args.get("MAC"), ERR_INVALID_ENV),
                                   ("mac", request.config.get("mac"), ERR_INVALID_CONFIG)):
            if not value:
                continue
            if self.mode == "passthru":
                # the kernel would pass the new MAC on to the master itself, and no DEL undoes that
                raise CniError(ERR_UNSUPPORTED_FIELD, f"{field}: a passthru macvlan has the master's MAC "
                                                      "address; a MAC cannot be set (it would change the master's)")
            return child_link.check_mac(value, field, code)
        return None


class Macvlan(child_link.Kind):
    name = "macvlan"
    other = "ipvlan"

    def load(self, request, strict=True):
        return Conf(request, strict)

    def link_data(self, conf):
        data = {"IFLA_MACVLAN_MODE": netlink.MACVLAN_MODES[conf.mode]}
        if conf.bcqueuelen is not None:
            data["IFLA_MACVLAN_BC_QUEUE_LEN"] = conf.bcqueuelen
        return data

    def shim_data(self, conf):
        return {"IFLA_MACVLAN_MODE": netlink.MACVLAN_MODES["bridge"]}

    def mac(self, conf):
        return conf.mac

    def check_link(self, link, conf):
        mode = link.data.get("IFLA_MACVLAN_MODE")
        if mode != netlink.MACVLAN_MODES[conf.mode]:
            names = {v: k for k, v in netlink.MACVLAN_MODES.items()}
            raise iface.check_error(f"interface {link.name}: mode {names.get(mode, mode)}, config says {conf.mode}")

    def create_error(self, error, conf, master):
        # With the MTU checked and an Ethernet master, EINVAL is the kernel's "one passthru child
        # per master" rule (macvlan_common_newlink), whichever side came first.
        if error.errno == errno.EINVAL and master.type == ARPHRD_ETHER:
            if conf.mode == "passthru":
                return CniError(ERR_LINK, f"master {master.name}: passthru takes the master for one attachment "
                                          "and it already has a macvlan child (passthru or not)")
            return CniError(ERR_LINK, f"master {master.name}: held by a passthru macvlan, which takes the master "
                                      f"for one attachment; a {conf.mode} macvlan cannot share it")
        return super().create_error(error, conf, master)

KIND = Macvlan()
VERBS = child_link.verbs(KIND)
load_config = KIND.load   # the config, checked as ADD checks it (cni/registry.py)


def main():
    child_link.main(KIND)


if __name__ == "__main__":
    main()
