"""The ICE test knobs: the fault filter on its own (seeded rng, literal times) and inside two
agents on the in-memory network (forced roles and tie-breakers, withheld nomination, dropped
responses, a path cut that loses consent, delayed checks, candidate-type filtering)."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ice.agent import AgentState, IceSettings
from ice.candidate import CandidateType
from ice.events import (
    CheckFailed,
    CheckSent,
    CheckSucceeded,
    ConsentLost,
    IceFailed,
    PairSelected,
    RoleChanged,
)
from ice.faults import Direction, FaultFilter, FaultSettings, stun_class
from ice.stun import Message, MessageClass, Method, new_transaction_id
from ice.turn import TurnSettings
from sipua.config import load_settings, render_toml, settings_from_dict
from sipua.errors import ConfigError
from sipua.settings import IceFaults
from tests.support.ice_harness import both_selected, connect, of_type, two_agents

REQ, IND, OK, ERR = (MessageClass.REQUEST, MessageClass.INDICATION, MessageClass.SUCCESS,
                     MessageClass.ERROR)


def _encoded(cls: MessageClass, seed: int = 1) -> bytes:
    return Message(Method.BINDING, cls, new_transaction_id(random.Random(seed)), {}).encode()


# --- the filter alone -----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", list(MessageClass))
def test_stun_class_reads_the_class_bits(cls: MessageClass) -> None:
    """The class comes from the C1/C0 bits of the message type (RFC 8489 §5)."""
    assert stun_class(_encoded(cls)) is cls


@given(st.binary(max_size=64))
def test_stun_class_never_raises(data: bytes) -> None:
    """Any bytes give a class or None (first byte above 3 is not STUN, RFC 7983)."""
    result = stun_class(data)
    assert result is None or isinstance(result, MessageClass)
    if data and data[0] > 3:
        assert result is None


@given(st.sampled_from(list(MessageClass)), st.integers(0, 2**32))
def test_stun_class_round_trip(cls: MessageClass, seed: int) -> None:
    """Whatever the transaction id, an encoded Binding message classifies as its class."""
    assert stun_class(_encoded(cls, seed)) is cls


def test_zero_and_one_never_draw_from_the_rng() -> None:
    """Probabilities 0 and 1 decide without a random draw, so the seeded sequence of the call
    (credentials, transaction ids) stays the same."""
    rng = random.Random(5)
    expected = random.Random(5).random()
    fault = FaultFilter(FaultSettings(drop_requests_in=1.0, drop_responses_out=0.0), rng, 0.0)
    assert fault.drop_incoming(REQ, 1.0)
    assert fault.outgoing(OK, 1.0) == 0.0
    assert not fault.drop_incoming(OK, 1.0)
    assert rng.random() == expected
    assert fault.counters() == {"dropped_in": 1, "dropped_out": 0, "delayed": 0}


def test_probability_is_seeded_and_per_kind() -> None:
    """A probability between 0 and 1 drops about that share, the same ones for the same seed;
    the other kind and direction are untouched."""
    settings = FaultSettings(drop_requests_out=0.3)
    runs = []
    for _ in range(2):
        fault = FaultFilter(settings, random.Random(42), 0.0)
        runs.append([fault.outgoing(REQ, 0.0) is None for _ in range(1000)])
        assert all(fault.outgoing(OK, 0.0) == 0.0 for _ in range(50))
        assert not any(fault.drop_incoming(REQ, 0.0) for _ in range(50))
        assert fault.dropped_out == sum(runs[-1]) and fault.dropped_in == 0
    assert runs[0] == runs[1]
    assert 240 <= sum(runs[0]) <= 360


def test_indications_only_go_with_drop_after() -> None:
    """Keepalives (Binding indications) are not requests or responses: only the cut drops them."""
    fault = FaultFilter(FaultSettings(drop_requests_in=1.0, drop_requests_out=1.0,
                                      drop_responses_in=1.0, drop_responses_out=1.0),
                        random.Random(1), 0.0)
    assert not fault.drop_incoming(IND, 0.0)
    assert fault.outgoing(IND, 0.0) == 0.0
    assert fault._probability(ERR, Direction.IN) == 1.0


def test_drop_after_counts_from_start() -> None:
    """drop_after cuts everything from started + drop_after; before start() it does not apply,
    and a second start() (an ICE restart) does not move the cut."""
    fault = FaultFilter(FaultSettings(drop_after=2.0), random.Random(1))
    assert not fault.cut(100.0)
    fault.start(10.0)
    fault.start(11.0)
    assert fault.started == 10.0
    assert fault.outgoing(REQ, 11.99) == 0.0
    assert not fault.drop_incoming(OK, 11.99)
    for cls in MessageClass:
        assert fault.outgoing(cls, 12.0) is None
        assert fault.drop_incoming(cls, 12.0)
    assert fault.counters() == {"dropped_in": 4, "dropped_out": 4, "delayed": 0}


def test_delay_is_returned_and_counted() -> None:
    """delay holds every outgoing kind back by the same time; dropped ones are not delayed."""
    fault = FaultFilter(FaultSettings(delay=0.25, drop_responses_out=1.0), random.Random(1), 0.0)
    assert fault.outgoing(REQ, 0.0) == 0.25
    assert fault.outgoing(IND, 0.0) == 0.25
    assert fault.outgoing(OK, 0.0) is None
    assert (fault.delayed, fault.dropped_out) == (2, 1)


@pytest.mark.parametrize("kwargs", [{"drop_requests_in": 1.5}, {"drop_responses_out": -0.1},
                                    {"drop_after": -1.0}, {"delay": -0.5}])
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    """Probabilities outside 0..1 and negative times are the caller's error."""
    with pytest.raises(ValueError):
        FaultSettings(**kwargs)
    assert not FaultSettings().active and FaultSettings(delay=0.1).active


