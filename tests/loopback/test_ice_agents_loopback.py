"""Two ICE agents in one process on real 127.0.0.1 sockets with the real reactor.

Every combination of nomination (regular, aggressive) and controlling side, and one side lite,
with one component (rtcp-mux) and two (RTP + RTCP): the agents connect, agree on the path, and
data flows both ways over it. Afterwards every socket is closed and no delayed call of theirs is
left on the reactor.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

from ice.agent import Agent, AppData, IceSettings
from ice.candidate import CandidateType
from ice.checklist import CandidatePair
from ice.events import IceCompleted, IceEvent, IceFailed
from ice.udp import IceUdpTransport

REACTOR: Any = global_reactor  # zope interfaces defeat mypy's method checks
LOOPBACK = "127.0.0.1"
TIMEOUT = 5.0  # seconds of real time for any one wait; loopback connects in well under 1 s


class _TrackedPort:
    """A real UDP port that keeps the Deferred of its ``stopListening``."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.stopped: defer.Deferred[None] | None = None

    def getHost(self) -> Any:
        return self.port.getHost()

    def write(self, data: bytes, addr: tuple[str, int]) -> Any:
        return self.port.write(data, addr)

    def stopListening(self) -> Any:
        if self.stopped is None:
            self.stopped = defer.maybeDeferred(self.port.stopListening)
        return self.stopped


class TrackingReactor:
    """The global reactor, remembering the ports and delayed calls handed to one agent."""

    def __init__(self) -> None:
        self.reactor = REACTOR
        self.ports: list[_TrackedPort] = []
        self.calls: list[Any] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> _TrackedPort:
        tracked = _TrackedPort(self.reactor.listenUDP(port, protocol, interface=interface,
                                                      maxPacketSize=maxPacketSize))
        self.ports.append(tracked)
        return tracked

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kw: object) -> Any:
        call = self.reactor.callLater(delay, callable, *args, **kw)
        self.calls.append(call)
        return call

    def seconds(self) -> float:
        return float(self.reactor.seconds())


@dataclass
class Side:
    """One agent, its sockets and what it reported."""

    name: str
    agent: Agent
    reactor: TrackingReactor
    transport: IceUdpTransport
    events: list[IceEvent] = field(default_factory=list)
    received: list[AppData] = field(default_factory=list)

    def selected(self, component: int) -> CandidatePair:
        pair = self.agent.selected_pair(component)
        assert pair is not None, f"{self.name}: nothing selected for component {component}"
        return pair


def _side(name: str, *, controlling: bool, nomination: str, lite: bool, components: int,
          seed: int) -> Side:
    agent = Agent(IceSettings(nomination=nomination, lite=lite), controlling=controlling,
                  rng=random.Random(seed), components=components)
    reactor = TrackingReactor()
    events: list[IceEvent] = []
    received: list[AppData] = []
    transport = IceUdpTransport(agent, reactor, on_event=events.append,
                                on_data=received.append)
    transport.bind([LOOPBACK], components=components)
    agent.start_gathering(transport.now())
    transport.poke()
    return Side(name, agent, reactor, transport, events, received)


async def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = REACTOR.seconds() + TIMEOUT
    while not predicate():
        assert REACTOR.seconds() < deadline, f"timed out waiting for {what}"
        await task.deferLater(REACTOR, 0.005, lambda: None)


def _same_path(a: CandidatePair | None, b: CandidatePair | None) -> bool:
    return (a is not None and b is not None and a.remote.address == b.local.address
            and b.remote.address == a.local.address)


