"""The pacing clock: one reactor timer drives every media stream of the process.

Streams register with the clock at their ptime and are called once per frame period. All
streams with the same ptime share one ``callLater``, so a thousand calls cost one timer, not a
thousand. Each tick is scheduled on an absolute grid, ``epoch + n x ptime`` computed from the
reactor's ``seconds()``; the delay passed to ``callLater`` is recomputed from that grid every
time, never accumulated, so a late wake-up does not shift the ticks after it and there is no
cumulative drift, however long the call.

A tick that wakes up late runs every grid point it missed (the streams send the frames they
owe, with their grid time as the RTP sampling instant), up to ``max_catch_up`` seconds of
frames. After a longer stall (a suspended process, a blocked reactor) the missed points are
skipped and the stream sends one frame at the latest grid point: the RTP session sees that it is
late by more than its ``resync_after`` and restarts its own send grid with the silent time
skipped in the timestamp and the marker bit set (RFC 3550 §5.1). Keep ``max_catch_up`` at or
above the sessions' ``resync_after`` (both 0.2 s by default) so a skip is always a resync.

On reactors that poll with a millisecond timeout rounded up (epoll, poll) the timer is armed
``wake_ahead`` (half a millisecond) before its grid point, so that the rounding leaves a
wake-up within half a millisecond either side of the point instead of up to a millisecond
late; a tick that wakes a little early runs the point it was armed for.

The clock measures how far from the grid it works: the wake-up deviation of each tick and the
deviation of the tick's sends (from its start before to its last send after the grid time, an
upper bound for every send of that tick), as histograms with p50/p99/max that the benchmark
reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ice.driver import DelayedCall, ReactorTime

logger = logging.getLogger(__name__)

__all__ = ["Lateness", "LatenessHistogram", "Paced", "PacingClock", "PacingStats"]

_GRID_EPSILON = 1e-6
"""A timer may fire a rounding error before its grid point; that point counts as due."""

_MS_POLL_REACTORS = frozenset({"EPollReactor", "PollReactor"})
"""Reactors whose poll timeout is whole milliseconds, rounded up (epoll_wait, poll)."""
_MS_POLL_AHEAD = 0.0005
"""How early a timer is armed on those reactors: a wake-up rounded up to the next millisecond
then lands within half a millisecond of its grid point, either side, instead of up to a whole
millisecond late."""


class Paced(Protocol):
    """What the clock drives: a media stream."""

    def on_tick(self, grid_time: float, now: float) -> None:
        """Send the frame of grid point ``grid_time`` and play one received frame.

        ``now`` is the reactor time of the tick (later than ``grid_time`` when catching up).
        """
        ...


@dataclass(frozen=True)
class Lateness:
    """Percentiles of a lateness distribution, in seconds."""

    count: int
    """Samples (ticks) measured."""
    p50: float
    p99: float
    max: float
    mean: float

    def to_dict(self) -> dict[str, Any]:
        """Milliseconds, rounded to the microsecond, for reports."""
        return {"count": self.count, "p50_ms": round(self.p50 * 1e3, 3),
                "p99_ms": round(self.p99 * 1e3, 3), "max_ms": round(self.max * 1e3, 3),
                "mean_ms": round(self.mean * 1e3, 3)}


class LatenessHistogram:
    """Fixed-bin histogram of non-negative delays: constant memory over an hour of ticks.

    Bins are ``resolution`` wide up to ``limit``; later samples fall in an overflow bin (the
    exact maximum is kept apart). Percentiles are the upper edge of their bin, so they err on
    the late side by at most one resolution step.
    """

    def __init__(self, resolution: float = 1e-5, limit: float = 0.1) -> None:
        if resolution <= 0 or limit <= resolution:
            raise ValueError("need 0 < resolution < limit")
        self.resolution = resolution
        self.limit = limit
        self._bins = [0] * (math.ceil(limit / resolution) + 1)
        self._count = 0
        self._total = 0.0
        self._max = 0.0

    def add(self, value: float) -> None:
        """Record one delay (negative values count as 0)."""
        value = max(value, 0.0)
        index = int(value / self.resolution)
        last = len(self._bins) - 1
        self._bins[index if index < last else last] += 1
        self._count += 1
        self._total += value
        self._max = max(self._max, value)

    def percentile(self, fraction: float) -> float:
        """The delay at or below which ``fraction`` of the samples fall (0.0 when empty)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be in [0, 1]")
        if self._count == 0:
            return 0.0
        rank = max(1, math.ceil(fraction * self._count))
        seen = 0
        last = len(self._bins) - 1
        for index, n in enumerate(self._bins):
            seen += n
            if seen >= rank:
                if index == last:
                    return self._max
                return min(self._max, (index + 1) * self.resolution)
        return self._max

    def summary(self) -> Lateness:
        """p50, p99, max and mean."""
        mean = self._total / self._count if self._count else 0.0
        return Lateness(self._count, self.percentile(0.5), self.percentile(0.99), self._max,
                        mean)

    def reset(self) -> None:
        """Forget every sample."""
        self._bins = [0] * len(self._bins)
        self._count = 0
        self._total = 0.0
        self._max = 0.0


