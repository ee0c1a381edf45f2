"""A user agent for the call tests in the NAT lab (tests/lab/test_media_lab.py and
tests/lab/test_faults_lab.py): registers with the lab's Kamailio, calls or answers, plays a
tone, optionally holds and resumes, and reports what it hears, so that a test which holds a
call, cuts links, restarts servers or kills the other side can tell when audio stopped and came
back. At the end it reports what it left behind after ``ua.stop()``.

Run inside a lab host with this repository on ``PYTHONPATH``::

    python3 -m tests.support.fault_lab_peer --user bob --listen 10.0.2.10 --tone 660 --answer
    python3 -m tests.support.fault_lab_peer --user alice --listen 10.0.1.10 --tone 440 \\
        --call bob --talk 3 --hold 60 --talk-after 3
    python3 -m tests.support.fault_lab_peer --user alice --listen 10.0.1.10 --tone 440 \\
        --call bob --talk 20 --seconds

One JSON object per line:

- ``{"event": "ready"}`` once registered (and, for ``--answer``, auto-answering);
  ``registered`` / ``registration-failed`` for every REGISTER outcome (refreshes too);
- ``flowing`` with the setup time (call start to first RTP) and the selected pair;
- ``ice`` for the ICE events that matter to the tests (checks sent, selections, consent,
  keepalives, restarts), with the wall clock and the call phase they happened in;
  ``turn-refreshed`` for each TURN allocation refresh;
- ``phase`` marks; ``held`` / ``resumed`` (the caller, with the selected pair);
- with ``--seconds``, ``second`` once a second while the call lasts: wall clock, RTP packets
  received so far, the level and dominant frequency of the last second heard, the selected
  pair;
- ``ended`` with ``ended_by`` and ``end_reason``; ``summary`` with per-phase figures (the
  dominant frequency and level of what was heard, RTP packets sent and received in the phase)
  and the call's media report;
- last ``leaks``: after ``ua.stop()``, the sockets still open in the process, the reactor's
  readers and writers and its pending delayed calls (a clean stop leaves none).

Phases: "talk" from media flowing to the hold (or to the hang-up), "hold", then "resumed". The
caller knows them from its own commands; the callee from the re-offers it receives (the first
one puts it on hold, the second resumes).

The process exits 0 whenever it ran its part, whether the call ended by itself or by the other
side; 1 on an unexpected error (``{"event": "error"}``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

from ice.events import (
    CheckSent,
    ConsentLost,
    ConsentRefreshed,
    IceEvent,
    IceRestarted,
    KeepaliveSent,
    PairSelected,
)
from ice.turn import AllocationRefreshed
from media import g711
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from sipua.call import Call
from sipua.lab.lab import (
    SERVER_ADDRESS,
    SIP_DOMAIN,
    SIP_PORT,
    SIP_USERS,
    STUN_PORT,
    TURN_PASSWORD,
    TURN_USER,
)
from sipua.registration import Registered, RegistrationFailed
from sipua.session import OfferReceived
from sipua.settings import Account, IceConfig, Settings, TurnServer, UaSettings
from sipua.useragent import UserAgent

reactor: Any = global_reactor
RATE = 8000
SETTLE = 0.5
"""Seconds at the start of a talking phase left out of the analysis (jitter buffer start)."""
#: The tones the tests play (alice 440 Hz, bob 660 Hz) and two others that neither plays.
CANDIDATES = (440.0, 550.0, 660.0, 880.0)
#: The ICE events reported.
REPORTED = (CheckSent, PairSelected, IceRestarted, ConsentRefreshed, ConsentLost, KeepaliveSent)


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout."""
    print(json.dumps(obj), flush=True)


async def sleep(seconds: float) -> None:
    """Let the reactor run for ``seconds``."""
    await task.deferLater(reactor, seconds, lambda: None)


class _TurnRefreshes(logging.Handler):
    """Reports the agent's TURN ``AllocationRefreshed`` events, which it only logs."""

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, AllocationRefreshed):
                emit({"event": "turn-refreshed", "lifetime": arg.lifetime, "wall": time.time()})


