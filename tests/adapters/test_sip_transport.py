"""SIP adapters on fakes: SipTransport on a MemoryReactorClock with fake UDP ports and
StringTransports (framing, connection reuse, keepalives, received/rport, bad requests, timer
driving), and the RFC 3263 resolver on a fake DNS (no network)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns as twisted_dns
from twisted.names import hosts as twisted_hosts
from twisted.names import resolve as twisted_resolve
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from sipua.message import Request, Response, make_response, parse
from sipua.resolver import ResolveError, SipResolver, Target
from sipua.transaction import (
    Address,
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransactionTimedOut,
    TransportFailed,
)
from sipua.transport import (
    FlowFailed,
    PublicAddressLearned,
    SipTransport,
    TransportEvent,
    TransportSettings,
)
from sipua.uri import parse_uri

# twisted.names is untyped: reach it through Any.
dns: Any = twisted_dns
HostsResolver: Any = twisted_hosts.Resolver
ResolverChain: Any = twisted_resolve.ResolverChain

HOST = "192.0.2.1"
PEER: Address = ("192.0.2.50", 5060)


class FakeUdpPort:
    """What SipTransport uses of a listening UDP port; records what is written."""

    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, Address]] = []

    def getHost(self) -> IPv4Address:
        """The bound address."""
        return IPv4Address("UDP", self.interface, self.port)

    def write(self, data: bytes, addr: Address) -> None:
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


class Rig:
    """A started SipTransport on a fake reactor, with its events."""

    def __init__(self, **changes: Any) -> None:
        base: dict[str, Any] = {"host": HOST, "port": 5060, "keepalive_interval": 100.0}
        base.update(changes)
        self.reactor = FakeReactor()
        self.events: list[TransactionEvent | TransportEvent] = []
        self.sip = SipTransport(TransportSettings(**base), reactor=self.reactor,
                                rng=random.Random(3), on_event=self.events.append)
        self.sip.start()

    @property
    def udp(self) -> FakeUdpPort:
        """The listening UDP port."""
        return self.reactor.udp[0]

    def inbound(self, peer: Address = ("192.0.2.60", 40000)) -> tuple[Any, Any]:
        """Accept a TCP connection from ``peer``."""
        factory: Any = self.reactor.tcpServers[0][1]
        address = IPv4Address("TCP", *peer)
        protocol: Any = factory.buildProtocol(address)
        transport: Any = StringTransport(peerAddress=address)  # type: ignore[no-untyped-call]
        protocol.makeConnection(transport)
        return protocol, transport

    def complete_outbound(self, index: int = -1) -> tuple[Any, Any]:
        """Let the index-th outbound TCP connection succeed."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        factory = cast(Any, factory)
        address = IPv4Address("TCP", host, port)
        protocol: Any = factory.buildProtocol(address)
        transport: Any = StringTransport(peerAddress=address)  # type: ignore[no-untyped-call]
        protocol.makeConnection(transport)
        return protocol, transport

    def of(self, kind: type[Any]) -> list[Any]:
        """Events of one type."""
        return [e for e in self.events if isinstance(e, kind)]


def options(transport: str = "UDP", branch: str = "z9hG4bKopt1", via_host: str = "192.0.2.60",
            via_port: int = 5060, rport: bool = True, body: bytes = b"") -> Request:
    """An OPTIONS as a remote UA sends it."""
    via = f"SIP/2.0/{transport} {via_host}:{via_port};branch={branch}" + (";rport" if rport
                                                                         else "")
    return Request("OPTIONS", f"sip:ua@{HOST}", [
        ("Via", via), ("Max-Forwards", "70"), ("From", "<sip:peer@p.test>;tag=pf"),
        ("To", f"<sip:ua@{HOST}>"), ("Call-ID", f"call-{branch}"), ("CSeq", "1 OPTIONS"),
    ], body)


