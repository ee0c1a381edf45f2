"""SIP transports on Twisted: UDP, TCP and TLS (RFC 3261 §18, RFC 3581, RFC 5626 §4.4.1).

:class:`SipTransport` owns the listening sockets and the connections of one user agent and
drives its :class:`~sipua.transaction.TransactionLayer` with :class:`ice.driver.CoreDriver`:
parsed messages go in, :class:`~sipua.transaction.SipTransmit` come out and are written to the
right socket or connection.

- Requests received get ``received`` and ``rport`` on their top Via (§18.2.1, RFC 3581 §4), so
  responses go back to where the request came from: over UDP to received:rport, over TCP/TLS on
  the same connection, or on a new one to received and the sent-by port when it is gone (§18.2.2).
- Stream transports frame by Content-Length (:class:`~sipua.message.StreamParser`), answer a
  CRLFCRLF ping with CRLF, and ping their own outbound connections (RFC 5626 §4.4.1).
- Connections are reused by remote address, inbound ones included.
- A request that cannot be parsed is answered with its :attr:`SipParseError.status` when its
  Via/From/To/Call-ID/CSeq could be read, else dropped and counted.
- Responses' ``received``/``rport`` reveal the public address behind a NAT
  (:class:`PublicAddressLearned`), for Contact.
- :attr:`SipTransport.taps` see every message sent and received (``--log-sip``, ``--pcap``).

The reactor is injected, so the same adapter runs on ``task.Clock`` fakes, the virtual network of
``tests/sim`` and the real reactor.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, error, ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ice.driver import CoreDriver
from sipua.message import (
    Request,
    Response,
    SipParseError,
    StreamParser,
    error_response,
    new_tag,
    parse,
)
from sipua.transaction import (
    Address,
    ClientTransaction,
    ServerTransaction,
    SipTransmit,
    TransactionEvent,
    TransactionLayer,
    TransactionSettings,
    default_port,
    replace_top_via,
)

__all__ = [
    "FlowFailed", "PublicAddressLearned", "SipTap", "SipTransport", "TransportEvent",
    "TransportSettings", "TransportStats",
]

log = logging.getLogger(__name__)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


SETTLE_POLL = 0.05
"""Seconds between looks at the pending client transactions in :meth:`SipTransport.settle`."""


@dataclass(frozen=True)
class TransportSettings:
    """Sockets, TLS and keepalives of one :class:`SipTransport`."""

    #: IP address to listen on ("0.0.0.0", "::", "127.0.0.1", ...).
    host: str = "0.0.0.0"
    #: Port for UDP and TCP (RFC 3261 §18: both, same number); 0 picks one free for both.
    port: int = 5060
    #: Transports to listen on: any of "udp", "tcp", "tls".
    transports: tuple[str, ...] = ("udp", "tcp")
    #: Port for TLS; 0 picks a free one.
    tls_port: int = 5061
    #: PEM certificate chain presented by TLS servers (needed to listen on TLS).
    tls_cert_file: str | None = None
    #: PEM private key of tls_cert_file.
    tls_key_file: str | None = None
    #: PEM CA certificates that verify TLS servers; None uses the platform's trust store.
    tls_ca_file: str | None = None
    #: Verify the TLS server certificate and name; turn off only in a lab.
    tls_verify: bool = True
    #: Host written in Via and Contact; None uses ``host`` (set it when listening on 0.0.0.0).
    advertised_host: str | None = None
    #: Seconds between CRLFCRLF pings on our outbound TCP/TLS connections (RFC 5626 §4.4.1
    #: suggests 95-120 s); 0 disables them. Each interval is drawn from 80-100 % of this.
    keepalive_interval: float = 120.0
    #: Seconds to wait for the CRLF pong before the flow counts as failed (RFC 5626 §4.4.1: 10).
    pong_timeout: float = 10.0
    #: Seconds allowed to set up a TCP connection.
    connect_timeout: float = 10.0
    #: Largest message accepted on a stream transport, in bytes (413 beyond).
    max_message_size: int = 65536
    #: The transaction layer's settings (timers, 100 Trying, §18.1.1 threshold).
    transaction: TransactionSettings = field(default_factory=TransactionSettings)

    def __post_init__(self) -> None:
        unknown = set(self.transports) - {"udp", "tcp", "tls"}
        if unknown or not self.transports:
            raise ValueError(f"transports must be some of udp, tcp, tls, got {self.transports}")
        if "tls" in self.transports and (self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError("listening on TLS needs tls_cert_file and tls_key_file")


@dataclass(frozen=True)
class PublicAddressLearned:
    """A response's top Via showed the address our requests come from (RFC 3581 §9)."""

    transport: str
    address: Address


