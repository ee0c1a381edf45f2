"""``sipua demo``: the main job on an embedded default, with no outside servers.

Starts the embedded STUN server on loopback and two ICE agents (alice controlling, bob
controlled) on this machine, exchanges their descriptions, lets ICE select a pair per component,
sends test media both ways over the selected pairs, verifies what arrived and prints a report.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from ice.agent import Agent, AppData, IceSettings
from ice.events import IceCompleted, IceEvent, IceFailed
from ice.server_udp import listen_stun
from ice.udp import IceUdpTransport
from sipua.exitcodes import ExitCode

PACKETS = 50
INTERVAL = 0.02


@dataclass
class Side:
    """One agent of the demo and what it saw."""

    name: str
    agent: Agent
    transport: IceUdpTransport
    events: list[IceEvent] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    completed: Deferred[None] = field(default_factory=Deferred)
    t_selected: float | None = None


def _side(name: str, controlling: bool, stun: tuple[str, int], components: int, reactor: Any,
          rng: random.Random, nomination: str) -> Side:
    agent = Agent(IceSettings(nomination=nomination, stun_servers=(stun,),
                              software="sipua demo"),
                  controlling=controlling, rng=rng, components=components)
    side: Side

    def on_event(event: IceEvent) -> None:
        side.events.append(event)
        if isinstance(event, IceCompleted) and not side.completed.called:
            side.t_selected = time.monotonic()
            side.completed.callback(None)
        elif isinstance(event, IceFailed) and not side.completed.called:
            side.completed.errback(RuntimeError(f"{name}: ICE failed: {event.reason}"))

    def on_data(app: AppData) -> None:
        side.received.append(app.data)

    transport = IceUdpTransport(agent, reactor, on_event=on_event, on_data=on_data)
    side = Side(name, agent, transport)
    return side


def _describe(side: Side) -> dict[str, Any]:
    return {"ufrag": side.agent.local_ufrag, "pwd": side.agent.local_pwd,
            "candidates": list(side.agent.local_candidates)}


def _apply(side: Side, remote: dict[str, Any], now: float) -> None:
    side.agent.set_remote_credentials(remote["ufrag"], remote["pwd"])
    for cand in remote["candidates"]:
        side.agent.add_remote_candidate(cand, now)
    side.agent.end_of_remote_candidates(now)


async def _wait(reactor: Any, predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            return False
        await task.deferLater(reactor, 0.01, lambda: None)
    return True


async def run_demo(reactor: Any, *, components: int = 2, nomination: str = "regular",
                   seed: int | None = None) -> dict[str, Any]:
    """Run the demo and return its report (``report["ok"]`` tells success)."""
    rng: random.Random = random.Random(seed) if seed is not None else random.SystemRandom()
    stun_port: Any = listen_stun(reactor, 0, "127.0.0.1")
    stun = ("127.0.0.1", int(stun_port.getHost().port))
    alice = _side("alice", True, stun, components, reactor, rng, nomination)
    bob = _side("bob", False, stun, components, reactor, rng, nomination)
    report: dict[str, Any] = {"ok": False, "stun_server": f"{stun[0]}:{stun[1]}",
                              "nomination": nomination, "components": components}
    try:
        t_gather = time.monotonic()
        for side in (alice, bob):
            side.transport.bind(["127.0.0.1"], components=components)
            side.agent.start_gathering(side.transport.now())
            side.transport.poke()
        gathered = await _wait(reactor, lambda: alice.agent.gathering_complete
                               and bob.agent.gathering_complete, 5.0)
        report["gather_ms"] = round((time.monotonic() - t_gather) * 1000, 1)
        if not gathered:
            report["error"] = "gathering did not complete"
            report["exit_code"] = int(ExitCode.ICE_FAILED)
            return report
        now = reactor.seconds()
        _apply(alice, _describe(bob), now)
        _apply(bob, _describe(alice), now)
        t0 = time.monotonic()
        for side in (alice, bob):
            side.agent.start_checks(now)
            side.transport.poke()
        try:
            await defer.gatherResults([alice.completed, bob.completed], consumeErrors=True)
        except defer.FirstError as exc:
            report["error"] = str(exc.subFailure.value)
            report["exit_code"] = int(ExitCode.ICE_FAILED)
            return report
        for side in (alice, bob):
            assert side.t_selected is not None
            report[f"{side.name}_connect_ms"] = round((side.t_selected - t0) * 1000, 1)
        # Media: numbered payloads both ways over every component's selected pair.
        for n in range(PACKETS):
            for side, peer in ((alice, "bob"), (bob, "alice")):
                for comp in range(1, components + 1):
                    side.transport.send(comp, f"{side.name}->{peer} c{comp} #{n}".encode())
            await task.deferLater(reactor, INTERVAL, lambda: None)
        await _wait(reactor, lambda: len(alice.received) >= PACKETS * components
                    and len(bob.received) >= PACKETS * components, 2.0)
        for side, peer in ((alice, "bob"), (bob, "alice")):
            expected = {f"{peer}->{side.name} c{c} #{n}".encode()
                        for n in range(PACKETS) for c in range(1, components + 1)}
            got = set(side.received)
            report[f"{side.name}_received"] = len(got & expected)
            report[f"{side.name}_unexpected"] = len(got - expected)
        ok = all(report[f"{s}_received"] == PACKETS * components and
                 report[f"{s}_unexpected"] == 0 for s in ("alice", "bob"))
        report["ok"] = ok
        report["exit_code"] = int(ExitCode.OK if ok else ExitCode.MEDIA_FAILED)
        return report
    finally:
        for side in (alice, bob):
            report[side.name] = {
                "ufrag": side.agent.local_ufrag,
                "candidates": [c.to_sdp() for c in side.agent.local_candidates],
                "selected": {
                    str(comp): _pair_text(side.agent.selected_pair(comp))
                    for comp in range(1, components + 1)
                },
                "role": "controlling" if side.agent.controlling else "controlled",
                "timeline": [e.to_dict() for e in side.events],
            }
            side.transport.close()
        stopped = stun_port.stopListening()
        if stopped is not None:
            await stopped


def _pair_text(pair: Any) -> str | None:
    if pair is None:
        return None
    local, remote = pair.local, pair.remote
    return (f"{local.type.value} {local.address[0]}:{local.address[1]} -> "
            f"{remote.type.value} {remote.address[0]}:{remote.address[1]}")


def _addr(value: Any) -> str:
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]}:{value[1]}"
    return str(value)


def _pair(pair: dict[str, Any]) -> str:
    return (f"{pair['local_type']} {_addr(pair['local_address'])} -> "
            f"{pair['remote_type']} {_addr(pair['remote_address'])} (c{pair['component']})")


def describe_event(entry: dict[str, Any]) -> str:
    """One readable line for an ICE event in its ``to_dict()`` form."""
    kind = entry["event"]
    pair: dict[str, Any] = entry.get("pair") or {}
    if kind == "CandidateGathered":
        return str(entry["candidate"]["sdp"])
    if kind == "CheckSent":
        flags = [f for f, on in (("USE-CANDIDATE", entry["use_candidate"]),
                                 ("retransmission", entry["retransmission"]),
                                 ("triggered", entry["triggered"])) if on]
        return _pair(pair) + (f" [{', '.join(flags)}]" if flags else "")
    if kind == "CheckSucceeded":
        return f"{_pair(pair)} rtt {entry['rtt'] * 1000:.1f} ms"
    if kind == "CheckFailed":
        return f"{_pair(pair)}: {entry['reason']}"
    if kind == "CheckReceived":
        nominate = " USE-CANDIDATE" if entry["use_candidate"] else ""
        return f"{_pair(pair)}{nominate} -> {entry['response']}"
    if kind == "PairStateChanged":
        return f"{_pair(pair)} {entry['old']} -> {entry['new']} ({entry['cause']})"
    if pair:
        return _pair(pair)
    rest = {k: v for k, v in entry.items() if k not in ("event", "at")}
    return ", ".join(f"{k}={v}" for k, v in rest.items())


def print_report(report: dict[str, Any], console: Console) -> None:
    """The human-readable report."""
    console.print(f"[bold]sipua demo[/]: two ICE agents on loopback, STUN server "
                  f"{report['stun_server']}, {report['nomination']} nomination, "
                  f"{report['components']} component(s)")
    for name in ("alice", "bob"):
        side = report.get(name)
        if not side:
            continue
        table = Table(title=f"{name} ({side['role']})", show_lines=False)
        table.add_column("t (ms)", justify="right")
        table.add_column("event")
        table.add_column("detail")
        start = side["timeline"][0]["at"] if side["timeline"] else 0.0
        for entry in side["timeline"]:
            table.add_row(f"{(entry['at'] - start) * 1000:.1f}", entry["event"],
                          describe_event(entry))
        console.print(table)
        for comp, text in side["selected"].items():
            console.print(f"  {name} component {comp} selected: {text}")
    for key in ("gather_ms", "alice_connect_ms", "bob_connect_ms", "alice_received",
                "bob_received"):
        if key in report:
            console.print(f"  {key}: {report[key]}")
    failed = f"[bold red]FAILED[/] {report.get('error', '')}"
    verdict = "[bold green]OK[/]" if report["ok"] else failed
    console.print(f"result: {verdict}")
