"""An established call between two user agents on 127.0.0.1 while a flooder sends tens of
thousands of datagrams per second at the callee: junk and valid-looking SIP at its SIP port,
unauthenticated STUN Binding requests and RTP with random SSRCs at its media port.

The flooder is bench/load.py's, in a child process (its own core; loopback only). Its rate is
``SIPUA_FLOOD_PPS`` (default 20,000 datagrams per second, all kinds together) for
``SIPUA_FLOOD_SECONDS`` (default 3). After the flood the call must still carry each side's tone
to the other, memory must stay bounded, the live state must stay within the limits and the
counters must show the flood.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task

from ice.agent import MAX_REMOTE_CANDIDATES
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from sipua.call import Call
from sipua.settings import Settings, UaSettings
from sipua.useragent import UserAgent

REACTOR: Any = global_reactor
A_TONE, B_TONE = 440.0, 660.0
FLOOD_PPS = float(os.environ.get("SIPUA_FLOOD_PPS", "20000"))
FLOOD_SECONDS = float(os.environ.get("SIPUA_FLOOD_SECONDS", "3"))
MAX_CALLS = 3
#: Memory the callee may gain over the flood (the limits hold state; this is the slack for
#: allocator pools, the few calls let in and the counters' logs).
RSS_SLACK_KIB = 60_000


def _bench() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "load.py"
    spec = importlib.util.spec_from_file_location("sipua_bench_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def sleep(seconds: float) -> None:
    await task.deferLater(REACTOR, seconds, lambda: None)


def tone_of(sink: MemorySink, seconds: float = 0.5) -> float:
    """The dominant frequency of the last ``seconds`` recorded."""
    return dominant_frequency(sink.pcm[-int(16000 * seconds):], max_seconds=seconds)


def settings(**ua: Any) -> Settings:
    return Settings(ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",), **ua))


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_established_call_survives_a_flood() -> None:
    """During a flood of junk, OPTIONS and INVITEs (random Call-IDs) at the SIP port and of
    bad STUN and foreign RTP at the media port, the call goes on: each side hears the other's
    tone after it; RSS grows by less than RSS_SLACK_KIB; transactions, calls and remote
    candidates stay within their limits; the counters show what was rejected and dropped."""
    load = _bench()
    alice = UserAgent(settings(), REACTOR, rng=random.Random(1))
    bob = UserAgent(settings(max_calls=MAX_CALLS), REACTOR, rng=random.Random(2))
    await alice.start()
    await bob.start()
    try:
        heard_by_bob, heard_by_alice = MemorySink(), MemorySink()
        bob.auto_answer(source=Tone(B_TONE), sink=heard_by_bob)
        host, port = bob.local_address
        call = await alice.call(f"sip:bob@{host}:{port}", source=Tone(A_TONE),
                                sink=heard_by_alice)
        await call.media_flowing(timeout=5.0)
        other: Call = next(iter(bob.calls.values()))
        await other.media_flowing(timeout=5.0)
        assert other.agent is not None and other.stream is not None
        pair = other.agent.selected_pair(1)
        assert pair is not None
        media_port = pair.local.address[1]
        await sleep(0.5)
        rss_before = load.rss_kib()
        assert bob.transport is not None
        flooder = load.Flooder([
            load.FloodTarget("127.0.0.1", port, ("junk", "options", "invite")),
            load.FloodTarget("127.0.0.1", media_port, ("stun", "rtp")),
        ], FLOOD_PPS, FLOOD_SECONDS, seed=7)
        await sleep(FLOOD_SECONDS + 0.3)
        sent = flooder.result()
        print(f"\nflood: {sent['sent']} datagrams in {sent['seconds']:.2f} s = "
              f"{sent['pps']:.0f}/s (asked {FLOOD_PPS:.0f}/s)")
        await sleep(1.5)

        # The call carries both tones after the flood.
        assert call.active and other.active
        assert abs(tone_of(heard_by_alice) - B_TONE) < 5
        assert abs(tone_of(heard_by_bob) - A_TONE) < 5

        # Memory and live state are bounded by the limits.
        rss_after = load.rss_kib()
        print(f"callee RSS {rss_before} -> {rss_after} KiB")
        assert rss_after - rss_before < RSS_SLACK_KIB
        layer = bob.transport.layer
        tx_settings = layer.settings
        assert len(layer.transactions()) <= tx_settings.max_server_transactions_per_source + 50
        assert len(bob.calls) <= MAX_CALLS and len(bob.sessions.sessions) <= MAX_CALLS
        assert len(other.agent.remote_candidates) <= MAX_REMOTE_CANDIDATES
        assert len(other.ice_events) < 500 and len(call.events) < 500

        # The counters show the flood.
        t_stats, l_stats = bob.transport.stats, layer.stats
        session_stats = other.stream.session.stats()
        print(f"callee: {t_stats.parse_errors} SIP parse errors ({t_stats.error_responses} "
              f"answered 400, {t_stats.dropped} dropped), {l_stats.overload_rejected} "
              f"answered 503, {bob.sessions.refused_busy} INVITEs answered 486, "
              f"{len(layer.transactions())} transactions live; "
              f"{other.agent.requests_rejected} STUN requests rejected; "
              f"{session_stats.packets_from_unexpected_source} RTP from unexpected sources")
        assert t_stats.parse_errors > 0
        assert l_stats.overload_rejected > 0 or len(layer.transactions()) > 100
        assert bob.sessions.refused_busy > 0
        assert other.agent.requests_rejected > 100
        assert session_stats.packets_from_unexpected_source > 100
    finally:
        bob.auto_answer(code=486)
        await alice.stop()
        await bob.stop()