@dataclass(frozen=True)
class FlowFailed:
    """An outbound TCP/TLS connection broke or missed its keepalive pong (RFC 5626 §4.4.1)."""

    transport: str
    remote: Address
    reason: str


TransportEvent = PublicAddressLearned | FlowFailed

#: ``tap(data, local, remote, outgoing, transport)``: one SIP message as sent or received.
SipTap = Callable[[bytes, Address, Address, bool, str], None]


@dataclass
class TransportStats:
    """What the transport dropped, answered and opened."""

    #: Messages that failed to parse.
    parse_errors: int = 0
    #: Bad requests answered with an error status.
    error_responses: int = 0
    #: Undecodable messages dropped without an answer (nothing to route it with).
    dropped: int = 0
    #: CRLFCRLF pings answered with CRLF.
    pings_answered: int = 0
    #: CRLF pongs received for our pings.
    pongs_received: int = 0
    #: Outbound connections started.
    connections_opened: int = 0
    #: Inbound connections accepted.
    connections_accepted: int = 0
    #: Received messages whose handling raised unexpectedly: logged with a traceback, dropped.
    internal_errors: int = 0


def _describe(reason: Failure) -> str:
    """A readable reason for a connection failure; TLS verification errors say so."""
    text = reason.getErrorMessage()
    if "certificate verify failed" in text:
        return ("the server certificate could not be verified (certificate verify failed): "
                "check tls_ca_file and the server name")
    if isinstance(reason.value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason.value, error.TimeoutError | error.TCPTimedOutError):
        return "connection timed out"
    return text or type(reason.value).__name__