def settings(args: argparse.Namespace) -> Settings:
    """The UA's settings: the lab's registrar, STUN (and TURN), consent timing."""
    turn: tuple[TurnServer, ...] = ()
    if args.turn:
        turn = (TurnServer(uri=f"turn:{SERVER_ADDRESS}:{STUN_PORT}?transport=udp",
                           username=TURN_USER, password=TURN_PASSWORD),)
    return Settings(
        ua=UaSettings(listen=(f"{args.listen}:5060",), transports=("udp",)),
        accounts=(Account(name=args.user, uri=f"sip:{args.user}@{SIP_DOMAIN}",
                          password=SIP_USERS[args.user], expires=args.expires,
                          registrar=f"{SERVER_ADDRESS}:{SIP_PORT}"),),
        ice=IceConfig(stun_servers=(f"{SERVER_ADDRESS}:{STUN_PORT}",), turn_servers=turn,
                      consent_interval=args.consent_interval,
                      consent_timeout=args.consent_timeout),
    )


def _pair(call: Call | None) -> dict[str, Any] | None:
    """Component 1's selected pair: addresses and candidate types."""
    agent = call.agent if call is not None else None
    pair = agent.selected_pair(1) if agent is not None else None
    if pair is None:
        return None
    return {"local": f"{pair.local.address[0]}:{pair.local.address[1]}",
            "remote": f"{pair.remote.address[0]}:{pair.remote.address[1]}",
            "local_type": pair.local.type.value, "remote_type": pair.remote.type.value}


def _pair_text(call: Call | None) -> str | None:
    """The selected pair in one comparable string: ``type address -> type address``."""
    pair = _pair(call)
    if pair is None:
        return None
    return f"{pair['local_type']} {pair['local']} -> {pair['remote_type']} {pair['remote']}"


def _counters(call: Call | None) -> tuple[int, int]:
    """RTP packets sent and received so far."""
    stream = call.stream if call is not None else None
    if stream is None:
        return 0, 0
    stats = stream.stats().session
    received = stats.inbound.packets_received if stats.inbound is not None else 0
    return stats.outbound.packets_sent, received


class Phases:
    """Where each phase starts in the recording, and the stream's counters at that moment."""

    def __init__(self, sink: MemorySink) -> None:
        self.sink = sink
        self.call: Call | None = None
        self.name = "setup"
        self.marks: list[tuple[str, int, int, int, float]] = []

    def enter(self, name: str) -> None:
        sent, received = _counters(self.call)
        self.name = name
        self.marks.append((name, self.sink.samples, sent, received, float(reactor.seconds())))
        emit({"event": "phase", "phase": name, "at": reactor.seconds()})

    def summary(self) -> dict[str, Any]:
        """Per phase: what was heard, packets each way, duration."""
        self.enter("end")
        pcm = self.sink.pcm
        out: dict[str, Any] = {}
        for (name, start, sent0, recv0, t0), (_n, end, sent1, recv1, t1) in zip(
                self.marks, self.marks[1:], strict=False):
            if name in ("setup", "end"):
                continue
            skip = int(SETTLE * RATE) if name != "hold" else 0
            chunk = pcm[2 * (start + skip): 2 * end]
            seconds = len(chunk) / (2 * RATE)
            freq = dominant_frequency(chunk, max_seconds=seconds) if seconds >= 0.25 else 0.0
            out[name] = {"seconds": round(t1 - t0, 3), "analysed_seconds": round(seconds, 3),
                         "heard_hz": round(freq, 2), "rms": g711.rms(chunk) if chunk else 0,
                         "rtp_sent": sent1 - sent0, "rtp_received": recv1 - recv0}
        return out


