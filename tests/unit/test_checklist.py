"""Check lists (RFC 8445 §6.1.2): pair priority, pruning, the pair limit, freezing."""

from __future__ import annotations

import pytest

from ice.candidate import Candidate, CandidateType, candidate_priority
from ice.checklist import CheckList, PairState, pair_priority
from ice.events import IceEvent, PairStateChanged


def cand(foundation: str, ip: str, port: int, ctype: CandidateType = CandidateType.HOST,
         component: int = 1, local_pref: int = 65535) -> Candidate:
    return Candidate(foundation, component, "udp",
                     candidate_priority(ctype.preference, local_pref, component),
                     (ip, port), ctype)


def test_pair_priority_formula() -> None:
    """RFC 8445 §6.1.2.3, with the tie bit set when the controlling side's priority is larger."""
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    assert pair_priority(g, g) == (g << 32) + 2 * g


def test_pairs_sorted_and_same_family_component_only() -> None:
    """Only same component and address family pair; the list is sorted by priority."""
    events: list[IceEvent] = []
    cl = CheckList(events)
    local = [cand("1", "10.0.0.1", 1), cand("2", "2001:db8::1", 1, local_pref=100)]
    remote = [cand("a", "10.0.0.2", 2), cand("b", "2001:db8::2", 2),
              cand("c", "10.0.0.3", 3, CandidateType.SRFLX), cand("d", "10.0.0.4", 4,
                                                                   component=2)]
    added = cl.add_pairs(local, remote, True, 0.0, started=False)
    assert len(added) == 3
    assert [p.priority for p in cl.pairs] == sorted((p.priority for p in cl.pairs), reverse=True)
    assert all(p.state is PairState.FROZEN for p in cl.pairs)
    assert not events


def test_srflx_local_candidates_are_pruned_to_their_base() -> None:
    """RFC 8445 §6.1.2.4: server-reflexive candidates are not paired (their base is)."""
    cl = CheckList([])
    with pytest.raises(ValueError):
        cl.add_pairs([cand("2", "203.0.113.1", 1, CandidateType.SRFLX)],
                     [cand("a", "10.0.0.2", 2)], True, 0.0, started=False)


def test_redundant_pairs_keep_the_higher_priority() -> None:
    """Two remote candidates with one address make one pair, with the better remote."""
    cl = CheckList([])
    base = cand("1", "10.0.0.1", 1)
    low = cand("x", "198.51.100.9", 9, CandidateType.SRFLX)
    high = cand("y", "198.51.100.9", 9, CandidateType.HOST)
    cl.add_pairs([base], [low], True, 0.0, started=False)
    cl.add_pairs([base], [high], True, 0.0, started=False)
    assert len(cl.pairs) == 1 and cl.pairs[0].remote is high
    cl.add_pairs([base], [low], True, 0.0, started=False)
    assert len(cl.pairs) == 1 and cl.pairs[0].remote is high


def test_pair_limit_drops_lowest() -> None:
    """RFC 8445 §6.1.2.5: beyond max_pairs the lowest-priority pairs go."""
    cl = CheckList([], max_pairs=3)
    base = cand("1", "10.0.0.1", 1)
    remotes = [cand(f"r{i}", "10.0.0.2", 100 + i, local_pref=1000 * i) for i in range(6)]
    cl.add_pairs([base], remotes, True, 0.0, started=False)
    assert len(cl.pairs) == 3
    assert {p.remote.address[1] for p in cl.pairs} == {103, 104, 105}


