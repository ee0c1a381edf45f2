"""The RTP session core: framing and timing, reception, RTCP reports and RTT, DTMF, BYE."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest

from media.codecs import default_registry
from media.dtmf import DtmfReceived, parse_telephone_event
from media.rtcp import Bye, ReceiverReport, SenderReport, SourceDescription, parse_rtcp
from media.rtp import RtpPacket, parse_rtp
from media.session import (
    ByeReceived,
    FirstPacketReceived,
    RtcpReceived,
    RtpSession,
    RtpSessionSettings,
    SessionEvent,
    SessionState,
    SsrcChanged,
)
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone

A = ("192.0.2.1", 4000)
B = ("192.0.2.2", 5000)
FRAME = bytes(320)


def _session(seed: int = 1, now: float = 0.0, **settings: object) -> RtpSession:
    codec = default_registry().create("PCMU")
    return RtpSession(codec, random.Random(seed), now, RtpSessionSettings(**settings))  # type: ignore[arg-type]


def _events(session: RtpSession) -> list[SessionEvent]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


@dataclass
class Call:
    """Two sessions joined by a fake network: one-way delay, loss by sequence index."""

    a: RtpSession
    b: RtpSession
    delay: float = 0.0
    drop_a_to_b: set[int] = field(default_factory=set)
    sink: MemorySink = field(default_factory=MemorySink)
    in_flight: list[tuple[float, str, bytes, bool]] = field(default_factory=list)
    sent: int = 0

    def run(self, seconds: float, source: Tone | None = None, *, b_sends: bool = True) -> None:
        ticks = round(seconds / 0.02)
        start = self.a.next_send_time()
        for k in range(ticks):
            now = start + k * 0.02
            for s in (self.a, self.b):
                deadline = s.next_timer()
                if deadline is not None and deadline <= now:
                    s.handle_timer(now)
            for data in self.a.pop_transmits():
                self.in_flight.append((now + self.delay, "b", data, True))
            for data in self.b.pop_transmits():
                self.in_flight.append((now + self.delay, "a", data, True))
            pcm = source.read(160) if source else FRAME
            packet = self.a.send_frame(pcm, now)
            if self.sent not in self.drop_a_to_b:
                self.in_flight.append((now + self.delay, "b", packet, False))
            self.sent += 1
            if b_sends:
                self.in_flight.append((now + self.delay, "a", self.b.send_frame(FRAME, now), False))
            self._deliver(now + 0.019)
            self.sink.write(self.b.read_frame(now + 0.019).pcm)

    def settle(self) -> None:
        """Deliver whatever is still in flight."""
        self._deliver(float("inf"))

    def _deliver(self, now: float) -> None:
        due = sorted((m for m in self.in_flight if m[0] <= now), key=lambda m: m[0])
        self.in_flight = [m for m in self.in_flight if m[0] > now]
        for at, dest, data, rtcp in due:
            session, source = (self.b, A) if dest == "b" else (self.a, B)
            if rtcp:
                session.receive_rtcp(data, source, at)
            else:
                session.receive_rtp(data, source, at)


def test_identifiers_come_from_the_rng() -> None:
    """SSRC, first sequence number, timestamp and CNAME are reproducible from the seed."""
    one, two, other = _session(5), _session(5), _session(6)
    p1 = parse_rtp(one.send_frame(FRAME, 0.0))
    p2 = parse_rtp(two.send_frame(FRAME, 0.0))
    p3 = parse_rtp(other.send_frame(FRAME, 0.0))
    assert (p1.ssrc, p1.sequence, p1.timestamp, one.cname) == (
        p2.ssrc, p2.sequence, p2.timestamp, two.cname,
    )
    assert (p1.ssrc, p1.sequence, p1.timestamp) != (p3.ssrc, p3.sequence, p3.timestamp)
    assert p1.ssrc == one.ssrc


def test_timestamps_advance_by_samples_and_grid_is_drift_free() -> None:
    """Each frame adds its sample count to the timestamp; deadlines sit on an exact grid."""
    session = _session(ptime=20)
    first = parse_rtp(session.send_frame(FRAME, 10.0))
    assert first.marker and first.payload_type == 0 and len(first.payload) == 160
    timestamps = [first.timestamp]
    for k in range(1, 180_000):  # one hour of 20 ms frames
        assert session.next_send_time() == pytest.approx(10.0 + k * 0.02, abs=1e-6)
        packet = parse_rtp(session.send_frame(FRAME, session.next_send_time()))
        if k < 5:
            timestamps.append(packet.timestamp)
            assert not packet.marker
    assert [t - timestamps[0] for t in timestamps] == [0, 160, 320, 480, 640]
    assert session.next_send_time() == pytest.approx(10.0 + 3600.0, abs=1e-6)
    expected_ts = (first.timestamp + 180_000 * 160) % 2**32
    assert parse_rtp(session.send_frame(FRAME, 3610.0)).timestamp == expected_ts


def test_odd_frame_size_counts_samples() -> None:
    """A frame of 80 samples advances the timestamp by 80, not by a nominal ptime."""
    session = _session()
    t0 = parse_rtp(session.send_frame(bytes(160), 0.0)).timestamp
    t1 = parse_rtp(session.send_frame(FRAME, 0.02)).timestamp
    assert t1 - t0 == 80


def test_sequence_wraps() -> None:
    """The sequence number wraps from 65535 to 0."""
    session = _session()
    start = parse_rtp(session.send_frame(FRAME, 0.0)).sequence
    seqs = [parse_rtp(session.send_frame(FRAME, 0.02 * k)).sequence for k in range(1, 65540)]
    assert seqs[65535 - start - 1] == 65535 and seqs[65535 - start] == 0
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))


def test_pause_resync_skips_timestamp_and_sets_marker() -> None:
    """After 2 s without sending (hold), the timestamp has advanced by 2 s of samples."""
    session = _session()
    first = parse_rtp(session.send_frame(FRAME, 0.0))
    parse_rtp(session.send_frame(FRAME, 0.02))
    resumed = parse_rtp(session.send_frame(FRAME, 2.04))
    assert resumed.marker
    assert (resumed.timestamp - first.timestamp) % 2**32 == pytest.approx(2.04 * 8000, abs=160)
    assert session.next_send_time() == pytest.approx(2.06)


def test_tone_crosses_the_call() -> None:
    """A 440 Hz tone sent by A is played by B at 440 Hz (through µ-law and the jitter buffer)."""
    call = Call(_session(1), _session(2), delay=0.03)
    call.run(2.0, Tone(440, 0.5))
    call.settle()
    assert dominant_frequency(call.sink.pcm[8000:]) == pytest.approx(440, abs=2)
    stats = call.b.stats()
    assert stats.inbound is not None and stats.inbound.packets_received == 100
    assert stats.inbound.packets_lost == 0 and stats.jitter_buffer.frames_lost == 0


def test_first_packet_event_and_expected_source() -> None:
    """Only the expected source's RTP is accepted; others are counted; first packet reported."""
    a, b = _session(1), _session(2)
    b.set_expected_source(A)
    b.receive_rtp(a.send_frame(FRAME, 0.0), ("203.0.113.9", 9), 0.01)
    assert _events(b) == [] and b.stats().packets_from_unexpected_source == 1
    b.receive_rtp(a.send_frame(FRAME, 0.02), A, 0.03)
    assert _events(b) == [FirstPacketReceived(a.ssrc, A, 0)]
    b.set_expected_source(B)  # the selected pair changed
    b.receive_rtp(a.send_frame(FRAME, 0.04), A, 0.05)
    assert b.stats().packets_from_unexpected_source == 2


