"""No exception escapes a protocol callback into the reactor, and garbage stalls nothing.

Each Twisted adapter that receives from the network (SIP over UDP and TCP, the ICE sockets, the
embedded STUN server, a media stream's UDP port) is fed garbage, then a valid message, which it
must still handle. A core that raises unexpectedly (a bug, simulated here) is the last resort:
the adapter logs it at ERROR with the traceback and the peer's address, counts it and drops the
packet, and keeps working.
"""

from __future__ import annotations

import logging
import random
import types
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from ice.agent import Agent, IceSettings
from ice.server import StunServer
from ice.server_udp import StunServerProtocol
from ice.stun import Attr, Message, MessageClass, Method, decode, short_term_key
from ice.udp import IceUdpTransport
from media.clock import PacingClock
from media.codecs import G711Codec
from media.session import RtpSession, RtpSessionSettings
from media.stream import UdpMediaStream
from sipua.message import parse
from sipua.transaction import RequestReceived, TransactionEvent
from sipua.transport import SipTransport, TransportEvent, TransportSettings

PEER = ("192.0.2.50", 5060)
RNG_GARBAGE = random.Random(9)
GARBAGE = [
    b"", b"\x00", b"\r\n", b"SIP/2.0", b"INVITE", b"\x00\x01\x00\x00\x21\x12\xa4\x42",
    b"\x80" * 12, b"\x40\x01\x00\x10", b"\xff" * 1500,
    *(bytes(RNG_GARBAGE.getrandbits(8) for _ in range(RNG_GARBAGE.randrange(1, 300)))
      for _ in range(40)),
]


def options(branch: str = "z9hG4bKok", call_id: str = "ok@example.com") -> bytes:
    """A valid OPTIONS request."""
    return (f"OPTIONS sip:bob@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50;branch={branch}"
            f"\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@192.0.2.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERROR records that carry a traceback."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]


# --- SIP -------------------------------------------------------------------------------------


class FakeUdpPort:
    """A listening UDP port that records writes."""

    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port = port or 40000
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def getHost(self) -> Any:
        """The bound address."""
        return IPv4Address("UDP", self.interface or "192.0.2.1", self.port)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        """Record a datagram."""
        self.written.append((data, addr))

    def stopListening(self) -> None:
        """Nothing to close."""


class FakeReactor(MemoryReactorClock):
    """MemoryReactorClock plus listenUDP."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.udp: list[FakeUdpPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> FakeUdpPort:
        """A fake UDP port."""
        fake = FakeUdpPort(port, protocol, interface)
        self.udp.append(fake)
        return fake


def sip_rig() -> tuple[SipTransport, FakeReactor, list[TransactionEvent | TransportEvent]]:
    """A started SipTransport (UDP and TCP) on fakes."""
    reactor = FakeReactor()
    events: list[TransactionEvent | TransportEvent] = []
    sip = SipTransport(TransportSettings(host="192.0.2.1", port=5060, keepalive_interval=0.0),
                       reactor=reactor, rng=random.Random(3), on_event=events.append)
    sip.start()
    return sip, reactor, events


def requests(events: list[TransactionEvent | TransportEvent]) -> list[str]:
    """Call-IDs of the requests delivered."""
    return [e.request.call_id for e in events if isinstance(e, RequestReceived)]


def test_sip_udp_garbage_then_valid() -> None:
    """Garbage datagrams are counted, answered 400 when routable or dropped; a valid request
    afterwards still reaches the transaction layer."""
    sip, reactor, events = sip_rig()
    protocol = reactor.udp[0].protocol
    for data in GARBAGE:
        protocol.datagramReceived(data, PEER)
    protocol.datagramReceived(options().replace(b"Max-Forwards: 70", b"Max-Forwards: x"), PEER)
    answered = [parse(d) for d, _ in reactor.udp[0].written]
    assert answered and answered[-1].status == 400  # type: ignore[union-attr]
    assert "Max-Forwards" in answered[-1].reason  # type: ignore[union-attr]
    assert sip.stats.parse_errors >= 30 and sip.stats.internal_errors == 0
    protocol.datagramReceived(options(), PEER)
    assert requests(events) == ["ok@example.com"]


def test_sip_udp_too_many_headers_answered_513() -> None:
    """A request with more header lines than the limit is answered 513 Message Too Large."""
    _sip, reactor, _events = sip_rig()
    data = options().replace(b"Content-Length", b"X-A: 1\r\n" * 600 + b"Content-Length")
    reactor.udp[0].protocol.datagramReceived(data, PEER)
    (reply, dest), = reactor.udp[0].written
    assert parse(reply).status == 513 and dest == PEER  # type: ignore[union-attr]


def test_sip_udp_internal_error_is_contained(caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction layer that raises (a bug) costs one datagram: ERROR with traceback and the
    peer's address, counted in stats.internal_errors; the next request is handled."""
    sip, reactor, events = sip_rig()
    real = sip.layer.receive
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(sip.layer, "receive", flaky)
    protocol = reactor.udp[0].protocol
    protocol.datagramReceived(options("z9hG4bKa", "first@x"), PEER)  # must not raise
    assert sip.stats.internal_errors == 1
    (record,) = error_records(caplog)
    assert "192.0.2.50" in record.getMessage() and "simulated bug" in (record.exc_text or str(
        record.exc_info))
    protocol.datagramReceived(options("z9hG4bKb", "second@x"), PEER)
    assert requests(events) == ["second@x"]


