"""RTP packets (RFC 3550 §5): encode/parse round trips, malformed input, RTCP demultiplexing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import RtpError, RtpExtension, RtpPacket, encode_rtp, is_rtcp, parse_rtp

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=u16,
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=200),
    marker=st.booleans(),
    csrc=st.lists(u32, max_size=15).map(tuple),
    extension=st.none() | st.builds(
        RtpExtension, profile=u16, data=st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])
    ),
    padding=st.integers(0, 255),
)


def test_known_header_layout() -> None:
    """A PCMU packet with the marker set has the RFC 3550 §5.1 byte layout."""
    data = RtpPacket(0, 0x1234, 0xDEADBEEF, 0x01020304, b"\xff" * 4, marker=True).encode()
    assert data == bytes.fromhex("80801234deadbeef01020304ffffffff")
    packet = parse_rtp(data)
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == (
        0, 0x1234, 0xDEADBEEF, 0x01020304,
    )
    assert packet.marker and packet.payload == b"\xff" * 4


@given(packets)
def test_round_trip(packet: RtpPacket) -> None:
    """Every field, CSRC list, extension and padding survive encode then parse."""
    assert parse_rtp(packet.encode()) == packet


@given(st.integers(0, 127), u16, u32, u32, st.binary(max_size=200), st.booleans())
def test_fast_encoder_matches_full_encoder(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool
) -> None:
    """The send-path encoder produces the same bytes as RtpPacket.encode()."""
    assert encode_rtp(pt, seq, ts, ssrc, payload, marker) == RtpPacket(
        pt, seq, ts, ssrc, payload, marker
    ).encode()


@given(st.binary(max_size=100))
def test_garbage_raises_only_rtp_error(data: bytes) -> None:
    """Arbitrary bytes either parse or raise RtpError, never anything else."""
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    assert 0 <= packet.payload_type <= 127


@given(packets, st.integers(0, 400))
def test_truncated_packets_raise_rtp_error(packet: RtpPacket, cut: int) -> None:
    """A valid packet cut short anywhere parses to something or raises RtpError only."""
    data = packet.encode()
    try:
        parse_rtp(data[: min(cut, len(data))])
    except RtpError:
        pass


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        bytes.fromhex("40000000000000000000000000"),  # version 1
        bytes.fromhex("8300000000000000000000000000"),  # CC=3 but no CSRC words
        bytes.fromhex("90000000000000000000000000000001"),  # extension of 1 word missing
        bytes.fromhex("a000000000000000000000000000"),  # padding count 0
        bytes.fromhex("a0000000000000000000000000000009"),  # padding longer than payload
    ],
)
def test_malformed_examples(data: bytes) -> None:
    """Each classic malformation is rejected with RtpError."""
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_encode_rejects_out_of_range_fields() -> None:
    """Fields that do not fit the header are the caller's fault: ValueError."""
    with pytest.raises(ValueError):
        RtpPacket(128, 0, 0, 0).encode()
    with pytest.raises(ValueError):
        RtpPacket(0, 0x10000, 0, 0).encode()
    with pytest.raises(ValueError):
        RtpPacket(0, 0, 0, 0, extension=RtpExtension(0xBEDE, b"abc")).encode()


def test_padding_is_stripped_from_payload() -> None:
    """The P bit's trailing octets are not part of the payload (RFC 3550 §5.1)."""
    data = struct.pack("!BBHII", 0xA0, 8, 1, 2, 3) + b"abcd" + b"\x00\x00\x03"
    packet = parse_rtp(data)
    assert packet.payload == b"abcd" and packet.padding == 3


@pytest.mark.parametrize(
    ("second_byte", "expected"),
    [(200, True), (201, True), (202, True), (203, True), (206, True), (192, True), (223, True),
     (0, False), (8, False), (0x80, False), (0x80 | 101, False), (96, False), (0xE0, False)],
)
def test_rtcp_demultiplexing(second_byte: int, expected: bool) -> None:
    """RFC 5761 §4: second byte 192-223 is RTCP; RTP payload types stay RTP, marker or not."""
    assert is_rtcp(bytes((0x80, second_byte)) + bytes(10)) is expected


def test_rtcp_demultiplexing_short_datagram() -> None:
    """A datagram too short to carry a packet type is not RTCP."""
    assert not is_rtcp(b"\x80")