def our_request(rig: Rig, transport: str, method: str = "OPTIONS",
                branch: str = "z9hG4bKours") -> Request:
    """A request from the UA under test with its own Via."""
    return Request(method, f"sip:peer@{PEER[0]}", [
        ("Via", rig.sip.via(transport, branch)), ("Max-Forwards", "70"),
        ("From", "<sip:ua@u.test>;tag=uf"), ("To", "<sip:peer@p.test>"),
        ("Call-ID", f"c-{branch}"), ("CSeq", f"1 {method}"),
    ])


def lost(exc: BaseException) -> Failure:
    """A Failure for connectionLost / clientConnectionFailed."""
    made: Failure = Failure(exc)  # type: ignore[no-untyped-call]
    return made


def refused() -> Failure:
    """A refused connection."""
    return lost(ConnectionRefusedError())  # type: ignore[no-untyped-call]


def as_response(data: bytes) -> Response:
    """Parse bytes the transport wrote."""
    message = parse(data)
    assert isinstance(message, Response)
    return message


# --- listening ------------------------------------------------------------------------------------

def test_listens_on_udp_and_tcp_same_port() -> None:
    """By default UDP and TCP listen on the configured host and port (RFC 3261 §18)."""
    rig = Rig()
    assert rig.udp.port == 5060 and rig.udp.interface == HOST
    assert rig.reactor.tcpServers[0][0] == 5060 and rig.reactor.tcpServers[0][3] == HOST
    assert rig.sip.local_address("udp") == (HOST, 5060)
    assert rig.sip.via("tcp", "z9hG4bKx") == f"SIP/2.0/TCP {HOST}:5060;branch=z9hG4bKx;rport"
    with pytest.raises(ValueError):
        rig.sip.local_address("sctp")


def test_tls_needs_a_certificate() -> None:
    """Listening on TLS without a certificate is a configuration error."""
    with pytest.raises(ValueError):
        TransportSettings(transports=("udp", "tls"))


# --- UDP: received/rport, routing, bad requests ------------------------------------------

def test_udp_request_gets_received_and_rport_and_response_goes_there() -> None:
    """RFC 3581: received and rport are added; the response goes to the source IP and port."""
    rig = Rig()
    source = ("203.0.113.7", 40001)
    rig.udp.protocol.datagramReceived(options().encode(), source)
    (event,) = rig.of(RequestReceived)
    via = event.request.vias[0]
    assert via.received == "203.0.113.7" and via.rport == 40001
    rig.sip.send_response(event.server_tx_id, make_response(event.request, 200, to_tag="t"))
    data, dest = rig.udp.written[-1]
    assert dest == source
    assert as_response(data).vias[0].params["rport"] == "40001"


def test_udp_without_rport_answers_to_received_and_sent_by_port() -> None:
    """Without rport the response goes to received and the sent-by port (§18.2.2)."""
    rig = Rig()
    rig.udp.protocol.datagramReceived(options(rport=False, via_port=5070).encode(),
                                      ("203.0.113.8", 40002))
    (event,) = rig.of(RequestReceived)
    assert event.request.vias[0].received == "203.0.113.8"
    rig.sip.send_response(event.server_tx_id, make_response(event.request, 200, to_tag="t"))
    assert rig.udp.written[-1][1] == ("203.0.113.8", 5070)


def test_bad_udp_request_answered_with_its_status_and_garbage_dropped() -> None:
    """A request with a bad header is answered 400 when it can be routed; garbage is counted."""
    rig = Rig()
    bad = options().encode().replace(b"Max-Forwards: 70", b"Max-Forwards: lots")
    rig.udp.protocol.datagramReceived(bad, ("203.0.113.9", 5060))
    data, dest = rig.udp.written[-1]
    assert as_response(data).status == 400 and dest == ("203.0.113.9", 5060)
    rig.udp.protocol.datagramReceived(b"\x16\x03\x01 not sip at all", ("203.0.113.9", 5060))
    rig.udp.protocol.datagramReceived(b"\r\n\r\n", ("203.0.113.9", 5060))  # keepalive
    assert len(rig.udp.written) == 1
    assert rig.sip.stats.error_responses == 1 and rig.sip.stats.dropped == 1
    assert rig.of(RequestReceived) == []


