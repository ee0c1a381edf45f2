"""Twisted UDP adapter for the embedded STUN server (:class:`ice.server.StunServer`)."""

from __future__ import annotations

import logging
from typing import Any, cast

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol

from ice.server import StunServer, StunServerSettings

__all__ = ["StunServerProtocol", "listen_stun"]

log = logging.getLogger(__name__)


class StunServerProtocol(DatagramProtocol):
    """Feeds datagrams to a :class:`StunServer` and writes its answers back."""

    def __init__(self, server: StunServer, clock: Any) -> None:
        self.server = server
        self._clock = clock
        #: Datagrams whose handling raised (a bug, never the peer's fault): logged, dropped.
        self.receive_errors = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """One datagram in: feed, then flush the answers."""
        # IPv6 peers come as (host, port, flowinfo, scope id): keep (host, port).
        try:
            self.server.receive(datagram, (addr[0], addr[1]), self._clock.seconds())
        except Exception:  # never into the reactor: log, count, drop the datagram
            self.receive_errors += 1
            log.exception("STUN server failed on a datagram from %s", addr)
        transport = cast(Any, self.transport)  # zope interfaces defeat mypy's method checks
        for data, dest in self.server.pop_transmits():
            transport.write(data, dest)


def listen_stun(reactor: Any = None, port: int = 3478, interface: str = "127.0.0.1",
                settings: StunServerSettings | None = None) -> IListeningPort:
    """Serve STUN Binding on UDP ``interface``:``port`` (0 picks a free port)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    protocol = StunServerProtocol(StunServer(settings), reactor)
    listening: IListeningPort = reactor.listenUDP(port, protocol, interface=interface)
    return listening
