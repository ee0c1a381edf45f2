"""Nomination strategies (RFC 8445 §8.1, RFC 5245 §8.1.1.2) as pure decisions over pairs.

* Regular (controlling): check first, then repeat the check of the chosen valid pair with
  USE-CANDIDATE. The choice is made as soon as waiting cannot give a better pair (the best valid
  pair outranks every pair still in play), or after a short settle time counted from the first
  valid pair, so that a pair that will never answer (a host pair across two private networks)
  does not hold the call up for the 39.5 s of its transaction. A component whose valid pair
  follows the path already nominated for another component does not wait at all.
* Aggressive (controlling): USE-CANDIDATE on every check; the first success is nominated.
* Controlled (and lite): follow the peer; select the highest-priority nominated valid pair and
  switch when a better one is nominated later.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from ice.checklist import CandidatePair, PairState


class Nomination(enum.StrEnum):
    """How the controlling agent nominates."""

    REGULAR = "regular"
    AGGRESSIVE = "aggressive"


def use_candidate_on_every_check(mode: Nomination, controlling: bool) -> bool:
    """RFC 5245 §8.1.1.2: aggressive nomination flags every check of the controlling agent."""
    return controlling and mode is Nomination.AGGRESSIVE


def regular_choice(
    valid: Iterable[CandidatePair], pending: Iterable[CandidatePair],
    first_valid_at: float | None, now: float, settle: float,
    proven: Iterable[CandidatePair] = (),
) -> tuple[CandidatePair | None, float | None]:
    """Pick the valid pair to nominate now, or say when to ask again.

    ``valid`` are the component's usable valid pairs, ``pending`` its check-list pairs. A
    higher-priority pair is still in play while it is Frozen or Waiting, or In-Progress for less
    than twice the best valid pair's RTT (plus 5 ms): a check unanswered for longer than that
    most likely went where nothing listens. A pair on which the peer's check has just arrived
    stays in play for that long (at least ``settle``) after the arrival, even past the
    ``settle`` deadline: the path works from
    the peer's side and our triggered check is on its way (a peer that starts its checks late
    would otherwise see us nominate a relay a few ms before its direct pair succeeds).
    Returns ``(pair, None)`` to nominate now, ``(None, when)`` to ask again at ``when``, or
    ``(None, None)`` with nothing to nominate.

    ``proven`` are the valid pairs on the path (the foundation) of a pair already nominated
    for another component. Pairs of one foundation share their fate (RFC 8445 §6.1.2.6), so
    a better pair still in play for this component would most likely have done better for
    the other one too: rather than wait for it, the best proven pair is nominated at once,
    and RTP and RTCP take the same kind of path (§8.1.1 leaves the choice of the pair to the
    controlling agent)."""
    candidates = list(valid)
    if not candidates or first_valid_at is None:
        return None, None
    best = max(candidates, key=lambda p: p.priority)
    deadline = first_valid_at + settle
    patience = 2 * best.rtt + 0.005 if best.rtt is not None else settle
    # A pair the peer's check reached works from its side: give our answer to it at least
    # ``settle``, as a peer may answer on a coarse tick (linphone's media ticker: ~10 ms) and
    # the path need not be as short as the valid pair's.
    heard_patience = max(patience, settle)
    wakes = [deadline]
    better_possible = False
    for pair in pending:
        if pair.priority <= best.priority:
            continue
        heard = pair.peer_check_at
        if heard is not None and pair.state in (PairState.WAITING, PairState.IN_PROGRESS) \
                and now < heard + heard_patience:
            better_possible = True
            deadline = max(deadline, heard + heard_patience)
            wakes.append(heard + heard_patience)
        elif pair.state in (PairState.FROZEN, PairState.WAITING):
            better_possible = True
        elif pair.state is PairState.IN_PROGRESS:
            if pair.first_check_at is None:
                better_possible = True
            elif now < pair.first_check_at + patience:
                better_possible = True
                wakes.append(pair.first_check_at + patience)
    if not better_possible or now >= deadline:
        return best, None
    followed = [p for p in proven if p in candidates]
    if followed:
        return max(followed, key=lambda p: p.priority), None
    return None, min(w for w in wakes if w > now)


def best_nominated(valid: Iterable[CandidatePair]) -> CandidatePair | None:
    """RFC 8445 §8.1.1 / §8.2: the highest-priority nominated valid pair of a component."""
    best: CandidatePair | None = None
    for pair in valid:
        if pair.nominated and (best is None or pair.priority > best.priority):
            best = pair
    return best
