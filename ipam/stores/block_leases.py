"""What every block store (ipam/stores/protocols.py BlockStore) shares: the lease record, and the lease
store made of the block store's own operations (so the etcd and the memory store cannot differ there).

A lease (or a sticky hold) of one address is a JSON object: {network, containerID, ifname, node,
namespace, pod, time, pool, block}; a hold: {sticky, network, namespace, pod, until, pool, block, node,
released}; a conflict record (ipam/stores/holds.py): {conflict, network, node, mac, since, until, pool,
block}, its address `used` in its block until given back. Its bytes are kept as written: a release is
conditioned on the very lease it read. Time is ipam/stores/holds.py's clock.
"""

import ipaddress
import json
import time

from cni.errors import ERR_INVALID_CONFIG, ERR_TRY_AGAIN, CniError
from ipam.stores import holds

# Claims and releases retried after losing a race on the block (others allocate in it too).
MAX_RACES = 200


def now_text(now):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


# <dataDir>/<network>/ADDING/<containerID>@<ifname>: an ADD of the attachment on this node that has not
# answered success (a block store's begin_add); empty, locked while that ADD runs
ADDING = "adding"


def contention(what):
    return CniError(ERR_TRY_AGAIN, f"try again later: the block of {what} kept changing under "
                                   f"{MAX_RACES} attempts")


def block_size_refused(grid, size):
    return CniError(ERR_INVALID_CONFIG, f"ipam.blockSize: pool {grid.range.subnet} is cut into /{size} "
                                        f"blocks by its first user; this network asks for /{grid.prefix}")


class CacheMissed(Exception):
    """An ADD started from the node's cache of its blocks (a store's start_cached) found, at its first
    claim, that etcd holds records of its attachment or conflict records of its network: nothing was
    claimed, and the ADD starts again with the first read."""


def parse(text):
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


class Lease:
    """One address's lease or hold as read."""

    def __init__(self, ip, raw):
        self.ip = ip
        self.raw = raw
        try:
            self.doc = json.loads(raw)
            if not isinstance(self.doc, dict):
                raise ValueError
        except ValueError:
            self.doc = {}

    @property
    def hold(self):
        return bool(self.doc.get("sticky"))

    @property
    def conflict(self):
        return self.doc.get("conflict") is True

    def owner(self):
        return None if self.hold or self.conflict else (self.doc.get("containerID"), self.doc.get("ifname"))

    def expired(self, now):
        until = self.doc.get("until")
        return self.hold and isinstance(until, (int, float)) and until <= now


def lease_doc(network, node, pod, grid, block, container_id, ifname):
    namespace, name = pod or (None, None)
    return {"network": network, "containerID": container_id, "ifname": ifname, "node": node,
            "namespace": namespace, "pod": name, "time": now_text(holds.now()),
            "pool": str(grid.range.subnet), "block": grid.key(block.first)}


def hold_doc(doc, sticky_seconds, node):
    """The hold a lease `doc` becomes on release, or None (no sticky, or no known pod). The hold is the
    pod's node's, as its lease was: also when release-node, run on another node, makes it."""
    namespace, pod = doc.get("namespace"), doc.get("pod")
    if not sticky_seconds or doc.get("sticky") or not (isinstance(namespace, str) and namespace
                                                       and isinstance(pod, str) and pod):
        return None
    now = holds.now()
    return {"sticky": True, "network": doc.get("network"), "namespace": namespace, "pod": pod,
            "until": round(now + sticky_seconds, 3), "pool": doc.get("pool"),
            "block": doc.get("block"), "node": doc.get("node") or node, "released": now_text(now)}


def conflict_doc(doc, mac, seconds, node):
    """The conflict record the lease `doc` becomes: its address, pool and block, the answering MAC."""
    conflict = holds.Conflict(holds.check_mac(mac), holds.now(), holds.now() + seconds)
    return dict(conflict.doc(), conflict=True, network=doc.get("network"), node=doc.get("node") or node,
                pool=doc.get("pool"), block=doc.get("block"))


