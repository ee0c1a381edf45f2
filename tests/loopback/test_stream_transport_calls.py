"""Calls whose signalling runs over TCP and TLS (RFC 3261 §18, §26.2) through the embedded
registrar/proxy on 127.0.0.1, with ICE and media over UDP as usual.

alice and bob register over the connection-oriented transport (TLS with a throwaway CA that
both verify), and alice calls bob by address-of-record: the proxy forwards the INVITE to bob
over the connection bob registered on, the in-dialog requests (ACK, BYE) follow, and each side
hears the other's tone.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from media.sinks import MemorySink
from media.sources import Tone
from sipua.registrar import RegistrarSettings
from sipua.registrar_server import RegistrarServer
from sipua.settings import Account, IceConfig, Settings, UaSettings
from sipua.transport import TransportSettings
from sipua.useragent import UserAgent
from tests.loopback.test_calls import A_TONE, B_TONE, sleep, tone_of
from tests.loopback.test_sip_transport_loopback import make_ca, make_server_cert

REACTOR: Any = global_reactor


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_call_by_aor_over_a_stream_transport(transport: str, tmp_path: Path) -> None:
    """REGISTER, INVITE, ACK and BYE over ``transport`` via the proxy; tones both ways; the
    SIP messages of the call never used UDP."""
    extra: dict[str, Any] = {}
    ca: str | None = None
    if transport == "tls":
        ca_path, ca_key, ca_name = make_ca(tmp_path, "ca")
        cert, key = make_server_cert(tmp_path, ca_key, ca_name)
        ca = str(ca_path)
        extra = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    server = RegistrarServer(RegistrarSettings(domain="lab.test"),
                             {"alice": "apw", "bob": "bpw"},
                             TransportSettings(host="127.0.0.1", port=0, tls_port=0,
                                               transports=("udp", "tcp", "tls") if extra
                                               else ("udp", "tcp"),
                                               keepalive_interval=0.0, **extra),
                             reactor=REACTOR, rng=random.Random(7))
    server.start()
    host, port = server.addresses()[transport]

    def account(user: str, password: str) -> Settings:
        return Settings(
            ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp", transport),
                          tls_ca_file=ca),
            accounts=(Account(name=user, uri=f"sip:{user}@lab.test", password=password,
                              registrar=f"{host}:{port}", transport=transport),),
            ice=IceConfig())

    alice = UserAgent(account("alice", "apw"), REACTOR, rng=random.Random(1))
    bob = UserAgent(account("bob", "bpw"), REACTOR, rng=random.Random(2))
    used: list[tuple[str, str]] = []
    try:
        await alice.start()
        await bob.start()
        for ua in (alice, bob):
            assert ua.transport is not None
            ua.transport.taps.append(
                lambda data, local, remote, outgoing, t: used.append(
                    (t, data.split(b" ", 1)[0].decode(errors="replace"))))
        await alice.register()
        await bob.register()
        heard_by_bob, heard_by_alice = MemorySink(), MemorySink()
        bob.auto_answer(source=Tone(B_TONE), sink=heard_by_bob)
        call = await alice.call("sip:bob@lab.test", source=Tone(A_TONE), sink=heard_by_alice)
        await call.media_flowing(timeout=5.0)
        await sleep(0.8)
        assert abs(tone_of(heard_by_alice) - B_TONE) < 5
        assert abs(tone_of(heard_by_bob) - A_TONE) < 5
        await call.hangup()
        other = bob.finished[-1] if bob.finished else next(iter(bob.calls.values()))
        await other.ended()
        assert other.ended_by == "remote" and other.end_reason == "BYE"
        methods = {m for _, m in used}
        assert {"REGISTER", "INVITE", "ACK", "BYE"} <= methods, methods
        assert {t for t, _ in used} == {transport}, used
    finally:
        for ua in (alice, bob):
            await ua.stop()
        await server.stop()


def test_settings_accept_a_stream_transport() -> None:
    """The account's transport must be enabled on the UA: TLS accounts list "tls"."""
    ua = UaSettings(listen=("127.0.0.1:0",), transports=("udp", "tls"))
    settings = Settings(ua=ua, accounts=(Account(name="a", uri="sip:a@lab.test", password="p",
                                                 registrar="127.0.0.1:5061",
                                                 transport="tls"),))
    assert dataclasses.replace(settings).accounts[0].transport == "tls"