def test_public_address_learned_from_response_via() -> None:
    """received/rport in a response's top Via tell the public address, reported once."""
    rig = Rig()
    request = our_request(rig, "udp")
    rig.sip.send_request(request, PEER, "udp")
    assert rig.udp.written[0] == (request.encode(), PEER)
    response = make_response(request, 200, to_tag="x")
    response.headers.set("Via", f"SIP/2.0/UDP {HOST}:5060;branch=z9hG4bKours;"
                                "received=198.51.100.9;rport=12345")
    rig.udp.protocol.datagramReceived(response.encode(), PEER)
    rig.udp.protocol.datagramReceived(response.encode(), PEER)
    assert rig.of(PublicAddressLearned) == [PublicAddressLearned("udp", ("198.51.100.9", 12345))]
    assert rig.sip.public_addresses["udp"] == ("198.51.100.9", 12345)
    assert [e.response.status for e in rig.of(ResponseReceived)] == [200]


def test_udp_retransmissions_and_timeout_driven_by_the_clock() -> None:
    """The driver re-arms the layer's timers on the reactor: A retransmits, B times out."""
    rig = Rig()
    rig.sip.send_request(our_request(rig, "udp", "INVITE"), PEER, "udp")
    for step in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        rig.reactor.advance(step)
    assert len(rig.udp.written) == 7
    rig.reactor.advance(0.5)
    assert len(rig.of(TransactionTimedOut)) == 1 and rig.reactor.getDelayedCalls() == []


# --- TCP: framing, reuse, keepalive ------------------------------------------------------------

def test_tcp_framing_split_and_coalesced_messages() -> None:
    """Messages cut at any byte and several in one segment are framed by Content-Length."""
    rig = Rig()
    protocol, transport = rig.inbound()
    first = options("TCP", "z9hG4bKa", body=b"hello").encode()
    second = options("TCP", "z9hG4bKb").encode()
    third = options("TCP", "z9hG4bKc").encode()
    for i in range(len(first)):
        protocol.dataReceived(first[i:i + 1])
    protocol.dataReceived(second + third)
    received = rig.of(RequestReceived)
    assert [e.request.vias[0].branch for e in received] == ["z9hG4bKa", "z9hG4bKb",
                                                            "z9hG4bKc"]
    assert received[0].request.body == b"hello" and received[0].transport == "tcp"
    assert received[0].source == ("192.0.2.60", 40000)
    # Responses go back on the same connection.
    rig.sip.send_response(received[0].server_tx_id,
                          make_response(received[0].request, 200, to_tag="t"))
    assert as_response(transport.value()).status == 200
    assert rig.sip.flows() == [("tcp", ("192.0.2.60", 40000))]


def test_tcp_ping_answered_with_crlf() -> None:
    """A CRLFCRLF ping is answered with one CRLF (RFC 5626 §4.4.1)."""
    rig = Rig()
    protocol, transport = rig.inbound()
    protocol.dataReceived(b"\r\n\r\n")
    assert transport.value() == b"\r\n" and rig.sip.stats.pings_answered == 1


def test_bad_tcp_message_answered_then_connection_closed() -> None:
    """A stream that loses framing is answered (when routable) and closed."""
    rig = Rig()
    protocol, transport = rig.inbound()
    no_length = options("TCP").encode().replace(b"Content-Length: 0\r\n", b"")
    protocol.dataReceived(no_length)
    assert as_response(transport.value()).status == 400
    assert transport.disconnecting