# --- inside two agents ----------------------------------------------------------------------------

@pytest.mark.parametrize("a_tie,b_tie,winner", [(10, 5, "a"), (5, 10, "b")])
def test_forced_controlled_both_sides_conflict_repaired(a_tie: int, b_tie: int,
                                                        winner: str) -> None:
    """Both agents start controlled with fixed tie-breakers: the one with the larger
    tie-breaker switches to controlling (RFC 8445 §7.3.1.1), the other keeps its role, and the
    call completes."""
    net = two_agents(a_controlling=False, b_controlling=False, a_tie=a_tie, b_tie=b_tie)
    connect(net, "a", "b")
    assert net.run(3.0, stop=both_selected(net))
    loser = "b" if winner == "a" else "a"
    assert net.agent(winner).controlling and not net.agent(loser).controlling
    changes = of_type(net.events(winner), RoleChanged)
    assert [c.controlling for c in changes] == [True]
    assert not of_type(net.events(loser), RoleChanged)


def test_forced_controlling_both_sides_smaller_yields() -> None:
    """Both controlling: the smaller tie-breaker gives way and becomes controlled."""
    net = two_agents(a_controlling=True, b_controlling=True, a_tie=2**64 - 1, b_tie=7)
    connect(net, "a", "b")
    assert net.run(3.0, stop=both_selected(net))
    assert net.agent("a").controlling and not net.agent("b").controlling
    assert [c.controlling for c in of_type(net.events("b"), RoleChanged)] == [False]


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_withhold_nomination_peer_never_completes(nomination: str) -> None:
    """A controlling agent that withholds nomination: checks succeed both ways, no check carries
    USE-CANDIDATE, and neither side selects a pair or completes; nothing fails either."""
    net = two_agents(a=IceSettings(nomination=nomination, withhold_nomination=True))
    connect(net, "a", "b")
    net.run(10.0)
    for name in ("a", "b"):
        assert of_type(net.events(name), CheckSucceeded), name
        assert not of_type(net.events(name), PairSelected), name
        assert not of_type(net.events(name), IceFailed), name
        assert net.agent(name).state is AgentState.CHECKING, name
    assert not any(c.use_candidate for c in of_type(net.events("a"), CheckSent))