def test_ssrc_change_and_stray_old_packets() -> None:
    """A new SSRC is followed with an event; late packets of the old one are dropped."""
    a1, a2, b = _session(1), _session(3), _session(2)
    old = a1.send_frame(FRAME, 0.0)
    b.receive_rtp(old, A, 0.0)
    b.receive_rtp(a2.send_frame(FRAME, 0.02), A, 0.02)
    events = _events(b)
    assert events[-1] == SsrcChanged(a1.ssrc, a2.ssrc)
    assert b.remote_ssrc == a2.ssrc
    b.receive_rtp(old, A, 0.03)
    assert b.stats().packets_from_old_ssrc == 1 and b.remote_ssrc == a2.ssrc


def test_malformed_looped_and_unknown_payloads_counted() -> None:
    """Garbage, our own SSRC reflected, and unknown payload types are dropped and counted."""
    b = _session(2)
    b.receive_rtp(b"\x00garbage", A, 0.0)
    b.receive_rtp(b.send_frame(FRAME, 0.0), A, 0.0)
    b.receive_rtp(RtpPacket(13, 1, 0, 99, b"\x40").encode(), A, 0.0)
    stats = b.stats()
    assert (stats.packets_malformed, stats.packets_looped, stats.packets_unknown_payload_type) == (
        1, 1, 1,
    )
    b.receive_rtcp(b"\x80", A, 0.0)
    assert b.stats().rtcp_packets_malformed == 1


