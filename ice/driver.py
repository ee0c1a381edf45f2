"""Run a sans-IO core on a Twisted reactor.

Every core in the project has the same outputs (``pop_transmits()``, ``next_event()``,
``next_timer()``, ``handle_timer(now)``), so one driver serves them all: after anything is fed in,
it flushes datagrams, drains events and re-arms a single ``callLater`` at the core's next
deadline. Cores never call back into the driver, so nothing here is re-entrant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)
E_co = TypeVar("E_co", covariant=True)


class Core(Protocol[T_co, E_co]):
    """What the driver needs of a sans-IO core."""

    def handle_timer(self, now: float) -> None: ...
    def next_timer(self) -> float | None: ...
    def pop_transmits(self) -> Sequence[T_co]: ...
    def next_event(self) -> E_co | None: ...


class DelayedCall(Protocol):
    """The part of Twisted's ``DelayedCall`` the adapters use."""

    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class ReactorTime(Protocol):
    """The part of Twisted's ``IReactorTime`` the adapters use (a reactor or a ``task.Clock``)."""

    def seconds(self) -> float: ...
    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kw: object) -> DelayedCall: ...


T = TypeVar("T")
E = TypeVar("E")


class CoreDriver(Generic[T, E]):
    """Binds one core to a reactor: call :meth:`poke` after feeding the core anything."""

    def __init__(self, core: Core[T, E], reactor: ReactorTime, *,
                 send: Callable[[T], None], on_event: Callable[[E], None]) -> None:
        self.core = core
        self.reactor = reactor
        self._send = send
        self._on_event = on_event
        self._timer: DelayedCall | None = None
        self._deadline: float | None = None
        self._stopped = False

    def now(self) -> float:
        """The reactor's clock, the timebase every core of this driver runs on."""
        return float(self.reactor.seconds())

    def poke(self) -> None:
        """Flush transmits, deliver events, re-arm the timer. Safe to call at any time.

        Event handlers may feed the core again; the loop runs until both queues are empty.
        """
        if self._stopped:
            return
        self._flush()
        # A handler may have stopped the driver meanwhile: a stopped driver arms no timer.
        if not self._stopped:
            self._rearm()

    def _flush(self) -> None:
        """Send every queued transmit and deliver every queued event, until both are empty."""
        progressed = True
        while progressed:
            progressed = False
            for transmit in self.core.pop_transmits():
                progressed = True
                try:
                    self._send(transmit)
                except Exception:  # one failed send must not stall the core
                    log.exception("send failed for %r", transmit)
            while (event := self.core.next_event()) is not None:
                progressed = True
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("event handler failed for %r", event)

    def _rearm(self) -> None:
        deadline = self.core.next_timer()
        if deadline == self._deadline and self._timer is not None and self._timer.active():
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._deadline = deadline
        if deadline is None:
            return
        delay = max(0.0, deadline - self.now())
        self._timer = self.reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._deadline = None
        try:
            self.core.handle_timer(self.now())
        except Exception:  # a bug in one timer must not leave the core without its next one
            log.exception("timer handling failed in %r", self.core)
        self.poke()

    def stop(self) -> None:
        """Send what the core queued in this turn, deliver its last events, cancel the timer;
        later pokes do nothing.

        The flush matters when the stop comes from inside an event handler, before the driver's
        own loop got to the transmits: the 200 OK to the BYE that ended the last call, or the
        TURN deallocations an agent queued on close, must leave before the owner closes its
        sockets. A second stop does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._deadline = None
        self._flush()

    def __repr__(self) -> str:
        return f"<CoreDriver {self.core!r} deadline={self._deadline}>"

