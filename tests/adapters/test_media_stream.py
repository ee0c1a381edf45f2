"""Media streams on a fake reactor: over a fake ICE transport, over fake UDP ports; and the
pyaudio devices' error messages with a fake (or missing) pyaudio module."""

from __future__ import annotations

import itertools
import random
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import task

from ice.candidate import AppData
from ice.events import ConsentLost, PairSelected, PairSnapshot
from media.clock import PacingClock
from media.codecs import G711Codec
from media.rtcp import Bye, SenderReport, parse_rtcp
from media.rtp import encode_rtp, is_rtcp, parse_rtp
from media.session import (
    ByeReceived,
    FirstPacketReceived,
    RtpSession,
    RtpSessionSettings,
)
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from media.stream import (
    DestinationChanged,
    IceMediaStream,
    SendingStarted,
    SendingStopped,
    StreamClosed,
    StreamState,
    UdpMediaStream,
)

PTIME = 0.02
PEER = ("192.0.2.7", 40000)
PEER_RTCP = ("192.0.2.7", 40001)
OTHER = ("192.0.2.66", 5004)
SETTINGS = RtpSessionSettings(rtcp_min_interval=0.5)


# --- fakes -----------------------------------------------------------------------------------


@dataclass
class FakeAgent:
    """Selected pairs and consent, set by the test."""

    selected: dict[int, Any] = field(default_factory=dict)
    consent_lost: set[int] = field(default_factory=set)
    remote_candidates: list[Any] = field(default_factory=list)

    def select(self, component: int, remote: tuple[str, int]) -> None:
        self.selected[component] = types.SimpleNamespace(
            remote=types.SimpleNamespace(address=remote))

    def selected_pair(self, component: int) -> Any:
        return self.selected.get(component)

    def can_send(self, component: int) -> bool:
        return component in self.selected and component not in self.consent_lost


class FakeIce:
    """Stands in for IceUdpTransport: records what is sent per component."""

    def __init__(self, reactor: task.Clock) -> None:
        self.agent = FakeAgent()
        self.reactor = reactor
        self.sent: list[tuple[int, bytes]] = []

    def send(self, component: int, data: bytes) -> None:
        if not self.agent.can_send(component):
            raise RuntimeError("no pair")
        self.sent.append((component, data))

    def rtp(self, component: int = 1) -> list[bytes]:
        return [d for c, d in self.sent if c == component and not is_rtcp(d)]

    def rtcp(self, component: int) -> list[bytes]:
        return [d for c, d in self.sent if c == component and is_rtcp(d)]


def snapshot(component: int, remote: tuple[str, int]) -> PairSnapshot:
    return PairSnapshot(component, "host", ("10.0.0.1", 5000), "host", remote, 1, "succeeded",
                        True, "1")


def peer_session(now: float, seed: int = 99) -> RtpSession:
    return RtpSession(G711Codec("PCMU", 0), random.Random(seed), now, SETTINGS)


def run(reactor: task.Clock, seconds: float) -> None:
    """Advance the fake clock frame by frame (chained timers fire on time)."""
    end = reactor.seconds() + seconds
    while True:
        calls = reactor.getDelayedCalls()
        due = min((c.getTime() for c in calls), default=end + 1)
        if due > end:
            reactor.advance(max(0.0, end - reactor.seconds()))
            return
        reactor.advance(max(0.0, due - reactor.seconds()))


def ice_stream(rtcp_mux: bool = True, sink: MemorySink | None = None) -> tuple[
        task.Clock, FakeIce, IceMediaStream, list[Any]]:
    reactor = task.Clock()
    reactor.advance(1000.0)
    ice = FakeIce(reactor)
    events: list[Any] = []
    session = RtpSession(G711Codec("PCMU", 0), random.Random(1), reactor.seconds(), SETTINGS)
    stream = IceMediaStream(session, ice, PacingClock(reactor), rtcp_mux=rtcp_mux,
                            source=Tone(440), sink=sink, on_event=events.append)
    stream.start()
    return reactor, ice, stream, events


# --- ICE ---------------------------------------------------------------------------------------