def test_initial_states_and_unfreezing_across_components() -> None:
    """RFC 8445 §6.1.2.6: one pair per foundation (component 1) starts Waiting; a success
    unfreezes the same foundation in component 2 (§7.2.5.3.3)."""
    events: list[IceEvent] = []
    cl = CheckList(events)
    locals_ = [cand("1", "10.0.0.1", 1, component=1), cand("1", "10.0.0.1", 2, component=2)]
    remotes = [cand("a", "10.0.0.2", 1, component=1), cand("a", "10.0.0.2", 2, component=2),
               cand("b", "10.0.0.3", 1, component=1, local_pref=10),
               cand("b", "10.0.0.3", 2, component=2, local_pref=10)]
    cl.add_pairs(locals_, remotes, True, 0.0, started=False)
    cl.initial_states(1.0)
    waiting = [p for p in cl.pairs if p.state is PairState.WAITING]
    assert sorted((p.component, p.foundation) for p in waiting) == [(1, "1:a"), (1, "1:b")]
    first = waiting[0]
    cl.set_state(first, PairState.SUCCEEDED, "test", 2.0)
    cl.unfreeze_foundation(first.foundation, 2.0)
    comp2 = [p for p in cl.pairs if p.component == 2 and p.foundation == first.foundation]
    assert comp2[0].state is PairState.WAITING
    changes = [e for e in events if isinstance(e, PairStateChanged)]
    assert changes[0].old == "frozen" and changes[0].new == "waiting" and changes[0].at == 1.0
    assert changes[-1].cause == "foundation succeeded"


def test_initial_states_respect_a_pair_started_by_a_triggered_check() -> None:
    """RFC 8445 §6.1.2.6: a component-1 pair already Waiting (a peer's check arrived before
    checks started) is its foundation's first pair, so component 2 stays Frozen."""
    cl = CheckList([])
    locals_ = [cand("1", "10.0.0.1", 1, component=1), cand("1", "10.0.0.1", 2, component=2)]
    remotes = [cand("a", "10.0.0.2", 1, component=1), cand("a", "10.0.0.2", 2, component=2)]
    cl.add_pairs(locals_, remotes, True, 0.0, started=False)
    comp1, comp2 = cl.component_pairs(1)[0], cl.component_pairs(2)[0]
    cl.set_state(comp1, PairState.WAITING, "triggered", 0.0)
    cl.initial_states(0.1)
    assert comp1.state is PairState.WAITING and comp2.state is PairState.FROZEN
    cl.set_state(comp1, PairState.SUCCEEDED, "test", 0.2)
    cl.unfreeze_foundation(comp1.foundation, 0.2)
    assert cl.component_pairs(2)[0].state is PairState.WAITING


def test_next_waiting_unfreezes_idle_foundations() -> None:
    """RFC 8445 §6.1.4.2: with no Waiting pair, Frozen pairs of idle foundations wake up, but
    not those whose foundation has a check in progress."""
    cl = CheckList([])
    locals_ = [cand("1", "10.0.0.1", 1, component=1), cand("1", "10.0.0.1", 2, component=2)]
    remotes = [cand("a", "10.0.0.2", 1, component=1), cand("a", "10.0.0.2", 2, component=2)]
    cl.add_pairs(locals_, remotes, True, 0.0, started=False)
    comp1 = cl.component_pairs(1)[0]
    cl.set_state(comp1, PairState.IN_PROGRESS, "test", 0.0)
    assert cl.next_waiting(0.0) is None  # same foundation busy: component 2 stays frozen
    cl.set_state(comp1, PairState.FAILED, "test", 0.1)
    nxt = cl.next_waiting(0.1)
    assert nxt is not None and nxt.component == 2 and nxt.state is PairState.WAITING


def test_trickled_pair_waits_unless_foundation_busy() -> None:
    """A pair added after checks began is Waiting unless its foundation is being checked."""
    cl = CheckList([])
    base = cand("1", "10.0.0.1", 1)
    first = cl.add_pairs([base], [cand("a", "10.0.0.2", 1)], True, 0.0, started=True)
    assert first[0].state is PairState.WAITING
    second = cl.add_pairs([base], [cand("a", "10.0.0.2", 7)], True, 0.0, started=True)
    assert second[0].state is PairState.FROZEN
    third = cl.add_pairs([base], [cand("z", "10.0.0.9", 7)], True, 0.0, started=True)
    assert third[0].state is PairState.WAITING


def test_priorities_follow_the_role() -> None:
    """After a role switch the pair priorities are recomputed from the other side."""
    cl = CheckList([])
    local = cand("1", "10.0.0.1", 1)
    remote = cand("a", "10.0.0.2", 2, CandidateType.SRFLX)
    cl.add_pairs([local], [remote], True, 0.0, started=False)
    assert cl.pairs[0].priority == pair_priority(local.priority, remote.priority)
    cl.recompute_priorities(False)
    assert cl.pairs[0].priority == pair_priority(remote.priority, local.priority)