async def _call(a: Side, b: Side, components: int) -> None:
    """Gather, exchange descriptions, connect, agree, send data both ways, close cleanly."""
    before = set(REACTOR.getDelayedCalls())
    sides = (a, b)
    try:
        await _wait(lambda: all(s.agent.gathering_complete for s in sides), "gathering")
        now = a.transport.now()
        for me, other in ((a, b), (b, a)):
            me.agent.set_remote_credentials(other.agent.local_ufrag, other.agent.local_pwd,
                                            lite=other.agent.settings.lite)
            for cand in other.agent.local_candidates:
                me.agent.add_remote_candidate(cand, now)
            me.agent.end_of_remote_candidates(now)
        for s in sides:
            s.agent.start_checks(now)
            s.transport.poke()

        def agreed() -> bool:
            failed = [e for s in sides for e in s.events if isinstance(e, IceFailed)]
            assert not failed, failed
            return all(any(isinstance(e, IceCompleted) for e in s.events) for s in sides) and all(
                _same_path(a.agent.selected_pair(c), b.agent.selected_pair(c))
                for c in range(1, components + 1))

        await _wait(agreed, "both agents to select the same pairs")
        for c in range(1, components + 1):
            for s in sides:
                pair = s.selected(c)
                assert pair.local.type is CandidateType.HOST
                assert pair.local.address[0] == pair.remote.address[0] == LOOPBACK
        count = 10
        for n in range(count):
            for src, dst in ((a, b), (b, a)):
                for c in range(1, components + 1):
                    src.transport.send(c, f"\x80{src.name}>{dst.name}/{c}#{n}".encode())

        def arrived(dst: Side, src: Side, c: int) -> list[AppData]:
            prefix = f"\x80{src.name}>{dst.name}/{c}#".encode()
            return [d for d in dst.received if d.component == c and d.data.startswith(prefix)]

        await _wait(lambda: all(len(arrived(dst, src, c)) == count
                                for src, dst in ((a, b), (b, a))
                                for c in range(1, components + 1)), "the data")
        for src, dst in ((a, b), (b, a)):
            for c in range(1, components + 1):
                got = arrived(dst, src, c)
                assert {d.data for d in got} == {
                    f"\x80{src.name}>{dst.name}/{c}#{n}".encode() for n in range(count)}
                assert {d.source for d in got} == {dst.selected(c).remote.address}
    finally:
        for s in sides:
            s.transport.close()
        stopped = [p.stopped for s in sides for p in s.reactor.ports if p.stopped is not None]
        await defer.gatherResults(stopped)
    for s in sides:
        assert len(s.reactor.ports) == components
        assert all(p.stopped is not None and not p.port.connected for p in s.reactor.ports)
        assert not [c for c in s.reactor.calls if c.active()]
    left: set[Any] = set(REACTOR.getDelayedCalls()) - before
    assert not [c for c in left if c.active()], left


@pytest.mark.parametrize("components", [1, 2])
@pytest.mark.parametrize("controller", ["a", "b"])
@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_full_agents(nomination: str, controller: str, components: int) -> None:
    """Two full agents, either one controlling, either nomination: they connect on the
    loopback host pair and carry data both ways on every component."""
    a = _side("a", controlling=controller == "a", nomination=nomination, lite=False,
              components=components, seed=1)
    b = _side("b", controlling=controller == "b", nomination=nomination, lite=False,
              components=components, seed=2)
    await _call(a, b, components)
    assert a.agent.controlling is (controller == "a")
    assert b.agent.controlling is (controller == "b")


@pytest.mark.parametrize("components", [1, 2])
@pytest.mark.parametrize("lite_side", ["a", "b"])
@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_side_lite(nomination: str, lite_side: str, components: int) -> None:
    """One agent lite (told to control, which a lite agent facing a full one may not, RFC
    8445 §6.1.1), the other full: the full agent controls with its nomination, the lite one
    sends no checks, and data flows both ways on every component."""
    a = _side("a", controlling=True, nomination=nomination, lite=lite_side == "a",
              components=components, seed=3)
    b = _side("b", controlling=True, nomination=nomination, lite=lite_side == "b",
              components=components, seed=4)
    await _call(a, b, components)
    lite, full = (a, b) if lite_side == "a" else (b, a)
    assert full.agent.controlling and not lite.agent.controlling
    assert not [e for e in lite.events if type(e).__name__ == "CheckSent"]