def test_nothing_is_sent_before_a_pair_is_selected() -> None:
    """Frames due before selection are counted, not sent; after selection RTP flows on
    component 1 at one packet per ptime, and the owner hears SendingStarted."""
    reactor, ice, stream, events = ice_stream()
    run(reactor, 0.2)
    assert ice.sent == [] and stream.state is StreamState.WAITING
    assert stream.stats().frames_not_sent >= 10
    ice.agent.select(1, PEER)
    stream.ice_event_received(PairSelected(reactor.seconds(), 1, snapshot(1, PEER)))
    assert stream.state is StreamState.ACTIVE
    run(reactor, 1.0)
    packets = [parse_rtp(d) for d in ice.rtp(1)]
    assert len(packets) in (50, 51)
    assert packets[0].marker and not packets[1].marker
    seqs = [p.sequence for p in packets]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
    assert {p.timestamp - packets[0].timestamp for p in packets[:3]} == {0, 160, 320}
    assert any(isinstance(e, SendingStarted) and e.destination == PEER for e in events)


def test_selection_is_noticed_without_the_event() -> None:
    """A stream whose owner forwards no ICE events still follows the agent (it looks on every
    tick)."""
    reactor, ice, stream, _ = ice_stream()
    ice.agent.select(1, PEER)
    run(reactor, 0.1)
    assert stream.state is StreamState.ACTIVE and len(ice.rtp(1)) >= 4


def test_media_from_another_peer_candidate_is_accepted() -> None:
    """RFC 8445 §12.2: data from another of the peer's candidates of the component (a peer
    that sends through its own TURN relay) is taken as the selected path's; a source that is
    not one of the peer's candidates is still dropped."""
    reactor, ice, stream, events = ice_stream()
    relay = ("203.0.113.10", 49200)
    ice.agent.remote_candidates = [types.SimpleNamespace(component=1, address=relay),
                                   types.SimpleNamespace(component=2, address=OTHER)]
    ice.agent.select(1, PEER)
    run(reactor, 0.02)
    peer = peer_session(reactor.seconds())
    now = reactor.seconds()
    stream.app_data_received(AppData(1, peer.send_frame(bytes(320), now), relay))
    assert stream.stats().packets_from_other_candidates == 1
    assert any(isinstance(e, FirstPacketReceived) and e.source == PEER for e in events)
    # OTHER is a candidate of component 2 only: not accepted on component 1.
    stream.app_data_received(AppData(1, peer.send_frame(bytes(320), now), OTHER))
    assert stream.stats().session.packets_from_unexpected_source == 1


def test_media_accepted_only_from_the_selected_pair() -> None:
    """Before selection incoming media is dropped and counted; after it, only the selected
    pair's remote address is accepted, others are dropped and counted by the session."""
    reactor, ice, stream, events = ice_stream()
    peer = peer_session(reactor.seconds())
    stream.app_data_received(AppData(1, peer.send_frame(bytes(320), reactor.seconds()), PEER))
    assert stream.stats().packets_without_path == 1
    ice.agent.select(1, PEER)
    run(reactor, 0.02)
    now = reactor.seconds()
    stream.app_data_received(AppData(1, peer.send_frame(bytes(320), now), OTHER))
    assert stream.stats().session.packets_from_unexpected_source == 1
    assert not any(isinstance(e, FirstPacketReceived) for e in events)
    first = stream.when_first_packet()
    stream.app_data_received(AppData(1, peer.send_frame(bytes(320), now), PEER))
    assert any(isinstance(e, FirstPacketReceived) and e.source == PEER for e in events)
    assert first.called
    assert stream.app_data_received(AppData(3, b"\x80" * 20, PEER)) is False  # not ours


def test_follows_a_change_of_selected_pair() -> None:
    """A switch of the selected pair moves the destination and the accepted source."""
    reactor, ice, stream, events = ice_stream()
    ice.agent.select(1, PEER)
    run(reactor, 0.1)
    new = ("198.51.100.9", 6000)
    ice.agent.select(1, new)
    stream.ice_event_received(PairSelected(reactor.seconds(), 1, snapshot(1, new)))
    assert stream.destination == new
    assert any(isinstance(e, DestinationChanged) and e.old == PEER and e.new == new
               for e in events)
    peer = peer_session(reactor.seconds())
    stream.app_data_received(AppData(1, peer.send_frame(bytes(320), reactor.seconds()), PEER))
    assert stream.stats().session.packets_from_unexpected_source == 1
    stream.app_data_received(AppData(1, peer.send_frame(bytes(320), reactor.seconds()), new))
    assert stream.stats().session.inbound is not None


def test_rtcp_multiplexed_on_component_1() -> None:
    """With rtcp-mux, reports go on component 1 beside RTP and nothing uses component 2."""
    reactor, ice, _stream, _ = ice_stream(rtcp_mux=True)
    ice.agent.select(1, PEER)
    run(reactor, 3.0)
    assert ice.rtcp(1)
    assert isinstance(parse_rtcp(ice.rtcp(1)[0])[0], SenderReport)
    assert not [c for c, _ in ice.sent if c == 2]


