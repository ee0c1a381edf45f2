"""Media streams over real UDP sockets on 127.0.0.1 with the real reactor: tones both ways."""

from __future__ import annotations

import random
from typing import Any

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task

from media.clock import PacingClock
from media.codecs import G711Codec
from media.session import RtpSession, RtpSessionSettings
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from media.stream import DestinationChanged, UdpMediaStream

SETTINGS = RtpSessionSettings(rtcp_min_interval=0.5)


@pytest_twisted.inlineCallbacks
def test_two_udp_streams_carry_tones_both_ways() -> Any:
    """Alice plays 440 Hz, Bob 660 Hz; Alice first sends to a dead port and latches onto
    Bob's source (symmetric RTP). Each recording holds the other's tone, and RTCP shows every
    packet arrived, small jitter and a small round-trip time."""
    reactor: Any = global_reactor
    clock = PacingClock(reactor)
    now = reactor.seconds()
    a_sink, b_sink = MemorySink(), MemorySink()
    a_events: list[Any] = []
    alice = UdpMediaStream(RtpSession(G711Codec("PCMU", 0), random.Random(1), now, SETTINGS),
                           clock, source=Tone(440), sink=a_sink, on_event=a_events.append)
    bob = UdpMediaStream(RtpSession(G711Codec("PCMU", 0), random.Random(2), now, SETTINGS),
                         clock, source=Tone(660), sink=b_sink, remote=alice.local_address)
    try:
        alice.set_remote(("127.0.0.1", 9))  # a wrong SDP address: latching repairs it
        alice.start()
        bob.start()
        yield alice.when_first_packet()
        yield task.deferLater(reactor, 3.0, lambda: None)
        alice.hold()
        bob.hold()
        yield task.deferLater(reactor, 0.2, lambda: None)  # let the last packets land
        assert alice.latched and alice.destination == bob.local_address
        assert any(isinstance(e, DestinationChanged) for e in a_events)
        # Skip the first half second (jitter buffer start), analyse two seconds.
        a_freq = dominant_frequency(a_sink.pcm[8000:], max_seconds=2.0)
        b_freq = dominant_frequency(b_sink.pcm[8000:], max_seconds=2.0)
        assert abs(a_freq - 660) < 3, a_freq
        assert abs(b_freq - 440) < 3, b_freq
        # Alice's packets before the latch went to the dead port.
        for me, peer, before_latch in ((alice, bob, 0), (bob, alice, 2)):
            stats = me.stats().session
            sent = peer.stats().session.outbound.packets_sent
            assert stats.inbound is not None and sent >= 140
            assert sent - before_latch <= stats.inbound.packets_received <= sent
            assert stats.inbound.packets_lost == 0
            assert 0 <= stats.inbound.jitter < 0.02
            assert stats.rtcp_packets_received >= 2
            assert stats.remote_inbound is not None
            assert stats.remote_inbound.packets_lost == 0
            rtt = stats.remote_inbound.round_trip_time
            assert rtt is not None and 0 <= rtt < 0.1
        pacing = clock.stats()
        assert pacing.timers == 1 and pacing.ticks > 200
    finally:
        yield alice.close("bye")
        yield bob.close("bye")
    assert clock.stats().streams == 0


@pytest_twisted.inlineCallbacks
def test_many_streams_are_read_on_the_clock_wake_ups() -> Any:
    """Twelve calls (24 streams, every 1 ms slot busy): the shared socket poller leaves the
    reactor and reads on the pacing clock's wake-ups; nothing is lost and the jitter stays
    small. When most calls end, the clock is no longer dense and the poller reads through
    the reactor again: the calls left keep receiving."""
    from media.stream import _POLLERS

    reactor: Any = global_reactor
    clock = PacingClock(reactor)
    now = reactor.seconds()
    rng = random.Random(7)
    pairs: list[tuple[UdpMediaStream, UdpMediaStream]] = []
    for _ in range(12):
        a = UdpMediaStream(RtpSession(G711Codec("PCMU", 0), rng, now, SETTINGS), clock,
                           source=Tone(440))
        b = UdpMediaStream(RtpSession(G711Codec("PCMU", 0), rng, now, SETTINGS), clock,
                           source=Tone(660), remote=a.local_address)
        a.set_remote(b.local_address)
        pairs.append((a, b))
    streams = [s for pair in pairs for s in pair]
    try:
        for s in streams:
            s.start()
        yield task.deferLater(reactor, 1.0, lambda: None)
        poller = _POLLERS[reactor]
        assert clock.dense and poller._parked and not poller._reading
        for s in streams:
            inbound = s.stats().session.inbound
            assert inbound is not None and inbound.packets_received >= 40
            assert inbound.packets_lost == 0 and inbound.jitter < 0.02
        for s in streams[4:]:
            yield s.close("bye")
        assert not clock.dense and not poller._parked and poller._reading
        before = [s.stats().session.inbound.packets_received
                  for s in streams[:4]]
        yield task.deferLater(reactor, 0.5, lambda: None)
        after = [s.stats().session.inbound.packets_received
                 for s in streams[:4]]
        assert all(y - x >= 15 for x, y in zip(before, after, strict=True)), (before, after)
    finally:
        for s in streams:
            yield s.close("bye")
    assert clock.stats().streams == 0
