"""Candidate pairs and check lists (RFC 8445 §6.1.2): forming, priorities, pruning, the pair
limit, and the frozen/waiting/in-progress/succeeded/failed states with the unfreezing rules.

The check list only keeps pairs and their states; sending checks, pacing and nomination are the
agent's. Every pair state change goes through :meth:`CheckList.set_state`, which logs it and
queues a :class:`~ice.events.PairStateChanged` event.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ice.candidate import Candidate, CandidateType, is_ipv6
from ice.events import IceEvent, PairSnapshot, PairStateChanged

log = logging.getLogger(__name__)


class PairState(enum.Enum):
    """RFC 8445 §6.1.2.6."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CheckListState(enum.Enum):
    """RFC 8445 §6.1.2.1."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0), G the controlling side's
    candidate priority and D the controlled side's."""
    return (min(controlling, controlled) << 32) + 2 * max(controlling, controlled) + (
        1 if controlling > controlled else 0
    )


@dataclass(eq=False)
class CandidatePair:
    """A local and a remote candidate (compared by identity).

    ``local`` is what the pair is reported as (host/relay in the check list; srflx or prflx for
    valid pairs built from a mapped address); ``base`` is the candidate the checks and data are
    sent from: the host candidate of a socket, or a relayed candidate."""

    local: Candidate
    remote: Candidate
    base: Candidate
    priority: int = 0
    state: PairState = PairState.FROZEN
    #: RFC 8445 §7.2.5.3.4 / §7.3.1.5: nominated flag (only meaningful on valid pairs).
    nominated: bool = False
    #: In the valid list (RFC 8445 §7.2.5.3.2).
    valid: bool = False
    #: Controlled side: USE-CANDIDATE arrived while this pair's check was not yet done (§7.3.1.5).
    nominate_on_success: bool = False
    #: The valid pair the last successful check of this pair produced.
    valid_pair: CandidatePair | None = field(default=None, repr=False)
    #: When the first check of this pair left (None before any).
    first_check_at: float | None = None
    #: When the peer's check last arrived on this pair: the path works from its side, and our
    #: triggered check (RFC 8445 §7.3.1.4) is expected back within a round trip.
    peer_check_at: float | None = None
    #: Round-trip time measured by the last successful check producing this valid pair.
    rtt: float | None = None

    @property
    def component(self) -> int:
        return self.local.component

    @property
    def foundation(self) -> str:
        """Pair foundation: both candidates' foundations (RFC 8445 §6.1.2.6)."""
        return f"{self.base.foundation}:{self.remote.foundation}"

    def compute_priority(self, controlling: bool) -> None:
        """Recompute the priority for the agent's role (it changes on a role conflict)."""
        local, remote = self.local.priority, self.remote.priority
        self.priority = pair_priority(local, remote) if controlling else pair_priority(
            remote, local)

    def snapshot(self) -> PairSnapshot:
        return PairSnapshot(
            component=self.component, local_type=self.local.type.value,
            local_address=self.local.address, remote_type=self.remote.type.value,
            remote_address=self.remote.address, priority=self.priority,
            state=self.state.value, nominated=self.nominated, foundation=self.foundation,
        )

    def __repr__(self) -> str:
        return f"<Pair {self.snapshot().key} {self.state.value}{' N' if self.nominated else ''}>"


def can_pair(local: Candidate, remote: Candidate) -> bool:
    """RFC 8445 §6.1.2.2: same component, same transport, same address family."""
    return (
        local.component == remote.component
        and local.transport == remote.transport == "udp"
        and is_ipv6(local.address) == is_ipv6(remote.address)
    )