def test_receive_demultiplexes_rtcp() -> None:
    """receive() routes RTCP and RTP of one multiplexed port (RFC 5761)."""
    a, b = _session(1), _session(2)
    b.receive(a.send_frame(FRAME, 0.0), A, 0.0)
    b.receive(ReceiverReport(a.ssrc).encode(), A, 0.0)
    kinds = [type(e) for e in _events(b)]
    assert kinds == [FirstPacketReceived, RtcpReceived]


def _first_report(session: RtpSession) -> tuple[float, bytes]:
    """Run the session's timers until it sends; returns when and what."""
    for _ in range(10):
        deadline = session.next_timer()
        assert deadline is not None
        session.handle_timer(deadline)
        transmits = session.pop_transmits()
        if transmits:
            assert len(transmits) == 1
            return deadline, transmits[0]
    raise AssertionError("no RTCP report")


def test_first_report_timing_and_content() -> None:
    """The first report is due within 2.5 s x [0.5, 1.5] / (e - 3/2) and is SR + SDES."""
    a = _session(1, now=100.0)
    deadline = a.next_timer()
    assert deadline is not None and 100.0 + 1.02 <= deadline <= 100.0 + 3.08
    for k in range(200):
        a.send_frame(FRAME, 100.0 + 0.02 * k)
    deadline, data = _first_report(a)
    assert deadline <= 100.0 + 4.0
    sr, sdes = parse_rtcp(data)
    assert isinstance(sr, SenderReport) and sr.ssrc == a.ssrc
    assert sr.packet_count == 200 and sr.octet_count == 200 * 160
    assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == a.cname
    next_deadline = a.next_timer()
    assert next_deadline is not None and next_deadline - deadline >= 2.05


def test_receiver_only_sends_rr() -> None:
    """A session that never sent RTP reports with RR."""
    b = _session(2)
    _, data = _first_report(b)
    assert isinstance(parse_rtcp(data)[0], ReceiverReport)


def test_sr_rtp_timestamp_matches_send_grid() -> None:
    """The SR's RTP timestamp is the grid timestamp of the report instant."""
    a = _session(1)
    first = parse_rtp(a.send_frame(FRAME, 0.0)).timestamp
    for k in range(1, 100):
        a.send_frame(FRAME, 0.02 * k)
    deadline, data = _first_report(a)
    sr = parse_rtcp(data)[0]
    assert isinstance(sr, SenderReport)
    assert sr.rtp_timestamp == (first + round(deadline * 8000)) % 2**32


