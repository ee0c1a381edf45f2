"""The public API: one :class:`UserAgent` per SIP identity, for test rigs and the CLI.

```python
ua = UserAgent(settings, reactor=reactor)
await ua.start()
await ua.register()                     # raises sipua.account.RegistrationError
call = await ua.call("sip:bob@127.0.0.1:5062", source=Tone(440), sink=MemorySink())
await call.media_flowing(timeout=10.0)
call.stats()
await call.hangup()
ua.auto_answer(delay=0.0, source=Tone(660))
ua.subscribe(print)
await ua.stop()
```

Every awaitable is a Deferred (``Deferred.fromCoroutine``). The user agent owns the SIP transport
and its transaction layer, the :class:`~sipua.session.SessionManager` that runs the INVITE
sessions over it, the registration client and the pacing clock shared by every call's media.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ice.interfaces import local_addresses
from media.clock import PacingClock
from media.sinks import AudioSink
from media.sources import AudioSource
from sipua.auth import DigestClient, DigestCredentials
from sipua.call import Call, CallError, CallOptions, CallState
from sipua.exitcodes import ExitCode
from sipua.session import IncomingCall, SessionEvent, SessionManager, SessionSettings
from sipua.settings import Account, Settings, parse_hostport
from sipua.timers import TimerSettings
from sipua.transaction import TransactionSettings
from sipua.transport import PublicAddressLearned, SipTransport, TransportSettings
from sipua.uri import parse_uri

if TYPE_CHECKING:
    from sipua.resolver import SipResolver

__all__ = ["AutoAnswer", "UserAgent"]

log = logging.getLogger(__name__)

SourceSpec = AudioSource | Callable[[], AudioSource] | None
SinkSpec = AudioSink | Callable[[Call], AudioSink | None] | None


@dataclass(frozen=True)
class AutoAnswer:
    """How incoming calls are answered without asking (see :meth:`UserAgent.auto_answer`)."""

    #: Seconds of ringing before the final response.
    delay: float = 0.0
    #: 200 answers; 300-699 declines with that code.
    code: int = 200
    #: Calls in progress at most (0: unlimited); more get 486 Busy Here.
    max_calls: int = 0
    #: Hang up this many seconds after answering (None: wait for the caller).
    duration: float | None = None
    #: What answered calls hear: a source, or a factory called per call.
    source: SourceSpec = None
    #: Where what the caller sends goes: a sink, or a factory called per call.
    sink: SinkSpec = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class UserAgent:
    """A SIP user agent with calls (module docstring)."""

    def __init__(self, settings: Settings, reactor: Any = None, *,
                 rng: random.Random | None = None, account: str | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.settings = settings
        self.reactor: Any = reactor
        self.rng: random.Random = rng if rng is not None else random.SystemRandom()
        self.account: Account | None = settings.account(account) if settings.accounts else None
        self.clock = PacingClock(reactor)
        self.transport: SipTransport | None = None
        self._sessions: SessionManager | None = None
        self._registration: Any = None
        self._registered = False
        #: Calls in progress by session id.
        self.calls: dict[str, Call] = {}
        #: Calls that have ended, oldest first (their reports stay available).
        self.finished: list[Call] = []
        self._subscribers: list[Callable[[object], None]] = []
        self._auto: AutoAnswer | None = None
        self._answered_calls = 0
        self._incoming: list[Call] = []
        self._incoming_waiters: list[Deferred[Call]] = []
        self._dispatching = False
        self._resolver: SipResolver | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def sessions(self) -> SessionManager:
        """The session manager (after :meth:`start`)."""
        if self._sessions is None:
            raise RuntimeError("start() the user agent first")
        return self._sessions

    def start(self) -> Deferred[None]:
        """Listen for SIP (raises twisted's CannotListenError)."""
        async def go() -> None:
            ua = self.settings.ua
            host, port = ua.listen_addresses()[0]
            wildcard = _is_ip(host) and ipaddress.ip_address(host).is_unspecified
            advertised = self.media_addresses()[0] if wildcard else None
            # Without a certificate TLS is client-only: requests go out over TLS and the
            # answers come back on the same connection (RFC 3261 §18.2.2).
            listening = tuple(t for t in ua.transports if t != "tls" or ua.tls_cert_file)
            tsettings = TransportSettings(
                host=host, port=5060 if port is None else port, transports=listening,
                tls_cert_file=ua.tls_cert_file, tls_key_file=ua.tls_key_file,
                tls_ca_file=ua.tls_ca_file, tls_verify=ua.tls_verify,
                advertised_host=advertised, keepalive_interval=ua.keepalive_interval,
                transaction=TransactionSettings(
                    timers=TimerSettings(t1=ua.t1, t2=max(ua.t2, ua.t1), t4=ua.t4),
                    tcp_threshold=ua.tcp_threshold if ua.tcp_threshold < 65535 else None,
                    max_server_transactions=ua.max_transactions,
                    max_client_transactions=ua.max_transactions))
            self.transport = SipTransport(tsettings, reactor=self.reactor, rng=self.rng,
                                          on_event=self._on_sip_event)
            self._sessions = SessionManager(self.transport.layer, self.rng,
                                            SessionSettings(user_agent=ua.user_agent,
                                                            max_sessions=ua.max_calls))
            self.transport.start()
            for t in ua.transports:
                self._sessions.set_local_address(t, self.transport.local_address(t))
            log.info("user agent %s listening on %s", self.aor,
                     ", ".join(f"{t} {self.transport.local_address(t)}" for t in ua.transports))
        return Deferred.fromCoroutine(go())

    def stop(self) -> Deferred[None]:
        """Hang up every call, unregister, stop listening."""
        async def go() -> None:
            waits = [call.hangup() for call in list(self.calls.values())]
            if waits:
                done: Deferred[Any] = defer.DeferredList(waits, consumeErrors=True)
                done.addTimeout(3.0, self.reactor)
                try:
                    await done
                except defer.TimeoutError:
                    log.info("calls did not end in time; stopping anyway")
            if self._registration is not None:
                try:
                    await self._registration.stop()
                except Exception as exc:  # a registrar gone away must not stop the shutdown
                    log.info("unregistering failed: %s", exc)
            for waiter in self._incoming_waiters:
                waiter.errback(CallError("the user agent stopped"))
            self._incoming_waiters.clear()
            if self._resolver is not None:
                self._resolver.close()
            if self.transport is not None:
                await self.transport.settle(BYE_GRACE)
                await self.transport.stop()
            self.clock.stop()
        return Deferred.fromCoroutine(go())

    @property
    def local_address(self) -> tuple[str, int]:
        """Our UDP (else first transport's) SIP address."""
        if self.transport is None:
            raise RuntimeError("start() the user agent first")
        t = "udp" if "udp" in self.settings.ua.transports else self.settings.ua.transports[0]
        return self.transport.local_address(t)

    @property
    def aor(self) -> str:
        """Our address-of-record: the account's, else ``sip:sipua@HOST:PORT``."""
        if self.account is not None:
            return self.account.uri
        if self.transport is None:
            return "sip:sipua@localhost"
        host, port = self.local_address
        shown = f"[{host}]" if ":" in host else host
        return f"sip:sipua@{shown}:{port}"

    # --- registration ---------------------------------------------------------------------------
    def register(self) -> Deferred[Any]:
        """Register the account with its registrar; fires with ``Registered``, fails with
        :class:`sipua.account.RegistrationError`."""
        async def go() -> Any:
            from sipua.account import RegistrationClient
            from sipua.registration import RegistrationSettings

            account = self.account
            if account is None or self.transport is None:
                raise RuntimeError("register() needs a started user agent with an account")
            if self._registration is None:
                self._registration = RegistrationClient(self.transport, reactor=self.reactor,
                                                        rng=self.rng)
                self._registration.subscribe(self.emit)
                self._registration.add(RegistrationSettings(
                    aor=account.uri, username=account.auth_user, password=account.password,
                    expires=account.expires, transport=account.transport,
                    display_name=account.display_name,
                    user_agent=self.settings.ua.user_agent), registrar=account.registrar)
            result = await self._registration.register(account.uri)
            self._registered = True
            return result
        return Deferred.fromCoroutine(go())

    # --- calls ----------------------------------------------------------------------------------
    def call(self, uri: str, *, source: AudioSource | None = None,
             sink: AudioSink | None = None, nomination: str | None = None,
             options: CallOptions | None = None) -> Deferred[Call]:
        """Call ``uri``; fires with the :class:`Call` once the INVITE is out (await
        ``call.answered()`` / ``call.media_flowing()`` next)."""
        async def go() -> Call:
            target = parse_uri(uri)
            account = self.account
            proxy: tuple[str, int] | None = None
            if account is not None and account.outbound_proxy is not None:
                proxy = self._hostport(account.outbound_proxy)
            elif account is not None and self._registered:
                host, port = account.registrar_hostport()
                proxy = (host, port or 5060)
            transport = account.transport if account is not None else "udp"
            dest = proxy
            if dest is None:
                host = target.params.get("maddr") or target.host
                port = target.port or (5061 if target.scheme == "sips" else 5060)
                dest = (host, port) if _is_ip(host) else await self._resolve(uri)
            if proxy is not None:
                proxy = await self._numeric(proxy)
                dest = proxy
            credentials = None
            if account is not None and account.password is not None:
                credentials = DigestClient(DigestCredentials(account.auth_user,
                                                             account.password), self.rng)
            opts = options or CallOptions()
            if nomination is not None:
                opts = dataclasses.replace(opts, nomination=nomination)  # every other option kept
            call = Call(self, direction="outgoing", source=source, sink=sink, options=opts,
                        account_nomination=account.nomination if account else None)
            local = self.aor if account is None or account.display_name is None else \
                f'"{account.display_name}" <{account.uri}>'
            await call.dial(uri, local=local, dest=dest, transport=transport,
                            credentials=credentials, outbound_proxy=proxy)
            self.calls[call.id] = call
            return call
        return Deferred.fromCoroutine(go())

    @staticmethod
    def _hostport(text: str) -> tuple[str, int]:
        host, port = parse_hostport(text)
        return host, port or 5060

    async def _numeric(self, address: tuple[str, int]) -> tuple[str, int]:
        if _is_ip(address[0]):
            return address
        return await self._resolve(f"sip:{address[0]}:{address[1]}")

    async def _resolve(self, uri: str) -> tuple[str, int]:
        from sipua.resolver import SipResolver

        if self._resolver is None:
            self._resolver = SipResolver(rng=self.rng)
        targets = await self._resolver.resolve(parse_uri(uri))
        if not targets:
            raise CallError(f"cannot locate {uri}", code=ExitCode.NO_ANSWER)
        return targets[0].host, targets[0].port

    def auto_answer(self, delay: float = 0.0, code: int = 200, *, source: SourceSpec = None,
                    sink: SinkSpec = None, max_calls: int = 0,
                    duration: float | None = None) -> None:
        """Answer every incoming call after ``delay`` seconds of ringing with ``code`` (200, or
        a 300-699 refusal); at most ``max_calls`` at a time (more get 486)."""
        if code != 200 and not 300 <= code <= 699:
            raise ValueError("code must be 200 or 300-699")
        self._auto = AutoAnswer(delay, code, max_calls, duration, source, sink)

    def next_incoming(self) -> Deferred[Call]:
        """The next incoming call (ringing) that auto-answer did not take."""
        if self._incoming:
            return defer.succeed(self._incoming.pop(0))
        d: Deferred[Call] = Deferred()
        self._incoming_waiters.append(d)
        return d

    def subscribe(self, on_event: Callable[[object], None]) -> None:
        """Call ``on_event`` with every event: session, ICE, media, registration."""
        self._subscribers.append(on_event)

    # --- CallHost -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Deliver what the sessions queued and send it (at once, or when the current delivery
        returns)."""
        if self.transport is None or self._dispatching or self._sessions is None:
            return
        self.transport.driver.poke()  # first: a handler below may stop the transport
        self._dispatching = True
        try:
            while (session_event := self._sessions.next_event()) is not None:
                self._dispatch(session_event)
        finally:
            self._dispatching = False
        self.transport.driver.poke()

    def media_addresses(self) -> list[str]:
        """Where media sockets bind: the SIP listen address, or every interface's."""
        host, _ = self.settings.ua.listen_addresses()[0]
        if _is_ip(host) and not ipaddress.ip_address(host).is_unspecified:
            return [host]
        found = [a.ip for a in local_addresses(ipv6=self.settings.ice.ipv6,
                                               only=self.settings.ice.interfaces)]
        return found or ["127.0.0.1"]

    def emit(self, event: object) -> None:
        """Deliver an event to every subscriber."""
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed on %r", event)

    def call_ended(self, call: Call) -> None:
        """Move a finished call out of the live table."""
        if self.calls.pop(call.id, None) is not None:
            self.finished.append(call)
            if len(self.finished) > MAX_FINISHED_CALLS:
                del self.finished[:len(self.finished) - MAX_FINISHED_CALLS]
        if call in self._incoming:
            self._incoming.remove(call)

    # --- SIP events -------------------------------------------------------------------------------
    def _on_sip_event(self, event: Any) -> None:
        if isinstance(event, PublicAddressLearned):
            if self._sessions is not None and event.transport == "udp":
                self._sessions.set_contact_address(event.transport, event.address)
            return
        sessions = self._sessions
        if sessions is None:
            return
        now = float(self.reactor.seconds())
        outer = self._dispatching
        self._dispatching = True
        try:
            sessions.receive(event, now)
            while (session_event := sessions.next_event()) is not None:
                self._dispatch(session_event)
        finally:
            self._dispatching = outer

    def _dispatch(self, event: SessionEvent) -> None:
        if isinstance(event, IncomingCall):
            self._on_incoming(event)
            return
        call = self.calls.get(event.session_id)
        if call is not None:
            call.session_event(event)
        else:
            self.emit(event)

    def _on_incoming(self, event: IncomingCall) -> None:
        session = self.sessions.session(event.session_id)
        if session is None:
            return
        policy = self._auto
        active = sum(1 for c in self.calls.values() if c.direction == "incoming")
        if policy is not None and policy.max_calls and active >= policy.max_calls:
            log.info("incoming call %s refused: %d calls in progress", session.id, active)
            self.emit(event)
            session.reject(486, event.at)
            return
        source = policy.source if policy is not None else None
        if callable(source) and not hasattr(source, "read"):
            source = source()
        call = Call(self, direction="incoming", source=source,
                    account_nomination=self.account.nomination if self.account else None)
        self.calls[session.id] = call
        call.session_event(event)
        call.incoming(session, event.sdp)
        if call.state is CallState.ENDED or session.id not in self.calls:
            return
        if policy is None:
            if self._incoming_waiters:
                self._incoming_waiters.pop(0).callback(call)
            else:
                self._incoming.append(call)
            return
        sink = policy.sink
        if sink is not None and callable(sink) and not hasattr(sink, "write"):
            sink = sink(call)
        call.sink = sink  # type: ignore[assignment]
        self.reactor.callLater(policy.delay, self._auto_decide, call, policy)

    def _auto_decide(self, call: Call, policy: AutoAnswer) -> None:
        if call.state is not CallState.INCOMING:
            return
        if policy.code != 200:
            call.reject(policy.code)
            return
        self._answered_calls += 1
        d = call.answer()
        if policy.duration is not None:
            duration = policy.duration

            def later(_: object) -> None:
                self.reactor.callLater(duration, call.hangup)
            d.addCallback(later)
        d.addErrback(lambda f: log.info("auto-answer of %s failed: %s", call.id,
                                        f.getErrorMessage()))