def test_outbound_tcp_reused_and_pinged() -> None:
    """One connection per remote address; pings go out at the interval, a pong keeps it."""
    rig = Rig(keepalive_interval=100.0, pong_timeout=10.0)
    first = our_request(rig, "tcp", branch="z9hG4bK1")
    rig.sip.send_request(first, PEER, "tcp")
    assert len(rig.reactor.tcpClients) == 1 and rig.reactor.tcpClients[0][:2] == PEER
    protocol, transport = rig.complete_outbound()
    assert transport.value() == first.encode()  # queued until connected
    transport.clear()
    second = our_request(rig, "tcp", branch="z9hG4bK2")
    rig.sip.send_request(second, PEER, "tcp")
    assert len(rig.reactor.tcpClients) == 1 and transport.value() == second.encode()
    transport.clear()
    rig.reactor.advance(100.0)  # the first ping is drawn from 80-100 s
    assert transport.value() == b"\r\n\r\n"
    transport.clear()
    protocol.dataReceived(b"\r\n")
    assert rig.sip.stats.pongs_received == 1
    rig.reactor.advance(30.0)
    assert rig.of(FlowFailed) == [] and not transport.disconnecting


def test_missing_pong_fails_the_flow() -> None:
    """No pong within 10 s: FlowFailed and the connection is closed."""
    rig = Rig(keepalive_interval=100.0, pong_timeout=10.0)
    rig.sip.send_request(our_request(rig, "tcp"), PEER, "tcp")
    protocol, transport = rig.complete_outbound()
    rig.reactor.advance(100.0)
    rig.reactor.advance(10.0)
    assert rig.of(FlowFailed) == [FlowFailed("tcp", PEER, "no keepalive pong")]
    assert transport.disconnecting
    protocol.connectionLost(lost(ConnectionDone()))
    assert rig.sip.flows() == []


def test_inbound_connection_reused_for_requests_to_that_address() -> None:
    """A request to the address of an inbound connection goes over that connection."""
    rig = Rig()
    _protocol, transport = rig.inbound(PEER)
    request = our_request(rig, "tcp")
    rig.sip.send_request(request, PEER, "tcp")
    assert rig.reactor.tcpClients == [] and transport.value() == request.encode()


def test_connection_refused_fails_the_transaction() -> None:
    """A refused TCP connection ends the transaction with TransportFailed (§17.1.4)."""
    rig = Rig()
    tx = rig.sip.send_request(our_request(rig, "tcp"), PEER, "tcp")
    factory: Any = rig.reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, refused())
    (failed,) = rig.of(TransportFailed)
    assert failed.client_tx_id == tx.id and failed.reason == "connection refused"
    assert rig.sip.flows() == [] and rig.of(FlowFailed)[0].remote == PEER


def test_response_reconnects_when_connection_is_gone() -> None:
    """§18.2.2: if the request's connection closed, the response opens one to received:port."""
    rig = Rig()
    protocol, _transport = rig.inbound(("192.0.2.60", 40000))
    protocol.dataReceived(options("TCP", via_port=5080).encode())
    (event,) = rig.of(RequestReceived)
    protocol.connectionLost(lost(ConnectionDone()))
    rig.sip.send_response(event.server_tx_id, make_response(event.request, 200, to_tag="t"))
    assert rig.reactor.tcpClients[0][:2] == ("192.0.2.60", 5080)
    _p, transport = rig.complete_outbound()
    assert as_response(transport.value()).status == 200


def test_stop_closes_everything() -> None:
    """stop() cancels timers and closes connections."""
    rig = Rig()
    rig.sip.send_request(our_request(rig, "udp", "INVITE"), PEER, "udp")
    protocol, transport = rig.inbound()
    done = rig.sip.stop()
    assert transport.disconnecting
    protocol.connectionLost(lost(ConnectionDone()))
    assert done.called and rig.reactor.getDelayedCalls() == []


# --- RFC 3263 resolution with a fake DNS -------------------------------------------------------

