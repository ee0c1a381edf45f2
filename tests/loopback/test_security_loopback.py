"""Security on 127.0.0.1 with the real reactor: TLS server verification and secrets in logs.

- SIP over TLS verifies the server's certificate chain against the configured CA and the name
  asked for (RFC 5922 §7.2); a self-signed certificate or another name fails the connection.
- A registration with digest and a call with ICE, logged at DEBUG, never put the account
  password, the digest response or either side's ice-pwd in a log record.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task

from media.sources import Tone
from sipua.auth import parse_authorization
from sipua.message import Request, parse
from sipua.registrar import RegistrarSettings
from sipua.registrar_server import RegistrarServer
from sipua.settings import Account, IceConfig, Settings, UaSettings
from sipua.transaction import TransportFailed
from sipua.transport import TransportSettings
from sipua.useragent import UserAgent
from tests.loopback.test_sip_transport_loopback import Peer, make_ca, make_server_cert, settings

REACTOR: Any = global_reactor
ALICE_PW = "Al1ce-secret-7f3e9a"
BOB_PW = "B0b-secret-52c1d8"


async def _tls_failure(tmp_path: Path, *, trust_server_ca: bool, server_name: str,
                       seed: int) -> str:
    """Alice sends OPTIONS over TLS to Bob; the TransportFailed reason (the request must
    never reach Bob)."""
    ca, ca_key, ca_name = make_ca(tmp_path, "ca")
    other, _key, _name = make_ca(tmp_path, "other")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    bob = Peer(settings(transports=("udp", "tcp", "tls"), tls_cert_file=str(cert),
                        tls_key_file=str(key)), seed)
    alice = Peer(settings(tls_ca_file=str(ca if trust_server_ca else other)), seed + 1)
    try:
        dest = bob.sip.local_address("tls")
        alice.sip.send_request(alice.options("tls", dest), dest, "tls", server_name=server_name)
        failed: TransportFailed = await alice.wait_for(TransportFailed)
        assert not [e for e in bob.events if type(e).__name__ == "RequestReceived"]
        return failed.reason
    finally:
        for peer in (alice, bob):
            await peer.sip.stop()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tls_wrong_server_name_fails(tmp_path: Path) -> None:
    """A certificate from the trusted CA but for another name (localhost, asked for
    sip.example.com) is refused: the chain alone is not enough."""
    reason = await _tls_failure(tmp_path, trust_server_ca=True, server_name="sip.example.com",
                                seed=41)
    assert reason.startswith("TLS connection to 127.0.0.1:")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tls_untrusted_issuer_fails(tmp_path: Path) -> None:
    """A server certificate whose issuer is self-signed and not the CA trusted is refused,
    with the reason saying the verification failed."""
    reason = await _tls_failure(tmp_path, trust_server_ca=False, server_name="localhost",
                                seed=43)
    assert "certificate could not be verified" in reason


def _settings(user: str, password: str, registrar: str) -> Settings:
    base = Settings(ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
                    ice=IceConfig())
    return dataclasses.replace(base, accounts=(Account(
        name=user, uri=f"sip:{user}@lab.test", password=password, registrar=registrar),))


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_secrets_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Register both sides with digest and set up a call with ICE, everything at DEBUG: no log
    record holds a password, a digest response or an ice-pwd (all known to the test)."""
    caplog.set_level(logging.DEBUG)
    server = RegistrarServer(RegistrarSettings(domain="lab.test"),
                             {"alice": ALICE_PW, "bob": BOB_PW},
                             TransportSettings(host="127.0.0.1", port=0, transports=("udp",)),
                             reactor=REACTOR, rng=random.Random(7))
    server.start()
    registrar = f"127.0.0.1:{server.addresses()['udp'][1]}"
    alice = UserAgent(_settings("alice", ALICE_PW, registrar), REACTOR, rng=random.Random(5))
    bob = UserAgent(_settings("bob", BOB_PW, registrar), REACTOR, rng=random.Random(6))
    wire: list[bytes] = []
    try:
        await alice.start()
        await bob.start()
        for ua in (alice, bob):
            assert ua.transport is not None
            ua.transport.taps.append(lambda data, *_: wire.append(data))
        await alice.register()
        await bob.register()
        bob.auto_answer(source=Tone(660.0))
        call = await alice.call("sip:bob@lab.test", source=Tone(440.0))
        await call.media_flowing(timeout=5.0)
        other = next(iter(bob.calls.values()))
        await other.media_flowing(timeout=5.0)
        await task.deferLater(REACTOR, 0.3, lambda: None)
        secrets = {ALICE_PW, BOB_PW}
        for c in (call, other):
            assert c.agent is not None
            secrets.add(c.agent.local_pwd)
        for data in wire:  # the digest responses actually sent
            message = parse(data)
            if isinstance(message, Request) and message.headers.get("authorization"):
                fields = parse_authorization(message.headers.get("authorization") or "")
                secrets.add(fields["response"])
        assert len(secrets) >= 5  # two passwords, two ice-pwds, at least one digest response
        await call.hangup()
    finally:
        await alice.stop()
        await bob.stop()
        await server.stop()
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_text:
            text += record.exc_text
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{record.name}: {text[:300]}"