# --- the `sipua call` and `sipua answer` commands ------------------------------------------------

@dataclass(frozen=True)
class CommandOptions:
    """What `sipua call` and `sipua answer` share (docs/calls.md)."""

    listen: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    registrar: str | None = None
    stun: str | None = None
    turn: str | None = None
    turn_user: str | None = None
    turn_password: str | None = field(default=None, repr=False)
    nomination: str | None = None
    play: str | None = None
    record: str | None = None
    tone: float = 440.0
    #: Seconds a call lasts once media flows (None: until the peer hangs up).
    duration: float | None = 5.0
    timeout: float = 10.0
    as_json: bool = False
    #: SIP transport for requests: "udp", "tcp" or "tls".
    transport: str = "udp"


def command_settings(opts: CommandOptions, base: Settings | None = None) -> Settings:
    """Settings from the configuration (``base``, else file < environment) with the command
    line on top."""

    from sipua.errors import UserError
    from sipua.settings import SettingError, TurnServer

    base = Settings.load() if base is None else base
    try:
        transports = {"udp": ("udp",), "tcp": ("udp", "tcp"),
                      "tls": ("udp", "tcp", "tls")}[opts.transport]
        ua = dataclasses.replace(base.ua, listen=(opts.listen,), transports=transports)
        ice = base.ice
        if opts.stun is not None:
            ice = dataclasses.replace(ice, stun_servers=(opts.stun,))
        if opts.turn is not None:
            uri = opts.turn if opts.turn.startswith(("turn:", "turns:")) else f"turn:{opts.turn}"
            ice = dataclasses.replace(ice, turn_servers=(TurnServer(
                uri, opts.turn_user or "", opts.turn_password or ""),))
        if opts.nomination is not None:
            ice = dataclasses.replace(ice, nomination=opts.nomination)
        accounts = base.accounts
        if opts.user is not None:
            uri = opts.user
            if not uri.startswith(("sip:", "sips:")):
                if "@" in uri:
                    uri = f"sip:{uri}"
                else:
                    domain = (parse_hostport(opts.registrar)[0] if opts.registrar
                              else parse_hostport(opts.listen, allow_port_zero=True)[0])
                    shown = f"[{domain}]" if ":" in domain else domain
                    uri = f"sip:{uri}@{shown}"
            accounts = (Account(name="cli", uri=uri, password=opts.password,
                                registrar=opts.registrar, transport=opts.transport,
                                register=opts.registrar is not None),)
        elif opts.registrar is not None:
            raise UserError("--registrar needs --user")
        elif accounts:
            accounts = tuple(a if a.transport in transports else
                             dataclasses.replace(a, transport=opts.transport) for a in accounts)
        elif opts.transport != "udp":
            host = parse_hostport(opts.listen, allow_port_zero=True)[0]
            if not _is_ip(host) or ipaddress.ip_address(host).is_unspecified:
                host = "localhost"
            shown = f"[{host}]" if ":" in host else host
            accounts = (Account(name="cli", uri=f"sip:sipua@{shown}", register=False,
                                transport=opts.transport),)
        return dataclasses.replace(base, ua=ua, ice=ice, accounts=accounts)
    except (SettingError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(str(exc)) from None


def _default_printer(emit: Callable[[str], None], as_json: bool) -> Any:
    """The printer of sipua/output.py a command uses when its caller gives none."""
    from rich.console import Console

    from sipua.output import HumanPrinter, JsonPrinter

    return JsonPrinter(emit) if as_json else HumanPrinter(Console())


def _source(opts: CommandOptions) -> AudioSource:
    from media.sources import Tone, WavSource

    if opts.play is not None:
        return WavSource(opts.play, loop=True)
    return Tone(opts.tone)


def _error_code(exc: BaseException) -> tuple[int, str]:
    from sipua.account import RegistrationError

    if isinstance(exc, CallError):
        return int(exc.code), str(exc)
    if isinstance(exc, RegistrationError):
        code = ExitCode.NO_ANSWER if exc.no_answer else ExitCode.REGISTRATION_FAILED
        return int(code), f"registration failed: {exc}"
    return int(ExitCode.FAILURE), f"{type(exc).__name__}: {exc}"


def run_call_command(uri: str, opts: CommandOptions, *, emit: Callable[[str], None],
                     settings: Settings | None = None, printer: Any = None,
                     prepare: Callable[[UserAgent], None] | None = None) -> tuple[int, str]:
    """`sipua call URI`: call, wait for media, keep the call ``duration`` seconds, hang up.
    Returns (exit code, message). ``settings`` is the loaded configuration (else it is loaded
    here), ``printer`` what prints events and reports, ``prepare`` is called with the started
    user agent before anything is sent (captures, SIP logs)."""
    from twisted.internet import task

    from media.sinks import NullSink, WavSink

    settings = command_settings(opts, settings)
    printer = printer if printer is not None else _default_printer(emit, opts.as_json)
    outcome: list[tuple[int, str]] = []

    async def go(reactor: Any) -> None:
        ua = UserAgent(settings, reactor)
        ua.subscribe(printer.event)
        await ua.start()
        if prepare is not None:
            prepare(ua)
        call: Call | None = None
        cleaned_up: Deferred[None] = Deferred()
        flowing = [False]
        interrupted = [False]

        def interrupt() -> Deferred[None]:
            # SIGINT/SIGTERM stop the reactor: hang up first and keep the reactor running until
            # the report is out and the user agent has unregistered (at most a few seconds).
            interrupted[0] = True
            if call is not None and call.active:
                call.hangup()
            return _bounded(cleaned_up, reactor, SHUTDOWN_GRACE)

        reactor.addSystemEventTrigger("before", "shutdown", interrupt)
        try:
            if ua.account is not None and ua.account.registrar is not None \
                    and ua.account.register:
                await ua.register()
            sink: AudioSink = WavSink(opts.record) if opts.record else NullSink()
            call = await ua.call(uri, source=_source(opts), sink=sink)
            printer.say(f"calling {uri} from {ua.aor}")
            await call.media_flowing(timeout=opts.timeout)
            flowing[0] = True
            printer.say("media flowing", setup=call.report().to_dict()["setup"])
            ended = call.ended()
            if opts.duration is not None:
                ended.addTimeout(opts.duration, reactor)
            try:
                await ended
            except defer.TimeoutError:
                await call.hangup()
            outcome.append((0, "ok"))
        except Exception as exc:
            if interrupted[0]:
                outcome.append((0, "interrupted") if flowing[0]
                               else (int(ExitCode.FAILURE), "interrupted"))
            else:
                outcome.append(_error_code(exc))
            if call is not None and call.active:
                await call.hangup()
        finally:
            if call is not None:
                printer.report(call)
            await ua.stop()
            cleaned_up.callback(None)

    _react(task, go)
    return outcome[0] if outcome else (int(ExitCode.FAILURE), "interrupted")


def run_answer_command(opts: CommandOptions, *, max_calls: int, delay: float, code: int,
                       emit: Callable[[str], None], settings: Settings | None = None,
                       printer: Any = None, prepare: Callable[[UserAgent], None] | None = None
                       ) -> tuple[int, str]:
    """`sipua answer`: auto-answer every call (until interrupted, or ``max_calls`` calls have
    ended); each answered call lasts at most ``duration`` seconds. Exit 0 when every answered
    call had media. ``settings``, ``printer`` and ``prepare`` as for
    :func:`run_call_command`."""
    from twisted.internet import task

    from media.sinks import NullSink, WavSink

    settings = command_settings(opts, settings)
    printer = printer if printer is not None else _default_printer(emit, opts.as_json)
    outcome: list[tuple[int, str]] = []

    async def go(reactor: Any) -> None:
        ua = UserAgent(settings, reactor)
        ua.subscribe(printer.event)
        await ua.start()
        if prepare is not None:
            prepare(ua)
        all_done: Deferred[None] = Deferred()
        cleaned_up: Deferred[None] = Deferred()
        count = [0]
        failures: list[str] = []

        def interrupted() -> Deferred[None]:
            # SIGINT/SIGTERM stop the reactor: end the wait first and keep the reactor running
            # until the user agent has unregistered and closed its sockets.
            if not all_done.called:
                all_done.callback(None)
            return _bounded(cleaned_up, reactor, SHUTDOWN_GRACE)

        reactor.addSystemEventTrigger("before", "shutdown", interrupted)

        def sink_for(call: Call) -> AudioSink:
            count[0] += 1
            if not opts.record:
                return NullSink()
            path = opts.record if count[0] == 1 else opts.record.replace(
                ".wav", f"-{count[0]}.wav")
            return WavSink(path)

        def on_event(event: object) -> None:
            if isinstance(event, IncomingCall):
                reactor.callLater(0, watch, event.session_id)

        def watch(session_id: str) -> None:
            call = ua.calls.get(session_id)
            if call is None:
                return
            flowing = call.media_flowing(timeout=opts.timeout + delay)
            flowing.addErrback(lambda f: failures.append(f.getErrorMessage()) if code == 200
                               else None)
            call.ended().addCallback(finished)

        def finished(call: Call) -> None:
            printer.report(call)
            if max_calls and len(ua.finished) >= max_calls and not all_done.called:
                all_done.callback(None)

        ua.subscribe(on_event)
        try:
            if ua.account is not None and ua.account.registrar is not None \
                    and ua.account.register:
                await ua.register()
            ua.auto_answer(delay=delay, code=code, source=lambda: _source(opts),
                           sink=sink_for, duration=opts.duration)
            host, port = ua.local_address
            printer.say(f"listening on {host}:{port} as {ua.aor}", host=host, port=port)
            await all_done
            if failures:
                outcome.append((int(ExitCode.MEDIA_FAILED), "; ".join(failures)))
            else:
                outcome.append((0, "ok"))
        except Exception as exc:
            outcome.append(_error_code(exc))
        finally:
            await ua.stop()
            cleaned_up.callback(None)

    _react(task, go)
    return outcome[0] if outcome else (0, "interrupted")


#: Ended calls kept for their reports (:attr:`UserAgent.finished`), newest last: a long run or
#: a flood of short calls must not grow memory without bound.
MAX_FINISHED_CALLS = 1000

#: How long an interrupted command may take to hang up, report and unregister.
SHUTDOWN_GRACE = 5.0
BYE_GRACE = 4.0
"""Seconds :meth:`UserAgent.stop` waits for BYEs (and other requests) still unanswered: their
UDP retransmissions at 0.5, 1.5 and 3.5 s (T1 = 500 ms) get through a lossy path."""


def _bounded(done: Deferred[None], reactor: Any, seconds: float) -> Deferred[None]:
    """A Deferred that fires when ``done`` does or after ``seconds``, whichever is first, and
    never fails (a shutdown trigger must not hang or raise)."""
    out: Deferred[None] = Deferred()

    def finish(_: object = None) -> None:
        if not out.called:
            out.callback(None)

    done.addBoth(finish)
    reactor.callLater(seconds, finish)
    return out


def _react(task: Any, go: Callable[[Any], Any]) -> None:
    try:
        task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
