"""Server-reflexive gathering on a lossy path: the Binding requests to the STUN server are
retransmitted at a capped interval so that they fill the gathering window (ice.agent
``gather_max_rto``), on literal times."""

from __future__ import annotations

import random

import pytest

from ice.agent import Agent, IceSettings
from ice.candidate import CandidateType, LocalBase
from ice.events import GatheringCompleted, GatheringStepFailed
from ice.stun import Attr, MessageClass, decode, make_response

SERVER = ("192.0.2.200", 3478)
BASE = LocalBase(1, ("10.0.0.5", 5000))
MAPPED = ("198.51.100.9", 40000)


def gather(settings: IceSettings, *, answer_send: int | None = None,
           ) -> tuple[Agent, list[float], list[object]]:
    """Gather from one base against a server that loses every request but the
    ``answer_send``-th (1-based; None: all lost). Returns the agent, the send times of the
    requests and the events."""
    agent = Agent(settings, controlling=True, rng=random.Random(3))
    agent.add_base(BASE, 0.0)
    agent.start_gathering(0.0)
    sends: list[float] = []
    events: list[object] = []
    now = 0.0
    while not agent.gathering_complete:
        for transmit in agent.pop_transmits():
            assert transmit.dest == SERVER
            sends.append(now)
            if len(sends) == answer_send:
                request = decode(transmit.data)
                response = make_response(request, MessageClass.SUCCESS,
                                         {Attr.XOR_MAPPED_ADDRESS: MAPPED})
                agent.receive(response.encode(fingerprint=True), SERVER, BASE, now + 0.01)
        while (event := agent.next_event()) is not None:
            events.append(event)
        if agent.gathering_complete:
            break
        timer = agent.next_timer()
        assert timer is not None and timer < 60.0
        now = timer
        agent.handle_timer(now)
    while (event := agent.next_event()) is not None:
        events.append(event)
    return agent, sends, events


def test_requests_fill_the_gathering_window() -> None:
    """Unanswered: a request every 0.5 s from 0 to 4.5 s (10 sends), then the 5 s gathering
    deadline gives up with host candidates only. RFC 8489's plain doubling (gather_max_rto
    None) sends only 4 in the same window."""
    agent, sends, events = gather(IceSettings(stun_servers=(SERVER,)))
    assert sends == pytest.approx([0.5 * i for i in range(10)])
    assert [type(e) for e in events if isinstance(e, GatheringStepFailed | GatheringCompleted)] \
        == [GatheringStepFailed, GatheringCompleted]
    assert [c.type for c in agent.local_candidates] == [CandidateType.HOST]
    _, plain, _ = gather(IceSettings(stun_servers=(SERVER,), gather_max_rto=None))
    assert plain == pytest.approx([0.0, 0.5, 1.5, 3.5])


def test_a_late_answer_still_gives_the_srflx_candidate() -> None:
    """Seven requests lost, the eighth (at 3.5 s) answered: the srflx candidate is gathered
    and gathering completes at once, well before the deadline."""
    agent, sends, events = gather(IceSettings(stun_servers=(SERVER,)), answer_send=8)
    assert len(sends) == 8 and sends[-1] == pytest.approx(3.5)
    assert sorted(c.type.value for c in agent.local_candidates) == ["host", "srflx"]
    srflx = next(c for c in agent.local_candidates if c.type is CandidateType.SRFLX)
    assert srflx.address == MAPPED
    completed = [e for e in events if isinstance(e, GatheringCompleted)]
    assert len(completed) == 1 and completed[0].at < 4.0
    assert not [e for e in events if isinstance(e, GatheringStepFailed)]


def test_the_cap_scales_the_number_of_sends() -> None:
    """A 1 s cap and a 5 s window: 0, 0.5, 1.5, 2.5, 3.5, 4.5 (the schedule of 7 sends, cut
    at the deadline); a cap must be positive."""
    _, sends, _ = gather(IceSettings(stun_servers=(SERVER,), gather_max_rto=1.0))
    assert sends == pytest.approx([0.0, 0.5, 1.5, 2.5, 3.5, 4.5])
    with pytest.raises(ValueError):
        IceSettings(gather_max_rto=0.0)
