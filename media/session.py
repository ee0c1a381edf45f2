"""The RTP session core (RFC 3550): framing, send deadlines, reception, RTCP reports, DTMF.

One object per audio stream, sans-IO. The pacing clock calls :meth:`RtpSession.send_frame` at
:meth:`RtpSession.next_send_time` and sends the bytes it returns; RTP timestamps advance by the
samples sent, never by clock reads. Received datagrams go to :meth:`receive_rtp` /
:meth:`receive_rtcp` (or :meth:`receive`, which demultiplexes RFC 5761), the sink pulls
:meth:`read_frame`, RTCP compound packets come out of :meth:`pop_transmits` and facts out of
:meth:`next_event`. :meth:`next_timer` / :meth:`handle_timer` drive RTCP reports (RFC 3550 §6.3)
and DTMF timeouts.
"""

from __future__ import annotations

import base64
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from media import g711
from media.codecs import Codec, G711Codec
from media.dtmf import DtmfError, DtmfPacket, DtmfReceived, DtmfReceiver, event_packets
from media.jitter import Frame, JitterBuffer, JitterBufferSettings, JitterBufferStats
from media.rtcp import (
    RTCP_MIN_TIME,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    SdesChunk,
    SdesType,
    SenderReport,
    SourceDescription,
    encode_compound,
    parse_rtcp,
    reduced_minimum_interval,
    rtcp_interval,
)
from media.rtp import (
    HEADER_SIZE,
    HEADER_STRUCT,
    PLAIN_FIRST_OCTET,
    RtpError,
    encode_rtp,
    parse_rtp,
)
from media.srtp import SrtpContext, SrtpError
from media.stats import (
    MIN_SEQUENTIAL,
    InboundRtpStats,
    OutboundRtpStats,
    ReceiverStatistics,
    RemoteInboundRtpStats,
    RemoteOutboundRtpStats,
    RemoteReceiverStatistics,
    SenderStatistics,
    Snapshot,
    ntp_timestamp,
    ntp_to_unix,
)

logger = logging.getLogger(__name__)

Address = tuple[str, int]
"""A transport address as the adapters pass it: (host, port)."""

RTP_HEADER = 12
ENCODE_CACHE_SIZE = 64
"""Distinct PCM frames whose G.711 encoding a session keeps: a periodic source (a tone repeats
every few frames) is then encoded once, a file fills the cache once and stops adding."""
UDP_IP_OVERHEAD = 28
"""IPv4 + UDP header octets, counted in the RTCP average packet size (RFC 3550 §6.3.3)."""

__all__ = [
    "Address",
    "ByeReceived",
    "DtmfReceived",
    "FirstPacketReceived",
    "RtcpReceived",
    "RtpSession",
    "RtpSessionSettings",
    "RtpSessionStats",
    "SessionEvent",
    "SessionState",
    "SsrcChanged",
]


@dataclass(frozen=True)
class RtpSessionSettings:
    """How one RTP audio stream is framed and reported."""

    ptime: int = 20
    """Packetization time in milliseconds (the negotiated ``a=ptime``)."""
    cname: str | None = None
    """RTCP CNAME; None draws a random one (RFC 7022 §4.2)."""
    session_bandwidth: float | None = None
    """Session bandwidth in octets/s for the RTCP share; None derives it from codec and ptime."""
    rtcp_fraction: float = 0.05
    """Share of the session bandwidth for RTCP (RFC 3550 §6.2)."""
    rtcp_min_interval: float = RTCP_MIN_TIME
    """Minimum RTCP report interval in seconds (RFC 3550 §6.2)."""
    reduced_minimum: bool = False
    """Use the reduced minimum interval, 360 / session kbit/s (RFC 3550 §6.2)."""
    dtmf_payload_type: int | None = 101
    """Negotiated telephone-event payload type; None when DTMF was not negotiated."""
    dtmf_duration: float = 0.1
    """Default tone duration of a sent digit, in seconds."""
    dtmf_pause: float = 0.06
    """Gap of plain audio between two queued digits, in seconds."""
    dtmf_volume: int = 10
    """Volume field of sent events, in -dBm0 (RFC 4733 §2.3.4)."""
    dtmf_timeout: float = 0.5
    """Seconds without packets after which a received event without end is reported."""
    min_sequential: int = MIN_SEQUENTIAL
    """Packets in sequence before a source counts as valid (RFC 3550 A.1)."""
    resync_after: float = 0.2
    """A send this many seconds after its deadline (hold, a stalled clock) restarts the send
    grid: the timestamp skips the silent time and the marker bit is set."""
    jitter_buffer: JitterBufferSettings = field(default_factory=JitterBufferSettings)
    """Settings of the receive-side jitter buffer."""


