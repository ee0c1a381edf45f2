"""``sipua phone``: an interactive softphone on the terminal.

One command per line on standard input (``dial URI``, ``answer``, ``reject [CODE]``,
``hangup``, ``hold``, ``resume``, ``dtmf DIGITS``, ``status``, ``help``, ``quit``); what happens
(registration, ringing, ICE, media, the end of a call) is printed as it happens, one line each,
through the same :class:`~sipua.output.HumanPrinter` as ``sipua call``.

Audio is live through the microphone and the speaker when pyaudio and a sound card are there
(:mod:`media.audio`); otherwise the phone says why, sends a tone (or silence) and discards what
arrives, so that it still places and takes calls that a peer can check.

:class:`Phone` holds the command logic and knows the user agent only through its public API;
:func:`run_phone` puts it on the reactor with Twisted's standard-I/O transport.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver

from media.sinks import AudioSink, NullSink
from media.sources import AudioSource, Silence, Tone
from sipua.call import Call, CallError, CallState
from sipua.output import HumanPrinter
from sipua.useragent import UserAgent

__all__ = ["HELP", "AudioPlan", "Phone", "open_audio", "run_phone"]

log = logging.getLogger(__name__)

HELP = """commands:
  dial URI        call URI (sip:bob@example.org, or sip:bob@192.0.2.7:5060)
  answer          answer the ringing call
  reject [CODE]   refuse the ringing call (default 486 Busy Here)
  hangup          end the call (or refuse the ringing one)
  hold, resume    put the call on hold and take it back
  dtmf DIGITS     send telephone events (0-9 * # A-D)
  status          registration, audio and the call's state and figures
  quit            hang up, unregister and leave"""

_DTMF = re.compile(r"^[0-9*#A-Da-d]+$")


@dataclass
class AudioPlan:
    """Where a call's audio comes from and goes to."""

    #: True: microphone and speaker; False: a tone (or silence) and a null sink.
    live: bool
    #: What the phone says about it at start.
    description: str
    #: Tone sent without live audio, in Hz (0: silence).
    tone: float = 440.0

    def source(self) -> AudioSource:
        """A fresh source for one call."""
        if self.live:
            from media.audio import Microphone

            return Microphone()
        return Tone(self.tone) if self.tone > 0 else Silence()

    def sink(self) -> AudioSink:
        """A fresh sink for one call."""
        if self.live:
            from media.audio import Speaker

            return Speaker()
        return NullSink()


def open_audio(no_audio: bool, tone: float) -> AudioPlan:
    """Live audio if asked for and possible (the devices are opened once to check), else the
    fallback with the reason."""
    fallback = f"a {tone:g} Hz tone" if tone > 0 else "silence"
    if no_audio:
        return AudioPlan(False, f"audio: off (--no-audio): sending {fallback}, discarding what "
                                f"arrives", tone)
    from media.audio import AudioUnavailable, Microphone, Speaker

    try:
        Microphone().close()
        Speaker().close()
    except AudioUnavailable as exc:
        return AudioPlan(False, f"audio: no live audio ({exc}): sending {fallback}, discarding "
                                f"what arrives", tone)
    return AudioPlan(True, "audio: microphone and speaker", tone)


class Phone:
    """The softphone's commands over one :class:`UserAgent` (module docstring)."""

    def __init__(self, ua: UserAgent, *, write: Callable[[str], None], audio: AudioPlan,
                 printer: HumanPrinter, on_quit: Callable[[], None],
                 timeout: float = 10.0) -> None:
        self.ua = ua
        self.write = write
        self.audio = audio
        self.printer = printer
        self.on_quit = on_quit
        self.timeout = timeout
        #: The call in progress (outgoing, or an answered incoming one).
        self.call: Call | None = None
        #: An incoming call that is ringing.
        self.ringing: Call | None = None
        self.quitting = False
        self._sources: dict[int, AudioSource] = {}

    # --- plumbing -------------------------------------------------------------------------
    def start(self) -> None:
        """Take incoming calls from now on."""
        self._next_incoming()

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a command coroutine; a failure is printed, never left unhandled."""
        d = Deferred.fromCoroutine(coro)

        def failed(failure: Any) -> None:
            log.debug("phone command failed", exc_info=failure.value)
            self.write(f"error: {failure.getErrorMessage()}")
        d.addErrback(failed)

    def _next_incoming(self) -> None:
        d = self.ua.next_incoming()
        d.addCallbacks(self._incoming, lambda _failure: None)

    def _incoming(self, call: Call) -> None:
        if self.quitting:
            call.reject(480)
            return
        if self.ringing is not None or (self.call is not None and self.call.active):
            call.reject(486)
            self.write("busy: refused another incoming call (486)")
        else:
            self.ringing = call
            self.write("ringing: type 'answer' or 'reject'")
            call.ended().addCallback(self._ringing_ended)
        self._next_incoming()

    def _ringing_ended(self, call: Call) -> None:
        if self.ringing is call:
            self.ringing = None
            self.write("missed call")

    def _watch(self, call: Call) -> None:
        """Follow a call we took part in until it ends."""
        def ended(c: Call) -> None:
            source = self._sources.pop(id(c), None)
            close = getattr(source, "close", None)
            if callable(close):
                close()
            if self.call is c:
                self.call = None
            self.write("idle: 'dial URI' to call")
        call.ended().addCallback(ended)

    def _flowing(self, call: Call) -> Deferred[None]:
        async def go() -> None:
            try:
                await call.media_flowing(timeout=self.timeout)
            except CallError as exc:
                if call.active:
                    await call.hangup()
                self.write(f"call failed: {exc}")
                return
            self.write("media flowing: 'hangup' ends the call")
        return Deferred.fromCoroutine(go())

    # --- commands -------------------------------------------------------------------------
    def line_received(self, line: str) -> None:
        """One command line."""
        words = line.strip().split()
        if not words:
            return
        name, args = words[0].lower(), words[1:]
        handler = {
            "dial": self.dial, "call": self.dial, "answer": self.answer,
            "reject": self.reject, "hangup": self.hangup, "bye": self.hangup,
            "hold": self.hold, "resume": self.resume, "dtmf": self.dtmf,
            "status": self.status, "help": self.help, "?": self.help,
            "quit": self.quit, "exit": self.quit,
        }.get(name)
        if handler is None:
            self.write(f"unknown command {name!r}: type 'help'")
            return
        handler(args)

    def help(self, args: list[str]) -> None:
        """Print the commands."""
        self.write(HELP)

    def dial(self, args: list[str]) -> None:
        """``dial URI``."""
        if len(args) != 1:
            self.write("usage: dial URI")
            return
        if self.call is not None and self.call.active:
            self.write("already in a call: 'hangup' first")
            return
        uri = args[0]
        if not uri.startswith(("sip:", "sips:")):
            uri = f"sip:{uri}"

        async def go() -> None:
            self.printer.reset()
            source = self.audio.source()
            try:
                call = await self.ua.call(uri, source=source, sink=self.audio.sink())
            except (CallError, ValueError) as exc:
                close = getattr(source, "close", None)
                if callable(close):
                    close()
                self.write(f"cannot call {uri}: {exc}")
                return
            self._sources[id(call)] = source
            self.call = call
            self._watch(call)
            self.write(f"calling {uri}")
            await self._flowing(call)
        self._run(go())

    def answer(self, args: list[str]) -> None:
        """Answer the ringing call."""
        call = self.ringing
        if call is None or call.state is not CallState.INCOMING:
            self.write("no call is ringing")
            return
        self.ringing = None

        async def go() -> None:
            self.printer.reset()
            source = self.audio.source()
            self._sources[id(call)] = source
            call.source = source
            call.sink = self.audio.sink()
            self.call = call
            self._watch(call)
            await call.answer()
            await self._flowing(call)
        self._run(go())

    def reject(self, args: list[str]) -> None:
        """Refuse the ringing call with ``CODE`` (486 by default)."""
        call = self.ringing
        if call is None:
            self.write("no call is ringing")
            return
        code = 486
        if args:
            if not args[0].isdigit() or not 300 <= int(args[0]) <= 699:
                self.write("usage: reject [CODE], CODE from 300 to 699")
                return
            code = int(args[0])
        self.ringing = None
        call.reject(code)
        self.write(f"rejected with {code}")

    def hangup(self, args: list[str]) -> None:
        """End the call, or refuse the ringing one."""
        call = self.call
        if call is None or not call.active:
            if self.ringing is not None:
                self.reject(["603"])
                return
            self.write("no call to hang up")
            return

        async def go() -> None:
            await call.hangup()
        self._run(go())

    def _in_call(self) -> Call | None:
        call = self.call
        if call is None or call.state not in (CallState.CONNECTING, CallState.ACTIVE):
            self.write("no call in progress")
            return None
        return call

    def hold(self, args: list[str]) -> None:
        """Put the peer on hold (re-INVITE with a=sendonly)."""
        call = self._in_call()
        if call is None:
            return

        async def go() -> None:
            accepted = await call.hold()
            self.write("on hold: 'resume' to take the call back" if accepted
                       else "hold was not accepted")
        self._run(go())

    def resume(self, args: list[str]) -> None:
        """Take the call off hold (a=sendrecv)."""
        call = self._in_call()
        if call is None:
            return

        async def go() -> None:
            accepted = await call.resume()
            self.write("resumed" if accepted else "resume was not accepted")
        self._run(go())

    def dtmf(self, args: list[str]) -> None:
        """Send telephone events (RFC 4733)."""
        call = self._in_call()
        if call is None:
            return
        if len(args) != 1 or not _DTMF.match(args[0]):
            self.write("usage: dtmf DIGITS (0-9 * # A-D)")
            return
        try:
            call.send_dtmf(args[0].upper())
        except CallError as exc:
            self.write(f"cannot send DTMF: {exc}")
            return
        self.write(f"sent DTMF {args[0].upper()}")

    def status(self, args: list[str]) -> None:
        """Registration, audio and the current call."""
        host, port = self.ua.local_address
        self.write(f"identity {self.ua.aor}, listening on {host}:{port}")
        self.write(self.audio.description)
        if self.ringing is not None:
            self.write("a call is ringing")
        call = self.call
        if call is None or not call.active:
            self.write("no call")
            return
        data = call.report().to_dict()
        self.write(f"call {data.get('call_id')}: {call.direction}, {call.state.value}"
                   + (", on hold" if getattr(call, "_held", False) else ""))
        for component, pair in sorted((data["ice"].get("selected") or {}).items()):
            if pair is not None:
                self.write(f"  component {component}: {pair['key']}")
        media = data.get("media") or {}
        session = media.get("session") or {}
        sent = (session.get("outbound") or {}).get("packetsSent", 0)
        received = (session.get("inbound") or {}).get("packetsReceived", 0)
        self.write(f"  RTP sent {sent}, received {received}"
                   + (f", MOS {data['mos']:.2f}" if data.get("mos") is not None else ""))

    def quit(self, args: list[str]) -> None:
        """Hang up, unregister (in ``on_quit``'s caller) and leave."""
        if self.quitting:
            return
        self.quitting = True
        self.write("bye")

        async def go() -> None:
            if self.ringing is not None:
                self.ringing.reject(480)
            waits = [c.hangup() for c in list(self.ua.calls.values())]
            if waits:
                await defer.DeferredList(waits, consumeErrors=True)
            self.on_quit()
        self._run(go())


class _Lines(LineReceiver):
    """Standard input, line by line, into the phone; end of input quits."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self.phone: Phone | None = None
        #: Standard input ended (before the phone was ready, perhaps).
        self.closed = False
        #: Fires when standard I/O is closed and everything written has been flushed.
        self.lost: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        if self.phone is not None:
            self.phone.line_received(line.decode("utf-8", "replace").rstrip("\r"))

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if not self.lost.called:
            self.lost.callback(None)
        if self.phone is not None:
            self.phone.quit([])

    def link(self) -> Any:
        """The standard-I/O transport, untyped (zope interfaces defeat mypy's checks)."""
        return self.transport

    def out(self, text: str) -> None:
        """Write one line (or several) to standard output."""
        if self.transport is not None:
            self.link().write(text.encode() + b"\n")


class _TransportFile:
    """A text file that writes to the standard-I/O transport (for rich's Console)."""

    def __init__(self, lines: _Lines) -> None:
        self.lines = lines

    def write(self, text: str) -> int:
        if self.lines.transport is not None:
            self.lines.link().write(text.encode())
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered here."""

    def isatty(self) -> bool:
        return False


def run_phone(opts: Any, *, settings: Any, no_audio: bool,
              prepare: Callable[[UserAgent], None] | None = None) -> tuple[int, str]:
    """``sipua phone``: runs until ``quit`` or the end of standard input.

    Returns (exit code, message): 0 after quit, 3 when registration was refused, 7 when the
    registrar did not answer.
    """
    from rich.console import Console
    from twisted.internet import stdio, task

    from sipua.account import RegistrationError
    from sipua.useragent import command_settings

    settings = command_settings(opts, settings)
    outcome: list[tuple[int, str]] = []

    async def go(reactor: Any) -> None:
        lines = _Lines()
        stdio.StandardIO(lines, reactor=reactor)  # type: ignore[no-untyped-call]
        console = Console(file=_TransportFile(lines), highlight=False, width=110,  # type: ignore[arg-type]
                          force_terminal=False)
        printer = HumanPrinter(console)
        audio = open_audio(no_audio, opts.tone)
        ua = UserAgent(settings, reactor)
        ua.subscribe(printer.event)
        await ua.start()
        if prepare is not None:
            prepare(ua)
        done: Deferred[None] = Deferred()

        def quit_now() -> None:
            if not done.called:
                done.callback(None)
        phone = Phone(ua, write=lines.out, audio=audio, printer=printer, on_quit=quit_now,
                      timeout=opts.timeout)
        account = ua.account
        if account is not None and account.registrar is not None and account.register:
            lines.out(f"registering {account.uri} at {account.registrar}")
            try:
                await ua.register()
            except RegistrationError as exc:
                code = 7 if exc.no_answer else 3
                outcome.append((code, f"registration failed: {exc}"))
                await ua.stop()
                return
        host, port = ua.local_address
        lines.out(f"listening on {host}:{port} as {ua.aor}")
        lines.out(audio.description)
        lines.out("type 'help' for the commands")
        lines.phone = phone
        phone.start()
        if lines.closed:
            phone.quit([])
        await done
        await ua.stop()
        outcome.append((0, "ok"))
        if lines.transport is not None:
            lines.link().loseConnection()  # after what is written has gone out
            flushed = lines.lost
            flushed.addTimeout(2.0, reactor)
            try:
                await flushed
            except defer.TimeoutError:
                log.info("standard output did not drain")

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    return outcome[0] if outcome else (1, "interrupted")
