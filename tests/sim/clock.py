"""Moving a Twisted ``task.Clock`` forward without running anything late.

``Clock.advance(10)`` sets the time to +10 s first and only then runs what is due, so a call
scheduled from inside one of those callbacks (a retransmission, a reply after a link delay) is
placed relative to the *end* of the jump: the simulated world drifts. These helpers walk from one
due call to the next instead, which is exactly what a real reactor does while idle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from twisted.internet import task


def _next_due(clock: task.Clock) -> float | None:
    # Clock keeps ``calls`` sorted by time (it re-sorts on every callLater, reset and delay).
    return clock.calls[0].getTime() if clock.calls else None


def _move_to(clock: task.Clock, target: float) -> None:
    now = clock.seconds()
    if target > now:
        clock.advance(target - now)
        if clock.seconds() < target:  # now + (target - now) may round one ulp short
            clock.rightNow = target
            clock.advance(0)
    else:
        clock.advance(0)


def _steps(clock: task.Clock, end: float, step: float | None) -> Iterator[None]:
    if step is not None and step <= 0:
        raise ValueError(f"step must be positive, got {step!r}")
    clock.advance(0)  # whatever is already due runs at the current time
    yield
    while clock.seconds() < end:
        now = clock.seconds()
        target = end
        due = _next_due(clock)
        if due is not None and due < target:
            target = max(due, now)
        if step is not None:
            target = min(target, now + step)
        _move_to(clock, target)
        yield


def advance(clock: task.Clock, seconds: float, step: float | None = None) -> None:
    """Advance ``clock`` by ``seconds``, stopping at every due call so each runs on time.

    With ``step=None`` the clock jumps straight to the next scheduled call (exact and fast);
    a ``step`` additionally caps each jump, for code that polls ``seconds()`` between calls.
    """
    if seconds < 0:
        raise ValueError(f"cannot go back in time ({seconds!r} s)")
    for _ in _steps(clock, clock.seconds() + seconds, step):
        pass


def run_until(
    clock: task.Clock,
    predicate: Callable[[], bool],
    timeout: float,
    step: float | None = None,
) -> bool:
    """Advance like :func:`advance` until ``predicate()`` holds; False if ``timeout`` s pass first.

    The predicate is checked after every stop, so the clock stays at the first instant it
    became true (the time a test can then assert on).
    """
    if timeout < 0:
        raise ValueError(f"timeout must not be negative, got {timeout!r}")
    return any(predicate() for _ in _steps(clock, clock.seconds() + timeout, step))
