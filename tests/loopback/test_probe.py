"""`sipua probe` through its API (sipua.probe.probe, what the command runs) against a sipua
user agent auto-answering on 127.0.0.1, with the real reactor: a full agent with consent checks
every second, a lite agent, and an agent without ICE."""

from __future__ import annotations

import random
from typing import Any

import pytest_twisted
from twisted.internet import reactor as global_reactor

from media.sources import Tone
from sipua.probe import ProbeOptions, probe
from sipua.probe_analysis import ProbeReport
from sipua.settings import IceConfig, Settings, UaSettings
from sipua.useragent import UserAgent

REACTOR: Any = global_reactor


def settings(**ice: Any) -> Settings:
    """Loopback only, UDP."""
    return Settings(ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",),
                                  user_agent="probed-sipua"),
                    ice=IceConfig(**ice))


async def run_probe(callee_ice: dict[str, Any], options: ProbeOptions) -> ProbeReport:
    """Start a prober and an auto-answering callee, probe the callee, stop both."""
    prober = UserAgent(settings(), REACTOR, rng=random.Random(7))
    callee = UserAgent(settings(**callee_ice), REACTOR, rng=random.Random(8))
    await prober.start()
    await callee.start()
    try:
        callee.auto_answer(source=Tone(660.0))
        host, port = callee.local_address
        return await probe(prober, f"sip:bob@{host}:{port}", options)
    finally:
        await prober.stop()
        await callee.stop()


def status(report: ProbeReport, step: str, key: str) -> str:
    finding = report.finding(step, key)
    assert finding is not None, (step, key, [f.to_dict() for f in report.findings])
    return finding.status


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_probe_of_a_full_sipua_agent() -> None:
    """Default callee with 1 s consent checks: full ICE, host candidates, rtcp-mux, checks
    without USE-CANDIDATE, no updated offer (it is the callee), consent about every second,
    restart answered with new credentials and new checks, role conflicts resolved as RFC 8445
    says, mismatch answered a=ice-mismatch."""
    report = await run_probe({"consent_interval": 1.0}, ProbeOptions(listen_for=4.0))
    assert report.exit_code == 0, report.message
    assert report.peer == "probed-sipua"
    ice = report.finding("call", "ice")
    assert ice is not None and ice.status == "yes" and ice.value == "full"
    candidates = report.finding("call", "candidates")
    assert candidates is not None and set(candidates.value) == {"1"}
    assert set(candidates.value["1"]) == {"host"}
    assert status(report, "call", "rtcp_mux") == "yes"
    assert status(report, "call", "checks.sent") == "yes"
    assert status(report, "call", "checks.use_candidate_when_controlled") == "no"
    assert status(report, "call", "updated_offer") == "no"
    consent = report.finding("call", "consent")
    assert consent is not None and consent.status == "yes", consent
    assert 600 <= consent.value["median_interval_ms"] <= 1500, consent.value
    assert consent.value["count"] >= 2
    assert status(report, "restart", "restart.answered") == "yes"
    assert status(report, "restart", "restart.new_credentials") == "yes"
    assert status(report, "restart", "restart.checks") == "yes"
    assert status(report, "mismatch", "ice_mismatch") == "yes"
    # RFC 8445 §7.3.1.1: with our tie-breaker the largest it answers 487; with 0 it takes
    # the controlling role; both calls connect.
    assert status(report, "role-conflict-win", "487") == "yes"
    assert status(report, "role-conflict-lose", "switched") == "yes"
    for step in ("role-conflict-win", "role-conflict-lose"):
        assert status(report, step, "as_rfc") == "yes"
        assert status(report, step, "connected") == "yes"
    data = report.to_dict()
    assert data["timings"]["call"]["first_rtp_ms"] is not None
    assert all(f["evidence"] is not None for f in data["findings"])


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_probe_of_a_lite_sipua_agent() -> None:
    """A lite callee: "lite", no checks from it; the role conflict is not asked of it."""
    report = await run_probe({"lite": True},
                             ProbeOptions(listen_for=0.5, skip=frozenset({"mismatch",
                                                                          "restart"})))
    assert report.exit_code == 0, report.message
    ice = report.finding("call", "ice")
    assert ice is not None and ice.value == "lite"
    assert status(report, "call", "ice.lite") == "yes"
    assert status(report, "call", "checks.sent") == "no"
    assert status(report, "role-conflict-win", "asked") == "n/a"
    assert status(report, "role-conflict-lose", "asked") == "n/a"


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_probe_of_an_agent_without_ice() -> None:
    """A callee with ICE off: the answer has no ICE ("no"), no checks, the ICE steps are n/a,
    and the probe still exits 0."""
    report = await run_probe({"enabled": False},
                             ProbeOptions(listen_for=0.5, skip=frozenset({"mismatch"})))
    assert report.exit_code == 0, report.message
    ice = report.finding("call", "ice")
    assert ice is not None and ice.status == "no" and ice.value == "none"
    assert status(report, "call", "checks.sent") == "no"
    assert status(report, "restart", "asked") == "n/a"
    assert status(report, "role-conflict-win", "asked") == "n/a"