def test_rtcp_on_component_2_without_mux() -> None:
    """Without rtcp-mux RTCP waits for component 2's pair, then goes there; RTCP arriving on
    component 2 from that pair reaches the session."""
    reactor, ice, stream, _ = ice_stream(rtcp_mux=False)
    ice.agent.select(1, PEER)
    run(reactor, 3.0)
    assert not ice.rtcp(1) and stream.stats().rtcp_not_sent >= 1
    ice.agent.select(2, PEER_RTCP)
    run(reactor, 3.0)
    assert ice.rtcp(2) and not ice.rtcp(1)
    peer = peer_session(reactor.seconds())
    peer.send_frame(bytes(320), reactor.seconds())
    peer.close(reactor.seconds())
    (bye,) = peer.pop_transmits()
    stream.app_data_received(AppData(1, peer_session(0, 5).send_frame(bytes(320), 0), PEER))
    stream.app_data_received(AppData(2, bye, OTHER))
    assert stream.stats().session.packets_from_unexpected_source == 1
    stream.app_data_received(AppData(2, bye, PEER_RTCP))
    assert stream.stats().session.rtcp_packets_received == 1


def test_hold_stops_audio_and_resume_restarts_it() -> None:
    """On hold no RTP leaves (RTCP goes on, the agent keeps the pair alive); after resume RTP
    flows again with the marker set and the timestamp moved on by the held time."""
    reactor, ice, stream, _ = ice_stream()
    ice.agent.select(1, PEER)
    run(reactor, 0.5)
    before = [parse_rtp(d) for d in ice.rtp(1)]
    stream.hold()
    assert stream.held
    run(reactor, 3.0)
    assert len(ice.rtp(1)) == len(before)
    assert ice.rtcp(1)  # reports continue on hold
    assert stream.stats().frames_not_sent == 0  # held frames are not "missing path" frames
    with pytest.raises(ValueError):
        stream.send_dtmf("1")
    stream.resume()
    run(reactor, 0.1)
    after = [parse_rtp(d) for d in ice.rtp(1)][len(before):]
    assert after and after[0].marker
    gap = (after[0].timestamp - before[-1].timestamp) % 2**32
    assert gap >= 3.0 * 8000


def test_consent_lost_stops_sending() -> None:
    """When the agent loses consent the stream stops sending and tells the owner."""
    reactor, ice, stream, events = ice_stream()
    ice.agent.select(1, PEER)
    run(reactor, 0.2)
    sent = len(ice.rtp(1))
    ice.agent.consent_lost.add(1)
    stream.ice_event_received(ConsentLost(reactor.seconds(), 1, snapshot(1, PEER)))
    run(reactor, 0.5)
    assert len(ice.rtp(1)) == sent
    assert stream.state is StreamState.STOPPED
    assert [e.reason for e in events if isinstance(e, SendingStopped)] == ["consent lost"]


def test_dtmf_is_sent_as_telephone_events() -> None:
    """send_dtmf replaces audio frames with RFC 4733 packets of payload type 101."""
    reactor, ice, stream, _ = ice_stream()
    ice.agent.select(1, PEER)
    run(reactor, 0.1)
    stream.send_dtmf("5")
    run(reactor, 0.3)
    types_ = [parse_rtp(d).payload_type for d in ice.rtp(1)]
    assert 101 in types_ and types_[-1] == 0


def test_sink_gets_audio_once_media_arrives() -> None:
    """The sink is fed one frame per tick from the first packet on, and it holds the tone."""
    sink = MemorySink()
    reactor, ice, stream, _ = ice_stream(sink=sink)
    ice.agent.select(1, PEER)
    run(reactor, 0.2)
    assert sink.samples == 0
    peer = peer_session(reactor.seconds())
    tone = Tone(660)
    for _ in range(100):
        now = reactor.seconds()
        stream.app_data_received(AppData(1, peer.send_frame(tone.read(160), now), PEER))
        run(reactor, PTIME)
    assert sink.samples >= 90 * 160
    assert abs(dominant_frequency(sink.pcm[8000:]) - 660) < 3


