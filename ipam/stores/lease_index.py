"""host-local's attachment index and its healing, beside the reference's lease files.

One addition the reference ignores (it reads it but never matches it):
  .underlay-index/<containerID>@<ifname>   "containerID\\r\\nifname\\r\\nnetns\\r\\n<ip>..." per attachment
  .underlay-index/.stamp                    "2 <mtime> <boot>": the index format, the network
                                            directory's mtime as our last commit left it, the boot ID
  .underlay-index/!conflicts                "!conflicts\\r\\n<ip>..." the addresses holding a conflict
                                            record (ipam/stores/holds.py), so ADD finds them unread

The index makes DEL, CHECK and GC O(attachment) instead of reading every lease.
It is trusted only while the directory's mtime equals the stamp: any write we did
not finish (a crash) or did not make (the reference plugin) changes the mtime,
and the index is rebuilt from the lease files. An index file that does not parse
(torn by a power loss: index writes are not fsync'ed) rebuilds it too. Lease
files are the truth; the index only ever names them.

Healing after a reboot: the index records the netns path of each attachment our
ADD made, and the stamp the boot ID (/proc/sys/kernel/random/boot_id) it was
written under. The first operation after a new boot rebuilds the index and
releases the leases of attachments whose netns no longer exists (no pod survives
a reboot; a netns path that still opens is kept all the same). Leases with no
recorded netns (written by the reference plugin, or by a runtime that gave no
CNI_NETNS) are kept and left to GC.
"""

import os
import re

from cni.contract import check_container_id, check_ifname
from cni.errors import CniError
from cni.files import boot_id, overwrite, remove, replace
from ipam.stores.lease_files import NOFOLLOW, is_ip, io_error, open_dir

INDEX_DIR = ".underlay-index"
STAMP = ".stamp"
CONFLICTS = "!conflicts"     # no container ID starts with "!": never an attachment's name
INDEX_FORMAT = "2"
BOOT_ID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def index_name(container_id, ifname):
    # container IDs never hold '@' (CNI_CONTAINERID pattern), so the first '@' splits;
    # "id@" is a lease of an old version that recorded no ifname.
    return f"{container_id}@{ifname or ''}"


def index_content(container_id, ifname, ips, netns=None):
    return "\r\n".join([container_id, ifname or "", netns or ""] + list(ips)).encode()


def parse_index(name, data):
    """An index file -> (containerID, ifname or None, netns, [ip, ...]); None if it is torn."""
    lines = data.decode(errors="replace").split("\r\n") if data else []
    if len(lines) < 4 or index_name(lines[0], lines[1] or None) != name or not all(map(is_ip, lines[3:])):
        return None
    return lines[0], lines[1] or None, lines[2], lines[3:]


def parse_stamp(data):
    """(format, mtime, boot ID or "-") of the stamp; Nones for a missing or torn one
    (a torn stamp is no proof of a reboot)."""
    fields = data.decode(errors="replace").split() if data else []
    if len(fields) == 3 and fields[0] == INDEX_FORMAT and fields[1].isdigit() and \
            (fields[2] == "-" or BOOT_ID_FORM.match(fields[2])):
        return tuple(fields)
    return None, None, None


def recordable_netns(path):
    """The netns path worth recording for healing (an absolute path on one line), else None."""
    return path if isinstance(path, str) and path.startswith("/") and "\r" not in path and "\n" not in path \
        else None


def netns_gone(path):
    """True only when `path` is certainly no network namespace any more."""
    from cni.net import netns  # only after a reboot: keeps it off the common path
    try:
        os.close(netns.open_netns(path))
    except (netns.NetnsNotFound, netns.NotANetns):
        return True
    except netns.NetnsError:
        return False  # unreadable is not gone
    return False


class TornIndex(Exception):
    pass


def indexable(owner):
    """Only owners the CNI rules allow get index files: a lease's content must never pick a path."""
    container_id, ifname = owner
    try:
        check_container_id(container_id)
        if ifname is not None:
            check_ifname(ifname)
        return True
    except CniError:
        return False