class Monitor:
    """Once a second: how much RTP came in and what the last second sounded like."""

    def __init__(self, call: Call, sink: MemorySink) -> None:
        self.call = call
        self.sink = sink
        self.mark = sink.samples
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = reactor

    def start(self) -> None:
        self.loop.start(1.0, now=False)

    def tick(self) -> None:
        if not self.call.active:
            self.stop()
            return
        chunk = self.sink.pcm[2 * self.mark:]
        self.mark = self.sink.samples
        seconds = len(chunk) / (2 * RATE)
        freq = dominant_frequency(chunk, max_seconds=0.5) if seconds >= 0.25 else 0.0
        # Which of the test tones is strongest: robust where concealment blurs the estimate.
        tone = (dominant_frequency(chunk, candidates=CANDIDATES, max_seconds=0.5)
                if seconds >= 0.25 else 0.0)
        emit({"event": "second", "wall": time.time(), "rtp_received": _counters(self.call)[1],
              "rms": g711.rms(chunk) if chunk else 0, "heard_hz": round(freq, 1),
              "tone": tone, "selected": _pair_text(self.call)})

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


def _leaks() -> dict[str, Any]:
    """What a stopped UA left in this process: sockets, reactor readers/writers, timers."""
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                sockets += 1
        except OSError:
            continue

    def ours(selectable: object) -> bool:
        # The reactor's own wakers (thread and SIGCHLD) are not the user agent's.
        return (selectable is not getattr(reactor, "waker", None)
                and not type(selectable).__module__.startswith("twisted.internet._signals"))

    readers = [repr(r) for r in reactor.getReaders() if ours(r)]
    writers = [repr(w) for w in reactor.getWriters() if ours(w)]
    delayed = [repr(d) for d in reactor.getDelayedCalls() if d.active()]
    return {"sockets": sockets, "readers": readers, "writers": writers, "delayed_calls": delayed}


async def _first_call(ua: UserAgent, wait: float) -> Call:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for call in ua.calls.values():
            if call.direction == "incoming":
                return call
        await sleep(0.05)
    raise TimeoutError("no incoming call")


async def _flowing(call: Call, phases: Phases, started: float, args: argparse.Namespace
                   ) -> Monitor | None:
    """Wait until media flows: the talk phase begins (and the once-a-second reports)."""
    await call.media_flowing(timeout=args.setup_timeout)
    emit({"event": "flowing", "setup_s": round(time.monotonic() - started, 3),
          "wall": time.time(), "selected": _pair_text(call)})
    phases.enter("talk")
    if not args.seconds:
        return None
    monitor = Monitor(call, phases.sink)
    monitor.start()
    return monitor


async def _talk(call: Call, seconds: float) -> None:
    """``seconds`` more of the call, or less if it ends by itself."""
    timer = task.deferLater(reactor, seconds, lambda: None)
    waits: list[defer.Deferred[Any]] = [call.ended(), timer]
    await defer.DeferredList(waits, fireOnOneCallback=True, consumeErrors=True)
    if not timer.called:
        timer.cancel()


async def _caller(call: Call, phases: Phases, args: argparse.Namespace) -> None:
    """Talk, hold and resume as asked (while the call lasts), then hang up."""
    await _talk(call, args.talk)
    if args.hold and call.active:
        before = _pair(call)
        # Marked once answered: bob sends until the re-INVITE reaches him.
        ok = await call.hold()
        phases.enter("hold")
        emit({"event": "held", "answered": ok, "selected": before})
        await _talk(call, args.hold)
        # Marked before the re-INVITE: our RTP starts with the offer, and bob's may overtake
        # the 200 OK (both belong to the resumed phase).
        phases.enter("resumed")
        ok = await call.resume()
        emit({"event": "resumed", "answered": ok, "selected": _pair(call)})
        await _talk(call, args.talk_after)


