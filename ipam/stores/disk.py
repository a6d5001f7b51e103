"""host-local's file store: a lease store (ipam/stores/protocols.py LeaseStore) of lease files and the
attachment index, kept in step.

Beside the protocol, `lock()` takes the flock alone (a reader's: the operator command).
"""

from ipam.stores import holds
from ipam.stores.lease_files import LeaseFiles, io_error
from ipam.stores.lease_index import INDEX_DIR, STAMP, AttachmentIndex  # noqa: F401 (the tests' paths)


class DiskStore:
    """Lease files plus the attachment index, kept in step: every reserve and release
    is noted against its attachment and the index is written when the block ends."""

    Index = AttachmentIndex    # a reader that must never repair the index substitutes its own

    def __init__(self, data_dir, network, lock_timeout=10.0, netns=None, reuse_cooldown=0):
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
        self.reuse_cooldown = reuse_cooldown
        self.held = None       # the addresses holding conflict records, once read (a set)
        self.held_as_read = None   # ... as read: the index's list is written only when they differ
        self.released = None  # {ip: release time} once read, with reuse_cooldown

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
        if self.held is not None and self.held != self.held_as_read:
            self.index.record_conflicts(self.held)
        if self.released is not None:
            now = holds.now()
            self.files.write_released({ip: t for ip, t in self.released.items() if t + self.reuse_cooldown > now})
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
        if self.reuse_cooldown and ip in self._released():
            del self.released[ip]      # leased again: no longer cooling
        return True

    def last_reserved(self, set_index):
        return self.files.last_reserved(set_index)

    def release(self, ip, container_id, ifname):
        self.touched = True
        if self.files.release(ip, container_id, ifname) and self.reuse_cooldown:
            self._released()[ip] = holds.now()
        self._unindex(ip, container_id, ifname)

    def _unindex(self, ip, container_id, ifname):
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

    def hold_conflict(self, ip, container_id, ifname, mac, seconds):
        owner = self.files.owner(ip)
        if owner is None or owner[0] != container_id or owner[1] not in (ifname, None):
            return False
        self.touched = True
        since = holds.now()
        self.files.write_conflict(ip, holds.Conflict(holds.check_mac(mac), since, since + seconds))
        self._held().add(ip)
        self._unindex(ip, container_id, ifname)
        return True

    def conflicts(self):
        found = {}
        for ip in sorted(self._held()):
            conflict = self.files.conflict(ip)
            if conflict is not None:
                found[ip] = conflict
        return found

    def release_conflict(self, ip):
        if ip not in self._held() or self.files.conflict(ip) is None:
            return False
        self.touched = True
        self.files.unlink_lease(ip)
        self.held.discard(ip)
        return True

    def cooling(self):
        if not self.reuse_cooldown:
            return {}
        now = holds.now()
        return {ip: t + self.reuse_cooldown for ip, t in self._released().items() if t + self.reuse_cooldown > now}

    def _held(self):
        if self.held is None:
            self.held = set(self.index.conflict_ips())
            self.held_as_read = frozenset(self.held)
        return self.held

    def _released(self):
        if self.released is None:
            self.released = self.files.released()
        return self.released

    def reclaim_dead_netns(self, gone):
        """underlayd's healing: AttachmentIndex.reclaim_dead_netns, committed as the block ends."""
        released = self.index.reclaim_dead_netns(gone)
        self.touched = self.touched or bool(released)
        return released

    def leased(self):
        """Every lease file's name, conflict records' included (a listing, no reads)."""
        return self.files.lease_names()
