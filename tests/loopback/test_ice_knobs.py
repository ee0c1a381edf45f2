"""The ICE test knobs in real calls on 127.0.0.1: a forced role with fixed tie-breakers (the
conflict is repaired and the reports show who changed), fault counters in the report, the
RFC 8445 / RFC 5245 switch as seen in the SDP, and a relay-only call whose TURN server refuses.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task
from twisted.internet.protocol import DatagramProtocol

from ice.stun import MessageClass, StunError, decode, make_error
from media.sinks import MemorySink
from media.sources import Tone
from sipua import call as call_module
from sipua.call import Call, CallError
from sipua.exitcodes import ExitCode
from sipua.session import OfferReceived
from sipua.settings import IceConfig, IceFaults, SettingError, Settings, TurnServer, UaSettings
from sipua.useragent import UserAgent

REACTOR: Any = global_reactor
CALLER_TIE, CALLEE_TIE = 5, 2**63 + 1


def settings(**ice: Any) -> Settings:
    """Loopback only, UDP."""
    return Settings(ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
                    ice=IceConfig(**ice))


async def started(a: Settings, b: Settings) -> tuple[UserAgent, UserAgent]:
    alice = UserAgent(a, REACTOR, rng=random.Random(11))
    bob = UserAgent(b, REACTOR, rng=random.Random(111))
    await alice.start()
    await bob.start()
    return alice, bob


def uri_of(ua: UserAgent) -> str:
    host, port = ua.local_address
    return f"sip:bob@{host}:{port}"


async def connected(caller: UserAgent, callee: UserAgent) -> tuple[Call, Call]:
    """caller calls callee (auto-answer) and both see media."""
    callee.auto_answer(source=Tone(660.0), sink=MemorySink())
    call = await caller.call(uri_of(callee), source=Tone(440.0), sink=MemorySink())
    await call.media_flowing(timeout=5.0)
    other = next(c for c in callee.calls.values() if c.direction == "incoming")
    await other.media_flowing(timeout=5.0)
    return call, other


async def finish(call: Call, *uas: UserAgent) -> None:
    if call.active:
        await call.hangup()
    for ua in uas:
        await ua.stop()


@pytest_twisted.ensureDeferred
async def test_callee_forced_controlling_wins_the_conflict() -> None:
    """The callee is forced controlling with a larger tie-breaker than the caller (controlling
    as the offerer): both start controlling, the caller gives way (RFC 8445 §7.3.1.1), the call
    connects, and the reports show the start roles, tie-breakers and the one role change."""
    alice, bob = await started(settings(tie_breaker=CALLER_TIE),
                               settings(role="controlling", tie_breaker=CALLEE_TIE))
    call, other = await connected(alice, bob)
    try:
        mine, theirs = call.stats()["ice"], other.stats()["ice"]
        assert (mine["initial_role"], mine["role"]) == ("controlling", "controlled")
        assert (theirs["initial_role"], theirs["role"]) == ("controlling", "controlling")
        assert mine["tie_breaker"] == CALLER_TIE and theirs["tie_breaker"] == CALLEE_TIE
        assert [c["role"] for c in mine["role_changes"]] == ["controlled"]
        assert theirs["role_changes"] == []
        assert "faults" not in mine and mine["compat"] == "rfc8445"
        assert all(p is not None and p["nominated"] for p in mine["selected"].values())
    finally:
        await finish(call, alice, bob)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("compat", ["rfc8445", "rfc5245"])
async def test_compat_switch_in_sdp_and_fault_counters(compat: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """rfc8445 offers a=ice-options:ice2 (RFC 8445 §10), rfc5245 does not, in offer and answer
    alike, and rfc5245 paces its checks at no less than RFC 5245's 20 ms; with
    send_updated_offer off, only rfc5245 still sends the updated offer of RFC 5245 §9.1.3 when
    the selected pair is not the default; a delay fault on the callee slows nothing fatally and
    its counters reach the report."""
    faults = IceFaults(delay=0.02)
    alice, bob = await started(settings(compat=compat, send_updated_offer=False),
                               settings(compat=compat, faults=faults))
    call, other = await connected(alice, bob)
    try:
        expected = ("ice2",) if compat == "rfc8445" else ()
        assert other.negotiated is not None and call.negotiated is not None
        offer_ice, answer_ice = other.negotiated.remote.ice, call.negotiated.remote.ice
        assert offer_ice is not None and answer_ice is not None
        assert offer_ice.options == expected and answer_ice.options == expected
        # RFC 5245 §16.1: at least 20 ms for RTP; RFC 8445 mode proposes the 15 ms default.
        pacing = 20 if compat == "rfc5245" else 15
        assert offer_ice.pacing == pacing and answer_ice.pacing == pacing
        report = other.stats()["ice"]
        assert report["compat"] == compat
        assert report["faults"]["settings"] == dataclasses.asdict(faults)
        assert report["faults"]["delayed"] > 0 and report["faults"]["dropped_out"] == 0
        assert "faults" not in call.stats()["ice"]
        # on loopback the selected pair is the default one; pretend it is not
        monkeypatch.setattr(call_module, "default_candidate", lambda *args: None)
        reinvites = len(other.events)
        call._maybe_updated_offer()
        await task.deferLater(REACTOR, 0.3, lambda: None)
        assert call._updated_offer_sent is (compat == "rfc5245")
        offers = [e for e in other.events[reinvites:] if isinstance(e, OfferReceived)]
        assert len(offers) == (1 if compat == "rfc5245" else 0)
    finally:
        await finish(call, alice, bob)


@pytest_twisted.ensureDeferred
async def test_each_side_proposes_its_pacing_and_both_use_the_higher() -> None:
    """RFC 8445 §14.2 / RFC 8839 §5.5: the offer carries the caller's a=ice-pacing (30 ms),
    the answer the callee's (15 ms, the default); both agents pace their checks at 30 ms."""
    alice, bob = await started(settings(ta=0.03), settings())
    call, other = await connected(alice, bob)
    try:
        assert other.negotiated is not None and call.negotiated is not None
        offer_ice, answer_ice = other.negotiated.remote.ice, call.negotiated.remote.ice
        assert offer_ice is not None and answer_ice is not None
        assert (offer_ice.pacing, answer_ice.pacing) == (30, 15)
        assert call.agent is not None and other.agent is not None
        assert call.agent.ta == pytest.approx(0.03) and other.agent.ta == pytest.approx(0.03)
    finally:
        await finish(call, alice, bob)


