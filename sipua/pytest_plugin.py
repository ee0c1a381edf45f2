"""pytest fixtures that make a SIP/ICE test rig a few lines long (docs/api.md).

Registered as the ``sipua`` pytest plugin (entry point ``pytest11``), so installing sipua makes
the fixtures available to any test suite; they run on 127.0.0.1 with the real reactor through
pytest-twisted (write tests as ``@pytest_twisted.ensureDeferred async def test_...`` and
``await`` the Deferreds, or call ``pytest_twisted.blockon(d)``):

- ``sipua_registrar``: the embedded registrar/proxy on a free UDP port, domain
  :data:`DOMAIN`, users :data:`USERS`; gives a :class:`RegistrarHandle`.
- ``sipua_stun_server``: the embedded STUN server on a free UDP port (:class:`StunHandle`).
- ``sipua_ua_factory``: ``await make(user=None, *, register=True, stun=False, seed=None,
  **ice)`` gives a started :class:`~sipua.useragent.UserAgent` (registered with
  ``sipua_registrar`` when ``user`` is given); every agent made is stopped at teardown.

Tests run inside the reactor's greenlet, so they wait with ``await`` (``blockon`` is for
fixtures, which pytest sets up outside it).
- ``sipua_answering_ua``: bob, registered, answering every call with a 660 Hz tone and
  recording each call into a :class:`~media.sinks.MemorySink` (:class:`AnsweringUA`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from media.sinks import MemorySink
from media.sources import Tone
from sipua.registrar import RegistrarEvent, RegistrarSettings
from sipua.settings import Account, IceConfig, Settings, UaSettings
from sipua.useragent import UserAgent

__all__ = ["DOMAIN", "USERS", "AnsweringUA", "RegistrarHandle", "StunHandle",
           "UserAgentFactory"]

#: The domain of the fixtures' registrar.
DOMAIN = "sipua.test"
#: Users of the fixtures' registrar and their digest passwords.
USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
#: What the answering user agent sends, in Hz.
ANSWER_TONE = 660.0


def _blockon(d: Any) -> Any:
    """Wait for a Deferred from a fixture, on pytest-twisted's running reactor."""
    try:
        import pytest_twisted
    except ImportError:  # pragma: no cover - the test extra has it
        pytest.fail("the sipua fixtures need pytest-twisted: pip install pytest-twisted",
                    pytrace=False)
    return pytest_twisted.blockon(d)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@dataclass
