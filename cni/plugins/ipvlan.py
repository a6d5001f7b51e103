"""ipvlan: give a pod an ipvlan child of a node interface; children share its MAC.

Modes l2 (default), l3 and l3s; `flag` bridge (default), private or vepa, as
Docker's ipvlan_flag. In l3 and l3s the pod gets `default dev <ifname>` and no
gateway, as with Docker: the node needs a route to the pod subnet via the parent.
Chained mode: no ipam.type and a prevResult with IPs applies those IPs, and
with no master the single interface of prevResult is the master.
The ADD/DEL/CHECK story is cni/plugins/child_link.py's.

Run from a checkout: `python3 -m cni.plugins.ipvlan` with the CNI_* environment.
"""


from cni.plugins import child_link
from cni.net import iface, netlink
from cni.errors import ERR_INVALID_CONFIG, ERR_UNSUPPORTED_FIELD, CniError


class Conf(child_link.Conf):
    def __init__(self, request, strict=True):
        super().__init__(request, "ipvlan", "l2", strict)
        self.flag = request.config.get("flag") or "bridge"
        if strict and self.mode in ("l3", "l3s"):
            self.lan.refuse_without_l2(self.mode)
        runtime = request.config.get("runtimeConfig") or {}
        for field, value in (("mac", request.config.get("mac")), ("runtimeConfig.mac", runtime.get("mac")),
                             ("CNI_ARGS MAC", request.args.get("MAC"))):
            if strict and value:
                raise CniError(ERR_UNSUPPORTED_FIELD, f"{field}: ipvlan children share the master's MAC "
                                                      "address; a MAC cannot be set")


class Ipvlan(child_link.Kind):
    name = "ipvlan"
    other = "macvlan"

    def load(self, request, strict=True):
        return Conf(request, strict)

    def link_data(self, conf):
        return {"IFLA_IPVLAN_MODE": netlink.IPVLAN_MODES[conf.mode],
                "IFLA_IPVLAN_FLAGS": netlink.IPVLAN_FLAGS[conf.flag]}

    def shim_data(self, conf):
        return {"IFLA_IPVLAN_MODE": netlink.IPVLAN_MODES[conf.mode], "IFLA_IPVLAN_FLAGS": netlink.IPVLAN_FLAGS["bridge"]}

    def check_link(self, link, conf):
        for attr, table, wanted, what in (("IFLA_IPVLAN_MODE", netlink.IPVLAN_MODES, conf.mode, "mode"),
                                          ("IFLA_IPVLAN_FLAGS", netlink.IPVLAN_FLAGS, conf.flag, "flag")):
            value = link.data.get(attr, 0)
            if value != table[wanted]:
                names = {v: k for k, v in table.items()}
                raise iface.check_error(f"interface {link.name}: {what} {names.get(value, value)}, "
                                        f"config says {wanted}")

    # a reply to a probe (to 0.0.0.0) matches no child's address: the kernel hands it to the master
    hears_on_master = True

    def settings(self, conf):
        return f"mode {conf.mode}, flag {conf.flag}"

    def device_routes(self, conf):
        return conf.mode in ("l3", "l3s")

    def parent_for_chain(self, conf):
        if not conf.chained:
            return None
        names = [i.get("name") for i in conf.prev.get("interfaces") or []]
        if len(names) != 1 or not names[0]:
            raise CniError(ERR_INVALID_CONFIG, "master: not set, and prevResult does not have exactly one "
                                               f"named interface to use as master (it has {names})")
        return names[0]


KIND = Ipvlan()
VERBS = child_link.verbs(KIND)
load_config = KIND.load   # the config, checked as ADD checks it (cni/registry.py)


def main():
    child_link.main(KIND)


if __name__ == "__main__":
    main()