@dataclass(frozen=True)
class PacingStats:
    """How well the clock kept to its grid."""

    streams: int
    """Streams registered now."""
    timers: int
    """Reactor timers armed now (one per ptime in use)."""
    ticks: int
    """Grid points run (catch-up points included)."""
    frames: int
    """Stream calls made (one per stream per grid point)."""
    caught_up: int
    """Grid points run late, in a tick that woke up after them (a stall caught up)."""
    skipped: int
    """Grid points skipped after a stall longer than ``max_catch_up`` (resyncs)."""
    resyncs: int
    """Stalls that ended in a skip."""
    wake: Lateness
    """How far the tick started (woke up) from its grid time, either way."""
    send: Lateness
    """The larger of the tick's start before and its end (last stream served) after the grid
    time: an upper bound of the send-time deviation of every stream of the tick."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"streams": self.streams, "timers": self.timers, "ticks": self.ticks,
                "frames": self.frames, "caught_up": self.caught_up, "skipped": self.skipped,
                "resyncs": self.resyncs, "wake": self.wake.to_dict(),
                "send": self.send.to_dict()}


class _Group:
    """The streams of one ptime, spread over phase slots, and their one shared timer.

    Sub-point ``m`` of the grid is at ``epoch + m x step`` with ``step = period / slots``; a
    stream in slot ``s`` runs at the sub-points with ``m % slots == s``, once per period.
    """

    __slots__ = ("armed", "epoch", "m", "period", "slots", "step", "streams", "timer", "tuples")

    def __init__(self, period: float, epoch: float, slots: int) -> None:
        self.period = period
        self.epoch = epoch
        self.step = period / slots
        self.m = 0
        """Next sub-point to run."""
        self.slots: list[dict[Paced, None]] = [{} for _ in range(slots)]
        self.tuples: list[tuple[Paced, ...]] = [() for _ in range(slots)]
        self.streams: dict[Paced, int] = {}
        """Stream -> slot."""
        self.timer: DelayedCall | None = None
        self.armed: int | None = None
        """The sub-point the timer is armed for."""

    def grid(self, m: int) -> float:
        return self.epoch + m * self.step

    def next_busy(self, m: int) -> int | None:
        """The first sub-point at or after ``m`` whose slot has streams."""
        count = len(self.tuples)
        for k in range(count):
            if self.tuples[(m + k) % count]:
                return m + k
        return None


class PacingClock:
    """Calls every registered stream once per ptime on a drift-free grid.

    ``reactor`` is anything with ``seconds()`` and ``callLater()`` (the global reactor by
    default, a ``task.Clock`` in tests). Streams of one ptime are spread over phase slots
    ``phase_step`` apart (1 ms: 20 slots at 20 ms), each joining the least loaded one: a tick
    then serves a slice of the streams, so the last stream of a tick is not late by the time
    all the others took, and the sends are spread over the period instead of leaving in one
    burst. Still one timer per ptime: it steps from slot to slot. ``phase_step=0`` puts every
    stream in one phase. ``wake_ahead`` arms each timer that much before its grid point; None
    chooses it for the reactor (see the module docstring), 0 never runs a point early.
    """

    def __init__(self, reactor: ReactorTime | None = None, *, max_catch_up: float = 0.2,
                 phase_step: float = 0.001, wake_ahead: float | None = None,
                 histogram_resolution: float = 1e-5, histogram_limit: float = 0.1) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        assert reactor is not None
        if max_catch_up < 0:
            raise ValueError("max_catch_up must not be negative")
        if phase_step < 0:
            raise ValueError("phase_step must not be negative")
        if wake_ahead is None:
            wake_ahead = _MS_POLL_AHEAD if type(reactor).__name__ in _MS_POLL_REACTORS else 0.0
        if not 0 <= wake_ahead < (phase_step or 0.001):
            raise ValueError("wake_ahead must be in [0, phase_step)")
        self.reactor: ReactorTime = reactor
        self.wake_ahead = wake_ahead
        self.max_catch_up = max_catch_up
        self.phase_step = phase_step
        self._groups: dict[float, _Group] = {}
        self._where: dict[Paced, _Group] = {}
        self._wake = LatenessHistogram(histogram_resolution, histogram_limit)
        self._send = LatenessHistogram(histogram_resolution, histogram_limit)
        self._wake_hooks: list[Callable[[float], None]] = []
        self._dense = False
        self._ticks = 0
        self._frames = 0
        self._caught_up = 0
        self._skipped = 0
        self._resyncs = 0

    # --- registration ----------------------------------------------------------------------

    def register(self, stream: Paced, ptime: float) -> float:
        """Call ``stream.on_tick`` every ``ptime`` seconds from its next grid point on.

        Returns the time of that first grid point. Registering a stream again (another ptime
        after a re-negotiation) moves it.
        """
        if not ptime > 0:
            raise ValueError("ptime must be positive (seconds)")
        if stream in self._where:
            self.unregister(stream)
        key = round(ptime, 9)
        group = self._groups.get(key)
        now = self.reactor.seconds()
        if group is None:
            # A new grid starts at the first registration; its first point is now.
            slots = max(1, round(ptime / self.phase_step)) if self.phase_step else 1
            group = _Group(ptime, now, slots)
            self._groups[key] = group
        # Sub-points before now that no timer is pending for belong to no one: start after.
        first_future = math.ceil((now - group.epoch - _GRID_EPSILON) / group.step)
        limit = first_future if group.armed is None else min(group.armed, first_future)
        group.m = max(group.m, limit)
        slot = min(range(len(group.slots)), key=lambda i: (len(group.slots[i]), i))
        group.slots[slot][stream] = None
        group.tuples[slot] = tuple(group.slots[slot])
        group.streams[stream] = slot
        self._where[stream] = group
        self._arm(group, now)
        self._update_density(now)
        first = group.m + (slot - group.m) % len(group.slots)
        return group.grid(first)

    def unregister(self, stream: Paced) -> None:
        """Stop calling ``stream`` (no-op when it is not registered); safe inside a tick."""
        group = self._where.pop(stream, None)
        if group is None:
            return
        slot = group.streams.pop(stream)
        group.slots[slot].pop(stream, None)
        group.tuples[slot] = tuple(group.slots[slot])
        if not group.streams:
            if group.timer is not None and group.timer.active():
                group.timer.cancel()
            group.timer = None
            group.armed = None
            for key, g in list(self._groups.items()):
                if g is group:
                    del self._groups[key]
        self._update_density(self.reactor.seconds())

    def is_registered(self, stream: Paced) -> bool:
        """Whether ``stream`` is being ticked."""
        return stream in self._where

    # --- wake-ups shared with the receive side --------------------------------------------

    DENSE_GAP = 0.002
    """The clock is dense when it wakes at least this often (seconds between ticks)."""

    @property
    def dense(self) -> bool:
        """The clock wakes the process at least every :attr:`DENSE_GAP`: a receiver may then
        read its sockets on the clock's wake-ups (:meth:`add_wake_hook`) instead of waking the
        process once per datagram."""
        return self._dense

    def add_wake_hook(self, hook: Callable[[float], None]) -> None:
        """Call ``hook(now)`` at each wake-up, before the streams' ticks (so that what arrived
        is in their jitter buffers before they play), and when the clock stops being dense."""
        self._wake_hooks.append(hook)

    def remove_wake_hook(self, hook: Callable[[float], None]) -> None:
        """Stop calling ``hook`` (no-op when it is not there)."""
        if hook in self._wake_hooks:
            self._wake_hooks.remove(hook)

    def _update_density(self, now: float) -> None:
        dense = False
        for group in self._groups.values():
            busy = [i for i, t in enumerate(group.tuples) if t]
            if not busy:
                continue
            count = len(group.tuples)
            gaps = [(busy[(k + 1) % len(busy)] - busy[k]) % count or count
                    for k in range(len(busy))]
            if max(gaps) * group.step <= self.DENSE_GAP + _GRID_EPSILON:
                dense = True
                break
        was, self._dense = self._dense, dense
        if was and not dense:
            self._run_hooks(now)

    def _run_hooks(self, now: float) -> None:
        for hook in self._wake_hooks:
            try:
                hook(now)
            except Exception:  # a broken receiver must not stop the pacing
                logger.exception("pacing wake hook %r failed", hook)

    @property
    def timers(self) -> int:
        """Reactor timers armed (one per ptime in use)."""
        return sum(1 for g in self._groups.values() if g.timer is not None and g.timer.active())

    # --- ticking ---------------------------------------------------------------------------

    def _arm(self, group: _Group, now: float) -> None:
        target = group.next_busy(group.m)
        if target is None:
            return
        if group.timer is not None and group.timer.active():
            if group.armed is not None and group.armed <= target:
                return
            group.timer.cancel()  # a stream joined an earlier slot
        # The delay comes from the absolute grid each time: lateness never accumulates.
        delay = group.grid(target) - self.wake_ahead - now
        group.armed = target
        group.timer = self.reactor.callLater(delay if delay > 0.0 else 0.0, self._fire, group)

    def _fire(self, group: _Group) -> None:
        armed = group.armed
        group.timer = None
        group.armed = None
        seconds = self.reactor.seconds
        now = seconds()
        step = group.step
        period = group.period
        count = len(group.tuples)
        # Sub-points due now: every m with epoch + m x step <= now (to a rounding error).
        last_due = math.floor((now - group.epoch + _GRID_EPSILON) / step)
        if armed is not None:
            last_due = max(last_due, armed)  # fired a hair early: run the point it was armed for
        if (last_due - group.m) * step > self.max_catch_up + _GRID_EPSILON:
            # A long stall: each slot runs once, at its latest point; the sessions see the gap
            # and resync their timestamps (RFC 3550 §5.1).
            restart = last_due - count + 1
            self._skipped += (restart - group.m) // count
            self._resyncs += 1
            logger.info("pacing %.0f ms: %.3f s stall, %d periods skipped",
                        period * 1e3, now - group.grid(group.m), (restart - group.m) // count)
            group.m = restart
        if self._wake_hooks:
            self._run_hooks(now)
        wake = self._wake
        send = self._send
        tuples = group.tuples
        m = group.m
        while m <= last_due:
            streams = tuples[m % count]
            grid = group.epoch + m * step
            m += 1
            group.m = m
            if not streams:
                continue
            late = now - grid
            # Deviation either way: a wake-up armed ahead may run a point a little early.
            wake.add(late if late >= 0.0 else -late)
            if late >= period:
                self._caught_up += 1
            for stream in streams:
                try:
                    stream.on_tick(grid, now)
                except Exception:  # one broken stream must not silence the others
                    logger.exception("media stream %r failed on its tick", stream)
            self._ticks += 1
            self._frames += len(streams)
            done = seconds() - grid
            # Every send of the tick lies between the wake-up and now.
            send.add(done if done >= -late else -late)
            if not group.streams:
                return
        if group.streams:
            self._arm(group, seconds())

    # --- statistics --------------------------------------------------------------------------

    def stats(self) -> PacingStats:
        """A snapshot of the grid-keeping figures since the start or :meth:`reset_stats`."""
        return PacingStats(
            streams=len(self._where), timers=self.timers, ticks=self._ticks,
            frames=self._frames, caught_up=self._caught_up, skipped=self._skipped,
            resyncs=self._resyncs, wake=self._wake.summary(), send=self._send.summary(),
        )

    def reset_stats(self) -> None:
        """Start measuring afresh (after a warm-up)."""
        self._wake.reset()
        self._send.reset()
        self._ticks = self._frames = self._caught_up = self._skipped = self._resyncs = 0

    def stop(self) -> None:
        """Unregister every stream and cancel the timers."""
        for stream in list(self._where):
            self.unregister(stream)