class RegistrarHandle:
    """The running embedded registrar/proxy."""

    server: Any
    domain: str
    users: dict[str, str]
    #: Every registrar event so far (BindingRegistered, RequestForwarded, ...).
    events: list[RegistrarEvent] = field(default_factory=list)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of its UDP socket."""
        host, port = self.server.addresses()["udp"]
        return f"{host}:{port}"

    def aor(self, user: str) -> str:
        """``sip:USER@DOMAIN``."""
        return f"sip:{user}@{self.domain}"

    def account(self, user: str, **options: Any) -> Account:
        """An account for ``user`` with its password, registering here."""
        return Account(name=user, uri=self.aor(user), password=self.users[user],
                       registrar=self.address, **options)

    def registered(self, user: str) -> bool:
        """True when ``user`` has registered at least once."""
        return any(getattr(e, "user", None) == user and type(e).__name__ == "BindingRegistered"
                   for e in self.events)


@dataclass
class StunHandle:
    """The running embedded STUN server."""

    port: Any

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port.getHost().port}"


class UserAgentFactory:
    """Makes started user agents on 127.0.0.1 and stops them all at teardown."""

    def __init__(self, request: pytest.FixtureRequest, registrar: RegistrarHandle) -> None:
        self._request = request
        self.registrar = registrar
        self.created: list[UserAgent] = []

    def settings(self, user: str | None = None, *, stun: bool = False,
                 **ice: Any) -> Settings:
        """The settings ``make`` would use (loopback, UDP, fast and deterministic)."""
        servers: tuple[str, ...] = ()
        if stun:
            handle: StunHandle = self._request.getfixturevalue("sipua_stun_server")
            servers = (handle.address,)
        ice.setdefault("interfaces", ("127.0.0.1",))
        return Settings(
            ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
            accounts=(self.registrar.account(user),) if user is not None else (),
            ice=IceConfig(stun_servers=servers, **ice))

    def __call__(self, user: str | None = None, *, register: bool = True, stun: bool = False,
                 seed: int | None = None, settings: Settings | None = None,
                 **ice: Any) -> Deferred[UserAgent]:
        """A started user agent (a Deferred: ``await`` it); with ``user`` (one of
        :data:`USERS`) an account at the fixtures' registrar, registered unless ``register``
        is False. ``ice`` are :class:`~sipua.settings.IceConfig` fields
        (``nomination="aggressive"``, ``rtcp_mux=False``)."""
        chosen = settings if settings is not None else self.settings(user, stun=stun, **ice)

        async def go() -> UserAgent:
            ua = UserAgent(chosen, _reactor(),
                           rng=random.Random(seed) if seed is not None else None)
            self.created.append(ua)
            await ua.start()
            if user is not None and register:
                await ua.register()
            return ua
        return Deferred.fromCoroutine(go())

    def close(self) -> None:
        """Stop every agent made, newest first."""
        while self.created:
            _blockon(self.created.pop().stop())


@dataclass
class AnsweringUA:
    """A registered user agent that answers every call, plays a tone and records."""

    ua: UserAgent
    #: Its address-of-record: call this.
    uri: str
    #: One recording per answered call, in order.
    recordings: list[MemorySink] = field(default_factory=list)
    tone: float = ANSWER_TONE

    @property
    def calls(self) -> list[Any]:
        """Calls in progress and finished ones, oldest first."""
        return [*self.ua.finished, *self.ua.calls.values()]


@pytest.fixture
def sipua_registrar() -> Iterator[RegistrarHandle]:
    """The embedded registrar/proxy on 127.0.0.1 (UDP, free port), users :data:`USERS`."""
    from sipua.registrar_server import RegistrarServer
    from sipua.transport import TransportSettings

    server = RegistrarServer(RegistrarSettings(domain=DOMAIN, min_expires=1), dict(USERS),
                             TransportSettings(host="127.0.0.1", port=0, transports=("udp",)),
                             reactor=_reactor())
    handle = RegistrarHandle(server, DOMAIN, dict(USERS))
    server.subscribe(handle.events.append)
    server.start()
    try:
        yield handle
    finally:
        _blockon(server.stop())


@pytest.fixture
def sipua_stun_server() -> Iterator[StunHandle]:
    """The embedded STUN server on 127.0.0.1 (free UDP port)."""
    from ice.server_udp import listen_stun

    port: Any = listen_stun(_reactor(), 0, "127.0.0.1")
    try:
        yield StunHandle(port)
    finally:
        result = port.stopListening()
        if result is not None:
            _blockon(result)


@pytest.fixture
def sipua_ua_factory(request: pytest.FixtureRequest,
                     sipua_registrar: RegistrarHandle) -> Iterator[UserAgentFactory]:
    """``make(user=None, *, register=True, stun=False, seed=None, **ice)``: started user
    agents, stopped at teardown."""
    factory = UserAgentFactory(request, sipua_registrar)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def sipua_answering_ua(sipua_ua_factory: UserAgentFactory) -> AnsweringUA:
    """bob, registered with ``sipua_registrar``, answering every call at once with a 660 Hz
    tone and recording what the caller sends."""
    ua: UserAgent = _blockon(sipua_ua_factory("bob"))
    answering = AnsweringUA(ua, sipua_ua_factory.registrar.aor("bob"))

    def record(_call: Any) -> MemorySink:
        sink = MemorySink()
        answering.recordings.append(sink)
        return sink

    ua.auto_answer(source=lambda: Tone(ANSWER_TONE), sink=record)
    return answering
