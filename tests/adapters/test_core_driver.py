"""The generic driver on a fake clock: what it sends, delivers and arms around ``stop()``.

Every driver-backed transport (SIP, ICE, registration, registrar) relies on ``stop()`` sending
what its core queued in the current turn before the owner closes its sockets.
"""

from __future__ import annotations

from twisted.internet import task

from ice.driver import CoreDriver


class FakeCore:
    """A core whose queues and deadline the test fills by hand."""

    def __init__(self) -> None:
        self.transmits: list[str] = []
        self.events: list[str] = []
        self.deadline: float | None = None
        self.timers: list[float] = []

    def handle_timer(self, now: float) -> None:
        self.timers.append(now)
        self.deadline = None

    def next_timer(self) -> float | None:
        return self.deadline

    def pop_transmits(self) -> list[str]:
        out, self.transmits = self.transmits, []
        return out

    def next_event(self) -> str | None:
        return self.events.pop(0) if self.events else None


class Owner:
    """A transport around the driver: a socket that refuses to send once closed."""

    def __init__(self, clock: task.Clock) -> None:
        self.core = FakeCore()
        self.sent: list[str] = []
        self.delivered: list[str] = []
        self.closed = False
        self.driver: CoreDriver[str, str] = CoreDriver(self.core, clock, send=self._send,
                                                       on_event=self._event)

    def _send(self, data: str) -> None:
        if self.closed:
            raise OSError("socket closed")
        self.sent.append(data)

    def _event(self, event: str) -> None:
        self.delivered.append(event)
        if event == "BYE":
            # The BYE ends the last call: answer it, and stop at once (as `--max-calls 1`).
            self.core.transmits.append("200 OK")
            self.stop()

    def stop(self) -> None:
        self.driver.stop()
        self.closed = True


def test_stop_sends_what_the_core_queued() -> None:
    """Transmits queued after the last poke leave on ``stop()``, before the owner closes."""
    clock = task.Clock()
    owner = Owner(clock)
    owner.core.transmits += ["REGISTER", "Refresh lifetime=0"]
    owner.stop()
    assert owner.sent == ["REGISTER", "Refresh lifetime=0"]


def test_stop_from_an_event_handler_sends_the_answer_first() -> None:
    """A handler that queues the 200 OK to a BYE and stops the transport: the 200 OK is sent
    before the socket closes, exactly once, and nothing is armed afterwards."""
    clock = task.Clock()
    owner = Owner(clock)
    owner.core.events.append("BYE")
    owner.core.deadline = 32.0  # e.g. Timer J of the BYE's server transaction
    owner.driver.poke()
    assert owner.delivered == ["BYE"]
    assert owner.sent == ["200 OK"]
    assert clock.getDelayedCalls() == []


def test_stop_delivers_the_last_events_and_cancels_the_timer() -> None:
    """Events queued with the transmits (an agent's AgentClosed) are delivered on stop; the
    armed timer is cancelled and none is armed for the core's later deadline."""
    clock = task.Clock()
    owner = Owner(clock)
    owner.core.deadline = 1.0
    owner.driver.poke()
    assert len(clock.getDelayedCalls()) == 1
    owner.core.events.append("AgentClosed")
    owner.core.deadline = 2.0
    owner.stop()
    assert owner.delivered == ["AgentClosed"]
    assert clock.getDelayedCalls() == []
    clock.advance(5.0)
    assert owner.core.timers == []


def test_after_stop_nothing_is_sent_or_armed() -> None:
    """Later pokes and a second stop do nothing: what is queued then stays queued."""
    clock = task.Clock()
    owner = Owner(clock)
    owner.driver.stop()
    owner.core.transmits.append("late")
    owner.core.deadline = 1.0
    owner.driver.poke()
    owner.driver.stop()
    assert owner.sent == [] and owner.core.transmits == ["late"]
    assert clock.getDelayedCalls() == []


def test_poke_sends_delivers_and_fires_the_timer() -> None:
    """The ordinary turn: transmits out, events delivered, the timer fires at the deadline."""
    clock = task.Clock()
    owner = Owner(clock)
    owner.core.transmits.append("INVITE")
    owner.core.events.append("TransactionStarted")
    owner.core.deadline = 0.5
    owner.driver.poke()
    assert owner.sent == ["INVITE"] and owner.delivered == ["TransactionStarted"]
    clock.advance(0.5)
    assert owner.core.timers == [0.5]
    assert clock.getDelayedCalls() == []
