"""One DHCP lease as the client holds it: what the server granted, when, and whose attachment it is.

Times are wall-clock (time.time()): a record written to disk must still say when the lease
expires after underlayd restarts, which a monotonic clock cannot.
"""

import dataclasses


@dataclasses.dataclass
class Lease:
    family: int                 # 4 or 6
    address: str                # "10.88.0.23" / "2001:db8::17"
    prefixlen: int              # v4: option 1 (subnet mask); v6: `prefixLength6` of the config (default 64)
    server_id: str              # v4: option 54 as dotted quad; v6: server DUID as hex
    server_address: str         # where renewals are unicast (v4: option 54 address; v6: the server's source address)
    routers: list               # v4 option 3, in order
    routes: list                # [{"dst": "a.b.c.d/n", "gw": "..."}]: option 121 (when present, option 3 ignored)
    dns: dict                   # {"nameservers": [...], "domain": "...", "search": [...]}: 6, 15, 119 / v6 23, 24
    lease_time: int             # seconds (v4 option 51; v6 IA address valid lifetime)
    t1: int                     # seconds (v4 option 58, default lease_time/2; v6 IA_NA T1, 0 -> lease_time/2)
    t2: int                     # seconds (v4 option 59, default lease_time*7/8; v6 IA_NA T2, 0 -> lease_time*4/5)
    bound_at: float             # time.time() when the ACK/Reply arrived (wall clock: survives a restart)
    client_id: str              # hex: v4 option 61 (type 255 + IAID + DUID, RFC 4361) / v6 client DUID
    iaid: int                   # v4 (in client_id) and v6 IA_NA
    mac: str
    ifname: str
    netns: str                  # the pod netns path as the runtime gave it
    hostname: str = None        # sent as option 12 (v4) / FQDN 39 (v6) in every request when set
    container_id: str = ""      # with network and ifname: whose attachment this is
    network: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d) -> "Lease":
        """The Lease a to_json() dict describes; keys this version does not know are ignored (a newer
        agent's record), a missing required one raises TypeError, a wrong type ValueError."""
        if not isinstance(d, dict):
            raise ValueError("a lease record is a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        lease = cls(**{k: v for k, v in d.items() if k in known})
        lease.check()
        return lease

    def check(self):
        """ValueError naming the first field whose value is of the wrong kind."""
        for field, kinds in _KINDS.items():
            value = getattr(self, field)
            if not isinstance(value, kinds) or isinstance(value, bool):   # True is an int, never a field's value
                raise ValueError(f"lease field {field!r} has a wrong value: {value!r}")
        if self.family not in (4, 6):
            raise ValueError(f"lease field 'family' has a wrong value: {self.family!r}")

    def expires_at(self) -> float:
        return self.bound_at + self.lease_time

    def renew_at(self) -> float:
        return self.bound_at + self.t1

    def rebind_at(self) -> float:
        return self.bound_at + self.t2


_KINDS = {
    "family": int, "address": str, "prefixlen": int, "server_id": str, "server_address": str,
    "routers": list, "routes": list, "dns": dict, "lease_time": int, "t1": int, "t2": int,
    "bound_at": (int, float), "client_id": str, "iaid": int, "mac": str, "ifname": str, "netns": str,
    "hostname": (str, type(None)), "container_id": str, "network": str,
}


def default_t1(lease_time):
    return lease_time // 2


def default_t2(lease_time, family=4):
    """RFC 2131 4.4.5: 0.875 * lease; RFC 8415 21.4 (T2 0 left to the client): 0.8 * lease."""
    return lease_time * 7 // 8 if family == 4 else lease_time * 4 // 5
