"""Runs :class:`~sipua.registration.Registration` cores for one or more accounts over one
:class:`~sipua.transport.SipTransport` (the Twisted side of registration).

Each account gets its core and a :class:`ice.driver.CoreDriver` (the refresh/retry timer); the
REGISTERs the core queues become client transactions, and the transaction layer's responses,
time-outs and transport failures go back to the core that sent the request. The registrar is
located once per account (RFC 3263 via :class:`~sipua.resolver.SipResolver`, or a plain
``HOST[:PORT]``), and the Contact address is the transport's, or when it listens on a wildcard
address, the local address the kernel routes towards the registrar from.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from ice.driver import CoreDriver
from sipua.message import Request, SipParseError
from sipua.registration import (
    Registered,
    Registration,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationSettings,
    RegistrationState,
    Unregistered,
)
from sipua.resolver import ResolveError, SipResolver, Target
from sipua.transaction import (
    ResponseReceived,
    TransactionEvent,
    TransactionTimedOut,
    TransportFailed,
)
from sipua.transport import SipTransport, TransportEvent
from sipua.uri import SipUri, parse_uri

__all__ = ["RegistrationClient", "RegistrationError"]

log = logging.getLogger(__name__)


class RegistrationError(Exception):
    """A registration attempt failed; ``event`` says how (``permanent``: no retry follows)."""

    def __init__(self, event: RegistrationFailed) -> None:
        super().__init__(f"{event.aor}: {event.reason}")
        self.event = event
        self.status = event.status
        self.reason = event.reason
        self.permanent = event.permanent
        self.no_answer = event.no_answer


@dataclass
class _Account:
    settings: RegistrationSettings
    registrar: str | None
    server_name: str | None
    target: Target | None = None
    core: Registration | None = None
    driver: CoreDriver[Request, RegistrationEvent] | None = None
    waiting: list[tuple[type[Any], defer.Deferred[Any]]] = field(default_factory=list)


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def route_source(dest: str) -> str:
    """The local IP the kernel would send from towards ``dest`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in dest else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((dest, 9))
        return str(probe.getsockname()[0])


class RegistrationClient:
    """Registrations of several accounts over one SIP transport; see the module docstring."""

    def __init__(self, transport: SipTransport, *, reactor: Any = None,
                 rng: random.Random | None = None, resolver: SipResolver | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.reactor: Any = reactor
        self.transport = transport
        self.rng = rng if rng is not None else random.SystemRandom()
        self._resolver = resolver
        self._accounts: dict[str, _Account] = {}
        self._tx: dict[str, str] = {}
        self._subscribers: list[Callable[[RegistrationEvent], None]] = []
        transport.subscribe(self._transaction_event)

    # --- accounts -------------------------------------------------------------------------------

    def add(self, settings: RegistrationSettings, *, registrar: str | None = None,
            server_name: str | None = None) -> str:
        """Add an account; returns its key (the AOR). ``registrar`` is ``HOST[:PORT]`` (None:
        locate the AOR's domain, RFC 3263); ``server_name`` is the name TLS verifies."""
        if settings.aor in self._accounts:
            raise ValueError(f"{settings.aor} is already added")
        self._accounts[settings.aor] = _Account(settings, registrar, server_name)
        return settings.aor

    def registration(self, aor: str) -> Registration | None:
        """The core of ``aor`` once started."""
        return self._accounts[aor].core

    def subscribe(self, callback: Callable[[RegistrationEvent], None]) -> None:
        """Call ``callback`` with every registration event of every account."""
        self._subscribers.append(callback)

    # --- commands -------------------------------------------------------------------------------

    def register(self, aor: str | None = None) -> defer.Deferred[Registered]:
        """Start registering ``aor`` (the only account when None).

        Fires with the first :class:`Registered`, or fails with :class:`RegistrationError` at the
        first failure (temporary ones are retried by the core meanwhile), or with
        :class:`~sipua.resolver.ResolveError`.
        """
        account = self._account(aor)

        async def go() -> Registered:
            core = await self._core(account)
            waiter = self._wait(account, Registered)
            core.start(self._now())
            self._poke(account)
            result: Registered = await waiter
            return result
        return defer.Deferred.fromCoroutine(go())

    def unregister(self, aor: str | None = None, *,
                   all_contacts: bool = False) -> defer.Deferred[Unregistered]:
        """Remove the binding (every binding of the AOR with ``all_contacts``, which needs no
        earlier registration); fires with :class:`Unregistered`."""
        account = self._account(aor)

        async def go() -> Unregistered:
            core = await self._core(account)
            waiter = self._wait(account, Unregistered)
            core.unregister(self._now(), all_contacts=all_contacts)
            self._poke(account)
            result: Unregistered = await waiter
            return result
        return defer.Deferred.fromCoroutine(go())

    def stop(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """Unregister every started account (waiting at most ``timeout``), then stop timers."""
        waits: list[defer.Deferred[Any]] = []
        for account in self._accounts.values():
            if account.core is not None and account.core.state not in (
                    RegistrationState.UNREGISTERED, RegistrationState.IDLE):
                waits.append(self.unregister(account.settings.aor).addTimeout(
                    timeout, self.reactor))
        done: defer.Deferred[Any] = defer.DeferredList(waits, consumeErrors=True)

        def halt(_: object) -> None:
            self.close()
        return done.addCallback(halt)

    def close(self) -> None:
        """Stop every refresh and retry timer (and the resolver's) without unregistering."""
        for account in self._accounts.values():
            if account.driver is not None:
                account.driver.stop()
        if self._resolver is not None:
            self._resolver.close()

    # --- internals ------------------------------------------------------------------------------

    def _account(self, aor: str | None) -> _Account:
        if aor is None:
            if len(self._accounts) != 1:
                raise ValueError("name the account: there is not exactly one")
            return next(iter(self._accounts.values()))
        return self._accounts[aor]

    def _now(self) -> float:
        return float(self.reactor.seconds())

    async def _core(self, account: _Account) -> Registration:
        if account.core is not None:
            return account.core
        target = await self._locate(account)
        account.target = target
        host, port = self.transport.local_address(target.transport)
        if _wildcard(host):
            host = route_source(target.host)
        core = Registration(account.settings, local_address=(host, port), rng=self.rng)
        account.core = core

        def send(request: Request) -> None:
            self._send(account, request)

        def deliver(event: RegistrationEvent) -> None:
            self._deliver(account, event)

        account.driver = CoreDriver(core, self.reactor, send=send, on_event=deliver)
        return core

    async def _locate(self, account: _Account) -> Target:
        settings = account.settings
        transport = settings.transport
        if self._resolver is None:
            self._resolver = SipResolver(rng=self.rng)
        if account.registrar is not None:
            targets = await self._resolver.resolve_hostport(account.registrar, transport)
        else:
            aor: SipUri = parse_uri(settings.aor)
            uri = SipUri(aor.scheme, None, None, aor.host, aor.port, {"transport": transport})
            targets = await self._resolver.resolve(uri)
        for target in targets:
            if target.transport == transport:
                return target
        if targets:
            first = targets[0]
            return Target(first.host, first.port, transport)
        raise ResolveError(f"no address for the registrar of {settings.aor}")

    def _wait(self, account: _Account, kind: type[Any]) -> defer.Deferred[Any]:
        waiter: defer.Deferred[Any] = defer.Deferred()
        account.waiting.append((kind, waiter))
        return waiter

    def _poke(self, account: _Account) -> None:
        if account.driver is not None:
            account.driver.poke()

    def _send(self, account: _Account, request: Request) -> None:
        target = account.target
        assert target is not None
        tx = self.transport.send_request(request, (target.host, target.port), target.transport,
                                         server_name=account.server_name)
        self._tx[tx.id] = account.settings.aor

    def _transaction_event(self, event: TransactionEvent | TransportEvent) -> None:
        if isinstance(event, ResponseReceived):
            aor = self._tx.get(event.client_tx_id)
            if aor is None:
                return
            account = self._accounts[aor]
            if account.core is not None:
                account.core.receive_response(event.response, self._now())
                if event.response.status >= 200:
                    self._tx.pop(event.client_tx_id, None)
                self._poke(account)
        elif isinstance(event, TransactionTimedOut | TransportFailed):
            aor = self._tx.pop(event.client_tx_id, None)
            if aor is None:
                return
            account = self._accounts[aor]
            if account.core is not None:
                reason = event.reason if isinstance(event, TransportFailed) else "timed out"
                account.core.request_failed(event.request, reason, self._now(),
                                            timed_out=isinstance(event, TransactionTimedOut))
                self._poke(account)

    def _deliver(self, account: _Account, event: RegistrationEvent) -> None:
        for kind, waiter in list(account.waiting):
            hit = isinstance(event, kind)
            failed = isinstance(event, RegistrationFailed) and kind is Registered
            if (hit or failed) and not waiter.called:
                account.waiting.remove((kind, waiter))
                if hit:
                    waiter.callback(event)
                else:
                    assert isinstance(event, RegistrationFailed)
                    waiter.errback(RegistrationError(event))
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("registration event handler failed for %r", event)


# --- the `sipua register` command ------------------------------------------------------------

def _event_line(event: RegistrationEvent) -> str:
    """One readable line per event."""
    if isinstance(event, Registered):
        public = f" (public address {event.public_address[0]}:{event.public_address[1]})" \
            if event.public_address else ""
        return f"registered {event.aor} as {event.contact} for {event.expires} s{public}"
    if isinstance(event, RegistrationFailed):
        kind = "failed" if event.permanent else "failed, will retry"
        return f"registration of {event.aor} {kind}: {event.reason}"
    if isinstance(event, Unregistered):
        how = "unregistered" if event.confirmed else "not unregistered"
        return f"{how} {event.aor}: {event.reason}"
    return f"retrying registration of {event.aor} (failure {event.failures})"


def run_register_command(*, aor: str, password: str | None, auth_user: str | None,
                         registrar: str | None, transport: str, expires: int,
                         listen: tuple[str, int], ca_file: str | None, unregister: bool,
                         duration: float, timeout: float, emit: Callable[[str], None],
                         as_json: bool) -> tuple[int, str | None]:
    """Run ``sipua register`` on the global reactor; (exit code, one-line error message).

    Exit codes (sipua.exitcodes): 0 done; 3 refused (bad credentials or another final error);
    7 no answer (time-out, connection failure, unresolvable registrar); 2 bad arguments;
    1 cannot listen.
    """
    import json

    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError

    from sipua import __version__
    from sipua.message import make_response, new_tag
    from sipua.transaction import RequestReceived
    from sipua.transport import TransportSettings

    reactor: Any = global_reactor
    try:
        settings = RegistrationSettings(aor, username=auth_user, password=password,
                                        expires=expires, transport=transport,
                                        user_agent=f"sipua/{__version__}")
    except (ValueError, SipParseError) as exc:
        return 2, f"--user {aor!r}: {exc}"
    outcome: dict[str, Any] = {"code": 0, "message": None}
    rng = random.SystemRandom()

    def show(event: RegistrationEvent) -> None:
        emit(json.dumps(event.to_dict()) if as_json else _event_line(event))

    def fail(code: int, message: str) -> None:
        if not outcome["code"]:
            outcome["code"], outcome["message"] = code, message

    async def go() -> None:
        sip = SipTransport(TransportSettings(host=listen[0], port=listen[1],
                                             tls_ca_file=ca_file), reactor=reactor, rng=rng)
        try:
            sip.start()
        except CannotListenError as exc:
            fail(1, f"cannot listen on {listen[0]}:{listen[1]}: {exc.socketError}")
            return

        def answer(event: TransactionEvent | TransportEvent) -> None:
            # Registrars probe NATed contacts with OPTIONS (Kamailio's nathelper): answer 200.
            if isinstance(event, RequestReceived) and event.request.method != "ACK":
                status = 200 if event.request.method == "OPTIONS" else 480
                sip.send_response(event.server_tx_id,
                                  make_response(event.request, status, to_tag=new_tag(rng)))
        sip.subscribe(answer)
        client = RegistrationClient(sip, reactor=reactor, rng=rng)
        client.subscribe(show)
        server_name = None
        if registrar is not None:
            server_name = registrar.rsplit(":", 1)[0].strip("[]") if registrar.count(":") <= 1 \
                or registrar.startswith("[") else registrar
        key = client.add(settings, registrar=registrar, server_name=server_name)
        try:
            if unregister:
                done = await client.unregister(key, all_contacts=True).addTimeout(timeout,
                                                                                   reactor)
                if not done.confirmed:
                    fail(7 if done.no_answer else 3, f"unregistration failed: {done.reason}")
                return
            await client.register(key).addTimeout(timeout, reactor)
            if duration > 0:
                stopping: defer.Deferred[None] = defer.Deferred()
                call = reactor.callLater(duration, stopping.callback, None)
                trigger = reactor.addSystemEventTrigger("before", "shutdown", client.stop)
                await stopping
                reactor.removeSystemEventTrigger(trigger)
                if call.active():
                    call.cancel()
                await client.stop(timeout=min(timeout, 10.0))
        except RegistrationError as exc:
            fail(7 if exc.no_answer else 3, f"registration failed: {exc.reason}")
        except defer.TimeoutError:
            fail(7, f"no answer from the registrar within {timeout:g} s")
        except ResolveError as exc:
            fail(7, f"cannot locate the registrar: {exc}")
        finally:
            client.close()
            await sip.stop()

    def main() -> None:
        d = defer.Deferred.fromCoroutine(go())

        def crashed(failure: Any) -> None:
            log.error("register failed: %s", failure.getTraceback())
            fail(1, f"internal error: {failure.getErrorMessage()}")
        d.addErrback(crashed)
        d.addBoth(lambda _: reactor.stop() if reactor.running else None)

    reactor.callWhenRunning(main)
    reactor.run()
    return outcome["code"], outcome["message"]