@implementer(IHandshakeListener)
class _Flow(Protocol):
    """One TCP or TLS connection: framing, pings, pongs and the messages queued before connect."""

    def __init__(self, owner: SipTransport, name: str, outbound: bool, remote: Address) -> None:
        self.owner = owner
        self.name = name
        self.outbound = outbound
        self.remote = remote
        self.parser = StreamParser(owner.settings.max_message_size)
        self.connected_ = False
        self.closed = False
        self.handshake_done = name != "tls"
        self.pending: list[tuple[bytes, str | None]] = []
        #: Client transactions whose requests went over this flow (told when it breaks).
        self.tx_ids: set[str] = set()
        self._ping_call: Any = None
        self._pong_call: Any = None
        #: Fired when the connection has closed after :meth:`SipTransport.stop`.
        self.closed_waiter: defer.Deferred[None] | None = None

    # --- Protocol -------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        peer = self._link().getPeer()
        if not self.outbound and hasattr(peer, "host"):
            self.remote = (peer.host, peer.port)
        self.owner._flow_up(self)
        pending, self.pending = self.pending, []
        for data, _tx_id in pending:
            self._link().write(data)
        if self.outbound:
            self._schedule_ping()

    def handshakeCompleted(self) -> None:
        """TLS is up: the server certificate passed verification."""
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        try:
            self._data_received(data)
        except Exception:  # never into the reactor; the stream is out of step: close it
            self.owner._internal_error(self.remote, self.name)
            if self.transport is not None:
                self._link().loseConnection()

    def _data_received(self, data: bytes) -> None:
        parser = self.parser
        pings, pongs = parser.pings, parser.pongs
        awaiting_pong = self._pong_call is not None and self._pong_call.active()
        if awaiting_pong and data.startswith(b"\r\n") and not data.startswith(b"\r\n\r\n"):
            # RFC 5626 §4.4.1: the pong is one CRLF; the parser alone cannot tell it from the
            # first half of a ping until more bytes come.
            pongs -= 1
            data = data[2:]
        try:
            messages = parser.feed(data)
        except SipParseError as exc:
            self.owner._stream_error(self, exc, data)
            self._link().loseConnection()
            return
        for _ in range(parser.pings - pings):
            self.owner.stats.pings_answered += 1
            self._link().write(b"\r\n")
        if parser.pongs > pongs:
            self.owner.stats.pongs_received += parser.pongs - pongs
            if self._pong_call is not None and self._pong_call.active():
                self._pong_call.cancel()
            self._pong_call = None
        for message in messages:
            if self.owner.taps:
                self.owner._tap(message.encode(), self.remote, False, self.name)
            self.owner._message(message, self.remote, self.name)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self._stop_timers()
        self.owner._flow_lost(self, reason if reason is not None else Failure(
            error.ConnectionDone()))  # type: ignore[no-untyped-call]

    def _link(self) -> Any:
        """The Twisted transport, untyped (zope interfaces defeat mypy's method checks)."""
        return self.transport

    # --- sending, keepalive --------------------------------------------------------------------

    def send(self, data: bytes, tx_id: str | None) -> None:
        if self.connected_ and self.transport is not None:
            self._link().write(data)
        else:
            self.pending.append((data, tx_id))

    def _schedule_ping(self) -> None:
        interval = self.owner.settings.keepalive_interval
        if interval <= 0 or self.closed:
            return
        delay = interval * self.owner.rng.uniform(0.8, 1.0)  # RFC 5626 §4.4.1
        self._ping_call = self.owner.reactor.callLater(delay, self._ping)

    def _ping(self) -> None:
        self._ping_call = None
        if self.closed or self.transport is None:
            return
        self._link().write(b"\r\n\r\n")
        if self._pong_call is None or not self._pong_call.active():
            self._pong_call = self.owner.reactor.callLater(self.owner.settings.pong_timeout,
                                                           self._pong_missing)
        self._schedule_ping()

    def _pong_missing(self) -> None:
        self._pong_call = None
        log.info("%s flow to %s: no pong, closing", self.name, self.remote)
        self.owner._deliver(FlowFailed(self.name, self.remote, "no keepalive pong"))
        if self.transport is not None:
            self._link().loseConnection()

    def _stop_timers(self) -> None:
        for call in (self._ping_call, self._pong_call):
            if call is not None and call.active():
                call.cancel()
        self._ping_call = self._pong_call = None


class _FlowFactory(ClientFactory):
    """Builds the flow for one outbound connection and reports a failed connect."""

    def __init__(self, flow: _Flow) -> None:
        self.flow = flow

    def buildProtocol(self, addr: Any) -> _Flow:
        return self.flow

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.flow.closed = True
        self.flow.owner._flow_lost(self.flow, reason)


class _ServerFactory(Factory):
    """Builds a flow per inbound connection."""

    def __init__(self, owner: SipTransport, name: str) -> None:
        self.owner = owner
        self.name = name

    def buildProtocol(self, addr: Any) -> _Flow:
        return _Flow(self.owner, self.name, False, (addr.host, addr.port))


class _Datagrams(DatagramProtocol):
    """The UDP socket."""

    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.owner._datagram(datagram, (addr[0], addr[1]))