def released_cooling(block, offset, lease, cooldown, now):
    """The block's cool-down record as a release of `lease` (to a sticky hold, or free) leaves it: a lease
    released cools from now (also into a sticky hold, for when the hold ends); a conflict given back
    is free at once; a hold dropped keeps the time its lease was released. Past ones are forgotten."""
    if lease.conflict:
        block.cooling.pop(offset, None)
    elif not lease.hold and cooldown:
        block.cooling[offset] = round(now, 3)
    block.prune_cooling(now, cooldown)


class BlockLeases:
    """The lease store protocol over a block store's operations (a base of each block store): reserve
    claims in the address's block, release drops the lease (leaving a hold with sticky)."""

    # each block store's own: grids (of its network's ranges), sticky_seconds (how long a released pod's
    # address is kept for it), foreign: {(version, value)} taken outside any block it read (an
    # overlapping pool's)

    def grid_of(self, version, value):
        return next((g for g in self.grids if g.range.version == version and g.range.in_subnet(value)), None)

    def reserve(self, ip, container_id, ifname, set_index=None):
        version, value = parse(ip)
        grid = self.grid_of(version, value)
        if grid is None:
            raise CniError(ERR_INVALID_CONFIG, f"{ip} is in no range of network {self.network}")
        for _ in range(MAX_RACES):
            block = self.block(grid, grid.first_of(value))
            if self.taken(grid, block, value, holds.now()):
                return False
            outcome = self.claim(grid, block, value, container_id, ifname)
            if outcome is not None:
                if outcome and set_index is not None:
                    self.set_last_reserved(set_index, ip)
                return outcome
        raise contention(ip)

    def release(self, ip, container_id, ifname, hold=True):
        lease = self.read(ip)
        if lease is None or lease.hold or lease.conflict or lease.doc.get("network") != self.network:
            self.forget(container_id, ifname, ip)   # a stale attachment record, if any
            return
        cid, lease_ifname = lease.owner()
        if cid != container_id or lease_ifname not in (ifname, None):
            return
        self.release_lease(lease, self.sticky_seconds if hold else None)

    def taken(self, grid, block, value, now):
        return block.taken(value, now) or (grid.range.version, value) in self.foreign

    def refused(self, grid, block, value, container_id, ifname, hold, current):
        """What a claim the store refused comes to, `block` refreshed and `current` the address's
        lease or hold now (None: free, so the block had changed): see claim."""
        if current is None:
            return None
        taken = Lease(grid.range.text(value), current)
        if hold is None and taken.expired(holds.now()) and block.revision:
            return self.claim(grid, block, value, container_id, ifname, taken)   # an expired hold: take it
        if hold is not None and taken.raw != hold.raw:
            return False
        if not block.taken(value, holds.now()):
            self.foreign.add((grid.range.version, value))   # held through a pool we did not read
            return False
        return False if hold is None else None

    def attachments(self):
        return {owner: ips for owner, (_, _, ips) in self.attachment_records().items()}

    def hold_conflict(self, ip, container_id, ifname, mac, seconds):
        lease = self.read(ip)
        if lease is None or lease.owner() is None or lease.doc.get("network") != self.network:
            return False
        cid, lease_ifname = lease.owner()
        if cid != container_id or lease_ifname not in (ifname, None):
            return False
        return self.make_conflict(lease, conflict_doc(lease.doc, mac, seconds, self.node))

    def release_conflict(self, ip):
        lease = self.read(ip)
        return lease is not None and lease.conflict and self.release_lease(lease, None)

    def cooling(self):
        if not self.reuse_cooldown:
            return {}
        now, found = holds.now(), {}
        for grid in self.grids:
            for block in self.blocks(grid).values():
                for offset, released in block.cooling.items():
                    value = block.first + offset
                    if released + self.reuse_cooldown > now and not block.taken(value, now):
                        found[grid.range.text(value)] = released + self.reuse_cooldown
        return found

    def owner(self, ip):
        lease = self.read(ip)
        return lease.owner() if lease is not None else None

    def leased(self):
        found = set()
        for grid in self.grids:
            for block in self.blocks(grid).values():
                found.update(grid.range.text(v) for v in block.values())
        return found | {str(ipaddress.IPv4Address(v) if ver == 4 else ipaddress.IPv6Address(v))
                        for ver, v in self.foreign}
