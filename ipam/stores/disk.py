"""The lease store protocol the allocator and the IPAM verbs work over, and host-local's file store.

Stores (modelled on the reference plugin's 7-method Store, backend/store.go):

    with store:                      lock: one writer per network (and make the state trustworthy);
                                     leaving the block cleanly makes what was done durable, then unlocks
    store.reserve(ip, containerID, ifname, set_index=None) -> bool
                                     claim ip if nobody holds it; with set_index, it becomes the range
                                     set's last reserved address (round-robin resumes after it)
    store.last_reserved(set_index) -> str | None
    store.release(ip, containerID, ifname)
                                     drop the lease of ip if it is held by that attachment (an old
                                     lease with no ifname matches any ifname)
    store.ips_of(containerID, ifname) -> [ip, ...]
    store.attachments() -> {(containerID, ifname or None): [ip, ...]}
    store.close()                    release what the store holds without committing

and two reads the allocator's error messages and STATUS need: `owner(ip)` ->
(containerID, ifname or None) or None, and `leased()` -> the set of every leased
address. Addresses are strings as ipaddress prints them.

Implementations: DiskStore below (host-local), MemoryStore (ipam/stores/memory.py),
EtcdStore (ipam/stores/etcd.py, cluster-ipam). tests/cluster/test_store_contract.py
holds every store to this.
"""

from ipam.stores.lease_files import LeaseFiles, io_error
from ipam.stores.lease_index import INDEX_DIR, STAMP, AttachmentIndex  # noqa: F401 (the tests' paths)


class DiskStore:
    """Lease files plus the attachment index, kept in step: every reserve and release
    is noted against its attachment and the index is written when the block ends."""

    Index = AttachmentIndex    # a reader that must never repair the index substitutes its own

    def __init__(self, data_dir, network, lock_timeout=10.0, netns=None):
        self.files = LeaseFiles(data_dir, network, lock_timeout)
        try:
            self.index = self.Index(self.files)
        except BaseException:
            self.files.close()
            raise
        self.path = self.files.path
        self.netns = netns     # recorded for the attachments this store reserves for (healing)
        self.pending = {}      # (containerID, ifname or None) -> [netns, [ip, ...]] to write to the index
        self.touched = False   # anything written: the index must be committed

    def close(self):
        self.index.close()
        self.files.close()

    def lock(self):
        """The flock alone (a reader's); `with store:` also makes the index trustworthy."""
        self.files.lock()

    def __enter__(self):
        try:
            self.lock()
            self.index.ensure_index()
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, exc_type=None, exc=None, tb=None):
        try:
            if exc is None and self.files.dir_fd is not None and self.touched:
                self.flush()
            elif self.files.dir_fd is not None:
                # a failure half way is never stamped: the next operation rebuilds the index
                self.files.drop_lease_tmp()
        except OSError as e:
            exc = exc or e
        finally:
            self.close()  # closing the lock fd drops the flock
        if isinstance(exc, OSError):
            # a write the kernel refused (ENOSPC, EROFS, EIO...) is an I/O error, not an internal one
            raise io_error(f"host-local store {self.path}", exc) from exc
        return False

    def flush(self):
        for (container_id, ifname), (netns, ips) in self.pending.items():
            if ips:
                self.index.record(container_id, ifname, ips, netns)
            else:
                self.index.forget(container_id, ifname)
        self.pending = {}
        self.index.commit()

    def _pending(self, container_id, ifname):
        key = (container_id, ifname)
        if key not in self.pending:
            netns, ips = self.index.entry(container_id, ifname) or (None, [])
            self.pending[key] = [netns, list(ips)]
        return self.pending[key]

    # -- the protocol -------------------------------------------------------

    def reserve(self, ip, container_id, ifname, set_index=None):
        self.touched = True
        if not self.files.reserve(ip, container_id, ifname):
            return False
        entry = self._pending(container_id, ifname)
        entry[0] = self.netns
        entry[1].append(ip)
        if set_index is not None:
            self.files.set_last_reserved(set_index, ip)
        return True

    def last_reserved(self, set_index):
        return self.files.last_reserved(set_index)

    def release(self, ip, container_id, ifname):
        self.touched = True
        self.files.release(ip, container_id, ifname)
        for key in {ifname, None}:
            entry = self._pending(container_id, key)
            if ip in entry[1]:
                entry[1].remove(ip)

    def ips_of(self, container_id, ifname):
        """Addresses leased to (container_id, ifname), including old id-only leases."""
        ips = []
        for key in (ifname, None) if ifname is not None else (None,):
            if (container_id, key) in self.pending:
                ips += self.pending[(container_id, key)][1]
            else:
                ips += (self.index.entry(container_id, key) or (None, []))[1]
        return ips

    def attachments(self):
        found = {owner: ips for owner, (_, ips) in self.index.entries().items()}
        for owner, (_, ips) in self.pending.items():
            found[owner] = list(ips)
        return {owner: ips for owner, ips in found.items() if ips}

    def owner(self, ip):
        return self.files.owner(ip)

    def leased(self):
        """Every lease file's name (a listing, no reads)."""
        return self.files.lease_names()