class CheckList:
    """The check list of one data stream (RFC 8445 §6.1.2).

    ``events`` is the agent's event queue: state changes are appended to it."""

    def __init__(self, events: list[IceEvent], *, max_pairs: int = 100) -> None:
        if max_pairs < 1:
            raise ValueError("max_pairs must be at least 1")
        self._events = events
        self.max_pairs = max_pairs
        self.pairs: list[CandidatePair] = []
        self.state = CheckListState.RUNNING

    # --- forming ------------------------------------------------------------------------------
    def add_pairs(
        self, bases: Iterable[Candidate], remotes: Iterable[Candidate], controlling: bool,
        now: float, *, started: bool,
    ) -> list[CandidatePair]:
        """Pair local bases (host and relayed candidates: server-reflexive ones are replaced by
        their base, RFC 8445 §6.1.2.4) with remote candidates; skip pairs already present
        (redundant: same base and remote address, the higher priority one kept); keep the
        ``max_pairs`` best. Once checks have started, new pairs get their state at once."""
        added: list[CandidatePair] = []
        remote_list = list(remotes)
        for base in bases:
            if base.type not in (CandidateType.HOST, CandidateType.RELAY):
                raise ValueError(f"pairs are formed from bases, not {base.type.value}")
            for remote in remote_list:
                if not can_pair(base, remote):
                    continue
                pair = CandidatePair(local=base, remote=remote, base=base)
                pair.compute_priority(controlling)
                existing = self.find(base, remote.address)
                if existing is not None:
                    # RFC 8445 §6.1.2.4: redundant; keep the higher-priority remote candidate.
                    if pair.priority > existing.priority and existing.state in (
                        PairState.FROZEN, PairState.WAITING
                    ):
                        existing.remote = remote
                        existing.priority = pair.priority
                    continue
                self.pairs.append(pair)
                added.append(pair)
        self.sort()
        self._enforce_limit(now)
        added = [p for p in added if p in self.pairs]
        if started:
            for pair in added:
                self._state_for_new(pair, now)
        return added

    def add_pair(self, pair: CandidatePair, now: float) -> None:
        """Add one pair built elsewhere (a triggered check's new pair, RFC 8445 §7.3.1.4)."""
        self.pairs.append(pair)
        self.sort()
        self._enforce_limit(now, keep=pair)

    def sort(self) -> None:
        self.pairs.sort(key=lambda p: p.priority, reverse=True)

    def _enforce_limit(self, now: float, keep: CandidatePair | None = None) -> None:
        """RFC 8445 §6.1.2.5: drop the lowest-priority pairs beyond the limit (only ones
        that have not been checked yet)."""
        excess = len(self.pairs) - self.max_pairs
        if excess <= 0:
            return
        for pair in reversed(list(self.pairs)):
            if excess <= 0:
                break
            if pair is keep or pair.state not in (PairState.FROZEN, PairState.WAITING):
                continue
            self.pairs.remove(pair)
            excess -= 1
            log.debug("pair limit %d: dropped %r", self.max_pairs, pair)

    def find(self, base: Candidate, remote_address: tuple[str, int]) -> CandidatePair | None:
        for pair in self.pairs:
            if pair.base == base and pair.remote.address == remote_address:
                return pair
        return None

    def recompute_priorities(self, controlling: bool) -> None:
        for pair in self.pairs:
            pair.compute_priority(controlling)
        self.sort()

    # --- states ---------------------------------------------------------------------------------
    def set_state(self, pair: CandidatePair, new: PairState, cause: str, now: float) -> None:
        """The one place where a pair changes state."""
        old = pair.state
        if old is new:
            return
        pair.state = new
        log.debug("pair %s: %s -> %s (%s)", pair.snapshot().key, old.value, new.value, cause)
        self._events.append(PairStateChanged(
            at=now, pair=pair.snapshot(), old=old.value, new=new.value, cause=cause))

    def set_list_state(self, new: CheckListState, cause: str) -> None:
        if self.state is not new:
            log.info("check list: %s -> %s (%s)", self.state.value, new.value, cause)
            self.state = new

    def initial_states(self, now: float) -> None:
        """RFC 8445 §6.1.2.6: per foundation, the pair with the lowest component ID (then the
        highest priority) starts Waiting; every other pair stays Frozen.

        A pair that a triggered check started before this (a peer's check arrived before the
        answer) still counts as its foundation's first: the pairs of the other components then
        stay Frozen until it succeeds (§7.2.5.3.3), instead of being checked in parallel."""
        chosen: dict[str, CandidatePair] = {}
        for pair in self.pairs:  # sorted by priority, highest first
            best = chosen.get(pair.foundation)
            if best is None or pair.component < best.component:
                chosen[pair.foundation] = pair
        for pair in chosen.values():
            if pair.state is PairState.FROZEN:
                self.set_state(pair, PairState.WAITING, "initial", now)

    def _state_for_new(self, pair: CandidatePair, now: float) -> None:
        """A pair added after checks began (trickle, RFC 8838 §11): Waiting unless another pair
        of its foundation is already Waiting or In-Progress (then it waits Frozen for it)."""
        busy = any(
            p is not pair and p.foundation == pair.foundation
            and p.state in (PairState.WAITING, PairState.IN_PROGRESS)
            for p in self.pairs
        )
        if not busy:
            self.set_state(pair, PairState.WAITING, "added", now)

    def unfreeze_foundation(self, foundation: str, now: float) -> None:
        """RFC 8445 §7.2.5.3.3: a success unfreezes the pairs of the same foundation (in every
        component: that is how component 2 follows component 1)."""
        for pair in self.pairs:
            if pair.state is PairState.FROZEN and pair.foundation == foundation:
                self.set_state(pair, PairState.WAITING, "foundation succeeded", now)

    def next_waiting(self, now: float) -> CandidatePair | None:
        """RFC 8445 §6.1.4.2: the highest-priority Waiting pair; if none, unfreeze for every
        foundation with nothing Waiting or In-Progress its best pair, and take the best."""
        for pair in self.pairs:
            if pair.state is PairState.WAITING:
                return pair
        busy = {
            p.foundation for p in self.pairs
            if p.state in (PairState.WAITING, PairState.IN_PROGRESS)
        }
        for pair in sorted(self.pairs, key=lambda p: (p.component, -p.priority)):
            if pair.state is PairState.FROZEN and pair.foundation not in busy:
                self.set_state(pair, PairState.WAITING, "no waiting pair", now)
                busy.add(pair.foundation)
        for pair in self.pairs:
            if pair.state is PairState.WAITING:
                return pair
        return None

    def remove_pending(self, component: int, below: int, now: float) -> list[CandidatePair]:
        """RFC 8445 §8.1.2: once a component is done, drop its Frozen and Waiting pairs and
        return the In-Progress ones of lower priority (whose retransmissions must stop)."""
        stopped: list[CandidatePair] = []
        for pair in list(self.pairs):
            if pair.component != component:
                continue
            if pair.state in (PairState.FROZEN, PairState.WAITING):
                self.pairs.remove(pair)
            elif pair.state is PairState.IN_PROGRESS and pair.priority < below:
                stopped.append(pair)
        return stopped

    def component_pairs(self, component: int) -> list[CandidatePair]:
        return [p for p in self.pairs if p.component == component]

    def pending(self, component: int) -> bool:
        """Whether a pair of ``component`` may still succeed (not all Failed/Succeeded)."""
        return any(
            p.state in (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS)
            for p in self.component_pairs(component)
        )
