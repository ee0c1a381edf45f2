"""Registration against the embedded registrar on 127.0.0.1 with the real reactor, over UDP,
TCP and TLS (a throwaway CA made with ``cryptography``): register, refresh, unregister, and a
wrong password failing once without a retry loop."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task

from sipua.account import RegistrationClient, RegistrationError
from sipua.registrar import BindingRegistered, BindingRemoved, RegistrarEvent, RegistrarSettings
from sipua.registrar_server import RegistrarServer
from sipua.registration import Registered, RegistrationEvent, RegistrationSettings
from sipua.transport import SipTransport, TransportSettings
from tests.loopback.test_sip_transport_loopback import make_ca, make_server_cert

REACTOR: Any = global_reactor
LOCAL = "127.0.0.1"
USERS = {"alice": "alicepw", "bob": "bobpw"}


class Rig:
    """An embedded registrar and one client transport, both on loopback."""

    def __init__(self, tmp: Path, tls: bool) -> None:
        self.ca: str | None = None
        extra: dict[str, Any] = {}
        transports: tuple[str, ...] = ("udp", "tcp")
        if tls:
            ca, ca_key, ca_name = make_ca(tmp, "ca")
            cert, key = make_server_cert(tmp, ca_key, ca_name)
            self.ca = str(ca)
            extra = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
            transports = ("udp", "tcp", "tls")
        self.registrar_events: list[RegistrarEvent] = []
        self.server = RegistrarServer(
            RegistrarSettings(domain="example.org", min_expires=1), USERS,
            TransportSettings(host=LOCAL, port=0, tls_port=0, transports=transports,
                              keepalive_interval=0.0, **extra),
            reactor=REACTOR, rng=random.Random(1), on_event=self.registrar_events.append)
        self.server.start()
        self.sip = SipTransport(TransportSettings(host=LOCAL, port=0, keepalive_interval=0.0,
                                                  tls_ca_file=self.ca),
                                reactor=REACTOR, rng=random.Random(2))
        self.sip.start()
        self.client = RegistrationClient(self.sip, reactor=REACTOR, rng=random.Random(3))
        self.events: list[RegistrationEvent] = []
        self.client.subscribe(self.events.append)

    def add(self, transport: str, password: str = "alicepw", expires: int = 60) -> str:
        """Add alice with the registrar's address for ``transport``."""
        host, port = self.server.addresses()[transport]
        return self.client.add(
            RegistrationSettings("sip:alice@example.org", password=password, expires=expires,
                                 transport=transport, retry_base=0.2, retry_max=0.5),
            registrar=f"{host}:{port}")

    async def close(self) -> None:
        """Stop everything."""
        await self.client.stop(timeout=2.0)
        await self.sip.stop()
        await self.server.stop()


async def sleep(seconds: float) -> None:
    """Let the reactor run."""
    await task.deferLater(REACTOR, seconds, lambda: None)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_register_and_unregister(transport: str, tmp_path: Path) -> None:
    """401 then 200 over each transport: the binding exists with the client's source address;
    unregistering removes it."""
    rig = Rig(tmp_path, tls=transport == "tls")
    try:
        aor = rig.add(transport)
        registered = await rig.client.register(aor).addTimeout(10, REACTOR)
        assert isinstance(registered, Registered) and registered.expires == 60
        (binding,) = rig.server.core.bindings("alice")
        assert binding.transport == transport and binding.source[0] == LOCAL
        if transport == "udp":
            assert binding.source == rig.sip.local_address("udp")
        assert any(isinstance(e, BindingRegistered) for e in rig.registrar_events)
        unregistered = await rig.client.unregister(aor).addTimeout(10, REACTOR)
        assert unregistered.confirmed
        assert rig.server.core.bindings("alice") == []
        assert any(isinstance(e, BindingRemoved) for e in rig.registrar_events)
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_refresh_before_expiry(tmp_path: Path) -> None:
    """With a 2 s lifetime the client refreshes after 1 s, before the binding lapses, on the
    same Call-ID with a higher CSeq."""
    rig = Rig(tmp_path, tls=False)
    try:
        aor = rig.add("udp", expires=2)
        await rig.client.register(aor).addTimeout(10, REACTOR)
        first = rig.server.core.bindings("alice")[0]
        await sleep(1.6)
        registered = [e for e in rig.events if isinstance(e, Registered)]
        assert len(registered) == 2
        (binding,) = rig.server.core.bindings("alice", REACTOR.seconds())
        assert binding.call_id == first.call_id and binding.cseq > first.cseq
        assert binding.expires_at > first.expires_at
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_wrong_password_fails_once(tmp_path: Path) -> None:
    """A wrong password: one permanent failure, exactly two REGISTERs seen, none after."""
    rig = Rig(tmp_path, tls=False)
    seen: list[str] = []
    rig.server.transport.subscribe(
        lambda event: seen.append(type(event).__name__))
    try:
        aor = rig.add("udp", password="wrong")
        with pytest.raises(RegistrationError) as info:
            await rig.client.register(aor).addTimeout(10, REACTOR)
        assert info.value.permanent and info.value.status == 401
        assert "bad credentials" in info.value.reason
        await sleep(0.8)  # longer than retry_max: a retry loop would show here
        assert seen.count("RequestReceived") == 2
        assert rig.server.core.bindings("alice") == []
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_no_registrar_times_out(tmp_path: Path) -> None:
    """Nobody listening over TCP: the failure is a no-answer one (transport error)."""
    rig = Rig(tmp_path, tls=False)
    try:
        port = rig.server.addresses()["tcp"][1]
        await rig.server.stop()
        aor = rig.client.add(RegistrationSettings("sip:alice@example.org", password="x",
                                                  transport="tcp"),
                             registrar=f"{LOCAL}:{port}")
        with pytest.raises(RegistrationError) as info:
            await rig.client.register(aor).addTimeout(10, REACTOR)
        assert info.value.no_answer and not info.value.permanent
    finally:
        await rig.client.stop(timeout=1.0)
        await rig.sip.stop()

