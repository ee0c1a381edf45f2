"""The shared pacing clock on a fake reactor (``task.Clock``): grid, drift, catch-up, one timer."""

from __future__ import annotations

import itertools
import random

import pytest
from twisted.internet import task

from media.clock import LatenessHistogram, PacingClock

PTIME = 0.02


class Recorder:
    """A paced stream that records when it was called."""

    def __init__(self, name: str = "s") -> None:
        self.name = name
        self.calls: list[tuple[float, float]] = []

    def on_tick(self, grid_time: float, now: float) -> None:
        """Remember (grid time, reactor time)."""
        self.calls.append((grid_time, now))


def run_until(clock: task.Clock, until: float, late: float = 0.0) -> None:
    """Fire the timers one by one up to ``until``, each ``late`` seconds after its time."""
    while True:
        calls = clock.getDelayedCalls()
        if not calls:
            return
        due = min(c.getTime() for c in calls)
        if due > until:
            return
        clock.advance(max(0.0, due + late - clock.seconds()))


def test_ticks_sit_on_the_grid() -> None:
    """A stream is called at epoch + n x ptime, with the grid time as the sampling instant."""
    reactor = task.Clock()
    reactor.advance(100.0)
    clock = PacingClock(reactor)
    stream = Recorder()
    first = clock.register(stream, PTIME)
    assert first == pytest.approx(100.0)
    run_until(reactor, 100.0 + 10 * PTIME + 1e-9)
    grids = [g for g, _ in stream.calls]
    assert grids == pytest.approx([100.0 + n * PTIME for n in range(11)], abs=1e-9)
    assert all(now == pytest.approx(g, abs=1e-9) for g, now in stream.calls)
    stats = clock.stats()
    assert stats.ticks == 11 and stats.frames == 11 and stats.caught_up == 0
    assert stats.send.max < 1e-6


def test_no_cumulative_drift_over_an_hour() -> None:
    """Every wake-up 0-3 ms late for a simulated hour: the grid does not slide (the delays
    are recomputed from the absolute grid), so the hour holds exactly 180 000 periods."""
    reactor = task.Clock()
    clock = PacingClock(reactor)
    count = 0
    last_grid = 0.0

    class Counter:
        def on_tick(self, grid_time: float, now: float) -> None:
            nonlocal count, last_grid
            count += 1
            last_grid = grid_time

    clock.register(Counter(), PTIME)
    rng = random.Random(6)
    hour = 3600.0
    while True:
        (call,) = reactor.getDelayedCalls()
        if call.getTime() > hour + 1e-6:
            break
        reactor.advance(call.getTime() + rng.uniform(0.0, 0.003) - reactor.seconds())
    assert count == round(hour / PTIME) + 1
    assert last_grid == pytest.approx(hour, abs=1e-6)
    stats = clock.stats()
    assert stats.wake.max < 0.0031  # lateness never piles up
    assert stats.caught_up == 0 and stats.resyncs == 0


def test_late_tick_catches_up_then_resyncs_after_a_long_stall() -> None:
    """A 100 ms stall sends every frame owed in one tick; a 1 s stall skips to the latest grid
    point (one frame) and counts a resync; the grid itself stays where it was."""
    reactor = task.Clock()
    clock = PacingClock(reactor, max_catch_up=0.2)
    stream = Recorder()
    clock.register(stream, PTIME)
    reactor.advance(0.0)
    assert len(stream.calls) == 1
    reactor.advance(0.1)  # wakes 80 ms after the point at 0.02
    grids = [round(g, 6) for g, _ in stream.calls[1:]]
    assert grids == [0.02, 0.04, 0.06, 0.08, 0.1]
    assert [now for _, now in stream.calls[1:]] == pytest.approx([0.1] * 5)
    assert clock.stats().caught_up == 4  # the points 20 ms late or more
    stream.calls.clear()
    reactor.advance(1.0)  # now 1.1 s: 50 periods owed, more than max_catch_up
    assert [round(g, 6) for g, _ in stream.calls] == [1.1]
    stats = clock.stats()
    assert stats.resyncs == 1 and stats.skipped == 49
    stream.calls.clear()
    run_until(reactor, 1.1 + 3 * PTIME + 1e-9)
    assert [round(g, 6) for g, _ in stream.calls] == [1.12, 1.14, 1.16]


def test_one_timer_for_many_streams() -> None:
    """A hundred streams at one ptime share one reactor timer and are each called once per
    period, spread over the 1 ms phase slots."""
    reactor = task.Clock()
    clock = PacingClock(reactor)
    streams = [Recorder(str(i)) for i in range(100)]
    for s in streams:
        clock.register(s, PTIME)
    assert len(reactor.getDelayedCalls()) == 1
    assert clock.stats().timers == 1
    run_until(reactor, 1.0 - 1e-9)
    assert len(reactor.getDelayedCalls()) == 1
    assert all(len(s.calls) == 50 for s in streams)
    phases = {round(s.calls[0][0] * 1000) for s in streams}
    assert phases == set(range(20))  # 5 streams in each of the 20 slots
    for s in streams:  # each stream keeps its own phase, period after period
        gaps = {round(b[0] - a[0], 9) for a, b in itertools.pairwise(s.calls)}
        assert gaps == {PTIME}


