"""STUN client transaction: retransmission schedule and timeout (RFC 8489 §6.2.1, §6.2.2).

A pure object: it never reads a clock; the owner passes ``now`` and arms a timer at
:meth:`StunTransaction.next_timer`. Over UDP the request is sent at 0, RTO, 3 RTO, 7 RTO, ...
(the interval doubles, optionally capped at ``max_rto``) for Rc transmissions in all, then the
transaction waits Rm x RTO for a late response: with the defaults (RTO 500 ms, Rc 7, Rm 16) the
sends are at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s and the timeout at 39.5 s. ICE passes its own
RTO (RFC 8445 §14.3). Over a reliable transport there is one send and a 39.5 s timeout (Ti).
"""

from __future__ import annotations

import enum
import logging

from ice.stun import Address, Message

__all__ = ["RELIABLE_TIMEOUT", "StunTransaction", "TransactionState"]

log = logging.getLogger(__name__)

RELIABLE_TIMEOUT = 39.5  # RFC 8489 §6.2.2: Ti


class TransactionState(enum.Enum):
    """Where a client transaction stands."""

    RUNNING = "running"
    ANSWERED = "answered"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"


class StunTransaction:
    """One outstanding request: retransmits over UDP with doubling RTO, Rc transmissions, then waits
    Rm*RTO (RFC 8489 §6.2.1); over a reliable transport, one transmission and Ti = 39.5 s."""

    __slots__ = ("_deadline", "_interval", "_last_wait", "_max_rto", "_max_transmissions",
                 "_state", "data", "dest", "request", "sent_at", "transaction_id",
                 "transmissions")

    def __init__(self, request: Message, data: bytes, dest: Address, now: float, *,
                 rto: float = 0.5, max_transmissions: int = 7, last_wait_factor: int = 16,
                 max_rto: float | None = None, reliable: bool = False) -> None:
        if rto <= 0:
            raise ValueError("rto must be positive")
        if max_transmissions < 1:
            raise ValueError("max_transmissions must be at least 1")
        self.request = request
        self.transaction_id: bytes = request.transaction_id
        self.dest: Address = dest
        self.data: bytes = data
        self.transmissions: int = 1
        self.sent_at: float = now
        self._state = TransactionState.RUNNING
        self._max_rto = max_rto
        self._max_transmissions = 1 if reliable else max_transmissions
        # RFC 8489 §6.2.1: the last wait is Rm times the (initial) RTO.
        self._last_wait = RELIABLE_TIMEOUT if reliable else last_wait_factor * rto
        self._interval = rto if max_rto is None else min(rto, max_rto)
        if self._max_transmissions == 1:
            self._deadline = now + self._last_wait
        else:
            self._deadline = now + self._interval

    @property
    def state(self) -> TransactionState:
        """Current state."""
        return self._state

    @property
    def timed_out(self) -> bool:
        """No response came within the whole schedule."""
        return self._state is TransactionState.TIMED_OUT

    @property
    def done(self) -> bool:
        """Answered, timed out or cancelled: no more timers."""
        return self._state is not TransactionState.RUNNING

    def next_timer(self) -> float | None:
        """Absolute time of the next retransmission or of the timeout, None when done."""
        return self._deadline if self._state is TransactionState.RUNNING else None

    def handle_timer(self, now: float) -> bytes | None:
        """Bytes to retransmit now, or None (too early, done, or the transaction just timed out).

        The next interval is counted from ``now``, so a late timer shifts the schedule rather than
        bunching retransmissions.
        """
        if self._state is not TransactionState.RUNNING or now < self._deadline:
            return None
        if self.transmissions >= self._max_transmissions:
            self._set_state(TransactionState.TIMED_OUT, f"no response after {self.transmissions}"
                            f" transmission(s), {now - self.sent_at:.3f} s")
            return None
        self.transmissions += 1
        if self.transmissions == self._max_transmissions:
            self._deadline = now + self._last_wait
        else:
            self._interval *= 2  # RFC 8489 §6.2.1: RTO doubles after each retransmission
            if self._max_rto is not None and self._interval > self._max_rto:
                self._interval = self._max_rto
            self._deadline = now + self._interval
        return self.data

    def matches(self, response: Message, source: Address) -> bool:
        """The response carries our transaction id and comes from where the request went."""
        return response.transaction_id == self.transaction_id and source == self.dest

    def complete(self) -> None:
        """A response arrived: stop retransmitting."""
        if self._state is TransactionState.RUNNING:
            self._set_state(TransactionState.ANSWERED, "response received")

    def cancel(self) -> None:
        """Give up on the request (no event, no further timers)."""
        if self._state is TransactionState.RUNNING:
            self._set_state(TransactionState.CANCELLED, "cancelled")

    def _set_state(self, new: TransactionState, cause: str) -> None:
        log.debug("transaction %s: %s -> %s (%s)", self.transaction_id.hex(),
                  self._state.value, new.value, cause)
        self._state = new