def test_rtt_loss_and_jitter_reported_both_ways() -> None:
    """30 ms each way and 5 dropped packets: RTT ~60 ms, loss seen by both ends via RTCP."""
    drops = {50, 51, 120, 300, 400}
    call = Call(_session(1), _session(2), delay=0.03, drop_a_to_b=drops)
    call.run(20.0)
    call.settle()
    inbound = call.b.stats().inbound
    assert inbound is not None and inbound.packets_lost == 5 and inbound.packets_received == 995
    remote = call.a.stats().remote_inbound
    assert remote is not None and remote.round_trip_time is not None
    assert remote.round_trip_time == pytest.approx(0.06, abs=0.002)
    assert remote.packets_lost == 5 and remote.round_trip_time_measurements >= 2
    assert call.b.stats().remote_outbound is not None
    assert call.a.stats().remote_cname == call.b.cname
    assert call.b.stats().rtcp_packets_received >= 2


def test_dtmf_sent_and_received() -> None:
    """Digits queued at A arrive at B as DtmfReceived, once each, with their duration."""
    call = Call(_session(1), _session(2))
    call.a.send_dtmf("1#", duration=0.1)
    call.run(1.0)
    digits = [e for e in _events(call.b) if isinstance(e, DtmfReceived)]
    assert digits == [DtmfReceived("1", 0.1), DtmfReceived("#", 0.1)]
    assert call.b.stats().jitter_buffer.frames_lost == 0


def test_dtmf_packets_share_timestamp_and_audio_resumes_on_sample_clock() -> None:
    """Event packets carry the event start timestamp; audio resumes where samples say."""
    a = _session(1)
    a.send_dtmf("5", duration=0.06)
    packets = [parse_rtp(a.send_frame(FRAME, 0.02 * k)) for k in range(10)]
    events = [p for p in packets if p.payload_type == 101]
    assert len(events) == 3 + 2  # 3 updates (last is the first end) + 2 end repeats
    assert {p.timestamp for p in events} == {packets[0].timestamp}
    assert [p.marker for p in events] == [True, False, False, False, False]
    assert [parse_telephone_event(p.payload).end for p in events] == [False] * 2 + [True] * 3
    audio = packets[5]
    assert audio.payload_type == 0
    assert audio.timestamp - packets[0].timestamp == 5 * 160


def test_dtmf_errors_are_the_callers() -> None:
    """Unnegotiated telephone-event or a bad digit raise ValueError at once."""
    with pytest.raises(ValueError):
        _session(dtmf_payload_type=None).send_dtmf("1")
    with pytest.raises(ValueError):
        _session().send_dtmf("x")


def test_close_sends_bye_and_peer_hears_it() -> None:
    """close() queues RR/SR + SDES + BYE; the peer reports ByeReceived; the session stops."""
    a, b = _session(1), _session(2)
    b.receive_rtp(a.send_frame(FRAME, 0.0), A, 0.0)
    b.receive_rtp(a.send_frame(FRAME, 0.02), A, 0.02)
    a.close(0.05, "hangup")
    assert a.state is SessionState.CLOSED and a.next_timer() is None
    (data,) = a.pop_transmits()
    packets = parse_rtcp(data)
    assert isinstance(packets[-1], Bye) and packets[-1].sources == (a.ssrc,)
    b.receive_rtcp(data, A, 0.06)
    assert ByeReceived(a.ssrc, "hangup") in _events(b)
    with pytest.raises(ValueError):
        a.send_frame(FRAME, 0.06)


def test_stats_to_dict_uses_webrtc_names() -> None:
    """The session snapshot nests inbound/outbound with webrtc-stats names."""
    call = Call(_session(1), _session(2))
    call.run(0.5)
    data = call.b.stats().to_dict()
    assert data["inbound"]["packetsReceived"] == 25
    assert data["outbound"]["packetsSent"] == 25
    assert "jitterBufferTargetDelay" in data["jitterBuffer"]
    assert data["packetsFromUnexpectedSource"] == 0