def test_drop_responses_in_makes_checks_fail() -> None:
    """Every response from the peer dropped: our checks time out and, as the controlling side
    without a valid pair, ICE fails; the peer's checks still succeed."""
    settings = IceSettings(faults=FaultSettings(drop_responses_in=1.0), rto=0.1,
                           check_transmissions=3)
    net = two_agents(a=settings)
    connect(net, "a", "b")
    net.run(20.0, stop=lambda: bool(of_type(net.events("a"), IceFailed)))
    a = net.agent("a")
    assert of_type(net.events("a"), IceFailed)
    assert not of_type(net.events("a"), CheckSucceeded)
    assert {f.reason for f in of_type(net.events("a"), CheckFailed)} == {"timeout"}
    assert of_type(net.events("b"), CheckSucceeded)
    assert a.faults is not None and a.faults.dropped_in > 0 and a.faults.dropped_out == 0


def test_drop_after_loses_consent() -> None:
    """The path is cut 2 s after the checks start: consent responses stop and consent is lost
    consent_timeout after the last one (RFC 7675 §5.1), on both sides."""
    faulty = IceSettings(consent_interval=1.0, consent_timeout=5.0,
                         faults=FaultSettings(drop_after=2.0))
    plain = IceSettings(consent_interval=1.0, consent_timeout=5.0)
    net = two_agents(a=faulty, b=plain)
    connect(net, "a", "b")
    assert net.run(1.0, stop=both_selected(net))
    net.run(12.0)
    for name in ("a", "b"):
        lost = of_type(net.events(name), ConsentLost)
        assert len(lost) == 1, name
        # the last refresh came before the cut at 2.0: lost between 2 + 5 - 1.2 and 2 + 5
        assert 2.0 + 5.0 - 1.2 - 0.05 <= lost[0].at <= 2.0 + 5.0 + 0.05, (name, lost[0].at)
        assert not net.agent(name).can_send(1)


def test_delay_shifts_the_checks_on_the_wire() -> None:
    """With delay the first check still counts as sent at start (CheckSent) but reaches the
    wire the delay later; its RTT includes the delay. Media is never delayed."""
    times = {}
    for delay in (0.0, 0.3):
        settings = IceSettings(faults=FaultSettings(delay=delay) if delay else None)
        net = two_agents(a=settings, delay=0.005)
        connect(net, "a", "b")
        first_sent = of_type(net.events("a"), CheckSent)[0].at
        assert net.run(3.0, stop=both_selected(net))
        wire = [p for p in net.sent if p.sender == "a"]
        times[delay] = wire[0].sent_at - first_sent
        rtts = [s.rtt for s in of_type(net.events("a"), CheckSucceeded)]
        assert min(rtts) >= delay
        if delay:
            a = net.agent("a")
            assert a.faults is not None and a.faults.delayed > 0
            a.pop_transmits()
            a.send(1, b"\x80media", net.now)
            assert [t.data for t in a.pop_transmits()] == [b"\x80media"]
    assert times[0.0] == pytest.approx(0.0)
    assert times[0.3] == pytest.approx(0.3)


def test_server_answers_are_not_faulted() -> None:
    """Dropping every incoming response leaves the STUN server's answers alone: the srflx
    candidate is still gathered."""
    stun = ("192.0.2.100", 3478)
    settings = IceSettings(stun_servers=(stun,), faults=FaultSettings(drop_responses_in=1.0))
    net = two_agents(a=settings)
    net.stun_servers.add(stun)
    net.nat(("10.0.0.1", 1000), ("198.51.100.1", 61000))
    a = net.agent("a")
    a.start_gathering(net.now)
    net.run(1.0, stop=lambda: a.gathering_complete)
    assert [c.type for c in a.local_candidates] == [CandidateType.HOST, CandidateType.SRFLX]
    assert a.faults is not None and a.faults.dropped_in == 0


