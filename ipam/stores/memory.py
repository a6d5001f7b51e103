"""A store of the ipam/stores/disk.py protocol kept in memory: for allocator tests and simulations.

It behaves as the file store does, ifname included (the reference's fake store
ignores it and so differs from the real one). Several MemoryStores may share one
`Leases` backing, as several processes share a data directory.
"""

import threading


class Leases:
    """The shared state: {ip: (containerID, ifname or None)}, {set_index: ip} and a lock."""

    def __init__(self, leases=None, last=None):
        self.leases = dict(leases or {})
        self.last = dict(last or {})
        self.lock = threading.Lock()


class MemoryStore:
    def __init__(self, backing=None):
        self.backing = backing if backing is not None else Leases()
        self.leases = self.backing.leases
        self.last = self.backing.last
        self.locked = False

    def __enter__(self):
        self.backing.lock.acquire()
        self.locked = True
        return self

    def __exit__(self, exc_type=None, exc=None, tb=None):
        self.close()
        return False

    def close(self):
        if self.locked:
            self.locked = False
            self.backing.lock.release()

    def reserve(self, ip, container_id, ifname, set_index=None):
        if ip in self.leases:
            return False
        self.leases[ip] = (container_id, ifname)
        if set_index is not None:
            self.last[set_index] = ip
        return True

    def last_reserved(self, set_index):
        return self.last.get(set_index)

    def release(self, ip, container_id, ifname):
        owner = self.leases.get(ip)
        if owner is not None and owner[0] == container_id and owner[1] in (ifname, None):
            del self.leases[ip]

    def ips_of(self, container_id, ifname):
        return [ip for ip, (cid, i) in self.leases.items() if cid == container_id and i in (ifname, None)]

    def attachments(self):
        found = {}
        for ip, owner in self.leases.items():
            found.setdefault(owner, []).append(ip)
        return found

    def owner(self, ip):
        return self.leases.get(ip)

    def leased(self):
        return set(self.leases)
