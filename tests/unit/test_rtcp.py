"""RTCP (RFC 3550 §6): packets, compound parsing, report interval, and the statistics behind it."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtcp import (
    COMPENSATION,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    SdesChunk,
    SdesType,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    encode_compound,
    parse_rtcp,
    reduced_minimum_interval,
    rtcp_interval,
)
from media.stats import (
    ReceiverStatistics,
    RemoteReceiverStatistics,
    ntp_middle32,
    ntp_timestamp,
    ntp_to_unix,
    round_trip_time,
)

u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
block_lists = st.lists(blocks, max_size=31).map(tuple)
ext = st.binary(max_size=16).map(lambda b: b[: len(b) // 4 * 4])
sdes_items = st.lists(
    st.tuples(st.integers(1, 8), st.binary(max_size=40)), max_size=4
).map(tuple)
rtcp_packets = st.one_of(
    st.builds(SenderReport, u32, st.integers(0, 2**64 - 1), u32, u32, u32, block_lists, ext),
    st.builds(ReceiverReport, u32, block_lists, ext),
    st.builds(
        SourceDescription,
        st.lists(st.builds(SdesChunk, u32, sdes_items), max_size=4).map(tuple),
    ),
    st.builds(Bye, st.lists(u32, max_size=31).map(tuple), st.none() | st.binary(max_size=255)),
    st.builds(UnknownRtcp, st.integers(205, 210), st.integers(0, 31), ext),
)


@given(st.lists(rtcp_packets, min_size=1, max_size=4))
def test_compound_round_trip(packets: list[object]) -> None:
    """Any compound of SR, RR, SDES, BYE and unknown packets parses back to itself."""
    data = encode_compound(packets)  # type: ignore[arg-type]
    assert len(data) % 4 == 0
    assert parse_rtcp(data) == packets


@given(st.binary(max_size=200))
def test_garbage_raises_only_rtcp_error(data: bytes) -> None:
    """Arbitrary bytes either parse or raise RtcpError, never anything else."""
    try:
        parse_rtcp(data)
    except RtcpError:
        pass


@given(st.lists(rtcp_packets, min_size=1, max_size=3), st.data())
def test_corrupted_compound_raises_only_rtcp_error(
    packets: list[object], data: st.DataObject
) -> None:
    """A valid compound with a byte flipped or cut short never raises anything but RtcpError."""
    raw = bytearray(encode_compound(packets))  # type: ignore[arg-type]
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        parse_rtcp(bytes(raw[:cut]))
    except RtcpError:
        pass


def test_sender_report_layout() -> None:
    """An SR without blocks is 28 bytes with the header of RFC 3550 §6.4.1."""
    data = SenderReport(1, 2 << 32, 3, 4, 5).encode()
    assert data[:4] == bytes.fromhex("80c80006")
    assert len(data) == 28


def test_report_block_negative_loss() -> None:
    """The 24-bit cumulative loss is signed (duplicates make it negative) and clamped."""
    block = ReportBlock(1, 0, -5, 100, 0)
    assert parse_rtcp(ReceiverReport(9, (block,)).encode())[0] == ReceiverReport(9, (block,))
    big = ReportBlock(1, 0, 10**9, 100, 0)
    parsed = parse_rtcp(ReceiverReport(9, (big,)).encode())[0]
    assert isinstance(parsed, ReceiverReport) and parsed.reports[0].packets_lost == 0x7FFFFF


def test_sdes_cname() -> None:
    """The CNAME item is found among other SDES items."""
    chunk = SdesChunk(7, ((SdesType.TOOL, b"sipua"), (SdesType.CNAME, b"alice@example")))
    parsed = parse_rtcp(SourceDescription((chunk,)).encode())[0]
    assert isinstance(parsed, SourceDescription)
    assert parsed.chunks[0].cname == "alice@example"


def test_bye_with_reason() -> None:
    """A BYE carries its sources and reason text."""
    parsed = parse_rtcp(Bye((1, 2), b"hangup").encode())
    assert parsed == [Bye((1, 2), b"hangup")]


def test_padding_on_last_packet() -> None:
    """Padding (P bit) on the last packet of a compound is removed (RFC 3550 §6.4.1)."""
    rr = ReceiverReport(5).encode()
    padded = bytes((rr[0] | 0x20, rr[1])) + (2).to_bytes(2, "big") + rr[4:] + b"\0\0\0\x04"
    assert parse_rtcp(SenderReport(1, 0, 0, 0, 0).encode() + padded)[1] == ReceiverReport(5)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80\xc9", b"\x40\xc9\x00\x01\x00\x00\x00\x00", b"\x80\xc9\x00\x05\x00\x00\x00\x00",
     b"\x81\xc9\x00\x01\x00\x00\x00\x00"],
)
def test_malformed_examples(data: bytes) -> None:
    """Short, wrong version, overlong length, missing report block: each is RtcpError."""
    with pytest.raises(RtcpError):
        parse_rtcp(data)


# --- Report interval (RFC 3550 §6.3, A.7) -------------------------------------------------------


def test_interval_minimum_and_randomisation() -> None:
    """Two members on a narrow share: 5 s minimum x [0.5, 1.5] / (e - 3/2)."""
    rng = random.Random(1)
    values = [
        rtcp_interval(members=2, senders=2, rtcp_bandwidth=500, we_sent=True,
                      avg_rtcp_size=100, initial=False, rng=rng)
        for _ in range(2000)
    ]
    assert min(values) >= 2.5 / COMPENSATION - 1e-9
    assert max(values) <= 7.5 / COMPENSATION + 1e-9
    assert statistics.mean(values) == pytest.approx(5 / COMPENSATION, rel=0.03)


def test_interval_initial_halves_minimum() -> None:
    """The first report may come after half the minimum (RFC 3550 §6.2)."""
    rng = random.Random(2)
    value = rtcp_interval(members=1, senders=0, rtcp_bandwidth=500, we_sent=False,
                          avg_rtcp_size=100, initial=True, rng=rng)
    assert value == pytest.approx(2.5 * (random.Random(2).random() + 0.5) / COMPENSATION)


def test_interval_scales_with_members() -> None:
    """Many receivers share the receiver bandwidth: the interval grows with the group size."""
    rng = random.Random(3)
    rng_copy = random.Random(3)
    value = rtcp_interval(members=1000, senders=1, rtcp_bandwidth=500, we_sent=False,
                          avg_rtcp_size=100, initial=False, rng=rng)
    # Receivers get 75% of 500 B/s, for 999 of them: 100 x 999 / 375 s.
    expected = 100 * 999 / 375 * (rng_copy.random() + 0.5) / COMPENSATION
    assert value == pytest.approx(expected)


def test_reduced_minimum() -> None:
    """360 / session kbit/s: 4.5 s at 80 kbit/s (10000 octets/s)."""
    assert reduced_minimum_interval(10000) == pytest.approx(4.5)


# --- Receiver statistics (RFC 3550 A.1, A.3, A.8) -----------------------------------------------


def _feed(stats: ReceiverStatistics, seqs: list[int], start: float = 0.0) -> None:
    for i, seq in enumerate(seqs):
        stats.update(seq % 65536, 160 * seq % 2**32, start + 0.02 * i, 160)


def test_probation_then_counts_every_packet() -> None:
    """A source is valid after two packets in sequence, and both count as received."""
    stats = ReceiverStatistics(1, 8000)
    assert not stats.update(100, 0, 0.0, 160)
    assert stats.update(101, 160, 0.02, 160)
    assert stats.valid and stats.received == 2 and stats.expected == 2 and stats.lost == 0


def test_probation_restarts_on_gap() -> None:
    """Out-of-sequence packets during probation restart it (RFC 3550 A.1)."""
    stats = ReceiverStatistics(1, 8000)
    assert not stats.update(100, 0, 0.0, 160)
    assert not stats.update(200, 0, 0.02, 160)
    assert stats.update(201, 0, 0.04, 160)
    assert stats.expected == 2


def test_fraction_and_cumulative_loss() -> None:
    """10 of 100 lost: fraction 25/256, cumulative 10; the next interval starts afresh."""
    stats = ReceiverStatistics(1, 8000)
    seqs = [s for s in range(1000, 1100) if s % 10 != 5]
    _feed(stats, seqs)
    block = stats.report_block(2.0)
    assert block.packets_lost == 10
    assert block.fraction_lost == (10 << 8) // 100
    assert block.highest_sequence == 1099
    _feed(stats, list(range(1100, 1150)), start=2.0)
    block = stats.report_block(3.0)
    assert block.fraction_lost == 0 and block.packets_lost == 10


def test_sequence_wraparound_extends_highest() -> None:
    """Crossing 65535 -> 0 adds a cycle to the extended highest sequence number."""
    stats = ReceiverStatistics(1, 8000)
    _feed(stats, list(range(65530, 65546)))
    assert stats.extended_max == 65536 + 9
    assert stats.expected == 16 and stats.lost == 0


def test_probation_straddling_wrap() -> None:
    """A source validated across the wrap still expects exactly what it received."""
    stats = ReceiverStatistics(1, 8000)
    _feed(stats, [65535, 65536, 65537])
    assert stats.expected == 3 and stats.received == 3


def test_duplicates_make_loss_negative() -> None:
    """Duplicates count as received, so cumulative loss can go below zero (A.3)."""
    stats = ReceiverStatistics(1, 8000)
    _feed(stats, [1, 2, 3, 3, 3, 4])
    assert stats.lost == -2
    assert stats.report_block(1.0).fraction_lost == 0


def test_large_jump_accepted_after_two_packets() -> None:
    """A sequence jump beyond MAX_DROPOUT is taken as a restart only when confirmed (A.1)."""
    stats = ReceiverStatistics(1, 8000)
    _feed(stats, [1, 2, 3])
    assert not stats.update(40000, 0, 1.0, 160)
    assert stats.update(40001, 160, 1.02, 160)
    assert stats.extended_max == 40001


def test_jitter_zero_for_regular_arrivals() -> None:
    """Packets arriving exactly at their sampling pace show no jitter."""
    stats = ReceiverStatistics(1, 8000)
    for i in range(50):
        stats.update(i, 1000 + 160 * i, 5.0 + 0.02 * i, 160)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_jitter_alternating_delay() -> None:
    """Delays alternating 0 / 10 ms give |D| = 80 units; J converges to 80 (A.8)."""
    stats = ReceiverStatistics(1, 8000)
    for i in range(400):
        stats.update(i, 160 * i, 0.02 * i + (0.01 if i % 2 else 0.0), 160)
    assert stats.jitter == pytest.approx(80.0, rel=1e-3)
    assert stats.snapshot().jitter == pytest.approx(0.01, rel=1e-3)


def test_jitter_first_steps_exact() -> None:
    """J after two packets 5 ms apart in transit is 40/16 = 2.5 units."""
    stats = ReceiverStatistics(1, 8000)
    stats.update(1, 0, 0.0, 160)
    stats.update(2, 160, 0.025, 160)
    assert stats.jitter == pytest.approx(2.5)


def test_jitter_across_timestamp_wrap() -> None:
    """A wrapping RTP timestamp does not look like a 2**32 jump in transit."""
    stats = ReceiverStatistics(1, 8000)
    for i in range(20):
        stats.update(i, (2**32 - 800 + 160 * i) % 2**32, 0.02 * i, 160)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


# --- NTP and round-trip time (RFC 3550 §4, §6.4.1) ----------------------------------------------


def test_ntp_timestamp_known_value() -> None:
    """The Unix epoch is NTP second 2208988800; half a second is fraction 2**31."""
    assert ntp_timestamp(0.5) == (2208988800 << 32) | (1 << 31)
    assert ntp_to_unix(ntp_timestamp(1700000000.25)) == pytest.approx(1700000000.25)


def test_rtt_rfc_example() -> None:
    """The example of RFC 3550 §6.4.1 Figure 2: A - LSR - DLSR = 0x0006:2000 = 6.125 s."""
    arrival = 0xB710_8000 << 16  # middle 32 bits 0xb7108000 = 46864.500 s
    assert ntp_middle32(arrival) == 0xB7108000
    assert round_trip_time(arrival, 0xB705_2000, 0x0005_4000) == pytest.approx(6.125)


def test_rtt_none_without_sr() -> None:
    """LSR 0 means the peer has not heard an SR yet: no RTT."""
    assert round_trip_time(ntp_timestamp(100.0), 0, 0) is None


def test_rtt_from_report_block_with_dlsr() -> None:
    """SR at t=10, peer holds it 0.5 s, the block arrives at t=10.62: RTT 0.12 s."""
    sr_ntp = ntp_timestamp(1000.0 + 10.0)
    remote = ReceiverStatistics(77, 8000)
    _feed(remote, [1, 2, 3])
    remote.sender_report_received(sr_ntp, now=10.05)
    block = remote.report_block(now=10.55)
    assert block.lsr == ntp_middle32(sr_ntp)
    assert block.dlsr == int(0.5 * 65536)
    ours = RemoteReceiverStatistics(77, 8000)
    rtt = ours.report_received(block, ntp_timestamp(1000.0 + 10.62))
    assert rtt == pytest.approx(0.12, abs=1e-4)
    snap = ours.snapshot()
    assert snap is not None and snap.to_dict()["roundTripTime"] == pytest.approx(0.12, abs=1e-4)


def test_snapshot_names_follow_webrtc_stats() -> None:
    """to_dict() uses webrtc-stats member names."""
    stats = ReceiverStatistics(5, 8000)
    _feed(stats, [1, 2, 4])
    names = stats.snapshot().to_dict()
    assert names["packetsReceived"] == 3 and names["packetsLost"] == 1
    assert names["bytesReceived"] == 3 * 160  # the probation packets count too
    assert {"jitter", "bytesReceived", "fractionLost"} <= names.keys()
