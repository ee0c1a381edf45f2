"""`sipua probe URI`: place calls to a peer and report how its ICE behaves on the wire.

The probe is a series of calls from one :class:`~sipua.useragent.UserAgent`, each recorded in
full (every SIP message through :attr:`SipTransport.taps`, every datagram of the media sockets
through :func:`ice.udp.add_tap`), and read afterwards by :mod:`sipua.probe_analysis`:

1. ``call``: a normal offer with ICE, we control with regular nomination; media flows, then
   the probe listens ``listen_for`` seconds for keepalives, consent checks and an updated offer.
2. ``restart``: on that call, an ICE restart by re-INVITE with new credentials (RFC 8445 §9).
3. ``role-conflict``: two calls where we offer but claim the controlled role, once with the
   largest tie-breaker (the peer should answer 487) and once with 0 (the peer should take
   control), RFC 8445 §7.3.1.1, with ``ice.role``/``ice.tie_breaker``; not asked of a lite
   peer (RFC 8445 §6.1.1: the full agent controls).
4. ``mismatch``: an offer whose default candidate matches no ``a=candidate`` (RFC 8839
   §4.4.1.1): does the peer answer ``a=ice-mismatch``?
5. ``callee``: the peer calling us is not asked (a probe cannot make a peer call): "n/a".

Steps 2-4 can be skipped (``skip``). The peer hears a tone, so that RTP flows both ways as in
a real call. This module is Twisted glue; the findings are computed in
the sans-IO :mod:`sipua.probe_analysis`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task

from ice import udp
from ice.events import PairSelected
from media.sinks import NullSink
from media.sources import Tone
from sipua.call import Call, CallError, CallOptions
from sipua.exitcodes import ExitCode
from sipua.probe_analysis import (
    CallTrace,
    DatagramRecord,
    Finding,
    ProbeReport,
    SipRecord,
    analyze_call,
    analyze_mismatch,
    analyze_restart,
    analyze_role_conflict,
    peer_software,
)
from sipua.settings import Settings
from sipua.useragent import CommandOptions, UserAgent, _error_code, _react, command_settings

__all__ = ["STEPS", "ProbeOptions", "probe", "render_report", "report_markdown",
           "run_probe_command"]

log = logging.getLogger(__name__)

#: Steps that ``--skip`` may name.
STEPS = ("restart", "role-conflict", "mismatch")
#: Tie-breakers of the role-conflict calls: we win (the peer's is smaller), we lose.
TIE_BREAKERS = {"role-conflict-win": 2**64 - 1, "role-conflict-lose": 0}
#: The probe's calls: ICE whatever ice.enabled says (the peer's ICE is what is probed),
#: regular nomination, so that the peer's answer to each check can be told apart.
PROBE_CALL = CallOptions(nomination="regular", ice=True)
#: Seconds to watch for the peer's checks after the restart re-INVITE was answered.
RESTART_WATCH = 3.0
#: Seconds a role-conflict or mismatch call is kept after it connected (or was answered).
SHORT_CALL = 1.0


@dataclass(frozen=True)
class ProbeOptions:
    """How `sipua probe` runs."""

    #: Seconds to listen after media flows for keepalives, consent checks, updated offers.
    listen_for: float = 12.0
    #: Steps not to run (of :data:`STEPS`).
    skip: frozenset[str] = frozenset()
    #: Seconds each call may take to be answered and get media.
    timeout: float = 10.0

    def __post_init__(self) -> None:
        unknown = set(self.skip) - set(STEPS)
        if unknown:
            raise ValueError(f"unknown step(s) {', '.join(sorted(unknown))}: expected any of "
                             f"{', '.join(STEPS)}")
        if self.listen_for < 0 or self.timeout <= 0:
            raise ValueError("listen_for must be >= 0 and timeout > 0")


class _Recorder:
    """Every SIP message of the user agent and every ICE-socket datagram of the process, with
    reactor times."""

    def __init__(self, ua: UserAgent) -> None:
        self.ua = ua
        self.sip: list[SipRecord] = []
        self.datagrams: list[DatagramRecord] = []

    def _now(self) -> float:
        return float(self.ua.reactor.seconds())

    def sip_tap(self, data: bytes, local: Any, remote: Any, outgoing: bool,
                transport: str) -> None:
        self.sip.append(SipRecord(self._now(), outgoing, bytes(data)))

    def datagram_tap(self, data: bytes, local: tuple[str, int], remote: tuple[str, int],
                     outgoing: bool) -> None:
        self.datagrams.append(DatagramRecord(self._now(), outgoing, (local[0], local[1]),
                                             (remote[0], remote[1]), bytes(data)))

    def attach(self) -> None:
        if self.ua.transport is not None:
            self.ua.transport.taps.append(self.sip_tap)
        udp.add_tap(self.datagram_tap)

    def detach(self) -> None:
        if self.ua.transport is not None and self.sip_tap in self.ua.transport.taps:
            self.ua.transport.taps.remove(self.sip_tap)
        udp.remove_tap(self.datagram_tap)


@dataclass
class _Placed:
    """One probe call while it runs."""

    step: str
    started: float
    call: Call | None = None
    sockets: frozenset[tuple[str, int]] = frozenset()
    error: CallError | None = None
    tie_breaker: int | None = None

    def trace(self, recorder: _Recorder) -> CallTrace:
        call = self.call
        selected: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {}
        if call is not None:
            for event in call.ice_events:
                if isinstance(event, PairSelected):
                    selected[event.component] = (event.pair.local_address,
                                                 event.pair.remote_address)
        return CallTrace(
            started=self.started,
            sip=tuple(r for r in recorder.sip if r.at >= self.started),
            datagrams=tuple(r for r in recorder.datagrams if r.at >= self.started
                            and r.local in self.sockets),
            call_id=call.call_id if call is not None else None, sockets=self.sockets,
            ice_completed_at=call.timings.ice_completed if call is not None else None,
            selected=tuple(selected.values()), tie_breaker=self.tie_breaker)

    def timings(self) -> dict[str, Any]:
        call = self.call
        out: dict[str, Any] = {"outcome": "ok" if self.error is None else str(self.error)}
        if call is None:
            return out
        t = call.timings

        def ms(at: float | None) -> float | None:
            return None if at is None else round(1000 * (at - self.started), 1)
        out.update(answered_ms=ms(t.answered), ice_completed_ms=ms(t.ice_completed),
                   first_rtp_ms=ms(t.first_rtp), status=call.status)
        return out


@contextlib.contextmanager
def _ice_overrides(ua: UserAgent, **changes: Any) -> Iterator[None]:
    """The user agent's ICE settings changed while a call is being placed (a call reads them
    when it binds its sockets, before its INVITE leaves)."""
    if not changes:
        yield
        return
    saved = ua.settings
    ua.settings = dataclasses.replace(saved, ice=dataclasses.replace(saved.ice, **changes))
    try:
        yield
    finally:
        ua.settings = saved


def _mismatched(sdp: bytes) -> bytes:
    """The offer with its m= port moved off every candidate's port, so that c=/m= matches no
    a=candidate (RFC 8839 §4.4.1.1). The address stays: a peer that falls back to plain RTP
    sends it to us, nowhere else."""
    lines = sdp.decode("utf-8", "replace").split("\r\n")
    ports = set()
    for line in lines:
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 5 and fields[5].isdigit():
                ports.add(int(fields[5]))
    for index, line in enumerate(lines):
        if line.startswith("m=audio "):
            fields = line.split(" ")
            port = int(fields[1]) if fields[1].isdigit() else 0
            new = port + 2
            while new in ports or new > 65535:
                new = new + 2 if new <= 65535 else 1026
            fields[1] = str(new)
            lines[index] = " ".join(fields)
            break
    return "\r\n".join(lines).encode()


async def _sleep(ua: UserAgent, seconds: float) -> None:
    if seconds > 0:
        await task.deferLater(ua.reactor, seconds, lambda: None)


async def _place(ua: UserAgent, uri: str, step: str, *, options: CallOptions,
                 overrides: dict[str, Any], wait_media: bool, timeout: float,
                 tie_breaker: int | None = None) -> _Placed:
    placed = _Placed(step, float(ua.reactor.seconds()), tie_breaker=tie_breaker)
    try:
        with _ice_overrides(ua, **overrides):
            call = await ua.call(uri, source=Tone(440.0), sink=NullSink(), options=options)
        placed.call = call
        if call.transport is not None:
            placed.sockets = frozenset(b.address for b in call.transport.bases)
        answered = call.answered()
        answered.addTimeout(timeout, ua.reactor)
        try:
            await answered
        except defer.TimeoutError:
            raise CallError(f"no answer within {timeout:g} s",
                            code=ExitCode.NO_ANSWER) from None
        # The answer's SDP is read in the same delivery as the 2xx: let it finish.
        await task.deferLater(ua.reactor, 0, lambda: None)
        if wait_media:
            left = timeout - (float(ua.reactor.seconds()) - placed.started)
            await call.media_flowing(timeout=max(0.1, left))
    except CallError as exc:
        placed.error = exc
    return placed


async def _end(ua: UserAgent, placed: _Placed) -> None:
    call = placed.call
    if call is None:
        return
    if call.active:
        ended = call.hangup()
        ended.addTimeout(5.0, ua.reactor)
        try:
            await ended
        except defer.TimeoutError:
            log.info("probe: %s did not end in time", placed.step)


def _not_asked(step: str, reason: str) -> Finding:
    return Finding(step, "asked", "step run", "n/a", None, (reason,))


async def probe(ua: UserAgent, uri: str, options: ProbeOptions | None = None, *,
                say: Callable[[str], None] | None = None) -> ProbeReport:
    """Probe ``uri`` from the started (and, if it should be, registered) ``ua``; never raises
    for what the peer does: a first call that fails gives a report with its exit code."""
    options = options or ProbeOptions()
    tell = say or (lambda text: None)
    recorder = _Recorder(ua)
    recorder.attach()
    findings: list[Finding] = []
    timings: dict[str, dict[str, Any]] = {}
    traces: list[CallTrace] = []
    # The first and the mismatch calls start in the RFC 8445 §6.1.1 role whatever the
    # configuration forces.
    base_role: dict[str, Any] = {"role": "auto", "tie_breaker": None}
    try:
        # 1. The normal call.
        tell(f"call 1: calling {uri} (ICE, controlling, regular nomination)")
        template = PROBE_CALL
        first = await _place(ua, uri, "call", options=template, overrides=base_role,
                             wait_media=True, timeout=options.timeout)
        if first.error is not None:
            # The first call could not be set up: report what it showed, as `sipua call`
            # would exit (4 rejected, 5 ICE failed, 6 no media, 7 no answer).
            await _end(ua, first)
            trace = first.trace(recorder)
            answered = first.call is not None and first.call.status is not None \
                and 200 <= first.call.status < 300
            if answered:
                findings.extend(analyze_call(trace))
            else:
                status = first.call.status if first.call is not None else None
                findings.append(Finding("call", "answered", "answers the INVITE with 2xx",
                                        "no", status, (str(first.error),)))
            timings["call"] = first.timings()
            return ProbeReport(uri, peer_software([trace]), tuple(findings), timings,
                               int(first.error.code), str(first.error))
        if options.listen_for > 0:
            tell(f"call 1: media flowing; listening {options.listen_for:g} s")
            await _sleep(ua, options.listen_for)
        call = first.call
        assert call is not None
        uses_ice = bool(call.negotiated and call.negotiated.ice)
        remote_lite = bool(call.agent is not None and call.agent.remote_lite)
        # 2. ICE restart on the same call.
        if "restart" in options.skip:
            restart_note: str | None = "skipped"
        elif not uses_ice or not call.active:
            restart_note = "the call does not use ICE" if not uses_ice else "the call ended"
        else:
            restart_note = await _restart(ua, call, first, recorder, options, tell)
        await _end(ua, first)
        trace = first.trace(recorder)
        traces.append(trace)
        findings.extend(analyze_call(trace))
        timings["call"] = first.timings()
        if restart_note is None:
            findings.extend(analyze_restart(trace))
        else:
            findings.append(_not_asked("restart", restart_note))
        # 3. Role conflict.
        for step, tie in TIE_BREAKERS.items():
            if "role-conflict" in options.skip:
                findings.append(_not_asked(step, "skipped"))
                continue
            if not uses_ice or remote_lite:
                findings.append(_not_asked(step, "the peer does not use ICE" if not uses_ice
                                           else "the peer is lite: the full agent controls "
                                           "(RFC 8445 §6.1.1)"))
                continue
            tell(f"{step}: offering as the controlled agent, tie-breaker {tie}")
            placed = await _place(ua, uri, step, options=template,
                                  overrides={"role": "controlled", "tie_breaker": tie},
                                  wait_media=True, timeout=options.timeout, tie_breaker=tie)
            await _sleep(ua, SHORT_CALL)
            await _end(ua, placed)
            trace = placed.trace(recorder)
            traces.append(trace)
            findings.extend(analyze_role_conflict(trace, step))
            timings[step] = placed.timings()
        # 4. ice-mismatch.
        if "mismatch" in options.skip:
            findings.append(_not_asked("mismatch", "skipped"))
        else:
            tell("mismatch: offer whose c=/m= matches no candidate")
            placed = await _place(ua, uri, "mismatch",
                                  options=dataclasses.replace(template,
                                                              sdp_mangle=_mismatched),
                                  overrides=base_role, wait_media=False,
                                  timeout=options.timeout)
            await _sleep(ua, SHORT_CALL)
            await _end(ua, placed)
            trace = placed.trace(recorder)
            traces.append(trace)
            findings.extend(analyze_mismatch(trace))
            timings["mismatch"] = placed.timings()
        # 5. The peer calling us.
        findings.append(_not_asked("callee", "a probe cannot make the peer call"))
        return ProbeReport(uri, peer_software(traces), tuple(findings), timings)
    finally:
        recorder.detach()


async def _restart(ua: UserAgent, call: Call, placed: _Placed, recorder: _Recorder,
                   options: ProbeOptions, tell: Callable[[str], None]) -> str | None:
    """Step 2: re-INVITE with new credentials, then watch for the peer's new checks. Returns
    why no restart offer could be made (None: it went out)."""
    waited = 0.0
    # An offer in progress (the peer's, or our updated offer) must be over first (RFC 3261
    # §14.1), or the restart would change our credentials without telling the peer.
    while call.session is not None and not call.session.can_offer() and waited < 3.0:
        await _sleep(ua, 0.1)
        waited += 0.1
    if call.session is None or not call.session.can_offer() or not call.active:
        return "no new offer could be made (an offer stayed outstanding or the call ended)"
    tell("restart: re-INVITE with new ICE credentials")
    done = call.restart_ice()
    done.addTimeout(options.timeout, ua.reactor)
    try:
        await done
    except (CallError, defer.TimeoutError) as exc:
        log.info("probe: restart: %s", exc)
    ufrag = call.agent.local_ufrag if call.agent is not None else ""
    waited = 0.0
    while waited < RESTART_WATCH and not _seen_check(recorder, placed, ufrag):
        await _sleep(ua, 0.1)
        waited += 0.1
    return None


def _seen_check(recorder: _Recorder, placed: _Placed, ufrag: str) -> bool:
    """Whether the peer already sent a check naming our (new) ufrag."""
    needle = f"{ufrag}:".encode()
    return bool(ufrag) and any(
        not r.outgoing and r.local in placed.sockets and needle in r.data
        for r in recorder.datagrams[-200:])


# --- the command ----------------------------------------------------------------------------

def run_probe_command(uri: str, opts: CommandOptions, probe_options: ProbeOptions, *,
                      settings: Settings | None = None, say: Callable[[str], None] | None
                      = None, prepare: Callable[[UserAgent], None] | None = None
                      ) -> tuple[int, str, ProbeReport | None]:
    """`sipua probe URI`: start a user agent (registering when the account says so), probe,
    stop. Returns (exit code, message, report); the report is None when nothing could be
    placed (the user agent did not start or registration failed)."""
    settings = command_settings(opts, settings)
    outcome: list[tuple[int, str, ProbeReport | None]] = []

    async def go(reactor: Any) -> None:
        ua = UserAgent(settings, reactor)
        try:
            await ua.start()
            if prepare is not None:
                prepare(ua)
            if ua.account is not None and ua.account.registrar is not None \
                    and ua.account.register:
                await ua.register()
            report = await probe(ua, uri, probe_options, say=say)
            outcome.append((report.exit_code, report.message, report))
        except Exception as exc:
            code, message = _error_code(exc)
            outcome.append((code, message, None))
        finally:
            await ua.stop()

    _react(task, go)
    return outcome[0] if outcome else (int(ExitCode.FAILURE), "interrupted", None)


_STATUS_STYLE = {"yes": "green", "no": "red", "unknown": "yellow", "n/a": "dim"}


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}=({_value_text(v)})" if isinstance(v, dict) else
                         f"{k}={_value_text(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list | tuple):
        return ", ".join(_value_text(v) for v in value)
    return str(value)


def _shown(value: Any, evidence: Sequence[str]) -> str:
    """The value, else a reason why there is none (not a message: those are in --json)."""
    text = _value_text(value)
    if not text:
        text = next((e for e in evidence if not e.startswith(("+", "-"))), "")
    return text


def report_markdown(data: Mapping[str, Any]) -> str:
    """A report's JSON form (:meth:`ProbeReport.to_dict`) as a markdown table, one row per
    finding (docs/interop.md)."""
    rows = [f"Peer: `{data.get('peer') or 'unknown'}`; exit code {data.get('exit_code')}.", "",
            "| step | question | status | value |", "|---|---|---|---|"]
    for f in data.get("findings", []):
        shown = _shown(f.get("value"), f.get("evidence") or ()).replace("|", "\\|")
        rows.append(f"| {f.get('step')} | {f.get('question')} | {f.get('status')} | "
                    f"{shown} |")
    return "\n".join(rows) + "\n"


def render_report(report: ProbeReport, console: Any) -> None:
    """The report as rich tables, one per step (the evidence is in ``--json``)."""
    from rich.table import Table

    console.print(f"[bold]probe of {report.uri}[/bold]: peer {report.peer or 'unknown'}")
    steps: list[str] = []
    for finding in report.findings:
        if finding.step not in steps:
            steps.append(finding.step)
    for step in steps:
        table = Table(title=step, title_justify="left", show_lines=False)
        table.add_column("question")
        table.add_column("status")
        table.add_column("value", overflow="fold")
        for finding in report.findings:
            if finding.step != step:
                continue
            style = _STATUS_STYLE.get(finding.status, "")
            table.add_row(finding.question, f"[{style}]{finding.status}[/{style}]",
                          _shown(finding.value, finding.evidence))
        console.print(table)
    for step, values in report.timings.items():
        console.print(f"{step}: " + _value_text(values))
    if report.exit_code:
        console.print(f"[red]exit {report.exit_code}: {report.message}[/red]")