def tcp_flow(reactor: FakeReactor) -> tuple[Any, Any]:
    """An inbound TCP connection from PEER."""
    factory: Any = reactor.tcpServers[0][1]
    address = IPv4Address("TCP", *PEER)
    protocol: Any = factory.buildProtocol(address)
    transport: Any = StringTransport(peerAddress=address)  # type: ignore[no-untyped-call]
    protocol.makeConnection(transport)
    return protocol, transport


def test_sip_tcp_garbage_closes_only_that_connection() -> None:
    """Garbage on a TCP connection closes it (the stream is out of step); another connection
    still delivers its request."""
    sip, reactor, events = sip_rig()
    protocol, transport = tcp_flow(reactor)
    protocol.dataReceived(b"\x16\x03\x01 not sip at all\r\n\r\n")
    assert transport.disconnecting and sip.stats.parse_errors == 1
    protocol, transport = tcp_flow(reactor)
    protocol.dataReceived(b"X" * 70000)  # a head that never ends: bounded, then refused
    assert transport.disconnecting
    protocol, transport = tcp_flow(reactor)
    protocol.dataReceived(options())
    assert requests(events) == ["ok@example.com"] and not transport.disconnecting


def test_sip_tcp_internal_error_is_contained(caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while handling a stream message closes that connection, logs ERROR with a
    traceback and counts it; nothing reaches the reactor."""
    sip, reactor, _events = sip_rig()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(sip.layer, "receive", broken)
    protocol, transport = tcp_flow(reactor)
    protocol.dataReceived(options())
    assert transport.disconnecting and sip.stats.internal_errors == 1
    assert len(error_records(caplog)) == 1


# --- ICE sockets ----------------------------------------------------------------------------


class FakeUdpReactor(task.Clock):
    """A task.Clock that can also 'listen' on UDP."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUdpPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> FakeUdpPort:
        """A fake UDP port."""
        fake = FakeUdpPort(port or 41000 + len(self.ports), protocol, interface)
        self.ports.append(fake)
        return fake


def binding_check(agent: Agent, tid: bytes) -> bytes:
    """A valid check to ``agent`` from a peer with ufrag 'peer'."""
    return Message(Method.BINDING, MessageClass.REQUEST, tid, {
        Attr.USERNAME: f"{agent.local_ufrag}:peer", Attr.PRIORITY: 1845501695,
        Attr.ICE_CONTROLLING: 7,
    }).encode(integrity_key=short_term_key(agent.local_pwd), fingerprint=True)


def test_ice_sockets_survive_garbage_and_a_failing_media_handler(
        caplog: pytest.LogCaptureFixture) -> None:
    """Garbage on an ICE socket is consumed; a media handler that raises on application data
    is contained (counted, ERROR with traceback); a check afterwards is answered 200."""
    reactor = FakeUdpReactor()
    agent = Agent(IceSettings(), controlling=False, rng=random.Random(4))

    def on_data(app: Any) -> None:
        raise RuntimeError("simulated media bug")

    udp = IceUdpTransport(agent, reactor, on_data=on_data)
    udp.bind(["192.0.2.1"])
    agent.set_remote_credentials("peer", "p" * 22)
    port = reactor.ports[0]
    for data in GARBAGE:
        port.protocol.datagramReceived(data, PEER)
    assert udp.receive_errors >= 1  # the RTP-looking garbage went to on_data and raised
    assert len(error_records(caplog)) == udp.receive_errors
    port.written.clear()
    port.protocol.datagramReceived(binding_check(agent, b"goodcheck123"), PEER)
    replies = [decode(d) for d, dest in port.written if dest == PEER]
    assert any(r.cls is MessageClass.SUCCESS and r.transaction_id == b"goodcheck123"
               for r in replies)
    udp.close()


# --- STUN server -----------------------------------------------------------------------------


def test_stun_server_survives_garbage_and_a_bug(caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage is dropped and counted by the server; a bug inside it is contained by the
    protocol (counted, ERROR with traceback); a Binding request is still answered."""
    server = StunServer()
    protocol = StunServerProtocol(server, task.Clock())
    written: list[tuple[bytes, Any]] = []
    protocol.transport = types.SimpleNamespace(  # type: ignore[assignment]
        write=lambda data, dest: written.append((data, dest)))
    for data in GARBAGE:
        protocol.datagramReceived(data, PEER)
    real = server.receive
    monkeypatch.setattr(server, "receive", lambda *a: (_ for _ in ()).throw(RuntimeError("bug")))
    protocol.datagramReceived(b"anything", PEER)
    assert protocol.receive_errors == 1 and len(error_records(caplog)) == 1
    monkeypatch.setattr(server, "receive", real)
    request = Message(Method.BINDING, MessageClass.REQUEST, b"abcdefghijkl", {})
    protocol.datagramReceived(request.encode(fingerprint=True), PEER)
    (reply, dest), = [w for w in written if decode(w[0]).transaction_id == b"abcdefghijkl"]
    assert dest == PEER and decode(reply).get(Attr.XOR_MAPPED_ADDRESS) == PEER


# --- media -----------------------------------------------------------------------------------


def test_media_udp_port_survives_garbage_and_a_bug(caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage on a media port is counted as malformed by the session; a bug in the receive
    path is contained by the port's protocol; valid RTP afterwards is received."""
    reactor = FakeUdpReactor()
    settings = RtpSessionSettings(rtcp_min_interval=0.5)
    session = RtpSession(G711Codec("PCMU", 0), random.Random(1), 0.0, settings)
    stream = UdpMediaStream(session, PacingClock(reactor), remote=PEER, reactor=reactor,
                            symmetric=False)
    stream.start()
    port = reactor.ports[0]
    for data in GARBAGE:
        port.protocol.datagramReceived(data, PEER)
    assert stream.stats().session.packets_malformed > 0
    real = stream._datagram
    monkeypatch.setattr(stream, "_datagram",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("bug")))
    port.protocol.datagramReceived(b"\x80\x00", PEER)
    assert stream.receive_errors == 1 and len(error_records(caplog)) == 1
    monkeypatch.setattr(stream, "_datagram", real)
    peer = RtpSession(G711Codec("PCMU", 0), random.Random(99), 0.0, settings)
    port.protocol.datagramReceived(peer.send_frame(bytes(320), 0.0), PEER)
    assert stream.stats().session.inbound is not None
    stream.close()