def test_close_sends_bye_and_releases_everything() -> None:
    """close() sends a BYE over the RTCP path, leaves the clock and closes the sink."""
    sink = MemorySink()
    reactor, ice, stream, events = ice_stream(sink=sink)
    ice.agent.select(1, PEER)
    run(reactor, 0.1)
    d = stream.close("hangup")
    assert d.called
    last = parse_rtcp(ice.rtcp(1)[-1])
    assert any(isinstance(p, Bye) and p.reason == b"hangup" for p in last)
    assert not stream.clock.is_registered(stream) and sink.closed
    assert isinstance(events[-1], StreamClosed)
    sent = len(ice.sent)
    run(reactor, 0.5)
    assert len(ice.sent) == sent
    assert stream.close().called  # idempotent


# --- plain UDP (fake ports) -------------------------------------------------------------------


class FakePort:
    """A UDP port that records writes."""

    def __init__(self, protocol: Any, port: int, interface: str) -> None:
        self.protocol = protocol
        self.port = port or 30000 + id(self) % 1000 * 2
        self.interface = interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False

    def getHost(self) -> Any:
        return types.SimpleNamespace(host=self.interface, port=self.port)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))

    def stopListening(self) -> None:
        self.closed = True


class FakeUdpReactor(task.Clock):
    """A task.Clock that can also 'listen' on UDP."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> FakePort:
        p = FakePort(protocol, port, interface)
        self.ports.append(p)
        return p


def test_udp_symmetric_rtp_latches_on_the_first_valid_packet() -> None:
    """Sent to the SDP address first; the source of the first valid RTP becomes the
    destination (garbage does not latch), and then only that source is accepted."""
    reactor = FakeUdpReactor()
    events: list[Any] = []
    session = RtpSession(G711Codec("PCMU", 0), random.Random(1), 0.0, SETTINGS)
    stream = UdpMediaStream(session, PacingClock(reactor), remote=PEER, reactor=reactor,
                            on_event=events.append)
    stream.start()
    (port,) = reactor.ports
    run(reactor, 0.1)
    assert {addr for _, addr in port.written} == {PEER}
    nat = ("203.0.113.5", 61000)
    port.protocol.datagramReceived(b"\x80\x00garbage", nat)
    assert not stream.latched
    peer = peer_session(0.0)
    port.protocol.datagramReceived(peer.send_frame(bytes(320), 0.1), nat)
    assert stream.latched and stream.destination == nat
    assert any(isinstance(e, DestinationChanged) and e.cause == "symmetric RTP" for e in events)
    port.written.clear()
    run(reactor, 0.1)
    assert {addr for _, addr in port.written} == {nat}
    port.protocol.datagramReceived(peer.send_frame(bytes(320), 0.12), OTHER)
    assert stream.stats().session.packets_from_unexpected_source == 1
    stream.close()
    assert port.closed


def test_udp_without_symmetric_rtp_keeps_the_sdp_address() -> None:
    """symmetric=False keeps sending to the SDP address whatever the source of RTP."""
    reactor = FakeUdpReactor()
    session = RtpSession(G711Codec("PCMU", 0), random.Random(1), 0.0, SETTINGS)
    stream = UdpMediaStream(session, PacingClock(reactor), remote=PEER, reactor=reactor,
                            symmetric=False)
    stream.start()
    (port,) = reactor.ports
    port.protocol.datagramReceived(peer_session(0.0).send_frame(bytes(320), 0.0), OTHER)
    run(reactor, 0.1)
    assert {addr for _, addr in port.written} == {PEER}
    assert stream.stats().session.inbound is not None


def test_udp_without_rtcp_mux_uses_a_second_port() -> None:
    """Without rtcp-mux RTCP leaves from the next port to the peer's RTP port + 1, and a BYE
    arriving there reaches the session."""
    reactor = FakeUdpReactor()
    events: list[Any] = []
    session = RtpSession(G711Codec("PCMU", 0), random.Random(1), 0.0, SETTINGS)
    stream = UdpMediaStream(session, PacingClock(reactor), local=("127.0.0.1", 20000),
                            remote=PEER, rtcp_mux=False, reactor=reactor,
                            on_event=events.append)
    stream.start()
    rtp_port, rtcp_port = reactor.ports
    assert stream.local_address == ("127.0.0.1", 20000)
    assert stream.local_rtcp_address == ("127.0.0.1", 20001)
    peer = peer_session(0.0)
    rtp_port.protocol.datagramReceived(peer.send_frame(bytes(320), 0.0), PEER)
    run(reactor, 3.0)
    assert rtcp_port.written and {a for _, a in rtcp_port.written} == {PEER_RTCP}
    assert all(not is_rtcp(d) for d, _ in rtp_port.written)
    peer.close(3.0)
    (bye,) = peer.pop_transmits()
    rtcp_port.protocol.datagramReceived(bye, PEER_RTCP)
    assert any(isinstance(e, ByeReceived) for e in events)


def test_udp_remote_must_be_an_ip_address() -> None:
    """A host name as remote is the caller's fault (resolve first)."""
    reactor = FakeUdpReactor()
    session = RtpSession(G711Codec("PCMU", 0), random.Random(1), 0.0, SETTINGS)
    stream = UdpMediaStream(session, PacingClock(reactor), reactor=reactor)
    with pytest.raises(ValueError, match="IP address"):
        stream.set_remote(("example.com", 5004))
    run(reactor, 0.1)
    assert stream.state is StreamState.WAITING and reactor.ports[0].written == []


