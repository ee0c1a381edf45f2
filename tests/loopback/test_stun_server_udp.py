"""The embedded STUN server on a real UDP socket (127.0.0.1), with the real reactor."""

from __future__ import annotations

import random
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import DatagramProtocol

from ice.server_udp import listen_stun
from ice.stun import Attr, Message, MessageClass, Method, decode, new_transaction_id


class _Client(DatagramProtocol):
    """Collects datagrams into a Deferred."""

    def __init__(self) -> None:
        self.received: defer.Deferred[tuple[bytes, Any]] = defer.Deferred()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Resolve with the first datagram."""
        if not self.received.called:
            self.received.callback((datagram, addr))


@pytest_twisted.inlineCallbacks
def test_binding_over_loopback() -> Any:
    """A Binding request to the server on 127.0.0.1 comes back with our own address."""
    reactor: Any = global_reactor  # zope interfaces defeat mypy's method checks
    server_port: Any = listen_stun(reactor, 0, "127.0.0.1")
    client = _Client()
    client_port = reactor.listenUDP(0, client, interface="127.0.0.1")
    try:
        server = ("127.0.0.1", server_port.getHost().port)
        tid = new_transaction_id(random.Random(5))
        request = Message(Method.BINDING, MessageClass.REQUEST, tid, {}).encode(fingerprint=True)
        transport: Any = client.transport
        transport.write(request, server)
        timeout = reactor.callLater(5.0, client.received.cancel)
        data, addr = yield client.received
        if timeout.active():
            timeout.cancel()
        response = decode(data)
        assert addr == server
        assert response.cls is MessageClass.SUCCESS and response.transaction_id == tid
        assert response.get(Attr.XOR_MAPPED_ADDRESS) == ("127.0.0.1",
                                                         client_port.getHost().port)
    finally:
        yield client_port.stopListening()
        yield server_port.stopListening()
