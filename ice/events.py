"""Events of the ICE agent: frozen dataclasses named as past-tense facts, each stamped with
``at`` (the ``now`` of the call that produced it), so that the whole ICE timeline (gathering,
every check with its result and RTT, pair states, nomination, selection, consent) can be
replayed afterwards from the event list alone. ``to_dict()`` gives a JSON-friendly form.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from ice.candidate import Address, Candidate


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, Candidate):
            return {
                "sdp": value.to_sdp(), "type": value.type.value,
                "address": _addr(value.address), "component": value.component,
            }
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _addr(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class PairSnapshot:
    """A candidate pair as it was when the event happened."""

    component: int
    local_type: str
    local_address: Address
    remote_type: str
    remote_address: Address
    priority: int
    state: str
    nominated: bool
    foundation: str

    @property
    def key(self) -> str:
        """A readable identity, stable over the pair's life: ``host:IP:P->srflx:IP:P/1``."""
        return (f"{self.local_type}:{_addr(self.local_address)}->"
                f"{self.remote_type}:{_addr(self.remote_address)}/{self.component}")


@dataclass(frozen=True)
class IceEvent:
    """Base class: every event carries the time it happened."""

    at: float

    def to_dict(self) -> dict[str, Any]:
        """``{"event": ClassName, "at": ..., field: value...}`` with plain JSON types."""
        out: dict[str, Any] = {"event": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = _jsonable(getattr(self, f.name))
        return out


# --- gathering ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateGathered(IceEvent):
    """A local candidate was added (host at add_base, srflx from STUN, relay from TURN)."""

    candidate: Candidate


@dataclass(frozen=True)
class GatheringStepFailed(IceEvent):
    """A STUN or TURN server gave no candidate for one base (timeout or error)."""

    kind: str          # "stun" | "turn"
    server: Address
    base: Address
    reason: str


@dataclass(frozen=True)
class GatheringCompleted(IceEvent):
    """Every gathering step finished (or the gathering timeout passed)."""

    candidates: int


# --- checks --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckSent(IceEvent):
    """A connectivity check (Binding request) left on ``pair``."""

    pair: PairSnapshot
    transaction_id: str
    use_candidate: bool
    retransmission: bool
    triggered: bool


@dataclass(frozen=True)
class CheckSucceeded(IceEvent):
    """A check got a valid success response; ``valid`` is the valid pair it produced."""

    pair: PairSnapshot
    transaction_id: str
    rtt: float
    valid: PairSnapshot
    use_candidate: bool


@dataclass(frozen=True)
class CheckFailed(IceEvent):
    """A check failed: ``reason`` is "timeout", an error code ("401", ...) or "asymmetric"."""

    pair: PairSnapshot
    transaction_id: str
    reason: str


@dataclass(frozen=True)
class CheckReceived(IceEvent):
    """A valid check arrived on ``pair`` and was answered with a success (or 487)."""

    pair: PairSnapshot
    transaction_id: str
    use_candidate: bool
    response: int


@dataclass(frozen=True)
class RequestRejected(IceEvent):
    """A STUN request was refused (400, 401, 420, 487 before any pair) and changed nothing."""

    source: Address
    code: int
    reason: str


@dataclass(frozen=True)
class PairStateChanged(IceEvent):
    """A pair moved between frozen/waiting/in-progress/succeeded/failed."""

    pair: PairSnapshot
    old: str
    new: str
    cause: str


@dataclass(frozen=True)
class RemoteCandidateLearned(IceEvent):
    """A peer-reflexive remote candidate learned from a request's source (RFC 8445 §7.3.1.3)."""

    candidate: Candidate


@dataclass(frozen=True)
class LocalCandidateLearned(IceEvent):
    """A peer-reflexive local candidate learned from XOR-MAPPED-ADDRESS (RFC 8445 §7.2.5.3.1)."""

    candidate: Candidate


# --- nomination and results -----------------------------------------------------------------------
@dataclass(frozen=True)
class PairNominated(IceEvent):
    """A valid pair became nominated (sent or received USE-CANDIDATE that succeeded)."""

    pair: PairSnapshot


@dataclass(frozen=True)
class PairSelected(IceEvent):
    """``pair`` now carries the data of ``component`` (first selection or a switch)."""

    component: int
    pair: PairSnapshot


@dataclass(frozen=True)
class IceCompleted(IceEvent):
    """Every component has a selected pair."""


@dataclass(frozen=True)
class IceFailed(IceEvent):
    """ICE gave up: a component cannot get a pair."""

    reason: str


@dataclass(frozen=True)
class RoleChanged(IceEvent):
    """The role changed to resolve a conflict (RFC 8445 §7.3.1.1, §7.2.5.1)."""

    controlling: bool
    reason: str


@dataclass(frozen=True)
class IceRestarted(IceEvent):
    """Local credentials were renewed (RFC 8445 §9); new checks follow new remote credentials."""

    ufrag: str


# --- after selection ----------------------------------------------------------------------
@dataclass(frozen=True)
class KeepaliveSent(IceEvent):
    """A Binding indication kept an idle selected pair alive (RFC 8445 §11)."""

    component: int


@dataclass(frozen=True)
class ConsentRefreshed(IceEvent):
    """A consent check on the selected pair was answered (RFC 7675 §5.1)."""

    component: int
    rtt: float


@dataclass(frozen=True)
class ConsentLost(IceEvent):
    """No consent for ``consent_timeout``: the agent stopped sending on ``pair`` (RFC 7675)."""

    component: int
    pair: PairSnapshot


@dataclass(frozen=True)
class AgentClosed(IceEvent):
    """close() was called: no more checks; TURN allocations released."""
