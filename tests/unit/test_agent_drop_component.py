"""Agent.drop_component: the RTCP component offered next to rtcp-mux (RFC 5761 §5.1.3) goes
away when the answer accepts multiplexing, before any check."""

from __future__ import annotations

import random

import pytest

from ice.agent import Agent, IceError, IceSettings
from ice.candidate import LocalBase
from ice.stun import Attr, MessageClass, decode, make_response

SERVER = ("192.0.2.200", 3478)
RTP = LocalBase(1, ("10.0.0.5", 5000))
RTCP = LocalBase(2, ("10.0.0.5", 5001))


def two_components() -> Agent:
    agent = Agent(IceSettings(stun_servers=(SERVER,)), controlling=True, rng=random.Random(1),
                  components=2)
    agent.add_base(RTP, 0.0)
    agent.add_base(RTCP, 0.0)
    agent.start_gathering(0.0)
    return agent


def test_dropping_the_rtcp_component_withdraws_its_candidates_and_gathering() -> None:
    """Only component 1's requests are answered; dropping 2 completes gathering at once,
    leaves component 1's candidates alone, and no request for 2 is sent any more."""
    agent = two_components()
    sent = agent.pop_transmits()
    assert {t.via.component for t in sent} == {1, 2}
    rtp_request = next(t for t in sent if t.via.component == 1)
    response = make_response(decode(rtp_request.data), MessageClass.SUCCESS,
                             {Attr.XOR_MAPPED_ADDRESS: ("198.51.100.9", 40000)})
    agent.receive(response.encode(fingerprint=True), SERVER, RTP, 0.02)
    assert not agent.gathering_complete  # component 2 still waits for its answer
    agent.drop_component(2, 0.03)
    assert agent.components == 1
    assert agent.gathering_complete
    assert {c.component for c in agent.local_candidates} == {1}
    assert {c.type.value for c in agent.local_candidates} == {"host", "srflx"}
    now = 0.03
    for _ in range(10):  # no retransmission for the dropped component's request
        timer = agent.next_timer()
        if timer is None:
            break
        now = timer
        agent.handle_timer(now)
        assert all(t.via.component == 1 for t in agent.pop_transmits())


def test_only_the_highest_component_and_only_before_the_checks() -> None:
    """Component 1 cannot be dropped; nor anything once the checks have started."""
    agent = two_components()
    with pytest.raises(IceError):
        agent.drop_component(1, 0.0)
    agent.set_remote_credentials("ufrag", "passwordpasswordpassword")
    agent.end_of_remote_candidates(0.0)
    agent.start_checks(0.0)
    with pytest.raises(IceError):
        agent.drop_component(2, 0.0)
