"""The Twisted side of an ICE agent: its UDP sockets.

One UDP port per local base (address x component). Everything arriving on a port goes to the
agent first: STUN checks and responses, STUN/TURN server answers and TURN ChannelData are consumed
there (the first-byte demultiplexing of RFC 7983), and whatever is left (RTP/RTCP, or the peer
command's PINGs) comes back as :class:`~ice.agent.AppData` for the media layer. STUN, TURN and
media therefore share the socket ICE selected, as they must for the NAT binding to be the one the
checks opened.

Packet taps (:func:`add_tap`) see every datagram sent or received by every transport of the
process, as a capture on the host would: ``--pcap`` writes them to a file.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.protocol import DatagramProtocol

from ice.agent import Agent, AppData
from ice.candidate import LocalBase, Transmit
from ice.driver import CoreDriver, ReactorTime
from ice.events import IceEvent

log = logging.getLogger(__name__)

#: ``tap(data, local, remote, outgoing)``: one datagram as it left or reached a socket.
DatagramTap = Callable[[bytes, tuple[str, int], tuple[str, int], bool], None]
_taps: list[DatagramTap] = []


def add_tap(tap: DatagramTap) -> None:
    """Show every datagram of every ICE transport in this process to ``tap``."""
    _taps.append(tap)


def remove_tap(tap: DatagramTap) -> None:
    """Stop showing datagrams to ``tap`` (absent: nothing happens)."""
    if tap in _taps:
        _taps.remove(tap)


def _tap(data: bytes, local: tuple[str, int], remote: tuple[str, int], outgoing: bool) -> None:
    for tap in list(_taps):
        try:
            tap(data, local, remote, outgoing)
        except Exception:  # a capture must never break the call
            log.exception("packet tap failed")


class ListeningPort(Protocol):
    """The part of Twisted's ``IListeningPort`` + UDP transport used here."""

    def getHost(self) -> Any: ...
    def write(self, data: bytes, addr: tuple[str, int]) -> Any: ...
    def stopListening(self) -> Any: ...


class ReactorUDP(ReactorTime, Protocol):
    """A reactor that can open UDP ports (the real one, or the virtual network's hosts)."""

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "",
                  maxPacketSize: int = 8192) -> ListeningPort: ...


def _address(addr: Any) -> tuple[str, int]:
    # Twisted gives IPv6 sources as (host, port, flowinfo, scope_id).
    return (str(addr[0]), int(addr[1]))


class _BaseProtocol(DatagramProtocol):
    """Receives on one base and hands datagrams to the owning transport."""

    def __init__(self, owner: IceUdpTransport, base: LocalBase | None = None) -> None:
        self.owner = owner
        self.base = base

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.base is not None:
            self.owner.datagram_received(self.base, datagram, _address(addr))


class IceUdpTransport:
    """Owns the sockets of one agent and drives it on a reactor."""

    def __init__(self, agent: Agent, reactor: ReactorUDP, *,
                 on_event: Callable[[IceEvent], None] | None = None,
                 on_data: Callable[[AppData], None] | None = None) -> None:
        self.agent = agent
        self.reactor = reactor
        self.on_event = on_event or (lambda event: None)
        self.on_data = on_data or (lambda data: None)
        self.driver: CoreDriver[Transmit, IceEvent] = CoreDriver(
            agent, reactor, send=self._send, on_event=self._event)
        self._ports: dict[LocalBase, ListeningPort] = {}
        self.send_errors = 0
        #: Datagrams whose handling raised (a bug, never the peer's fault): logged, dropped.
        self.receive_errors = 0

    @property
    def bases(self) -> list[LocalBase]:
        """Local bases in the order they were bound."""
        return list(self._ports)

    def now(self) -> float:
        return self.driver.now()

    def bind(self, addresses: Sequence[str], *, components: int = 1,
             port: int = 0) -> list[LocalBase]:
        """Open one port per address and component and register each with the agent.

        ``port`` 0 lets the kernel choose; a fixed port is used for component 1 and the next
        ones for higher components (RTP/RTCP convention).
        """
        bound: list[LocalBase] = []
        for index, ip in enumerate(addresses):
            # RFC 8445 §5.1.2.1: distinct local preferences for a multihomed host, first
            # address preferred.
            local_preference = max(0, 65535 - 256 * index)
            for component in range(1, components + 1):
                proto = _BaseProtocol(self)
                wanted = port + component - 1 if port else 0
                listening = self.reactor.listenUDP(wanted, proto, interface=ip)
                host = listening.getHost()
                base = LocalBase(component=component, address=(ip, int(host.port)))
                proto.base = base
                self._ports[base] = listening
                self.agent.add_base(base, self.now(), local_preference=local_preference)
                bound.append(base)
        self.driver.poke()
        return bound

    def datagram_received(self, base: LocalBase, data: bytes, source: tuple[str, int]) -> None:
        if _taps:
            _tap(data, base.address, source, False)
        try:
            app = self.agent.receive(data, source, base, self.now())
            if app is not None:
                self.on_data(app)
        except Exception:  # neither the agent nor media may raise on input: keep the reactor
            self.receive_errors += 1
            log.exception("failed on a datagram from %s:%d", *source)
        self.driver.poke()

    def send(self, component: int, data: bytes) -> None:
        """Send application data over the component's selected pair."""
        self.agent.send(component, data, self.now())
        self.driver.poke()

    def send_to(self, base: LocalBase, data: bytes, dest: tuple[str, int]) -> None:
        """Send ``data`` from ``base``'s socket to any address, outside ICE: plain RTP to a peer
        without ICE (or after an ICE mismatch) still leaves from the sockets ICE gathered."""
        self._send(Transmit(data, dest, base))

    def poke(self) -> None:
        """Flush after a command was given to the agent directly."""
        self.driver.poke()

    def _event(self, event: IceEvent) -> None:
        self.on_event(event)

    def _send(self, transmit: Transmit) -> None:
        port = self._ports.get(transmit.via)
        if port is None:
            log.warning("no socket for base %s", transmit.via)
            return
        try:
            port.write(transmit.data, transmit.dest)
            if _taps:
                _tap(transmit.data, transmit.via.address, transmit.dest, True)
        except OSError as exc:
            # Unreachable networks are normal while checking pairs (an IPv6 or a foreign private
            # address): count, do not propagate.
            self.send_errors += 1
            quiet = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.EAFNOSUPPORT)
            level = logging.DEBUG if exc.errno in quiet else logging.INFO
            log.log(level, "send to %s:%d failed: %s", transmit.dest[0], transmit.dest[1], exc)

    def drop_component(self, component: int) -> None:
        """:meth:`Agent.drop_component`, then close that component's sockets (the TURN
        deallocations it queued go out first)."""
        self.agent.drop_component(component, self.now())
        self.driver.poke()
        for base in [b for b in self._ports if b.component == component]:
            self._ports.pop(base).stopListening()

    def close(self) -> None:
        """Release TURN allocations (the driver's stop sends their requests), then close every
        socket."""
        self.agent.close(self.now())
        self.driver.stop()
        for port in self._ports.values():
            port.stopListening()
        self._ports.clear()
