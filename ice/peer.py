"""The ICE peer line protocol (version 1) for this agent: ``python -m ice.peer``.

One process, one ICE session with one component, driven through stdin/stdout by a test driver
that pairs it with another implementation (see docs/ice-peer.md). stdout carries only protocol
lines (one JSON object each); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from typing import Any

from twisted.internet import stdio, task
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver

from ice import __version__ as ice_version
from ice.agent import Agent, AppData, IceSettings
from ice.candidate import Candidate, CandidateError
from ice.events import IceEvent, IceFailed, PairSelected
from ice.interfaces import local_addresses
from ice.turn import TurnSettings
from ice.udp import IceUdpTransport, ReactorUDP

log = logging.getLogger("ice.peer")

PING_INTERVAL = 0.05


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]"), int(port))


def _candidate_types(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds or any(k not in ("host", "srflx", "relay") for k in kinds):
        raise argparse.ArgumentTypeError(f"expected a subset of host,srflx,relay, got {text!r}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ice.peer",
                                description="ICE peer line protocol v1 (docs/ice-peer.md)")
    p.add_argument("--role", choices=["controlling", "controlled"], required=True)
    p.add_argument("--nomination", choices=["regular", "aggressive"], default="regular")
    p.add_argument("--stun", type=_hostport, metavar="HOST:PORT")
    p.add_argument("--turn", type=_hostport, metavar="HOST:PORT")
    p.add_argument("--turn-user")
    p.add_argument("--turn-pass")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--data-count", type=int, default=5)
    p.add_argument("--data-timeout", type=float, default=10.0)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--linger", type=float, default=5.0)
    p.add_argument("--verbose", action="store_true")
    # Extensions of this implementation (allowed by the protocol).
    p.add_argument("--interface", action="append", default=[], metavar="IP_OR_NAME",
                   help="gather host candidates only on these (repeatable); default: every "
                        "non-loopback IPv4 address, else loopback")
    p.add_argument("--lite", action="store_true", help="act as an ICE-lite agent")
    p.add_argument("--ta", type=float, default=None, help="pacing interval Ta in seconds")
    p.add_argument("--candidates", type=_candidate_types, default=None, metavar="TYPES",
                   help="candidate types to gather, offer and check from: a comma-separated "
                        "subset of host,srflx,relay (default: all)")
    return p


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


class _Stdin(LineReceiver):
    delimiter = b"\n"

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def lineReceived(self, line: bytes) -> None:
        self.peer.line(line.decode("utf-8", "replace").strip())

    def connectionLost(self, reason: Any = None) -> None:
        self.peer.quit("stdin closed")


class Peer:
    """One run of the protocol: gather, describe, check, select, echo, hold, end."""

    def __init__(self, args: argparse.Namespace, reactor: Any) -> None:
        self.args = args
        self.reactor = reactor
        turn: tuple[TurnSettings, ...] = ()
        if args.turn:
            turn = (TurnSettings(server=args.turn, username=args.turn_user or "",
                                 password=args.turn_pass or ""),)
        settings_kw: dict[str, Any] = {
            "nomination": args.nomination, "lite": args.lite,
            "stun_servers": (args.stun,) if args.stun else (), "turn_servers": turn,
            "software": f"sipua-ice {ice_version}",
        }
        if args.ta is not None:
            settings_kw["ta"] = args.ta
        if args.candidates is not None:
            settings_kw["candidate_types"] = args.candidates
        self.agent = Agent(IceSettings(**settings_kw), controlling=args.role == "controlling",
                           rng=random.SystemRandom(), components=1)
        self.transport = IceUdpTransport(self.agent, reactor, on_event=self.on_event,
                                         on_data=self.on_data)
        self.done: Deferred[int] = Deferred()
        self.t0: float | None = None
        self.gather_started = time.monotonic()
        self.described = False
        self.selected = False
        self.final = False
        self.exit_code = 1
        # echo test state
        self.ping_seq = 0
        self.sent_at: dict[int, float] = {}
        self.first_pong_seq: int | None = None
        self.counted: dict[int, float] = {}
        self.pongs = 0
        self.ping_loop: task.LoopingCall | None = None
        self.hold_pings = 0
        self.hold_first = 0
        self.linger_call: Any = None
        self.deadline_call: Any = None

    # --- phases -------------------------------------------------------------------------
    def start(self) -> None:
        if self.args.interface:
            addresses = [a.ip for a in local_addresses(only=tuple(self.args.interface))]
        else:
            addresses = [a.ip for a in local_addresses()] or \
                        [a.ip for a in local_addresses(loopback=True)]
        if not addresses:
            self.fail_usage("no usable local IPv4 address")
            return
        log.info("gathering on %s", ", ".join(addresses))
        self.transport.bind(addresses, components=1)
        self.agent.start_gathering(self.transport.now())
        self.transport.poke()
        self._maybe_describe()

    def _maybe_describe(self) -> None:
        if self.described or not self.agent.gathering_complete:
            return
        self.described = True
        _emit({
            "ufrag": self.agent.local_ufrag, "pwd": self.agent.local_pwd,
            "lite": bool(self.args.lite),
            "candidates": [c.to_sdp() for c in self.agent.local_candidates],
            "gather_ms": round((time.monotonic() - self.gather_started) * 1000, 1),
            "impl": f"sipua-ice {ice_version}",
        })

    def line(self, text: str) -> None:
        if not text:
            return
        if text == "quit":
            self.quit("quit")
            return
        try:
            obj = json.loads(text)
        except ValueError:
            log.warning("ignoring a line that is not JSON: %r", text[:80])
            return
        if isinstance(obj, dict) and obj.get("cmd") == "quit":
            self.quit("quit")
        elif isinstance(obj, dict) and "ufrag" in obj and self.t0 is None:
            self.remote_description(obj)

    def remote_description(self, desc: dict[str, Any]) -> None:
        now = self.transport.now()
        self.agent.set_remote_credentials(str(desc["ufrag"]), str(desc["pwd"]),
                                          lite=bool(desc.get("lite", False)))
        for text in desc.get("candidates", []):
            try:
                cand = Candidate.from_sdp(str(text))
            except CandidateError as exc:
                log.info("skipping candidate %r: %s", text, exc)
                continue
            if cand.component != 1 or cand.transport.lower() != "udp" or ":" in cand.address[0]:
                log.info("skipping unusable candidate %s", text)
                continue
            self.agent.add_remote_candidate(cand, now)
        self.agent.end_of_remote_candidates(now)
        self.t0 = time.monotonic()
        self.agent.start_checks(now)
        self.transport.poke()
        self.deadline_call = self.reactor.callLater(self.args.timeout, self._ice_deadline)
        if not self.selected and self.agent.selected_pair(1) is not None:
            # A lite agent answers checks before it has the peer's description, and the
            # controlling peer may have nominated a pair by then (its PairSelected event came
            # before t0): report it now.
            self._report_selection()

    def ms(self) -> float:
        assert self.t0 is not None
        return round((time.monotonic() - self.t0) * 1000, 1)

    def _ice_deadline(self) -> None:
        if not self.selected and not self.final:
            self.finish({"event": "failed", "reason": "timeout",
                         "ms_from_start_of_checks": self.ms()}, 1)

    # --- agent events ----------------------------------------------------------------------
    def on_event(self, event: IceEvent) -> None:
        log.debug("event %s", event)
        if not self.described:
            self._maybe_describe()
        if isinstance(event, PairSelected) and event.component == 1 and self.t0 is not None:
            self._report_selection()
        elif isinstance(event, IceFailed) and not self.selected and self.t0 is not None:
            self.finish({"event": "failed", "reason": event.reason,
                         "ms_from_start_of_checks": self.ms()}, 1)

    def _report_selection(self) -> None:
        """Print "selected" (or "reselected") and start the echo test on the first one."""
        pair = self.agent.selected_pair(1)
        if pair is None:
            return
        _emit({
            "event": "reselected" if self.selected else "selected",
            "ms_from_start_of_checks": self.ms(),
            "role": "controlling" if self.agent.controlling else "controlled",
            "local": {"type": pair.local.type.value,
                      "addr": f"{pair.local.address[0]}:{pair.local.address[1]}"},
            "remote": {"type": pair.remote.type.value,
                       "addr": f"{pair.remote.address[0]}:{pair.remote.address[1]}"},
        })
        if not self.selected:
            self.selected = True
            if self.deadline_call is not None and self.deadline_call.active():
                self.deadline_call.cancel()
            self.start_echo()

    def on_data(self, app: AppData) -> None:
        text = app.data.decode("ascii", "replace")
        kind, _, num = text.partition(" ")
        if not num.isdigit():
            return
        seq = int(num)
        if kind == "PING" and self.agent.selected_pair(1) is not None:
            self._send(f"PONG {seq}")
        elif kind == "PONG" and seq in self.sent_at:
            self.on_pong(seq)

    # --- echo test -------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        try:
            self.transport.send(1, text.encode("ascii"))
        except Exception as exc:  # no selected pair any more (consent lost)
            log.info("cannot send %s: %s", text, exc)

    def _ping(self) -> None:
        self.ping_seq += 1
        self.sent_at[self.ping_seq] = time.monotonic()
        self._send(f"PING {self.ping_seq}")

    def start_echo(self) -> None:
        self.ping_loop = task.LoopingCall(self._ping)
        self.ping_loop.clock = self.reactor
        self.ping_loop.start(PING_INTERVAL, now=True)
        self.echo_deadline = self.reactor.callLater(self.args.data_timeout, self._echo_deadline)

    def on_pong(self, seq: int) -> None:
        rtt = time.monotonic() - self.sent_at[seq]
        if seq in self.counted or (self.hold_first and seq >= self.hold_first):
            if self.hold_first and seq >= self.hold_first and seq not in self.counted:
                self.counted[seq] = rtt
                self.pongs += 1
            return
        self.pongs += 1
        if self.first_pong_seq is None:
            self.first_pong_seq = seq
            # PINGs already in flight may have waited for the peer's selection: not counted.
            self.count_from = self.ping_seq + 1
            return
        if seq >= self.count_from:
            self.counted[seq] = rtt
            if len(self.counted) >= self.args.data_count and self.ping_loop is not None \
                    and self.ping_loop.running:
                self.ping_loop.stop()
                self.echo_deadline.cancel()
                _emit({"event": "data_ok", "pings": self.ping_seq, "pongs": self.pongs,
                       "rtt_ms": round(statistics.median(self.counted.values()) * 1000, 2)})
                self.after_echo(ok=True)

    def _echo_deadline(self) -> None:
        if self.ping_loop is not None and self.ping_loop.running:
            self.ping_loop.stop()
        _emit({"event": "data_failed", "pings": self.ping_seq, "pongs": self.pongs,
               "reason": "no echo" if not self.pongs else "too few echoes"})
        self.after_echo(ok=False)

    def after_echo(self, ok: bool) -> None:
        if ok and self.args.hold > 0:
            self.hold_first = self.ping_seq + 1
            self.hold_answered_before = self.pongs
            self.hold_loop = task.LoopingCall(self._hold_ping)
            self.hold_loop.clock = self.reactor
            self.hold_loop.start(1.0, now=False)
            return
        self.finish(None, 0 if ok else 1)

    def _hold_ping(self) -> None:
        if self.hold_pings >= int(self.args.hold):
            self.hold_loop.stop()
            answered = self.pongs - self.hold_answered_before
            _emit({"event": "hold_done", "pings": self.hold_pings, "pongs": answered})
            self.finish(None, 0 if answered > 0 else 1)
            return
        self.hold_pings += 1
        self._ping()

    # --- end ----------------------------------------------------------------------------------
    def finish(self, event: dict[str, Any] | None, code: int) -> None:
        if self.final:
            return
        self.final = True
        if event is not None:
            _emit(event)
        self.exit_code = code
        self.linger_call = self.reactor.callLater(self.args.linger, self.quit, "linger")

    def fail_usage(self, message: str) -> None:
        sys.stderr.write(f"ice.peer: {message}\n")
        self.exit_code = 2
        self.quit("error")

    def quit(self, why: str) -> None:
        if self.done.called:
            return
        log.info("ending (%s)", why)
        if not self.final and self.exit_code != 2:
            self.exit_code = 1
        for loop in (self.ping_loop, getattr(self, "hold_loop", None)):
            if loop is not None and loop.running:
                loop.stop()
        for call in (self.linger_call, self.deadline_call, getattr(self, "echo_deadline", None)):
            if call is not None and call.active():
                call.cancel()
        self.transport.close()
        # Give the deallocation a moment to leave the socket before the process ends.
        self.reactor.callLater(0.05, self.done.callback, self.exit_code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.turn and not (args.turn_user and args.turn_pass):
        build_parser().error("--turn needs --turn-user and --turn-pass")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    result: list[int] = [1]

    def run(reactor: ReactorUDP) -> Deferred[int]:
        peer = Peer(args, reactor)
        stdio.StandardIO(_Stdin(peer))  # type: ignore[no-untyped-call]
        reactor.callWhenRunning(peer.start)  # type: ignore[attr-defined]

        def record(code: int) -> int:
            result[0] = code
            return code
        return peer.done.addCallback(record)

    try:
        task.react(run)
    except SystemExit:
        pass
    return result[0]


if __name__ == "__main__":
    sys.exit(main())