def test_single_phase_when_asked() -> None:
    """phase_step=0 runs every stream in the same tick, at the same grid time."""
    reactor = task.Clock()
    clock = PacingClock(reactor, phase_step=0)
    streams = [Recorder(str(i)) for i in range(10)]
    for s in streams:
        clock.register(s, PTIME)
    run_until(reactor, 0.1 + 1e-9)
    assert {tuple(round(g, 9) for g, _ in s.calls) for s in streams} == {
        tuple(round(n * PTIME, 9) for n in range(6))}
    assert clock.stats().ticks == 6 and clock.stats().frames == 60


def test_a_stream_joining_mid_period_starts_on_a_future_point() -> None:
    """A stream registered between grid points gets its first call in the future, not a
    late catch-up call for a point that already passed."""
    reactor = task.Clock()
    clock = PacingClock(reactor)
    a = Recorder("a")
    clock.register(a, PTIME)
    reactor.advance(0.0)
    reactor.advance(0.0055)
    b = Recorder("b")
    first = clock.register(b, PTIME)
    assert first >= reactor.seconds()
    run_until(reactor, 0.1)
    assert b.calls[0][0] == pytest.approx(first)
    assert all(now - grid < 1e-9 for grid, now in b.calls)
    assert clock.stats().caught_up == 0


def test_unregister_stops_calls_and_the_timer() -> None:
    """Unregistering the last stream (even from inside its own tick) cancels the timer."""
    reactor = task.Clock()
    clock = PacingClock(reactor)
    calls: list[float] = []

    class Leaver:
        def on_tick(self, grid_time: float, now: float) -> None:
            calls.append(grid_time)
            if len(calls) == 3:
                clock.unregister(self)

    leaver = Leaver()
    clock.register(leaver, PTIME)
    run_until(reactor, 1.0)
    assert len(calls) == 3
    assert not clock.is_registered(leaver)
    assert reactor.getDelayedCalls() == [] and clock.stats().timers == 0


def test_two_ptimes_two_timers() -> None:
    """Streams at 20 ms and 30 ms run on two grids, one timer each."""
    reactor = task.Clock()
    clock = PacingClock(reactor, phase_step=0)
    a, b = Recorder("a"), Recorder("b")
    clock.register(a, 0.02)
    clock.register(b, 0.03)
    assert clock.stats().timers == 2
    run_until(reactor, 0.3 + 1e-9)
    assert len(a.calls) == 16 and len(b.calls) == 11


def test_a_failing_stream_does_not_stop_the_others() -> None:
    """An exception in one stream's tick is logged; the other streams are still called."""
    reactor = task.Clock()
    clock = PacingClock(reactor, phase_step=0)

    class Broken:
        def on_tick(self, grid_time: float, now: float) -> None:
            raise RuntimeError("boom")

    good = Recorder()
    clock.register(Broken(), PTIME)
    clock.register(good, PTIME)
    run_until(reactor, 0.1 + 1e-9)
    assert len(good.calls) == 6


def test_registration_arguments_are_checked() -> None:
    """A non-positive ptime is the caller's fault."""
    clock = PacingClock(task.Clock())
    with pytest.raises(ValueError):
        clock.register(Recorder(), 0)
    with pytest.raises(ValueError):
        PacingClock(task.Clock(), max_catch_up=-1)


def test_histogram_percentiles() -> None:
    """p50/p99 come out within one bin of the true values; the maximum is exact."""
    h = LatenessHistogram(resolution=1e-5, limit=0.01)
    for i in range(1, 1001):
        h.add(i * 1e-5)  # 10 us .. 10 ms
    h.add(0.5)  # overflow bin
    summary = h.summary()
    assert summary.count == 1001
    assert summary.p50 == pytest.approx(0.005, abs=3e-5)
    assert summary.p99 == pytest.approx(0.0099, abs=3e-5)
    assert summary.max == 0.5
    assert h.percentile(1.0) == 0.5
    h.reset()
    assert h.summary().count == 0 and h.percentile(0.99) == 0.0


def test_dense_clock_runs_wake_hooks_before_the_ticks() -> None:
    """With a stream in every 1 ms slot the clock is dense; its wake hooks run at every
    wake-up before any stream's tick, and once more when it stops being dense (so that a
    receiver reading on the clock's wake-ups goes back to the reactor)."""
    reactor = task.Clock()
    clock = PacingClock(reactor)
    order: list[str] = []

    class Marked(Recorder):
        def on_tick(self, grid_time: float, now: float) -> None:
            order.append("tick")
            super().on_tick(grid_time, now)

    clock.add_wake_hook(lambda now: order.append("hook"))
    streams = [Marked(str(i)) for i in range(20)]
    for s in streams[:18]:
        clock.register(s, PTIME)
    assert not clock.dense  # slots 0-17 busy: a 3 ms gap from 17 back to 0
    clock.register(streams[18], PTIME)
    assert clock.dense  # a 2 ms gap at most
    clock.register(streams[19], PTIME)
    assert clock.dense
    run_until(reactor, 0.1)
    assert order[0] == "hook"
    # Every wake-up: one hook, then the tick(s) of its slot.
    hooks = order.count("hook")
    assert hooks >= 90 and order.count("tick") >= hooks
    assert all(a != "hook" or b == "tick" for a, b in itertools.pairwise(order))
    order.clear()
    for s in streams[5:]:
        clock.unregister(s)
    assert not clock.dense and order == ["hook"]  # told once, at the change
    clock.remove_wake_hook(clock._wake_hooks[0])
    run_until(reactor, 0.2)
    assert "hook" not in order[1:]