class FakeDns:
    """An IResolver answering from a table; records every query."""

    def __init__(self, records: dict[tuple[str, str], list[Any]]) -> None:
        self.records = records
        self.queries: list[tuple[str, str]] = []

    def _answer(self, kind: str, name: str, rtype: int) -> defer.Deferred[Any]:
        self.queries.append((kind, name))
        payloads = self.records.get((kind, name))
        if not payloads:
            return defer.fail(DNSNameError(name))
        answers = [dns.RRHeader(name, rtype, payload=p) for p in payloads]
        return defer.succeed((answers, [], []))

    def lookupNamingAuthorityPointer(self, name: str) -> defer.Deferred[Any]:
        """NAPTR."""
        return self._answer("NAPTR", name, dns.NAPTR)

    def lookupService(self, name: str) -> defer.Deferred[Any]:
        """SRV."""
        return self._answer("SRV", name, dns.SRV)

    def lookupAddress(self, name: str) -> defer.Deferred[Any]:
        """A."""
        return self._answer("A", name, dns.A)

    def lookupIPV6Address(self, name: str) -> defer.Deferred[Any]:
        """AAAA."""
        return self._answer("AAAA", name, dns.AAAA)


def naptr(order: int, pref: int, service: str, replacement: str) -> Any:
    """A NAPTR record with the "s" flag."""
    return dns.Record_NAPTR(order, pref, b"s", service.encode(), b"", replacement.encode())


def srv(priority: int, weight: int, port: int, target: str) -> Any:
    """An SRV record."""
    return dns.Record_SRV(priority, weight, port, target)


def resolved(resolver: SipResolver, uri: str) -> list[Target]:
    """Resolve synchronously (the fake answers at once)."""
    results: list[Any] = []
    resolver.resolve(parse_uri(uri)).addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, list)
    return result


A_RECORDS: dict[tuple[str, str], list[Any]] = {
    ("A", "sip1.example.org"): [dns.Record_A("198.51.100.1")],
    ("A", "sip2.example.org"): [dns.Record_A("198.51.100.2")],
    ("AAAA", "sip2.example.org"): [dns.Record_AAAA("2001:db8::2")],
}


def test_resolve_numeric_host_without_dns() -> None:
    """A numeric host is used as it is: port from the URI or the transport's default."""
    fake = FakeDns({})
    resolver = SipResolver(fake)
    assert resolved(resolver, "sip:bob@192.0.2.7") == [Target("192.0.2.7", 5060, "udp")]
    assert resolved(resolver, "sip:bob@192.0.2.7:5080;transport=tcp") == [
        Target("192.0.2.7", 5080, "tcp")]
    assert resolved(resolver, "sips:bob@[2001:db8::7]") == [Target("2001:db8::7", 5061, "tls")]
    assert fake.queries == []


def test_resolve_explicit_port_uses_a_and_aaaa_only() -> None:
    """A host with a port skips NAPTR and SRV (RFC 3263 §4.2)."""
    fake = FakeDns(A_RECORDS)
    targets = resolved(SipResolver(fake), "sip:bob@sip2.example.org:5070")
    assert targets == [Target("198.51.100.2", 5070, "udp"), Target("2001:db8::2", 5070, "udp")]
    assert {kind for kind, _ in fake.queries} == {"A", "AAAA"}


def test_resolve_naptr_then_srv_then_a() -> None:
    """NAPTR order picks TCP before UDP; each leads to SRV and then to addresses."""
    fake = FakeDns({
        ("NAPTR", "example.org"): [naptr(20, 10, "SIP+D2U", "_sip._udp.example.org"),
                                   naptr(10, 10, "SIP+D2T", "_sip._tcp.example.org"),
                                   naptr(5, 10, "E2U+sip", "ignored.example.org")],
        ("SRV", "_sip._tcp.example.org"): [srv(10, 0, 5062, "sip1.example.org")],
        ("SRV", "_sip._udp.example.org"): [srv(20, 0, 5060, "sip2.example.org"),
                                           srv(10, 0, 5064, "sip1.example.org")],
        **A_RECORDS,
    })
    targets = resolved(SipResolver(fake), "sip:alice@example.org")
    assert targets == [Target("198.51.100.1", 5062, "tcp"), Target("198.51.100.1", 5064, "udp"),
                       Target("198.51.100.2", 5060, "udp"), Target("2001:db8::2", 5060, "udp")]


