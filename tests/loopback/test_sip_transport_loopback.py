"""Two SipTransports on 127.0.0.1 with the real reactor: OPTIONS and its 200 over UDP, TCP, TLS.

The TLS tests make a throwaway CA and a server certificate (for 127.0.0.1 and localhost) with
``cryptography`` and trust that CA on the client; a client trusting another CA must fail with a
readable certificate-verification error.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet import reactor as global_reactor

from sipua.message import Request, make_response, new_branch, new_call_id, new_tag
from sipua.transaction import (
    Address,
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransportFailed,
)
from sipua.transport import SipTransport, TransportEvent, TransportSettings

REACTOR: Any = global_reactor  # zope interfaces defeat mypy's method checks
LOCAL = "127.0.0.1"


# --- certificates -----------------------------------------------------------------------------

def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(directory: Path, label: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Name]:
    """A self-signed CA certificate written to ``directory/label.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name(f"sipua test CA {label}")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, name


def make_server_cert(directory: Path, ca_key: ec.EllipticCurvePrivateKey,
                     ca_name: x509.Name) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by the CA; (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCAL))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --- helpers ----------------------------------------------------------------------------------

class Peer:
    """A SipTransport with an event log; answers every OPTIONS with 200."""

    def __init__(self, settings: TransportSettings, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list[TransactionEvent | TransportEvent] = []
        self.waiting: list[tuple[type[Any], defer.Deferred[Any]]] = []
        self.sip = SipTransport(settings, reactor=REACTOR, rng=self.rng, on_event=self._event)
        self.sip.start()

    def _event(self, event: TransactionEvent | TransportEvent) -> None:
        self.events.append(event)
        if isinstance(event, RequestReceived) and event.request.method == "OPTIONS":
            response = make_response(event.request, 200, to_tag=new_tag(self.rng))
            response.headers.set("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")
            self.sip.send_response(event.server_tx_id, response)
        for kind, waiter in list(self.waiting):
            if isinstance(event, kind) and not waiter.called:
                self.waiting.remove((kind, waiter))
                waiter.callback(event)

    def wait_for(self, kind: type[Any], timeout: float = 10.0) -> defer.Deferred[Any]:
        """The next event of ``kind`` (or one already seen)."""
        for event in self.events:
            if isinstance(event, kind):
                return defer.succeed(event)
        waiter: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((kind, waiter))
        return waiter.addTimeout(timeout, REACTOR)

    def options(self, transport: str, dest: Address, body: bytes = b"") -> Request:
        """An OPTIONS request to ``dest`` with our Via."""
        return Request("OPTIONS", f"sip:bob@{dest[0]}:{dest[1]}", [
            ("Via", self.sip.via(transport, new_branch(self.rng))),
            ("Max-Forwards", "70"),
            ("From", f"<sip:alice@{LOCAL}>;tag={new_tag(self.rng)}"),
            ("To", f"<sip:bob@{LOCAL}>"),
            ("Call-ID", new_call_id(self.rng)),
            ("CSeq", "1 OPTIONS"),
        ] + ([("Content-Type", "text/plain")] if body else []), body)


def settings(**changes: Any) -> TransportSettings:
    """Loopback settings on free ports, short keepalives off."""
    base: dict[str, Any] = {"host": LOCAL, "port": 0, "tls_port": 0, "keepalive_interval": 0.0}
    base.update(changes)
    return TransportSettings(**base)


async def exchange(alice: Peer, bob: Peer, transport: str, body: bytes = b"",
                   server_name: str | None = None) -> tuple[RequestReceived, ResponseReceived]:
    """Alice sends OPTIONS to Bob over ``transport``; both sides' events."""
    dest = bob.sip.local_address(transport)
    request = alice.options(transport, dest, body)
    alice.sip.send_request(request, dest, transport, server_name=server_name)
    received: RequestReceived = await bob.wait_for(RequestReceived)
    answered: ResponseReceived = await alice.wait_for(ResponseReceived)
    return received, answered


async def shutdown(*peers: Peer) -> None:
    """Stop every transport."""
    for peer in peers:
        await peer.sip.stop()


# --- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_options_and_200(transport: str) -> None:
    """OPTIONS and its 200 between two transports over UDP and TCP; Via gets received/rport."""
    alice, bob = Peer(settings(), 1), Peer(settings(), 2)
    try:
        received, answered = await exchange(alice, bob, transport)
        assert received.transport == transport and received.source[0] == LOCAL
        top = received.request.vias[0]
        assert top.rport == received.source[1] and top.received == LOCAL
        assert answered.response.status == 200
        assert answered.response.headers.get("Allow") is not None
        assert alice.sip.public_addresses[transport] == received.source
        if transport == "tcp":
            assert bob.sip.stats.connections_accepted == 1
            assert alice.sip.flows() == [("tcp", bob.sip.local_address("tcp"))]
    finally:
        await shutdown(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tcp_connection_is_reused() -> None:
    """A second request to the same address goes over the connection already open."""
    alice, bob = Peer(settings(), 3), Peer(settings(), 4)
    try:
        await exchange(alice, bob, "tcp")
        alice.events.clear()
        bob.events.clear()
        await exchange(alice, bob, "tcp")
        assert alice.sip.stats.connections_opened == 1
        assert bob.sip.stats.connections_accepted == 1
    finally:
        await shutdown(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_large_request_switches_to_tcp() -> None:
    """A request over 1300 bytes sent "over UDP" travels over TCP with a TCP Via (§18.1.1)."""
    alice, bob = Peer(settings(), 5), Peer(settings(), 6)
    try:
        body = b"a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n" * 40
        received, answered = await exchange(alice, bob, "udp", body)
        assert len(received.request.encode()) > 1300
        assert received.transport == "tcp" and received.request.vias[0].transport == "TCP"
        assert received.request.body == body
        assert answered.response.status == 200
    finally:
        await shutdown(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_large_request_falls_back_to_udp_when_peer_has_no_tcp() -> None:
    """Against a UA listening on UDP only the refused TCP connection falls back to UDP."""
    alice, bob = Peer(settings(), 7), Peer(settings(transports=("udp",)), 8)
    try:
        body = b"x" * 1500
        received, answered = await exchange(alice, bob, "udp", body)
        assert received.transport == "udp" and received.request.vias[0].transport == "UDP"
        assert answered.response.status == 200
    finally:
        await shutdown(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tls_with_trusted_ca(tmp_path: Path) -> None:
    """Over TLS with the server's CA trusted: the OPTIONS gets its 200."""
    ca, ca_key, ca_name = make_ca(tmp_path, "ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    bob = Peer(settings(transports=("udp", "tcp", "tls"), tls_cert_file=str(cert),
                        tls_key_file=str(key)), 9)
    alice = Peer(settings(tls_ca_file=str(ca)), 10)
    try:
        received, answered = await exchange(alice, bob, "tls", server_name="localhost")
        assert received.transport == "tls"
        assert answered.response.status == 200
    finally:
        await shutdown(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tls_verifies_ip_address(tmp_path: Path) -> None:
    """Without a server name the IP address is verified against the certificate's IP SAN."""
    ca, ca_key, ca_name = make_ca(tmp_path, "ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    bob = Peer(settings(transports=("udp", "tcp", "tls"), tls_cert_file=str(cert),
                        tls_key_file=str(key)), 11)
    alice = Peer(settings(tls_ca_file=str(ca)), 12)
    try:
        _received, answered = await exchange(alice, bob, "tls")
        assert answered.response.status == 200
    finally:
        await shutdown(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tls_with_wrong_ca_fails_clearly(tmp_path: Path) -> None:
    """A client trusting another CA refuses the server: TransportFailed names the verification."""
    _ca, ca_key, ca_name = make_ca(tmp_path, "ca")
    other_ca, _other_key, _other_name = make_ca(tmp_path, "other")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    bob = Peer(settings(transports=("udp", "tcp", "tls"), tls_cert_file=str(cert),
                        tls_key_file=str(key)), 13)
    alice = Peer(settings(tls_ca_file=str(other_ca)), 14)
    try:
        dest = bob.sip.local_address("tls")
        alice.sip.send_request(alice.options("tls", dest), dest, "tls", server_name="localhost")
        failed: TransportFailed = await alice.wait_for(TransportFailed)
        assert failed.reason.startswith(f"TLS connection to {dest[0]}:{dest[1]} failed")
        assert "certificate could not be verified" in failed.reason
        assert not any(isinstance(e, RequestReceived) for e in bob.events)
    finally:
        await shutdown(alice, bob)
