"""DHCP exchanges on sockets inside a pod netns (the socket choice is described below, once built).

acquire/release block (a worker serving one CNI invocation); Exchange is one renew, rebind or
reboot that never blocks (underlayd's renewer polls its fileno and calls timer at due()).
"""

from typing import NamedTuple, Optional

from ipam.dhcp.lease import Lease


class Identity(NamedTuple):
    """Who asks: stable for the attachment."""
    mac: str
    client_id: bytes
    iaid: int
    hostname: Optional[str]


class Options(NamedTuple):
    """What the config asks for."""
    request: tuple = ()         # extra option codes to ask for (parameter request list / ORO)
    send: tuple = ()            # extra (code, bytes) options to send ("provide" with value/fromArg, resolved)
    broadcast: bool = True      # BOOTP broadcast flag on DISCOVER/REQUEST (ipvlan shares the MAC)
    prefixlen6: int = 64


class DhcpError(Exception):
    """Base of the client's errors; .msg names what happened."""

    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg


class NoAnswer(DhcpError):
    """No server answered within the time."""


class Declined(DhcpError):
    """The server said no: a NAK, or a v6 status code (NoAddrsAvail, NoBinding, ...)."""


def acquire(netns_fd, ifname, family, identity, options, timeout) -> Lease:
    """A new lease on `ifname` in the netns `netns_fd` (the link is up): DISCOVER/OFFER/REQUEST/ACK,
    v6 Solicit/Advertise/Request/Reply, retransmitted with backoff; NoAnswer after `timeout` seconds."""
    raise NotImplementedError


def release(netns_fd, lease) -> None:
    """DHCPRELEASE (v6 Release) from the leased address to the server that granted it; sent once,
    best effort."""
    raise NotImplementedError


class Exchange:
    """One renew / rebind / reboot (INIT-REBOOT: ask for the same address again) in flight, non-blocking."""

    def __init__(self, netns_fd, lease, kind, options, now):
        raise NotImplementedError

    def fileno(self) -> int:
        raise NotImplementedError

    def due(self) -> float:
        """time.monotonic() of the next retransmit or of giving up."""
        raise NotImplementedError

    def readable(self) -> Optional[Lease]:
        """The renewed Lease on a matching ACK/Reply; Declined on a NAK; None: not ours or not yet."""
        raise NotImplementedError

    def timer(self, now) -> bool:
        """Retransmit if it is time; False once this attempt gives up (no answer)."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError
