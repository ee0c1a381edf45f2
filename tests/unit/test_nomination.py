"""Regular nomination's choice (ice/nomination.py): when to stop waiting for a better pair."""

from __future__ import annotations

from ice.candidate import Candidate, CandidateType
from ice.checklist import CandidatePair, PairState
from ice.nomination import regular_choice

SETTLE = 0.05


def pair(kind: CandidateType, port: int, priority: int, state: PairState,
         *, rtt: float | None = None) -> CandidatePair:
    local = Candidate("1", 1, "udp", 1000, ("10.0.0.1", port), kind)
    remote = Candidate("2", 1, "udp", 1000, ("198.51.100.7", port), CandidateType.SRFLX)
    p = CandidatePair(local, remote, local, priority=priority, state=state)
    p.rtt = rtt
    return p


def test_the_relay_is_nominated_once_settle_has_passed_without_news() -> None:
    """A direct pair checked long ago and never answered is out of play: after settle the
    valid relay pair is nominated."""
    relay = pair(CandidateType.RELAY, 1, 100, PairState.SUCCEEDED, rtt=0.010)
    direct = pair(CandidateType.HOST, 2, 900, PairState.IN_PROGRESS)
    direct.first_check_at = 0.0
    assert regular_choice([relay], [relay, direct], 0.02, 0.08, SETTLE) == (relay, None)


def test_a_pair_the_peer_just_checked_stays_in_play_past_settle() -> None:
    """The peer's check arrived on the direct pair at 0.065 s (it started late): the path
    works from its side and our triggered check is out, so the choice waits 2 RTT + 5 ms from
    that arrival, but at least settle (a peer may answer on a coarse tick), past the settle
    deadline (0.07 s), and only then falls back to the relay."""
    relay = pair(CandidateType.RELAY, 1, 100, PairState.SUCCEEDED, rtt=0.010)
    direct = pair(CandidateType.HOST, 2, 900, PairState.IN_PROGRESS)
    direct.first_check_at = 0.0
    direct.peer_check_at = 0.065
    choice, wake = regular_choice([relay], [relay, direct], 0.02, 0.075, SETTLE)
    assert choice is None and wake is not None and abs(wake - 0.115) < 1e-9
    assert regular_choice([relay], [relay, direct], 0.02, 0.115, SETTLE) == (relay, None)
    slow = pair(CandidateType.RELAY, 1, 100, PairState.SUCCEEDED, rtt=0.040)
    choice, wake = regular_choice([slow], [slow, direct], 0.02, 0.075, SETTLE)
    assert choice is None and wake is not None and abs(wake - 0.15) < 1e-9  # 2 RTT + 5 ms


def test_the_wake_time_is_never_in_the_past() -> None:
    """With the settle deadline behind and a recent peer check, the next look is the end of
    that pair's patience, not the passed deadline (which would spin the timer)."""
    relay = pair(CandidateType.RELAY, 1, 100, PairState.SUCCEEDED, rtt=0.010)
    direct = pair(CandidateType.HOST, 2, 900, PairState.WAITING)
    direct.peer_check_at = 0.1
    choice, wake = regular_choice([relay], [relay, direct], 0.0, 0.11, SETTLE)
    assert choice is None and wake is not None and wake > 0.11
