"""A user agent for the media tests in the NAT lab: registers with the lab's Kamailio, calls or
answers, plays a tone, optionally holds and resumes, and reports what it heard.

Run inside a lab host with this repository on ``PYTHONPATH``::

    python3 -m tests.support.media_lab_peer --user bob --tone 660 --answer
    python3 -m tests.support.media_lab_peer --user alice --tone 440 --call bob \\
        --talk 3 --hold 60 --talk-after 3

It prints one JSON object per line: ``{"event": "ready"}`` once registered (and, for
``--answer``, auto-answering); ``{"event": "ice", "type": ...}`` for the ICE events that matter
to the tests (checks sent, selections, consent, keepalives, restarts), with the call phase they
happened in; ``phase`` marks, ``held``/``resumed`` (the caller, with the selected pair) and last
``{"event": "summary"}`` with per-phase figures: the dominant frequency and level of what was
heard, RTP packets sent and received in the phase, and the call's media report.

Phases: "talk" from media flowing to the hold (or to the hang-up), "hold", then "resumed". The
caller knows them from its own commands; the callee from the re-offers it receives (the first
one puts it on hold, the second resumes).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
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
from media import g711
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from sipua.call import Call
from sipua.lab.lab import SERVER_ADDRESS, SIP_DOMAIN, SIP_PORT, SIP_USERS, STUN_PORT
from sipua.session import OfferReceived
from sipua.settings import Account, IceConfig, Settings, UaSettings
from sipua.useragent import UserAgent

reactor: Any = global_reactor
RATE = 8000
SETTLE = 0.5
"""Seconds at the start of a talking phase left out of the analysis (jitter buffer start)."""


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class Phases:
    """Where each phase starts in the recording, and the stream's counters at that moment."""

    def __init__(self, sink: MemorySink) -> None:
        self.sink = sink
        self.call: Call | None = None
        self.name = "setup"
        self.marks: list[tuple[str, int, int, int, float]] = []

    def counters(self) -> tuple[int, int]:
        stream = self.call.stream if self.call is not None else None
        if stream is None:
            return 0, 0
        stats = stream.stats().session
        received = stats.inbound.packets_received if stats.inbound is not None else 0
        return stats.outbound.packets_sent, received

    def enter(self, name: str) -> None:
        sent, received = self.counters()
        self.name = name
        self.marks.append((name, self.sink.samples, sent, received, float(reactor.seconds())))
        emit({"event": "phase", "phase": name, "at": reactor.seconds()})

    def selected(self) -> dict[str, Any] | None:
        agent = self.call.agent if self.call is not None else None
        pair = agent.selected_pair(1) if agent is not None else None
        if pair is None:
            return None
        return {"local": f"{pair.local.address[0]}:{pair.local.address[1]}",
                "remote": f"{pair.remote.address[0]}:{pair.remote.address[1]}",
                "local_type": pair.local.type.value, "remote_type": pair.remote.type.value}

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


def settings(user: str, listen: str) -> Settings:
    return Settings(
        ua=UaSettings(listen=(f"{listen}:5060",), transports=("udp",)),
        accounts=(Account(name=user, uri=f"sip:{user}@{SIP_DOMAIN}",
                          password=SIP_USERS[user],
                          registrar=f"{SERVER_ADDRESS}:{SIP_PORT}"),),
        ice=IceConfig(stun_servers=(f"{SERVER_ADDRESS}:{STUN_PORT}",)),
    )


async def run(args: argparse.Namespace) -> int:
    ua = UserAgent(settings(args.user, args.listen), reactor, rng=random.Random(args.seed))
    sink = MemorySink()
    phases = Phases(sink)
    offers = 0

    def on_event(event: object) -> None:
        nonlocal offers
        if isinstance(event, IceEvent) and isinstance(
                event, CheckSent | PairSelected | IceRestarted | ConsentRefreshed
                | ConsentLost | KeepaliveSent):
            record = event.to_dict()
            record.pop("pair", None)
            if isinstance(event, CheckSent | PairSelected):
                record["pair"] = event.pair.key
            record["type"] = record.pop("event")
            emit({"event": "ice", "phase": phases.name, **record})
        elif isinstance(event, OfferReceived) and args.answer and phases.call is not None:
            offers += 1
            phases.enter("hold" if offers == 1 else "resumed")

    ua.subscribe(on_event)
    await ua.start()
    await ua.register()
    try:
        if args.answer:
            ua.auto_answer(source=Tone(args.tone), sink=sink)
            emit({"event": "ready"})
            call = await _first_call(ua, args.wait)
            phases.call = call
            await call.media_flowing(timeout=20.0)
            phases.enter("talk")
            await call.ended()
        else:
            emit({"event": "ready"})
            call = await ua.call(f"sip:{args.call}@{SIP_DOMAIN}", source=Tone(args.tone),
                                 sink=sink)
            phases.call = call
            await call.media_flowing(timeout=20.0)
            phases.enter("talk")
            await sleep(args.talk)
            if args.hold:
                before = phases.selected()
                # Marked once answered: bob sends until the re-INVITE reaches him.
                ok = await call.hold()
                phases.enter("hold")
                emit({"event": "held", "answered": ok, "selected": before})
                await sleep(args.hold)
                # Marked before the re-INVITE: our RTP starts with the offer, and bob's may
                # overtake the 200 OK (both belong to the resumed phase).
                phases.enter("resumed")
                ok = await call.resume()
                emit({"event": "resumed", "answered": ok, "selected": phases.selected()})
                await sleep(args.talk_after)
            selected = phases.selected()
            emit({"event": "summary", "phases": phases.summary(), "selected": selected,
                  "report": _media(call)})
            await call.hangup()
            return 0
        emit({"event": "summary", "phases": phases.summary(), "selected": None,
              "report": _media(call)})
        return 0
    finally:
        await ua.stop()


async def _first_call(ua: UserAgent, wait: float) -> Call:
    for _ in range(int(wait / 0.05)):
        for call in ua.calls.values():
            if call.direction == "incoming":
                return call
        await sleep(0.05)
    raise TimeoutError("no incoming call")


def _media(call: Call) -> dict[str, Any]:
    report = call.stats()
    return {"media": report.get("media"), "mos": report.get("mos"),
            "ice": {"selected": report["ice"].get("selected")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--user", required=True, choices=sorted(SIP_USERS))
    p.add_argument("--listen", required=True, help="the host's own address")
    p.add_argument("--tone", type=float, required=True)
    p.add_argument("--answer", action="store_true")
    p.add_argument("--call", help="user to call")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a call")
    p.add_argument("--talk", type=float, default=3.0)
    p.add_argument("--hold", type=float, default=0.0, help="seconds on hold (0: no hold)")
    p.add_argument("--talk-after", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
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