def test_udp_stream_ignores_rtp_before_it_has_a_remote() -> None:
    """Without a remote address nothing is sent and arriving datagrams are only counted."""
    reactor = FakeUdpReactor()
    session = RtpSession(G711Codec("PCMU", 0), random.Random(1), 0.0, SETTINGS)
    stream = UdpMediaStream(session, PacingClock(reactor), reactor=reactor)
    stream.start()
    reactor.ports[0].protocol.datagramReceived(encode_rtp(0, 1, 1, 7, bytes(160), False), PEER)
    assert stream.stats().packets_without_path == 1


# --- audio devices (pyaudio) ------------------------------------------------------------------


def test_audio_unavailable_without_pyaudio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pyaudio, opening the microphone or the speaker says what to install."""
    from media import audio

    monkeypatch.setitem(sys.modules, "pyaudio", None)  # import pyaudio -> ImportError
    with pytest.raises(audio.AudioUnavailable, match=r"pip install 'sipua\[audio\]'"):
        audio.Microphone()
    with pytest.raises(audio.AudioUnavailable, match="libportaudio2"):
        audio.Speaker()


class _FakeStream:
    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.stopped = False

    def stop_stream(self) -> None:
        self.stopped = True

    def close(self) -> None:
        pass


class _FakePyAudio:
    """The parts of pyaudio.PyAudio used; ``fail`` makes open() raise like a missing device."""

    fail: Exception | None = None
    streams: list[_FakeStream] = []

    def get_default_input_device_info(self) -> dict[str, Any]:
        return {"name": "fake in", "defaultSampleRate": 8000.0}

    def get_default_output_device_info(self) -> dict[str, Any]:
        return {"name": "fake out", "defaultSampleRate": 8000.0}

    def open(self, **kw: Any) -> _FakeStream:
        if self.fail is not None:
            raise self.fail
        s = _FakeStream(kw["stream_callback"])
        _FakePyAudio.streams.append(s)
        return s

    def terminate(self) -> None:
        pass


def _fake_pyaudio(fail: Exception | None = None) -> types.ModuleType:
    mod = types.ModuleType("pyaudio")
    _FakePyAudio.fail = fail
    _FakePyAudio.streams = []
    mod.PyAudio = _FakePyAudio  # type: ignore[attr-defined]
    mod.paInt16 = 8  # type: ignore[attr-defined]
    mod.paContinue = 0  # type: ignore[attr-defined]
    return mod


def test_audio_unavailable_without_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PortAudio failure to open a device becomes AudioUnavailable naming the problem."""
    from media import audio

    monkeypatch.setitem(sys.modules, "pyaudio", _fake_pyaudio(OSError(-9996, "Invalid device")))
    with pytest.raises(audio.AudioUnavailable, match="no usable audio input device"):
        audio.Microphone()


def test_microphone_and_speaker_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Captured audio comes out of read() in order (silence when short); written audio goes
    out through the device callback (silence on underrun)."""
    from media import audio

    monkeypatch.setitem(sys.modules, "pyaudio", _fake_pyaudio())
    mic = audio.Microphone()
    capture = _FakePyAudio.streams[0]
    capture.callback(b"\x01\x00" * 100, 100, {}, 0)
    assert mic.read(60) == b"\x01\x00" * 60
    assert mic.read(60) == b"\x01\x00" * 40 + bytes(40)
    mic.close()
    assert capture.stopped
    speaker = audio.Speaker()
    playback = _FakePyAudio.streams[1]
    speaker.write(b"\x02\x00" * 50)
    out, flag = playback.callback(None, 80, {}, 0)
    assert out == b"\x02\x00" * 50 + bytes(60) and flag == 0
    speaker.close()