class AttachmentIndex:
    """The index of one network's LeaseFiles; used only while they are locked."""

    def __init__(self, files):
        self.files = files
        try:
            self.index_fd = open_dir(INDEX_DIR, dir_fd=files.dir_fd)
        except OSError as e:
            raise io_error(f"ipam.dataDir {files.path}", e) from None
        self.boot_id = ""      # the boot the index is stamped for

    def close(self):
        if self.index_fd is not None:
            os.close(self.index_fd)
            self.index_fd = None

    def _entry(self, name):
        """The parsed index file `name`, None if there is none; TornIndex if it does not parse."""
        data = self.files._read(name, self.index_fd)
        if data is None:
            return None
        entry = parse_index(name, data)
        if entry is None:
            raise TornIndex(name)
        return entry

    def _rebuilt_if_torn(self, read):
        try:
            return read()
        except TornIndex:
            self.rebuild_index()
            return read()

    def entry(self, container_id, ifname):
        """(netns, [ip, ...]) indexed for exactly (container_id, ifname or None), or None."""
        entry = self._rebuilt_if_torn(lambda: self._entry(index_name(container_id, ifname)))
        return entry[2:] if entry else None

    def record(self, container_id, ifname, ips, netns=None):
        """Index the addresses of (container_id, ifname), with its netns path when it is absolute."""
        name = index_name(container_id, ifname)
        if ips:
            netns = recordable_netns(netns)
            replace(name, index_content(container_id, ifname, ips, netns), self.index_fd)
        else:
            remove(name, self.index_fd)

    def forget(self, container_id, ifname):
        """Drop the index entry of exactly (container_id, ifname or None)."""
        remove(index_name(container_id, ifname), self.index_fd)

    def conflict_ips(self):
        """The addresses indexed as holding a conflict record."""
        data = self.files._read(CONFLICTS, self.index_fd)
        lines = data.decode(errors="replace").split("\r\n") if data else []
        return [ip for ip in lines[1:] if is_ip(ip)]

    def record_conflicts(self, ips):
        if ips:
            replace(CONFLICTS, "\r\n".join([CONFLICTS] + sorted(ips)).encode(), self.index_fd)
        else:
            remove(CONFLICTS, self.index_fd)

    def entries(self):
        """{(containerID, ifname or None): (netns, [ip, ...])} from the index."""
        def read():
            result = {}
            for name in os.listdir(self.index_fd):
                if not name.startswith((".", "!")):
                    entry = self._entry(name)
                    if entry:
                        result[entry[:2]] = entry[2:]
            return result
        return self._rebuilt_if_torn(read)

    def commit(self):
        """Mark the index as matching the lease files as they are now."""
        self.files.drop_lease_tmp()
        dir_fd = self.files.dir_fd
        # The kernel may stamp directory changes with a clock that ticks only every few
        # ms, so a change made right after ours (the reference plugin; a writer of ours
        # that then crashed) could leave the mtime as it is now. Set it 1 ns into the
        # past and stamp that: any later change gets a newer time and is noticed.
        st = os.fstat(dir_fd)
        os.utime(dir_fd, ns=(st.st_atime_ns, st.st_mtime_ns - 1))
        # stamp what the filesystem stored: one with coarser times rounds down further
        stamp = f"{INDEX_FORMAT} {os.fstat(dir_fd).st_mtime_ns} {self.boot_id or '-'}"
        # in place: a torn stamp (the new one with the old one's tail) does not parse: rebuilt next time
        overwrite(STAMP, stamp.encode(), self.index_fd)

    def ensure_index(self):
        now = boot_id()
        _, mtime, boot = parse_stamp(self.files._read(STAMP, self.index_fd))
        if mtime == str(os.fstat(self.files.dir_fd).st_mtime_ns) and boot == (now or "-"):
            self.boot_id = now
            return
        rebooted = boot not in (None, "-") and now and boot != now
        # a new boot is stamped only once healed: a kill in between heals again next time
        self.boot_id = boot if rebooted else now
        self.rebuild_index()   # after a power loss the index may have lost files: always rebuild
        if rebooted:
            self.reclaim_dead_netns()
            self.boot_id = now
            self.commit()

    def reclaim_dead_netns(self, gone=netns_gone):
        """Release the leases of attachments whose recorded netns `gone(path)` says is gone: after
        a reboot (netns_gone), and underlayd's healing (its own judgement). What was released:
        [(containerID, ifname or None, netns, [ip, ...])]."""
        released = []
        for (container_id, ifname), (netns, ips) in self.entries().items():
            if netns and gone(netns):
                for ip in ips:
                    self.files.release(ip, container_id, ifname)
                self.forget(container_id, ifname)
                released.append((container_id, ifname, netns, ips))
        return released

    def rebuild_index(self):
        """Rebuild the index from the lease files; drop debris of killed writers.
        Index files already right are left as they are (a crash touches a few), and
        the netns paths recorded survive."""
        files = self.files
        files.drop_debris()
        old = {}
        for name in os.listdir(self.index_fd):
            if name in (STAMP, CONFLICTS):
                continue
            try:
                old[name] = None if name.startswith(".") else parse_index(name, files._read(name, self.index_fd))
            except (CniError, OSError):
                old[name] = None  # a symlink or a directory planted here
            if old[name] is None:
                remove(name, self.index_fd)
        owners = {}
        leases, conflicts = files.records()
        self.record_conflicts(list(conflicts))
        for ip, owner in leases.items():
            if owner is None:
                files.unlink_lease(ip)  # an empty lease (reference #498) belongs to nobody
            elif indexable(owner):
                owners.setdefault(owner, []).append(ip)
            # else: a lease no CNI runtime could have written; it stays taken, untouched
        for (container_id, ifname), ips in owners.items():
            name = index_name(container_id, ifname)
            entry = old.pop(name, None)
            if entry is not None and sorted(entry[3]) == sorted(ips):
                continue
            # written in place, not via rename: the stamp comes last, so a rebuild cut
            # short (even in the middle of a file) is redone by the next operation
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o600, dir_fd=self.index_fd)
            try:
                os.write(fd, index_content(container_id, ifname, ips, entry[2] if entry else None))
            finally:
                os.close(fd)
        for name in old:
            remove(name, self.index_fd)  # no lease left for it
        self.commit()