class _RefusingTurn(DatagramProtocol):
    """A TURN server that answers every request 403 Forbidden (RFC 8656 §7.2)."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            request = decode(datagram)
        except StunError:
            return
        if request.cls is MessageClass.REQUEST:
            answer = make_error(request, 403, "Forbidden").encode(fingerprint=True)
            transport: Any = self.transport
            transport.write(answer, addr)


def test_relay_only_without_a_turn_server_is_a_setting_error() -> None:
    """Relay only with no TURN server cannot gather anything: refused when the settings are
    built, naming the key."""
    with pytest.raises(SettingError, match=r"candidate_types.*turn_servers"):
        IceConfig(candidate_types=("relay",))
    assert IceConfig(candidate_types=("host",)).candidate_types == ("host",)


@pytest_twisted.ensureDeferred
async def test_relay_only_with_refusing_turn_fails_before_the_invite() -> None:
    """Relay only, and the TURN server refuses the allocation: no candidate is left to offer,
    so the call fails at once with the ICE exit code and no INVITE leaves."""
    port: Any = REACTOR.listenUDP(0, _RefusingTurn(), interface="127.0.0.1")
    turn = TurnServer(f"turn:127.0.0.1:{port.getHost().port}", "u", "p")
    alice, bob = await started(settings(candidate_types=("relay",), turn_servers=(turn,)),
                               settings())
    try:
        with pytest.raises(CallError) as caught:
            await alice.call(uri_of(bob), source=Tone(440.0))
        assert caught.value.code is ExitCode.ICE_FAILED
        assert "no ICE candidates" in str(caught.value)
        await task.deferLater(REACTOR, 0.05, lambda: None)
        assert not bob.calls and not alice.calls
    finally:
        await alice.stop()
        await bob.stop()
        await port.stopListening()