def test_relay_only_offers_and_checks_from_the_relay() -> None:
    """candidate_types=("relay",): only the relayed candidate is offered and every check of
    ours leaves from it; the call still connects through TURN."""
    turn = ("192.0.2.50", 3478)
    settings = IceSettings(turn_servers=(TurnSettings(turn, "user", "pass"),),
                           candidate_types=("relay",))
    net = two_agents(a=settings)
    net.add_turn_server(turn, "192.0.2.51")
    a = net.agent("a")
    a.start_gathering(0.0)
    net.run(1.0, stop=lambda: a.gathering_complete)
    assert [c.type for c in a.local_candidates] == [CandidateType.RELAY]
    connect(net, "a", "b")
    assert net.run(net.now + 3.0, stop=both_selected(net))
    assert {s.pair.local_type for s in of_type(net.events("a"), CheckSent)} == {"relay"}
    pair = a.selected_pair(1)
    assert pair is not None and pair.local.type is CandidateType.RELAY


def test_relay_only_without_turn_has_nothing_to_offer() -> None:
    """Relay only and no TURN server: no candidate to offer, and a peer's check reaching the
    host socket gets an answer but no triggered check from it."""
    net = two_agents(a=IceSettings(candidate_types=("relay",)))
    a = net.agent("a")
    a.start_gathering(0.0)
    assert a.gathering_complete and a.local_candidates == []
    connect(net, "a", "b")
    net.run(2.0)
    assert not of_type(net.events("a"), CheckSent)
    assert not of_type(net.events("a"), PairSelected)
    # b knew no candidate of a, so it sent nothing either
    assert not [p for p in net.sent if p.sender == "b" and p.dest == ("10.0.0.1", 1000)]


def test_delayed_messages_die_with_close() -> None:
    """Messages still held back when the agent closes are not sent afterwards."""
    net = two_agents(a=IceSettings(faults=FaultSettings(delay=1.0)))
    connect(net, "a", "b")
    a = net.agent("a")
    a.close(net.now)
    net.run(3.0)
    assert [p for p in net.sent if p.sender == "a"] == []
    assert a.next_timer() is None



# --- the settings -------------------------------------------------------------------------------

def test_knob_settings_load_from_toml_env_and_overrides(tmp_path: Path) -> None:
    """ice.role, ice.tie_breaker, ice.compat and the [ice.faults] table load from a file, the
    environment and --set style overrides, and render back to the same settings."""
    path = tmp_path / "knobs.toml"
    path.write_text('[ice]\nrole = "controlled"\ntie_breaker = 18446744073709551615\n'
                    'compat = "rfc5245"\n[ice.faults]\ndrop_responses_in = 0.5\n'
                    "withhold_nomination = true\n", encoding="utf-8")
    loaded = load_settings(path, env={"SIPUA_ICE__FAULTS__DELAY": "0.25"},
                           overrides={"ice.faults.drop_after": "3"})
    ice = loaded.ice
    assert (ice.role, ice.tie_breaker, ice.compat) == ("controlled", 2**64 - 1, "rfc5245")
    assert ice.faults == IceFaults(drop_responses_in=0.5, withhold_nomination=True, delay=0.25,
                                   drop_after=3.0)
    assert ice.faults.active and not IceFaults().active
    assert settings_from_dict(tomllib.loads(render_toml(loaded))) == loaded


@pytest.mark.parametrize("key,value,problem", [
    ("ice.role", "boss", "one of 'auto', 'controlling', 'controlled'"),
    ("ice.tie_breaker", str(2**64), "from 0 to 2^64-1"),
    ("ice.tie_breaker", "-1", "from 0 to 2^64-1"),
    ("ice.compat", "rfc3489", "one of 'rfc8445', 'rfc5245'"),
    ("ice.faults.drop_requests_out", "1.01", "a probability"),
    ("ice.faults.delay", "-1", "from 0 to 60 seconds"),
    ("ice.candidate_types", "relay", "needs a server in ice.turn_servers"),
    ("ice.candidate_types", "srflx,relay", "ice.stun_servers or turn_servers"),
])
def test_knob_settings_are_checked(key: str, value: str, problem: str) -> None:
    """A bad knob is a ConfigError naming the key and what was expected."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={}, overrides={key: value})
    assert f"'{key}'" in str(caught.value) and problem in str(caught.value)