class SipTransport:
    """The SIP transports of one user agent, feeding one transaction layer (module docstring)."""

    def __init__(self, settings: TransportSettings | None = None, *, reactor: Any = None,
                 rng: random.Random | None = None, layer: TransactionLayer | None = None,
                 on_event: Callable[[TransactionEvent | TransportEvent], None] | None = None
                 ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.settings = settings if settings is not None else TransportSettings()
        self.reactor: Any = reactor
        self.rng = rng if rng is not None else random.SystemRandom()
        self.layer = layer if layer is not None else TransactionLayer(self.rng,
                                                                      self.settings.transaction)
        self.stats = TransportStats()
        #: Our address as seen by the other side, per transport, from received/rport.
        self.public_addresses: dict[str, Address] = {}
        self.driver: CoreDriver[SipTransmit, TransactionEvent] = CoreDriver(
            self.layer, reactor, send=self._send, on_event=self._deliver)
        self._subscribers: list[Callable[[TransactionEvent | TransportEvent], None]] = []
        if on_event is not None:
            self._subscribers.append(on_event)
        self._udp: Any = None
        self._tcp: Any = None
        self._tls: Any = None
        self._flows: dict[tuple[str, Address], _Flow] = {}
        self._tls_names: dict[Address, str] = {}
        self._client_tls: Any = None
        #: Called with every message sent and received (see :data:`SipTap`).
        self.taps: list[SipTap] = []

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on every configured transport (raises twisted's CannotListenError)."""
        s = self.settings
        wanted = s.transports
        attempts = 20 if s.port == 0 and "udp" in wanted and "tcp" in wanted else 1
        for attempt in range(attempts):
            try:
                self._listen_udp_tcp(s.port)
                break
            except error.CannotListenError:
                self._close_ports()
                if attempt == attempts - 1:
                    raise
        if "tls" in wanted:
            wrapped: Any = _ServerFactory(self, "tls")
            factory = TLSMemoryBIOFactory(self._server_tls_options(), False, wrapped)
            self._tls = self.reactor.listenTCP(s.tls_port, factory, interface=s.host)
        log.info("SIP listening on %s", ", ".join(
            f"{t} {self.local_address(t)}" for t in wanted))

    def _listen_udp_tcp(self, port: int) -> None:
        s = self.settings
        if "udp" in s.transports:
            self._udp = self.reactor.listenUDP(port, _Datagrams(self), interface=s.host)
            port = self._udp.getHost().port
        if "tcp" in s.transports:
            self._tcp = self.reactor.listenTCP(port, _ServerFactory(self, "tcp"),
                                               interface=s.host)

    def _close_ports(self) -> None:
        for attr in ("_udp", "_tcp"):
            port = getattr(self, attr)
            if port is not None:
                port.stopListening()
                setattr(self, attr, None)

    def settle(self, timeout: float) -> defer.Deferred[None]:
        """Fires once no request we sent is still waiting for its final response, or after
        ``timeout`` seconds: lets a shutdown finish a BYE whose first copy was lost (its
        retransmissions, RFC 3261 §17.1.2.2) before :meth:`stop` closes the sockets."""
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.driver.now() + timeout

        def check() -> None:
            if not self.layer.awaiting_final() or self.driver.now() >= deadline:
                done.callback(None)
            else:
                self.reactor.callLater(SETTLE_POLL, check)

        check()
        return done

    def stop(self) -> defer.Deferred[None]:
        """Stop listening, close every connection and the timers; fires when all are closed."""
        # The driver sends what the layer queued in this very turn before the sockets close.
        self.driver.stop()
        self.layer.close()
        waits: list[defer.Deferred[Any]] = []
        for attr in ("_udp", "_tcp", "_tls"):
            port = getattr(self, attr)
            if port is not None:
                result = port.stopListening()
                if isinstance(result, defer.Deferred):
                    waits.append(result)
                setattr(self, attr, None)
        for flow in list(self._flows.values()):
            flow._stop_timers()
            if flow.transport is not None and not flow.closed:
                closed: defer.Deferred[None] = defer.Deferred()
                flow.closed_waiter = closed
                waits.append(closed)
                flow._link().loseConnection()
        self._flows.clear()
        done: defer.Deferred[Any] = defer.gatherResults(waits, consumeErrors=True)
        return done.addCallback(lambda _: None)

    # --- addresses ------------------------------------------------------------------------------

    def local_address(self, transport: str) -> Address:
        """(host, port) to put in Via and Contact for ``transport``.

        A TLS client that does not listen on TLS shows its TCP port: responses to its requests
        come back on the connection anyway (§18.2.2).
        """
        t = transport.lower()
        port_obj = {"udp": self._udp, "tcp": self._tcp, "tls": self._tls}.get(t)
        if port_obj is None and t == "tls":
            # A TLS client that does not listen: responses and the proxy's requests come on the
            # flow it opened (§18.2.2), so any port of ours will do in Via and Contact.
            port_obj = self._tcp or self._udp
        if port_obj is None:
            raise ValueError(f"not listening on {transport}")
        host = self.settings.advertised_host or self.settings.host
        return host, int(port_obj.getHost().port)

    def via(self, transport: str, branch: str) -> str:
        """A top Via value for a request we send: our sent-by, the branch and rport (RFC 3581)."""
        host, port = self.local_address(transport)
        shown = f"[{host}]" if ":" in host else host
        return f"SIP/2.0/{transport.upper()} {shown}:{port};branch={branch};rport"

    # --- the transaction user's side ------------------------------------------------------------

    def subscribe(self, callback: Callable[[TransactionEvent | TransportEvent], None]) -> None:
        """Call ``callback`` with every transaction and transport event."""
        self._subscribers.append(callback)

    def send_request(self, request: Request, dest: Address, transport: str, *,
                     allow_tcp: bool = True, server_name: str | None = None
                     ) -> ClientTransaction:
        """Start a client transaction; ``server_name`` is the host name TLS must verify."""
        if server_name is not None:
            self._tls_names[dest] = server_name
        tx = self.layer.send_request(request, dest, transport, self.driver.now(),
                                     allow_tcp=allow_tcp)
        self.driver.poke()
        return tx

    def send_response(self, server_tx: str | ServerTransaction, response: Response) -> None:
        """Send a response in a server transaction."""
        self.layer.send_response(server_tx, response, self.driver.now())
        self.driver.poke()

    def cancel(self, invite_tx: str | ClientTransaction) -> ClientTransaction | None:
        """CANCEL an INVITE (RFC 3261 §9.1); see :meth:`TransactionLayer.cancel`."""
        tx = self.layer.cancel(invite_tx, self.driver.now())
        self.driver.poke()
        return tx

    def send_stateless(self, message: Request | Response, dest: Address,
                       transport: str) -> None:
        """Send outside a transaction (the ACK of a 2xx)."""
        self.layer.send_stateless(message, dest, transport)
        self.driver.poke()

    def flows(self) -> list[tuple[str, Address]]:
        """Open or opening TCP/TLS connections as (transport, remote address)."""
        return list(self._flows)

    # --- sending --------------------------------------------------------------------------------

    def _send(self, transmit: SipTransmit) -> None:
        """CoreDriver's send: write a transmit on the socket or connection it names."""
        t = transmit.transport
        if t == "udp":
            if self._udp is None:
                self._fail(transmit.tx_id, "UDP is not enabled")
                return
            try:
                self._udp.write(transmit.data, transmit.dest)
            except (OSError, error.MessageLengthError, error.InvalidAddressError) as exc:
                self._fail(transmit.tx_id, f"UDP send to {transmit.dest} failed: {exc}")
                return
            if self.taps:
                self._tap(transmit.data, transmit.dest, True, "udp")
            return
        if t not in ("tcp", "tls"):
            self._fail(transmit.tx_id, f"unsupported transport {t!r}")
            return
        flow = self._flows.get((t, transmit.dest))
        if flow is None and transmit.fallback is not None:
            # §18.2.2: the connection the request came on is gone; open one to the fallback.
            flow = self._flows.get((t, transmit.fallback)) or self._connect(t, transmit.fallback)
        elif flow is None:
            flow = self._connect(t, transmit.dest)
        if transmit.tx_id is not None and not transmit.data.startswith(b"SIP/2.0 "):
            flow.tx_ids.add(transmit.tx_id)
        flow.send(transmit.data, transmit.tx_id)
        if self.taps:
            self._tap(transmit.data, flow.remote, True, t)

    def _tap(self, data: bytes, remote: Address, outgoing: bool, transport: str) -> None:
        try:
            local = self.local_address(transport)
        except ValueError:
            local = (self.settings.advertised_host or self.settings.host, 0)
        for tap in list(self.taps):
            try:
                tap(data, local, remote, outgoing, transport)
            except Exception:  # a capture or a log must never break signalling
                log.exception("SIP tap failed")

    def _fail(self, tx_id: str | None, reason: str) -> None:
        """Inside the driver's loop: tell the layer; the loop delivers what follows."""
        log.info("send failed: %s", reason)
        if tx_id is not None:
            self.layer.transport_failed(tx_id, reason, self.driver.now())

    def _connect(self, transport: str, dest: Address) -> _Flow:
        flow = _Flow(self, transport, True, dest)
        self._flows[(transport, dest)] = flow
        self.stats.connections_opened += 1
        factory: Any = _FlowFactory(flow)
        if transport == "tls":
            factory = TLSMemoryBIOFactory(self._client_options(dest), True, factory)
        log.debug("connecting over %s to %s", transport, dest)
        self.reactor.connectTCP(dest[0], dest[1], factory, timeout=self.settings.connect_timeout)
        return flow

    # --- TLS ------------------------------------------------------------------------------------

    def _server_tls_options(self) -> Any:
        s = self.settings
        assert s.tls_cert_file is not None and s.tls_key_file is not None
        cert_pem = Path(s.tls_cert_file).read_bytes()
        key_pem = Path(s.tls_key_file).read_bytes()
        chain = _PEM_CERT.findall(cert_pem)
        if not chain:
            raise ValueError(f"no certificate in {s.tls_cert_file}")
        # pyOpenSSL takes cryptography's objects (its own X509/PKey wrappers are deprecated).
        certificate: Any = x509.load_pem_x509_certificate(chain[0])
        key: Any = serialization.load_pem_private_key(key_pem, password=None)
        extra: Any = [x509.load_pem_x509_certificate(pem) for pem in chain[1:]]
        return ssl.CertificateOptions(privateKey=key, certificate=certificate,
                                      extraCertChain=extra)

    def _trust_root(self) -> Any:
        ca_file = self.settings.tls_ca_file
        if ca_file is None:
            return None  # optionsForClientTLS then trusts the platform's CAs
        pems = _PEM_CERT.findall(Path(ca_file).read_bytes())
        if not pems:
            raise ValueError(f"no CA certificate in {ca_file}")
        return ssl.trustRootFromCertificates(  # type: ignore[no-untyped-call]
            [ssl.Certificate.loadPEM(p) for p in pems])

    def _client_options(self, dest: Address) -> Any:
        if not self.settings.tls_verify:
            return ssl.CertificateOptions(verify=False)
        name = self._tls_names.get(dest, dest[0])
        return ssl.optionsForClientTLS(name, trustRoot=self._trust_root())

    # --- receiving ------------------------------------------------------------------------------

    def _datagram(self, data: bytes, source: Address) -> None:
        try:
            self._datagram_received(data, source)
        except Exception:  # never into the reactor: log, count, drop the datagram
            self._internal_error(source, "udp")

    def _internal_error(self, source: Address, transport: str) -> None:
        """The last resort of a receive path: a bug, not the peer's fault, so a traceback."""
        self.stats.internal_errors += 1
        log.exception("internal error on a %s message from %s", transport, source)

    def _datagram_received(self, data: bytes, source: Address) -> None:
        if not data.strip(b"\r\n\x00"):
            return  # a keepalive on UDP: nothing to answer (RFC 5626 uses STUN there)
        if self.taps:
            self._tap(data, source, False, "udp")
        try:
            message = parse(data)
            if isinstance(message, Request):
                message.validate()
        except SipParseError as exc:
            self._bad_message(exc, data, lambda resp: self._write_udp(resp.encode(), source),
                              source)
            return
        self._message(message, source, "udp")

    def _write_udp(self, data: bytes, dest: Address) -> None:
        if self._udp is not None:
            try:
                self._udp.write(data, dest)
            except (OSError, error.MessageLengthError) as exc:
                log.info("UDP send to %s failed: %s", dest, exc)
                return
            if self.taps:
                self._tap(data, dest, True, "udp")

    def _stream_error(self, flow: _Flow, exc: SipParseError, data: bytes) -> None:
        def answer(resp: Response) -> None:
            if flow.transport is not None:
                flow._link().write(resp.encode())
                if self.taps:
                    self._tap(resp.encode(), flow.remote, True, flow.name)
        self._bad_message(exc, data, answer, flow.remote)

    def _bad_message(self, exc: SipParseError, data: bytes, answer: Callable[[Response], None],
                     source: Address) -> None:
        """RFC 3261 §8.2 / §16.3: answer a bad request if it can be routed, else drop it."""
        self.stats.parse_errors += 1
        is_response = data.lstrip(b"\r\n")[:8].upper() == b"SIP/2.0 "
        response = None if is_response else error_response(exc, to_tag=new_tag(self.rng))
        if response is None:
            self.stats.dropped += 1
            log.info("dropped an unparsable message from %s: %s", source, exc.reason)
            return
        self.stats.error_responses += 1
        log.info("answered a bad request from %s with %d: %s", source, response.status,
                 exc.reason)
        answer(response)

    def _message(self, message: Request | Response, source: Address, transport: str) -> None:
        now = self.driver.now()
        try:
            if isinstance(message, Request):
                self._stamp_via(message, source)
            else:
                self._learn_public_address(message, transport)
        except SipParseError as exc:
            self.stats.parse_errors += 1
            self.stats.dropped += 1
            log.info("dropped a message with a bad Via from %s: %s", source, exc)
            return
        self.layer.receive(message, source, transport, now)
        self.driver.poke()

    @staticmethod
    def _stamp_via(request: Request, source: Address) -> None:
        """§18.2.1 and RFC 3581 §4: received when sent-by differs (or rport asked), rport value."""
        vias = request.vias
        if not vias:
            return
        via = vias[0]
        params = dict(via.params)
        if via.host != source[0] or via.rport is True:
            params["received"] = source[0]
        if via.rport is True:
            params["rport"] = str(source[1])
        if params != via.params:
            replace_top_via(request, via.with_(params=params))

    def _learn_public_address(self, response: Response, transport: str) -> None:
        vias = response.vias
        if not vias:
            return
        via = vias[0]
        rport = via.rport
        if via.received is None and not (isinstance(rport, int) and rport is not True):
            return
        port = rport if isinstance(rport, int) and not isinstance(rport, bool) else (
            via.port or default_port(transport))
        address = (via.received or via.host, port)
        if self.public_addresses.get(transport) != address:
            self.public_addresses[transport] = address
            log.info("public %s address: %s:%d", transport, *address)
            self._deliver(PublicAddressLearned(transport, address))

    # --- flows ----------------------------------------------------------------------------------

    def _flow_up(self, flow: _Flow) -> None:
        key = (flow.name, flow.remote)
        if not flow.outbound:
            self.stats.connections_accepted += 1
            self._flows.setdefault(key, flow)  # reuse for responses and for requests there

    def _flow_lost(self, flow: _Flow, reason: Failure) -> None:
        key = (flow.name, flow.remote)
        if self._flows.get(key) is flow:
            del self._flows[key]
        waiter = flow.closed_waiter
        if waiter is not None and not waiter.called:
            waiter.callback(None)
        clean = isinstance(reason.value, error.ConnectionDone) and flow.handshake_done
        text = _describe(reason)
        if flow.name == "tls" and not flow.handshake_done and flow.outbound:
            text = f"TLS connection to {flow.remote[0]}:{flow.remote[1]} failed: {text}"
        failed = {tx_id for _data, tx_id in flow.pending if tx_id is not None} | flow.tx_ids
        flow.pending = []
        if flow.outbound and not clean:
            log.info("%s flow to %s lost: %s", flow.name, flow.remote, text)
            self._deliver(FlowFailed(flow.name, flow.remote, text))
        if failed:
            now = self.driver.now()
            for tx_id in sorted(failed):
                self.layer.transport_failed(tx_id, text, now)
            self.driver.poke()

    # --- events ---------------------------------------------------------------------------------

    def _deliver(self, event: TransactionEvent | TransportEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("event handler failed for %r", event)

    def __repr__(self) -> str:
        return f"<SipTransport {self.settings.host} {self.settings.transports}>"