class SessionState(Enum):
    """Life of the session."""

    ACTIVE = "active"
    CLOSED = "closed"


# --- Events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstPacketReceived:
    """The first RTP packet arrived from the peer (media is flowing)."""

    ssrc: int
    source: Address
    payload_type: int


@dataclass(frozen=True)
class SsrcChanged:
    """The peer's RTP now comes from a new SSRC (a restart, a re-INVITE, a new device)."""

    old_ssrc: int
    new_ssrc: int


@dataclass(frozen=True)
class RtcpReceived:
    """A compound RTCP packet arrived from the peer."""

    packets: tuple[RtcpPacket, ...]
    source: Address


@dataclass(frozen=True)
class ByeReceived:
    """The peer's source left the session (RFC 3550 §6.6)."""

    ssrc: int
    reason: str | None


SessionEvent = FirstPacketReceived | SsrcChanged | RtcpReceived | ByeReceived | DtmfReceived


@dataclass(frozen=True)
class RtpSessionStats(Snapshot):
    """Everything the call report shows about one stream."""

    outbound: OutboundRtpStats
    inbound: InboundRtpStats | None
    remote_inbound: RemoteInboundRtpStats | None
    remote_outbound: RemoteOutboundRtpStats | None
    jitter_buffer: JitterBufferStats
    remote_cname: str | None
    packets_from_unexpected_source: int
    """RTP and RTCP datagrams from another address than the expected one, dropped."""
    packets_malformed: int
    """RTP datagrams that did not parse, dropped."""
    packets_unknown_payload_type: int
    packets_looped: int
    """Packets carrying our own SSRC (a reflected stream), dropped."""
    packets_from_old_ssrc: int
    """Packets from an SSRC the peer has replaced or said BYE for, dropped."""
    rtcp_packets_sent: int
    rtcp_packets_received: int
    rtcp_packets_malformed: int


