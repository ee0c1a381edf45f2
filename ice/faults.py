"""Fault injection on the STUN traffic between an ICE agent and its peer, sans-IO.

A test rig uses it to see how another endpoint's ICE copes when things go wrong: lost checks
or lost responses (with a probability per kind and direction), a path that goes silent after a
while (consent freshness, RFC 7675 §5.1), or checks that arrive late. The agent asks the filter
about every STUN message to or from the peer; STUN/TURN server traffic (gathering, Allocate,
Refresh, CreatePermission, ChannelBind) and media never reach it, so only the peer's view of
our ICE changes. Checks relayed through TURN are filtered too: the agent filters before it
wraps a message into a Send indication or ChannelData, and after it unwraps one.

Decisions draw from the caller's ``rng`` only for probabilities strictly between 0 and 1, so a
filter whose knobs are 0 or 1 leaves the random sequence (credentials, transaction ids) of a
seeded run as it was.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass

from ice.stun import MessageClass

__all__ = ["Direction", "FaultFilter", "FaultSettings", "stun_class"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultSettings:
    """What to do to the STUN messages exchanged with the peer (all off by default)."""

    #: Probability (0..1) of dropping a Binding request (check or consent check) the peer sent.
    drop_requests_in: float = 0.0
    #: Probability (0..1) of dropping a Binding request before it is sent to the peer.
    drop_requests_out: float = 0.0
    #: Probability (0..1) of dropping a success or error response that came from the peer.
    drop_responses_in: float = 0.0
    #: Probability (0..1) of dropping a success or error response before it goes to the peer.
    drop_responses_out: float = 0.0
    #: Seconds after the checks start from which every STUN message to or from the peer is
    #: dropped (a path cut, a peer gone silent); 0 never.
    drop_after: float = 0.0
    #: Seconds every STUN message to the peer waits before it leaves (retransmissions too).
    delay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop_requests_in", "drop_requests_out", "drop_responses_in",
                     "drop_responses_out"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability from 0 to 1, not {value!r}")
        if self.drop_after < 0 or self.delay < 0:
            raise ValueError("drop_after and delay must not be negative")

    @property
    def active(self) -> bool:
        """Some knob is on (an all-default table changes nothing)."""
        return any((self.drop_requests_in, self.drop_requests_out, self.drop_responses_in,
                    self.drop_responses_out, self.drop_after, self.delay))


class Direction(enum.Enum):
    """Which way a message goes, seen from the agent."""

    IN = "in"
    OUT = "out"


def stun_class(data: bytes) -> MessageClass | None:
    """The class of a STUN message from its first two bytes (RFC 8489 §5: C1 is bit 8 and C0
    bit 4 of the message type), or None when ``data`` cannot be STUN (RFC 7983 first byte)."""
    if len(data) < 2 or data[0] > 3:
        return None
    kind = (data[0] << 8) | data[1]
    return MessageClass(((kind >> 7) & 0x2) | ((kind >> 4) & 0x1))


class FaultFilter:
    """Per-message drop and delay decisions, with counters for the call report.

    ``started`` is when the connectivity checks began (the origin of ``drop_after``); None until
    :meth:`start` is called, and until then ``drop_after`` does not apply.
    """

    def __init__(self, settings: FaultSettings, rng: random.Random,
                 started: float | None = None) -> None:
        self.settings = settings
        self._rng = rng
        self.started = started
        #: Messages from the peer that were dropped.
        self.dropped_in = 0
        #: Messages to the peer that were dropped.
        self.dropped_out = 0
        #: Messages to the peer that were held back by ``delay``.
        self.delayed = 0

    def start(self, now: float) -> None:
        """The checks start now (only the first call counts: a restart does not re-arm it)."""
        if self.started is None:
            self.started = now

    def cut(self, now: float) -> bool:
        """``drop_after`` has passed: the path to the peer is cut."""
        after = self.settings.drop_after
        return after > 0 and self.started is not None and now >= self.started + after

    def _chance(self, probability: float) -> bool:
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        return self._rng.random() < probability

    def _probability(self, cls: MessageClass, direction: Direction) -> float:
        s = self.settings
        if cls is MessageClass.REQUEST:
            return s.drop_requests_in if direction is Direction.IN else s.drop_requests_out
        if cls in (MessageClass.SUCCESS, MessageClass.ERROR):
            return s.drop_responses_in if direction is Direction.IN else s.drop_responses_out
        return 0.0  # indications (keepalives) only go with drop_after

    def drop_incoming(self, cls: MessageClass, now: float) -> bool:
        """Whether to drop a message of class ``cls`` that the peer sent (counted)."""
        if self.cut(now) or self._chance(self._probability(cls, Direction.IN)):
            self.dropped_in += 1
            log.debug("fault: dropped incoming STUN %s", cls.name.lower())
            return True
        return False

    def outgoing(self, cls: MessageClass, now: float) -> float | None:
        """None to drop a message of class ``cls`` bound for the peer, else the seconds to hold
        it back (0: send now); counted either way."""
        if self.cut(now) or self._chance(self._probability(cls, Direction.OUT)):
            self.dropped_out += 1
            log.debug("fault: dropped outgoing STUN %s", cls.name.lower())
            return None
        if self.settings.delay > 0:
            self.delayed += 1
            return self.settings.delay
        return 0.0

    def counters(self) -> dict[str, int]:
        """The counters as plain data (``dropped_in``, ``dropped_out``, ``delayed``)."""
        return {"dropped_in": self.dropped_in, "dropped_out": self.dropped_out,
                "delayed": self.delayed}