def test_resolve_srv_without_naptr_and_plain_a_last() -> None:
    """Without NAPTR the SRV names are tried; without SRV, A/AAAA on port 5060 over UDP."""
    fake = FakeDns({("SRV", "_sip._tcp.example.org"): [srv(0, 0, 5070, "sip1.example.org")],
                    **A_RECORDS})
    assert resolved(SipResolver(fake), "sip:alice@example.org") == [
        Target("198.51.100.1", 5070, "tcp")]
    assert ("SRV", "_sip._udp.example.org") in fake.queries
    plain = FakeDns({("A", "example.org"): [dns.Record_A("198.51.100.3")]})
    assert resolved(SipResolver(plain), "sip:alice@example.org") == [
        Target("198.51.100.3", 5060, "udp")]


def test_resolve_sips_only_over_tls() -> None:
    """A sips URI takes only SIPS+D2T / _sips._tcp."""
    fake = FakeDns({
        ("NAPTR", "example.org"): [naptr(10, 10, "SIP+D2U", "_sip._udp.example.org"),
                                   naptr(20, 10, "SIPS+D2T", "_sips._tcp.example.org")],
        ("SRV", "_sip._udp.example.org"): [srv(0, 0, 5060, "sip1.example.org")],
        ("SRV", "_sips._tcp.example.org"): [srv(0, 0, 5061, "sip1.example.org")],
        **A_RECORDS,
    })
    assert resolved(SipResolver(fake), "sips:alice@example.org") == [
        Target("198.51.100.1", 5061, "tls")]
    without_tls = SipResolver(fake, transports=("udp", "tcp"))
    assert resolved(without_tls, "sip:alice@example.org") == [
        Target("198.51.100.1", 5060, "udp")]


def test_resolve_transport_parameter_uses_its_srv() -> None:
    """transport=tcp without a port looks up _sip._tcp, then A on 5060."""
    fake = FakeDns({("SRV", "_sip._tcp.example.org"): [srv(0, 0, 5090, "sip1.example.org")],
                    **A_RECORDS})
    assert resolved(SipResolver(fake), "sip:alice@example.org;transport=tcp") == [
        Target("198.51.100.1", 5090, "tcp")]
    assert all(kind != "NAPTR" for kind, _ in fake.queries)


def test_resolve_srv_weights_are_seeded_and_priority_first() -> None:
    """Equal-priority SRV records come in a weighted random order from the injected rng."""
    records = {("SRV", "_sip._udp.example.org"): [
        srv(10, 60, 5060, "sip1.example.org"), srv(10, 40, 5060, "sip2.example.org"),
        srv(5, 0, 5099, "sip2.example.org")], **A_RECORDS}
    orders = [[t.port for t in resolved(SipResolver(FakeDns(records), rng=random.Random(seed)),
                                        "sip:alice@example.org")] for seed in (1, 1)]
    assert orders[0] == orders[1] and orders[0][0] == 5099


def test_resolve_failures() -> None:
    """Nothing found raises ResolveError; so does a tel: URI."""
    with pytest.raises(ResolveError):
        resolved(SipResolver(FakeDns({})), "sip:alice@nowhere.example")
    with pytest.raises(ResolveError):
        resolved(SipResolver(FakeDns({})), "tel:+15551234")


def test_resolve_hostport_and_hosts_file(tmp_path: Path) -> None:
    """HOST[:PORT] is resolved with A/AAAA; a hosts file (as /etc/hosts) answers first."""
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.9 registrar.lab.test\n")
    chain = ResolverChain([HostsResolver(file=str(hosts_file).encode())])
    results: list[Any] = []
    SipResolver(chain).resolve_hostport("registrar.lab.test:5070", "tcp").addBoth(
        results.append)
    assert results == [[Target("127.0.0.9", 5070, "tcp")]]
    results.clear()
    SipResolver(FakeDns({})).resolve_hostport("[::1]", "tls").addBoth(results.append)
    assert results == [[Target("::1", 5061, "tls")]]
    assert resolved(SipResolver(chain), "sip:reg@registrar.lab.test") == [
        Target("127.0.0.9", 5060, "udp")]