class RtpSession:
    """One RTP audio stream: send framing and timing, receive path, RTCP, DTMF."""

    def __init__(
        self,
        codec: Codec,
        rng: random.Random,
        now: float,
        settings: RtpSessionSettings | None = None,
        *,
        wallclock_offset: float = 0.0,
    ) -> None:
        """``wallclock_offset`` turns ``now`` into Unix time for SR NTP timestamps."""
        self._settings = s = settings or RtpSessionSettings()
        if s.ptime <= 0:
            raise ValueError("ptime must be positive")
        self._codec = codec
        self._rng = rng
        self._wallclock_offset = wallclock_offset
        self._state = SessionState.ACTIVE
        # RFC 3550 §5.1: random initial SSRC, sequence number and timestamp.
        self.ssrc = rng.getrandbits(32)
        self._seq = rng.getrandbits(16)
        self._ts = rng.getrandbits(32)
        self.cname = s.cname or base64.b64encode(rng.randbytes(12)).decode("ascii")
        self._frame_samples = codec.samples_per_frame(s.ptime)
        if self._frame_samples <= 0:
            raise ValueError(f"ptime {s.ptime} ms gives no samples for {codec.name}")
        self._frame_ts = codec.timestamp_increment(self._frame_samples)
        self._frame_bytes = 2 * self._frame_samples
        # G.711 is memoryless, so equal PCM frames give equal payloads: cache them. A stateful
        # codec (Opus, G.722) must see every frame.
        self._encode_cache: dict[bytes, bytes] | None = (
            {} if isinstance(codec, G711Codec) else None)
        self._encode: Callable[[bytes], bytes] = codec.encode
        decode: Callable[[bytes], bytes] = codec.decode
        if isinstance(codec, G711Codec):
            # Straight to the C conversion, without the codec's dispatch on its name.
            pcmu = codec.name == "PCMU"
            self._encode = g711.ulaw_encode if pcmu else g711.alaw_encode
            decode = g711.ulaw_decode if pcmu else g711.alaw_decode
        self._payload_type = codec.payload_type
        self._ptime_s = s.ptime / 1000.0
        # Send grid: frame n is due at epoch + n x ptime (drift-free, no accumulation).
        self._created = now
        self._epoch: float | None = None
        self._count = 0
        self._marker_next = True
        self._sender = SenderStatistics(self.ssrc)
        self._last_sent: float | None = None
        # DTMF sending.
        self._dtmf_queue: deque[tuple[str, int]] = deque()
        self._dtmf_packets: list[DtmfPacket] = []
        self._dtmf_index = 0
        self._dtmf_timestamp = 0
        self._dtmf_gap = 0
        # Receive side.
        self._expected_rtp: Address | None = None
        self._expected_rtcp: Address | None = None
        self._remote: ReceiverStatistics | None = None
        self._remote_cname: str | None = None
        self._retired: deque[int] = deque(maxlen=8)
        self._last_received: float | None = None
        self._jitter = JitterBuffer(
            decode,
            frame_samples=self._frame_samples,
            sample_rate=codec.sample_rate,
            clock_rate=codec.clock_rate,
            settings=s.jitter_buffer,
        )
        self._dtmf_rx = DtmfReceiver(codec.clock_rate, timeout=s.dtmf_timeout)
        self._remote_receiver = RemoteReceiverStatistics(self.ssrc, codec.clock_rate)
        self._remote_sender: RemoteOutboundRtpStats | None = None
        self._foreign = 0
        self._malformed = 0
        self._unknown_pt = 0
        self._looped = 0
        self._old_ssrc = 0
        # RTCP (RFC 3550 §6.3). Packet counts at the last two reports tell who is a sender.
        self._packets_at_report: deque[int] = deque([0, 0], maxlen=2)
        self._received_at_report: deque[int] = deque([0, 0], maxlen=2)
        payload = len(codec.encode(bytes(2 * self._frame_samples)))
        self._session_bw = s.session_bandwidth or (
            (payload + RTP_HEADER + UDP_IP_OVERHEAD) / self._ptime_s
        )
        self._rtcp_bw = self._session_bw * s.rtcp_fraction
        self._min_interval = (
            reduced_minimum_interval(self._session_bw) if s.reduced_minimum
            else s.rtcp_min_interval
        )
        self._avg_rtcp_size = float(len(self._build_report(now)) + UDP_IP_OVERHEAD)
        self._initial = True
        self._tp = now
        self._next_rtcp = now + self._interval()
        self._timer_at: float | None = self._next_rtcp
        """What next_timer() returns, kept current where its inputs change (it is asked on
        every frame, they change a few times a second at most)."""
        self._rtcp_sent = 0
        self._rtcp_received = 0
        self._rtcp_malformed = 0
        self._transmits: list[bytes] = []
        self._events: deque[SessionEvent] = deque()
        self._srtp: SrtpContext | None = None

    # --- state -----------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """ACTIVE until :meth:`close`."""
        return self._state

    def _set_state(self, new: SessionState, cause: str) -> None:
        logger.info("RTP session %08x: %s -> %s (%s)", self.ssrc, self._state.name, new.name,
                    cause)
        self._state = new

    @property
    def srtp(self) -> SrtpContext | None:
        """The SRTP context (RFC 3711) when the stream is secured, else None."""
        return self._srtp

    def set_srtp(self, context: SrtpContext | None) -> None:
        """Protect what the session sends and unprotect what it receives from now on (None:
        plain RTP). RTP is protected after framing and unprotected before parsing; RTCP the
        same way in :meth:`pop_transmits` and :meth:`receive_rtcp`."""
        self._srtp = context

    @property
    def codec(self) -> Codec:
        """The codec this stream sends and receives."""
        return self._codec

    @property
    def frame_samples(self) -> int:
        """PCM samples per frame at the negotiated ptime."""
        return self._frame_samples

    @property
    def remote_ssrc(self) -> int | None:
        """SSRC of the peer's current source, once heard."""
        return self._remote.ssrc if self._remote is not None else None

    # --- sending ---------------------------------------------------------------------------

    def next_send_time(self) -> float:
        """When the next frame is due (the creation time before the first one)."""
        if self._epoch is None:
            return self._created
        return self._epoch + self._count * self._ptime_s

    def send_frame(self, pcm: bytes, now: float) -> bytes:
        """Packetize one frame of PCM (or the pending DTMF packet); returns the RTP datagram.

        The timestamp advances by the samples in ``pcm``; a send far behind its deadline
        restarts the grid with the silent time skipped (RFC 3550 §5.1: the timestamp keeps
        pace with the sampling clock across pauses).
        """
        if self._state is SessionState.CLOSED:
            raise ValueError("the RTP session is closed")
        size = len(pcm)
        if size & 1:
            raise ValueError("16-bit PCM must have an even length")
        epoch = self._epoch
        if epoch is None:
            self._epoch = now
            self._count = 0
        else:
            late = now - (epoch + self._count * self._ptime_s)
            if late > self._settings.resync_after:
                skipped = int(late / self._ptime_s)
                self._ts = (self._ts + skipped * self._frame_ts) & 0xFFFFFFFF
                self._epoch = now
                self._count = 0
                self._marker_next = True
        samples_ts = (self._frame_ts if size == self._frame_bytes
                      else self._codec.timestamp_increment(size // 2))
        seq = self._seq
        ts = self._ts
        if self._dtmf_packets or self._dtmf_queue or self._dtmf_gap > 0:
            data = self._dtmf_or_audio(pcm)
        else:
            # The audio packet, inline: this runs for every frame of every stream.
            cache = self._encode_cache
            if cache is None or type(pcm) is not bytes:  # bytearray & co. cannot be keys
                payload = self._encode(pcm)
            else:
                payload = cache.get(pcm)  # type: ignore[assignment]
                if payload is None:
                    payload = self._encode(pcm)
                    if len(cache) < ENCODE_CACHE_SIZE:
                        cache[pcm] = payload
            second = self._payload_type
            if self._marker_next:
                second |= 0x80
                self._marker_next = False
            data = HEADER_STRUCT.pack(PLAIN_FIRST_OCTET, second, seq, ts, self.ssrc) + payload
            sender = self._sender
            sender.packets += 1
            sender.octets += len(payload)
            sender.header_octets += RTP_HEADER
        self._seq = (seq + 1) & 0xFFFF
        self._ts = (ts + samples_ts) & 0xFFFFFFFF
        self._count += 1
        self._last_sent = now
        srtp = self._srtp
        return data if srtp is None else srtp.protect_rtp(data)

    def _audio_packet(self, pcm: bytes) -> bytes:
        payload = self._encode(pcm)
        data = encode_rtp(self._payload_type, self._seq, self._ts, self.ssrc, payload,
                          self._marker_next)
        self._marker_next = False
        sender = self._sender
        sender.packets += 1
        sender.octets += len(payload)
        sender.header_octets += RTP_HEADER
        return data

    def _dtmf_or_audio(self, pcm: bytes) -> bytes:
        if self._dtmf_packets or (self._dtmf_queue and self._dtmf_gap <= 0):
            return self._next_dtmf_packet()
        if self._dtmf_gap > 0:
            self._dtmf_gap -= 1
        return self._audio_packet(pcm)

    def send_dtmf(self, digits: str, duration: float | None = None) -> None:
        """Queue DTMF digits (RFC 4733); they replace audio in the next frames sent."""
        pt = self._settings.dtmf_payload_type
        if pt is None:
            raise ValueError("telephone-event was not negotiated for this stream")
        seconds = self._settings.dtmf_duration if duration is None else duration
        units = max(self._frame_ts, round(seconds * self._codec.clock_rate))
        for digit in digits:
            # Validate now (the caller's fault), not when the frame is due.
            event_packets(digit, units, self._frame_ts)
            self._dtmf_queue.append((digit, units))

    def _next_dtmf_packet(self) -> bytes:
        pt = self._settings.dtmf_payload_type
        assert pt is not None
        if not self._dtmf_packets:
            digit, units = self._dtmf_queue.popleft()
            self._dtmf_packets = event_packets(
                digit, units, self._frame_ts, volume=self._settings.dtmf_volume
            )
            self._dtmf_index = 0
            # RFC 4733 §2.5.1.1: every packet of the event carries its start timestamp.
            self._dtmf_timestamp = self._ts
        packet = self._dtmf_packets[self._dtmf_index]
        self._dtmf_index += 1
        if self._dtmf_index >= len(self._dtmf_packets):
            self._dtmf_packets = []
            self._dtmf_gap = max(1, round(self._settings.dtmf_pause / self._ptime_s))
        self._sender.sent(len(packet.payload), RTP_HEADER)
        return encode_rtp(
            pt, self._seq, self._dtmf_timestamp, self.ssrc, packet.payload, packet.marker
        )

    # --- receiving -------------------------------------------------------------------------

    def set_expected_source(self, rtp: Address | None, rtcp: Address | None = None) -> None:
        """Accept RTP only from ``rtp`` (the selected pair's remote address), None for any.

        ``rtcp`` is the RTCP source for a separate component 2; pass the RTP address again when
        RTCP is multiplexed, or None to accept RTCP from anywhere.
        """
        self._expected_rtp = rtp
        self._expected_rtcp = rtcp

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """A datagram from a port that carries RTP and RTCP multiplexed (RFC 5761 §4)."""
        # RFC 5761 §4: RTCP packet types 192-223 read as payload types 64-95 (see is_rtcp).
        if len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95:
            self.receive_rtcp(data, source, now)
        else:
            self.receive_rtp(data, source, now)

    def receive_rtp(self, data: bytes, source: Address, now: float) -> bool:
        """One RTP datagram from the network; False when it was dropped before it counted as
        the peer's (closed, unexpected source, SRTP refused it, unparsable, looped, old SSRC).

        The source is checked before SRTP so that a copy of a genuine packet sent from
        elsewhere cannot use up its index in the replay window (RFC 3711 §3.3.2).
        """
        if self._state is SessionState.CLOSED:
            return False
        if self._expected_rtp is not None and source != self._expected_rtp:
            self._foreign += 1
            return False
        srtp = self._srtp
        if srtp is not None:
            try:
                data = srtp.unprotect_rtp(data)
            except SrtpError as exc:  # counted by the context
                logger.debug("dropping SRTP from %s: %s", source, exc)
                return False
        if len(data) >= HEADER_SIZE and data[0] == PLAIN_FIRST_OCTET:
            # The usual audio packet: read the fields, build no packet object.
            _first, second, sequence, timestamp, ssrc = HEADER_STRUCT.unpack_from(data)
            payload_type = second & 0x7F
            payload = data[HEADER_SIZE:]
        else:
            try:
                packet = parse_rtp(data)
            except RtpError as exc:
                self._malformed += 1
                logger.debug("dropping RTP from %s: %s", source, exc)
                return False
            payload_type, sequence, timestamp, ssrc = (
                packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc)
            payload = packet.payload
        if ssrc == self.ssrc:
            self._looped += 1
            return False
        remote = self._remote
        if remote is None or remote.ssrc != ssrc:
            if ssrc in self._retired:
                self._old_ssrc += 1
                return False
            remote = self._new_remote(ssrc, payload_type, source)
        size = len(payload)
        remote.update(sequence, timestamp, now, size, len(data) - size)
        self._last_received = now
        if payload_type == self._payload_type:
            self._jitter.put_payload(sequence, timestamp, payload, now)
        elif payload_type == self._settings.dtmf_payload_type:
            self._jitter.put_payload(sequence, timestamp, payload, now, silent=True)
            try:
                self._dtmf_rx.receive(timestamp, payload, now)
            except DtmfError:
                self._malformed += 1
            self._drain_dtmf()
            self._update_timer()
        else:
            self._unknown_pt += 1
        return True

    def _new_remote(self, ssrc: int, payload_type: int, source: Address) -> ReceiverStatistics:
        old = self._remote
        remote = ReceiverStatistics(
            ssrc, self._codec.clock_rate, min_sequential=self._settings.min_sequential
        )
        self._remote = remote
        if old is None:
            self._events.append(FirstPacketReceived(ssrc, source, payload_type))
        else:
            self._retired.append(old.ssrc)
            self._jitter.reset()
            self._events.append(SsrcChanged(old.ssrc, ssrc))
        self._remote_sender = None
        return remote

    def _drain_dtmf(self) -> None:
        while (event := self._dtmf_rx.next_event()) is not None:
            self._events.append(event)

    def read_frame(self, now: float) -> Frame:
        """The received frame to play at ``now`` (concealment when missing)."""
        return self._jitter.get(now)

    @property
    def jitter_buffer(self) -> JitterBuffer:
        """The receive-side jitter buffer (its ``get_pcm`` is what a sink plays)."""
        return self._jitter

    def read_pcm(self, now: float) -> bytes:
        """The PCM of :meth:`read_frame` alone (what a sink takes; one object less per frame)."""
        return self._jitter.get_pcm(now)

    def receive_rtcp(self, data: bytes, source: Address, now: float) -> None:
        """One RTCP datagram (compound) from the network."""
        if self._state is SessionState.CLOSED:
            return
        if self._expected_rtcp is not None and source != self._expected_rtcp:
            self._foreign += 1
            return
        srtp = self._srtp
        if srtp is not None:
            try:
                data = srtp.unprotect_rtcp(data)
            except SrtpError as exc:  # counted by the context
                logger.debug("dropping SRTCP from %s: %s", source, exc)
                return
        try:
            packets = parse_rtcp(data)
        except RtcpError as exc:
            self._rtcp_malformed += 1
            logger.debug("dropping RTCP from %s: %s", source, exc)
            return
        self._rtcp_received += 1
        # RFC 3550 §6.3.3: the average includes received packets.
        self._update_avg_size(len(data))
        arrival_ntp = ntp_timestamp(now + self._wallclock_offset)
        remote = self._remote
        for p in packets:
            if isinstance(p, SenderReport | ReceiverReport):
                if isinstance(p, SenderReport) and remote is not None and p.ssrc == remote.ssrc:
                    remote.sender_report_received(p.ntp_timestamp, now)
                    count = self._remote_sender.reports_sent if self._remote_sender else 0
                    self._remote_sender = RemoteOutboundRtpStats(
                        p.ssrc, p.packet_count, p.octet_count, ntp_to_unix(p.ntp_timestamp),
                        count + 1,
                    )
                for block in p.reports:
                    if block.ssrc == self.ssrc:
                        self._remote_receiver.report_received(block, arrival_ntp)
            elif isinstance(p, SourceDescription):
                for chunk in p.chunks:
                    if remote is not None and chunk.ssrc == remote.ssrc and chunk.cname:
                        self._remote_cname = chunk.cname
            elif isinstance(p, Bye) and remote is not None and remote.ssrc in p.sources:
                reason = p.reason.decode("utf-8", "replace") if p.reason is not None else None
                self._events.append(ByeReceived(remote.ssrc, reason))
                self._retired.append(remote.ssrc)
        self._events.append(RtcpReceived(tuple(packets), source))

    # --- RTCP timing -----------------------------------------------------------------------

    def _update_avg_size(self, size: int) -> None:
        self._avg_rtcp_size += (size + UDP_IP_OVERHEAD - self._avg_rtcp_size) / 16.0

    def _we_sent(self) -> bool:
        # §6.3.8: a sender is one that sent RTP since the report before last.
        return self._sender.packets != self._packets_at_report[0]

    def _remote_sent(self) -> bool:
        remote = self._remote
        if remote is None or remote.ssrc in self._retired:
            return False
        return remote.received != self._received_at_report[0]

    def _interval(self) -> float:
        remote_here = self._remote is not None and self._remote.ssrc not in self._retired
        members = 1 + (1 if remote_here else 0)
        senders = int(self._we_sent()) + int(self._remote_sent())
        return rtcp_interval(
            members=members,
            senders=senders,
            rtcp_bandwidth=self._rtcp_bw,
            we_sent=self._we_sent(),
            avg_rtcp_size=self._avg_rtcp_size,
            initial=self._initial,
            rng=self._rng,
            min_interval=self._min_interval,
        )

    def next_timer(self) -> float | None:
        """The next RTCP report or DTMF timeout deadline; None once closed."""
        return self._timer_at

    def _update_timer(self) -> None:
        if self._state is SessionState.CLOSED:
            self._timer_at = None
            return
        dtmf = self._dtmf_rx.next_timer()
        self._timer_at = self._next_rtcp if dtmf is None else min(self._next_rtcp, dtmf)

    def handle_timer(self, now: float) -> None:
        """Send a report when due, after timer reconsideration (RFC 3550 §6.3.6)."""
        if self._state is SessionState.CLOSED:
            return
        self._dtmf_rx.handle_timer(now)
        self._drain_dtmf()
        self._rtcp_timer(now)
        self._update_timer()

    def _rtcp_timer(self, now: float) -> None:
        if now < self._next_rtcp:
            return
        t = self._interval()
        if self._tp + t > now:
            self._next_rtcp = self._tp + t  # reconsidered: not yet
            return
        self._send_report(now)
        self._tp = now
        self._initial = False
        self._next_rtcp = now + self._interval()

    def _report_blocks(self, now: float) -> tuple[ReportBlock, ...]:
        remote = self._remote
        if remote is None or not remote.valid or remote.ssrc in self._retired:
            return ()
        return (remote.report_block(now),)

    def _rtp_timestamp_at(self, now: float) -> int:
        """The RTP timestamp of the sampling instant ``now`` on the send grid (for the SR)."""
        offset = round((now - self.next_send_time()) * self._codec.clock_rate)
        return (self._ts + offset) & 0xFFFFFFFF

    def _build_report(self, now: float, blocks: tuple[ReportBlock, ...] = ()) -> bytes:
        report: SenderReport | ReceiverReport
        if self._sender.packets and self._we_sent():
            report = SenderReport(
                self.ssrc, ntp_timestamp(now + self._wallclock_offset),
                self._rtp_timestamp_at(now), self._sender.packets, self._sender.octets, blocks,
            )
        else:
            report = ReceiverReport(self.ssrc, blocks)
        sdes = SourceDescription(
            (SdesChunk(self.ssrc, ((SdesType.CNAME, self.cname.encode("utf-8")),)),)
        )
        return encode_compound((report, sdes))

    def _send_report(self, now: float, bye: Bye | None = None) -> None:
        data = self._build_report(now, self._report_blocks(now))
        if bye is not None:
            data += bye.encode()
        self._packets_at_report.append(self._sender.packets)
        self._received_at_report.append(self._remote.received if self._remote else 0)
        self._transmits.append(data)
        self._rtcp_sent += 1
        self._update_avg_size(len(data))

    def close(self, now: float, reason: str | None = None) -> None:
        """Leave the session: queue a final report with BYE (RFC 3550 §6.6)."""
        if self._state is SessionState.CLOSED:
            return
        encoded = reason.encode("utf-8")[:255] if reason is not None else None
        self._send_report(now, Bye((self.ssrc,), encoded))
        self._set_state(SessionState.CLOSED, "close" if reason is None else reason)
        self._timer_at = None

    # --- outputs ---------------------------------------------------------------------------

    def pop_transmits(self) -> list[bytes]:
        """RTCP compound packets to send to the peer's RTCP address, oldest first (SRTCP when
        the session is secured)."""
        out, self._transmits = self._transmits, []
        srtp = self._srtp
        if srtp is not None:
            return [srtp.protect_rtcp(data) for data in out]
        return out

    def next_event(self) -> SessionEvent | None:
        """The next fact about the stream, oldest first."""
        return self._events.popleft() if self._events else None

    def stats(self) -> RtpSessionStats:
        """A snapshot of every figure of the stream."""
        remote = self._remote
        return RtpSessionStats(
            outbound=self._sender.snapshot(),
            inbound=remote.snapshot() if remote is not None else None,
            remote_inbound=self._remote_receiver.snapshot(),
            remote_outbound=self._remote_sender,
            jitter_buffer=self._jitter.stats(),
            remote_cname=self._remote_cname,
            packets_from_unexpected_source=self._foreign,
            packets_malformed=self._malformed,
            packets_unknown_payload_type=self._unknown_pt,
            packets_looped=self._looped,
            packets_from_old_ssrc=self._old_ssrc,
            rtcp_packets_sent=self._rtcp_sent,
            rtcp_packets_received=self._rtcp_received,
            rtcp_packets_malformed=self._rtcp_malformed,
        )
