"""What every lease store shares of conflict holds and reuse cool-downs: the one clock, and the
conflict record.

A conflict record is an address someone else on the LAN answered for (conflictDetection): taken
from the attachment that was just given it, held by the IPAM with the answering MAC from `since`
until `until` (epoch seconds), never handed out meanwhile, never an attachment's lease (DEL and GC
leave it alone). Once `until` is past, the next ADD gives it back (verbs.give_back_conflicts).

A cooling address is one released less than reuseCooldown seconds ago: free, but not handed out
dynamically before then (a requested address and a sticky pod's own address are, see README).
"""

import time


def now():
    """The stores' and the IPAM verbs' clock (epoch seconds): the one place tests move time."""
    return time.time()


def seconds_text(t):
    return f"{t:.3f}"


class Conflict(tuple):
    """One conflict record: (mac, since, until)."""

    __slots__ = ()

    def __new__(cls, mac, since, until):
        return tuple.__new__(cls, (mac, float(since), float(until)))

    mac = property(lambda self: self[0])
    since = property(lambda self: self[1])
    until = property(lambda self: self[2])

    def held(self, at):
        """Still held at time `at` (else it is due to be given back)."""
        return self.until > at

    def doc(self):
        return {"mac": self.mac, "since": round(self.since, 3), "until": round(self.until, 3)}

    def __repr__(self):
        return f"Conflict{tuple.__repr__(self)}"


def conflict_from_doc(doc):
    """The Conflict of a JSON record ({"mac", "since", "until", ...}); None if it is not one."""
    try:
        return Conflict(str(doc["mac"]), doc["since"], doc["until"])
    except (KeyError, TypeError, ValueError):
        return None


def check_mac(mac):
    """The answering MAC as recorded: printable, one line, short (it lands in files and etcd keys' values)."""
    if not isinstance(mac, str) or not mac or len(mac) > 64 or not mac.isprintable() or " " in mac:
        raise ValueError(f"{mac!r} is not a MAC address")
    return mac.lower()
