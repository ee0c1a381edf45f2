"""RFC 4733 telephone events: payloads, the packets of an event, and the receiver."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.dtmf import (
    DtmfError,
    DtmfReceived,
    DtmfReceiver,
    TelephoneEvent,
    digit_to_event,
    event_packets,
    event_to_digit,
    parse_telephone_event,
)


def _drain(receiver: DtmfReceiver) -> list[DtmfReceived]:
    out = []
    while (event := receiver.next_event()) is not None:
        out.append(event)
    return out


def test_payload_layout() -> None:
    """Event 5, end bit, volume 10, duration 800: 05 8a 03 20 (RFC 4733 §2.3)."""
    assert TelephoneEvent(5, True, 10, 800).encode() == bytes.fromhex("058a0320")
    assert parse_telephone_event(bytes.fromhex("058a0320")) == TelephoneEvent(5, True, 10, 800)


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_payload_round_trip(event: int, end: bool, volume: int, duration: int) -> None:
    """Every field survives encode then parse."""
    tev = TelephoneEvent(event, end, volume, duration)
    assert parse_telephone_event(tev.encode()) == tev


@given(st.binary(max_size=8))
def test_garbage_raises_only_dtmf_error(data: bytes) -> None:
    """Short payloads raise DtmfError; anything 4 bytes or longer parses."""
    try:
        parse_telephone_event(data)
    except DtmfError:
        assert len(data) < 4


def test_digit_codes() -> None:
    """0-9, *, #, A-D map to events 0-15 (RFC 4733 §3.2), flash to 16."""
    assert [digit_to_event(d) for d in "09*#AD"] == [0, 9, 10, 11, 12, 15]
    assert digit_to_event("a") == 12 and digit_to_event("!") == 16
    assert event_to_digit(11) == "#" and event_to_digit(42) is None
    with pytest.raises(ValueError):
        digit_to_event("x")


def test_event_packet_sequence() -> None:
    """100 ms at 20 ms intervals: marker first, updates, end sent three times, same end duration."""
    packets = event_packets("7", 800, 160)
    events = [parse_telephone_event(p.payload) for p in packets]
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {e.event for e in events} == {7}
    assert [p.send_offset for p in packets] == [160 * i for i in range(7)]


def test_event_duration_not_multiple_of_interval() -> None:
    """The last update reports the exact duration."""
    events = [parse_telephone_event(p.payload) for p in event_packets("1", 500, 160)]
    assert [e.duration for e in events] == [160, 320, 480, 500, 500, 500]


def test_event_duration_bounds() -> None:
    """Shorter than one interval or longer than 16 bits is the caller's fault."""
    with pytest.raises(ValueError):
        event_packets("1", 100, 160)
    with pytest.raises(ValueError):
        event_packets("1", 70000, 160)


def _send(receiver: DtmfReceiver, digit: str, timestamp: int, now: float,
          drop: set[int] | None = None) -> float:
    for i, packet in enumerate(event_packets(digit, 800, 160)):
        if drop and i in drop:
            continue
        receiver.receive(timestamp, packet.payload, now + 0.02 * i)
    return now + 0.02 * 7


def test_receiver_reports_once_despite_repeated_ends() -> None:
    """Three end packets yield one event with the end duration in seconds."""
    receiver = DtmfReceiver()
    _send(receiver, "5", 1000, 0.0)
    assert _drain(receiver) == [DtmfReceived("5", 0.1)]
    assert receiver.next_timer() is None


def test_receiver_lost_first_and_some_end_packets() -> None:
    """Losing the marker packet and two end packets still gives one event."""
    receiver = DtmfReceiver()
    _send(receiver, "#", 5000, 0.0, drop={0, 4, 5})
    assert _drain(receiver) == [DtmfReceived("#", 0.1)]


def test_receiver_all_end_packets_lost_then_next_event() -> None:
    """Without any end packet, the next event's start reports the previous one."""
    receiver = DtmfReceiver()
    now = _send(receiver, "1", 1000, 0.0, drop={4, 5, 6})
    assert _drain(receiver) == []
    _send(receiver, "2", 3000, now)
    assert _drain(receiver) == [DtmfReceived("1", 0.08), DtmfReceived("2", 0.1)]


def test_receiver_all_end_packets_lost_timeout() -> None:
    """Without any end packet nor a next event, the timeout reports the digit."""
    receiver = DtmfReceiver(timeout=0.5)
    _send(receiver, "9", 1000, 0.0, drop={4, 5, 6})
    deadline = receiver.next_timer()
    assert deadline is not None and deadline == pytest.approx(0.06 + 0.5)
    receiver.handle_timer(deadline - 0.01)
    assert _drain(receiver) == []
    receiver.handle_timer(deadline)
    assert _drain(receiver) == [DtmfReceived("9", 0.08)]


def test_receiver_late_duplicate_end_after_report() -> None:
    """An end packet arriving again long after the report does not repeat the digit."""
    receiver = DtmfReceiver()
    _send(receiver, "3", 1000, 0.0)
    _drain(receiver)
    receiver.receive(1000, TelephoneEvent(3, True, 10, 800).encode(), 5.0)
    assert _drain(receiver) == []


def test_receiver_same_digit_twice() -> None:
    """The same digit pressed twice is two events (different timestamps)."""
    receiver = DtmfReceiver()
    now = _send(receiver, "4", 1000, 0.0)
    _send(receiver, "4", 2600, now + 0.1)
    assert [e.digit for e in _drain(receiver)] == ["4", "4"]


def test_receiver_ignores_non_dtmf_events() -> None:
    """Events beyond DTMF (e.g. 32, fax tones) are not reported as digits."""
    receiver = DtmfReceiver()
    receiver.receive(1000, TelephoneEvent(32, True, 10, 800).encode(), 0.0)
    assert _drain(receiver) == []
