"""DTMF as RFC 4733 telephone events: payload codec, the packets of one event, and a receiver.

An event travels as several RTP packets sharing one timestamp (the event's start): the first with
the marker bit, updates carrying the growing duration, then the end packet sent three times
(RFC 4733 §2.5.1). The receiver reports each event once, whether or not its end packets arrive.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_PAYLOAD = struct.Struct("!BBH")
PAYLOAD_SIZE = _PAYLOAD.size

#: RFC 4733 §3.2 Table 7: DTMF events 0-15 and flash (16).
DIGITS = "0123456789*#ABCD!"
MAX_DURATION = 0xFFFF
"""The duration field is 16 bits of timestamp units (RFC 4733 §2.3.5)."""
END_REPEATS = 3
"""The end packet is sent three times (RFC 4733 §2.5.1.4)."""


class DtmfError(Exception):
    """A telephone-event payload that does not parse (the peer's fault)."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The 4-byte payload of RFC 4733 §2.3."""

    event: int
    end: bool
    volume: int
    """Power level in -dBm0, 0..63 (RFC 4733 §2.3.4)."""
    duration: int
    """Duration so far in timestamp units."""

    def encode(self) -> bytes:
        """The payload bytes."""
        if not 0 <= self.event <= 255:
            raise ValueError(f"event {self.event} not in 0..255")
        if not 0 <= self.volume <= 63:
            raise ValueError(f"volume {self.volume} not in 0..63")
        if not 0 <= self.duration <= MAX_DURATION:
            raise ValueError(f"duration {self.duration} not in 0..65535")
        flags = (0x80 if self.end else 0) | self.volume
        return _PAYLOAD.pack(self.event, flags, self.duration)


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Parse a payload; raises only :class:`DtmfError`. Extra events after the first are ignored."""
    if len(payload) < PAYLOAD_SIZE:
        raise DtmfError(f"telephone-event payload too short ({len(payload)} bytes)")
    event, flags, duration = _PAYLOAD.unpack_from(payload)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


def digit_to_event(digit: str) -> int:
    """Event code of a DTMF digit (``0-9 * # A-D``, ``!`` for flash); ValueError otherwise."""
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return index


def event_to_digit(event: int) -> str | None:
    """The digit of an event code, None for events outside DTMF (RFC 4733 §3.2)."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """One RTP packet of an outgoing event; the session adds sequence, timestamp and SSRC."""

    payload: bytes
    marker: bool
    end: bool
    send_offset: int
    """When to send it, in timestamp units after the event's start."""


def event_packets(
    digit: str, duration: int, interval: int, *, volume: int = 10
) -> list[DtmfPacket]:
    """The packets of one event (RFC 4733 §2.5.1), one per ``interval`` timestamp units.

    ``duration`` and ``interval`` are in timestamp units (samples at 8 kHz). Updates report the
    duration reached at their send time; the last one is the end packet, sent three times.
    """
    event = digit_to_event(digit)
    if interval <= 0:
        raise ValueError("interval must be positive")
    if not interval <= duration <= MAX_DURATION:
        raise ValueError(f"duration must be in {interval}..{MAX_DURATION} timestamp units")
    packets: list[DtmfPacket] = []
    elapsed = 0
    while elapsed < duration:
        elapsed = min(elapsed + interval, duration)
        end = elapsed == duration
        payload = TelephoneEvent(event, end, volume, elapsed).encode()
        offset = len(packets) * interval
        packets.append(DtmfPacket(payload, not packets, end, offset))
    last = packets[-1]
    for _ in range(END_REPEATS - 1):
        offset = len(packets) * interval
        packets.append(DtmfPacket(last.payload, False, True, offset))
    return packets


@dataclass(frozen=True)
class DtmfReceived:
    """The peer sent a DTMF digit (RFC 4733), reported once per event."""

    digit: str
    duration: float
    """Seconds, as the last packet received reported it."""


class DtmfReceiver:
    """Turns telephone-event packets into :class:`DtmfReceived`, once per event.

    Events are identified by their RTP timestamp (RFC 4733 §2.5.2.1). An event whose end packets
    are all lost is still reported: when the next event starts, or ``timeout`` seconds after its
    last packet (see :meth:`next_timer`).
    """

    def __init__(self, clock_rate: int = 8000, *, timeout: float = 0.5) -> None:
        self._clock_rate = clock_rate
        self._timeout = timeout
        self._current: tuple[int, int] | None = None  # (timestamp, event)
        self._duration = 0
        self._last_seen = 0.0
        self._done: deque[int] = deque(maxlen=16)  # timestamps already reported
        self._events: deque[DtmfReceived] = deque()

    def receive(self, timestamp: int, payload: bytes, now: float) -> None:
        """Feed one packet's RTP timestamp and payload; raises only :class:`DtmfError`."""
        tev = parse_telephone_event(payload)
        if timestamp in self._done:
            return  # a repeated end packet, or a late update of a reported event
        if self._current is not None and self._current[0] != timestamp:
            self._finish()  # a new event began: the previous one lost its end packets
        if self._current is None:
            self._current = (timestamp, tev.event)
            self._duration = 0
        self._duration = max(self._duration, tev.duration)
        self._last_seen = now
        if tev.end:
            self._finish()

    def _finish(self) -> None:
        if self._current is None:
            return
        timestamp, event = self._current
        self._current = None
        self._done.append(timestamp)
        digit = event_to_digit(event)
        if digit is None:
            logger.debug("ignoring telephone event %d (not DTMF)", event)
            return
        self._events.append(DtmfReceived(digit, self._duration / self._clock_rate))

    def next_timer(self) -> float | None:
        """When an event without an end packet is given up on and reported."""
        if self._current is None:
            return None
        return self._last_seen + self._timeout

    def handle_timer(self, now: float) -> None:
        """Report an event whose end packets never came."""
        deadline = self.next_timer()
        if deadline is not None and now >= deadline:
            self._finish()

    def next_event(self) -> DtmfReceived | None:
        """The next digit received, oldest first."""
        return self._events.popleft() if self._events else None