async def run(args: argparse.Namespace) -> int:
    ua = UserAgent(settings(args), reactor, rng=random.Random(args.seed))
    sink = MemorySink()
    phases = Phases(sink)
    offers = 0

    def on_event(event: object) -> None:
        nonlocal offers
        if isinstance(event, IceEvent) and isinstance(event, REPORTED):
            record = event.to_dict()
            record.pop("pair", None)
            if isinstance(event, CheckSent | PairSelected):
                record["pair"] = event.pair.key
            record["type"] = record.pop("event")
            emit({"event": "ice", "phase": phases.name, "wall": time.time(), **record})
        elif isinstance(event, OfferReceived) and args.answer and phases.call is not None:
            offers += 1
            phases.enter("hold" if offers == 1 else "resumed")
        elif isinstance(event, Registered):
            emit({"event": "registered", "expires": event.expires, "wall": time.time()})
        elif isinstance(event, RegistrationFailed):
            emit({"event": "registration-failed", "status": event.status,
                  "reason": event.reason, "wall": time.time()})

    ua.subscribe(on_event)
    await ua.start()
    try:
        await ua.register()
        if args.answer:
            ua.auto_answer(source=Tone(args.tone), sink=sink)
            emit({"event": "ready"})
            call = await _first_call(ua, args.wait)
            started = time.monotonic()
        else:
            emit({"event": "ready"})
            started = time.monotonic()
            call = await ua.call(f"sip:{args.call}@{SIP_DOMAIN}", source=Tone(args.tone),
                                 sink=sink)
        phases.call = call
        monitor = await _flowing(call, phases, started, args)
        if args.answer:
            await call.ended()
        else:
            await _caller(call, phases, args)
        # The phases end here: when the caller hangs up, or the callee's call has ended.
        figures = phases.summary()
        if call.active:
            await call.hangup()
        await call.ended()
        if monitor is not None:
            monitor.stop()
        emit({"event": "ended", "ended_by": call.ended_by, "end_reason": call.end_reason,
              "wall": time.time()})
        emit({"event": "summary", "phases": figures, "selected": _pair(call),
              "report": _media(call)})
        return 0
    finally:
        await ua.stop()
        # Let the transports' close callbacks run before looking.
        await sleep(0.2)
        emit({"event": "leaks", **_leaks()})


def _media(call: Call) -> dict[str, Any]:
    report = call.stats()
    return {"media": report.get("media"), "mos": report.get("mos"),
            "ice": {"selected": report["ice"].get("selected")},
            "ended_by": report.get("ended_by"), "end_reason": report.get("end_reason")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--user", required=True, choices=sorted(SIP_USERS))
    p.add_argument("--listen", required=True, help="the host's own address")
    p.add_argument("--tone", type=float, required=True)
    p.add_argument("--answer", action="store_true")
    p.add_argument("--call", help="user to call")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a call")
    p.add_argument("--talk", type=float, default=5.0, help="seconds from media to hang-up "
                   "(or to the hold)")
    p.add_argument("--hold", type=float, default=0.0, help="seconds on hold (0: no hold)")
    p.add_argument("--talk-after", type=float, default=3.0,
                   help="seconds from the resume to hang-up")
    p.add_argument("--seconds", action="store_true",
                   help="report once a second what was heard")
    p.add_argument("--expires", type=int, default=600, help="registration lifetime asked")
    p.add_argument("--setup-timeout", type=float, default=20.0,
                   help="seconds for the first RTP to arrive")
    p.add_argument("--turn", action="store_true", help="use the lab's TURN server")
    p.add_argument("--consent-interval", type=float, default=5.0)
    p.add_argument("--consent-timeout", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.turn:
        handler = _TurnRefreshes(logging.DEBUG)
        agent_log = logging.getLogger("ice.agent")
        agent_log.setLevel(logging.DEBUG)
        agent_log.addHandler(handler)
    code: list[int] = [1]

    async def go() -> None:
        code[0] = await run(args)

    def failed(failure: Any) -> None:
        emit({"event": "error", "error": f"{failure.type.__name__}: {failure.value}"})
        print(failure.getTraceback(), file=sys.stderr)

    d = defer.ensureDeferred(go())
    d.addErrback(failed)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    sys.exit(code[0])


if __name__ == "__main__":
    main()
