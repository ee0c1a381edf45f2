"""The call report: what happened on the SIP, ICE and media layers of one call, as plain data.

Built from what the call recorded (its session's message records, the ICE agent's events, the
selected pairs and the media stream's statistics): pure data in, a :class:`CallReport` out, whose
``to_dict()`` feeds ``--json`` and whose ``to_json()`` is one line. Times are seconds relative to
the start of the call; the ICE checks are paired up by transaction (sent, then succeeded with
its RTT, or failed with a reason).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ice.events import (
    CheckFailed,
    CheckSent,
    CheckSucceeded,
    IceEvent,
    PairSnapshot,
    RoleChanged,
)
from sipua.session import MessageRecord

__all__ = ["CallReport", "build_report", "check_table", "setup_times"]


@dataclass(frozen=True)
class CallReport:
    """One call's report; ``data`` is JSON-ready."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The report as a dict (a copy of the top level)."""
        return dict(self.data)

    def to_json(self, **kwargs: Any) -> str:
        """The report as JSON text (``json.dumps`` keyword arguments pass through)."""
        return json.dumps(self.data, default=str, **kwargs)


def _rel(at: float | None, start: float) -> float | None:
    return None if at is None else round(at - start, 6)


def _pair(snapshot: PairSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {
        "component": snapshot.component, "key": snapshot.key,
        "local_type": snapshot.local_type,
        "local_address": f"{snapshot.local_address[0]}:{snapshot.local_address[1]}",
        "remote_type": snapshot.remote_type,
        "remote_address": f"{snapshot.remote_address[0]}:{snapshot.remote_address[1]}",
        "priority": snapshot.priority, "nominated": snapshot.nominated,
    }


def check_table(events: Sequence[IceEvent], start: float) -> list[dict[str, Any]]:
    """Every connectivity check we sent, in order: pair, when, retransmissions, outcome, RTT."""
    checks: dict[str, dict[str, Any]] = {}
    for event in events:
        if isinstance(event, CheckSent):
            entry = checks.get(event.transaction_id)
            if entry is None:
                checks[event.transaction_id] = {
                    "pair": event.pair.key, "component": event.pair.component,
                    "sent_at": _rel(event.at, start), "use_candidate": event.use_candidate,
                    "triggered": event.triggered, "transmissions": 1, "result": "pending",
                    "rtt_ms": None,
                }
            else:
                entry["transmissions"] += 1
        elif isinstance(event, CheckSucceeded):
            entry = checks.get(event.transaction_id)
            if entry is not None:
                entry["result"] = "succeeded"
                entry["rtt_ms"] = round(event.rtt * 1000, 3)
                entry["valid_pair"] = event.valid.key
        elif isinstance(event, CheckFailed):
            entry = checks.get(event.transaction_id)
            if entry is not None:
                entry["result"] = f"failed: {event.reason}"
    return list(checks.values())


def setup_times(timings: Mapping[str, float | None]) -> dict[str, float | None]:
    """Milliseconds from the INVITE to the answer, to ICE completion and to the first RTP."""
    invite = timings.get("invite")

    def since(name: str) -> float | None:
        at = timings.get(name)
        if invite is None or at is None:
            return None
        return round((at - invite) * 1000, 1)

    return {"invite_to_answer_ms": since("answered"),
            "invite_to_ice_completed_ms": since("ice_completed"),
            "invite_to_first_rtp_ms": since("first_rtp")}


def build_report(*, call_id: str | None, direction: str, state: str, status: int | None,
                 ended_by: str | None, end_reason: str | None,
                 messages: Sequence[MessageRecord], ice_events: Sequence[IceEvent],
                 selected: Mapping[int, PairSnapshot | None], media: Mapping[str, Any] | None,
                 codec: str | None, ice: bool, nomination: str, role: str | None,
                 timings: Mapping[str, float | None], error: str | None = None,
                 ice_knobs: Mapping[str, Any] | None = None) -> CallReport:
    """Assemble the report of one call from what it recorded.

    ``ice_knobs`` (initial_role, tie_breaker, compat, faults: the test knobs of the call) go
    into ``ice`` when given, with ``role_changes`` taken from the RoleChanged events."""
    start = timings.get("start") or 0.0
    sip = [{**m.to_dict(), "at": _rel(m.at, start)} for m in messages]
    timeline = []
    for event in ice_events:
        entry = event.to_dict()
        entry["at"] = _rel(event.at, start)
        timeline.append(entry)
    quality = media.get("quality") if media else None
    data: dict[str, Any] = {
        "call_id": call_id, "direction": direction, "state": state, "status": status,
        "ended_by": ended_by, "end_reason": end_reason, "error": error,
        "codec": codec,
        "setup": setup_times(timings),
        "sip": {"messages": sip},
        "ice": {
            "used": ice, "nomination": nomination, "role": role,
            "selected": {str(c): _pair(p) for c, p in sorted(selected.items())},
            "checks": check_table(ice_events, start),
            "timeline": timeline,
        },
        "media": dict(media["stream"]) if media and media.get("stream") else None,
        "quality": quality,
        "mos": quality.get("mos") if isinstance(quality, Mapping) else None,
    }
    if ice_knobs is not None:
        data["ice"].update(ice_knobs)
        data["ice"]["role_changes"] = [
            {"at": _rel(e.at, start), "role": "controlling" if e.controlling else "controlled",
             "reason": e.reason} for e in ice_events if isinstance(e, RoleChanged)]
    if data["media"] is not None:
        # SRTP figures (media.srtp.SrtpStats): suite, auth_failures, replays, ...; None = RTP.
        data["media"]["srtp"] = media.get("srtp") if media else None
    return CallReport(data)
