"""The ICE check timeline picture (sipua/timeline.py): report dict in, SVG text out."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sipua.timeline import COLOURS, render_timeline, timeline_rows

SVG = "{http://www.w3.org/2000/svg}"


def _pair(local: tuple[str, int], remote: tuple[str, int], component: int = 1,
          local_type: str = "host", remote_type: str = "host") -> dict[str, Any]:
    return {"component": component, "local_type": local_type, "local_address": list(local),
            "remote_type": remote_type, "remote_address": list(remote), "priority": 1,
            "state": "in-progress", "nominated": False, "foundation": "1:1"}


P1 = _pair(("10.0.0.1", 4000), ("10.0.0.2", 5000))
P2 = _pair(("10.0.0.1", 4000), ("203.0.113.9", 6000), remote_type="srflx")
P3 = _pair(("2001:db8::1", 4002), ("2001:db8::2", 5002))
KEY1 = "host:10.0.0.1:4000->host:10.0.0.2:5000/1"
KEY2 = "host:10.0.0.1:4000->srflx:203.0.113.9:6000/1"
KEY3 = "host:[2001:db8::1]:4002->host:[2001:db8::2]:5002/1"


def _sent(at: float, pair: dict[str, Any], tx: str, *, use: bool = False,
          again: bool = False) -> dict[str, Any]:
    return {"event": "CheckSent", "at": at, "pair": pair, "transaction_id": tx,
            "use_candidate": use, "retransmission": again, "triggered": False}


REPORT: dict[str, Any] = {
    "call_id": "abc@host",
    "ice": {
        "used": True, "nomination": "regular", "role": "controlling",
        "selected": {"1": {"component": 1, "key": KEY1, "local_type": "host",
                           "local_address": "10.0.0.1:4000", "remote_type": "host",
                           "remote_address": "10.0.0.2:5000", "priority": 1,
                           "nominated": True}},
        "checks": [],
        "timeline": [
            {"event": "CandidateGathered", "at": 0.001, "candidate": {}},
            _sent(0.010, P2, "t2"),
            _sent(0.030, P1, "t1"),
            {"event": "CheckReceived", "at": 0.031, "pair": P1, "transaction_id": "r1",
             "use_candidate": False, "response": 200},
            {"event": "CheckSucceeded", "at": 0.032, "pair": P1, "transaction_id": "t1",
             "rtt": 0.002, "valid": P1, "use_candidate": False},
            _sent(0.050, P2, "t2", again=True),
            _sent(0.060, P1, "t3", use=True),
            {"event": "CheckSucceeded", "at": 0.061, "pair": P1, "transaction_id": "t3",
             "rtt": 0.001, "valid": P1, "use_candidate": True},
            {"event": "PairNominated", "at": 0.061, "pair": P1},
            {"event": "CheckFailed", "at": 0.090, "pair": P2, "transaction_id": "t2",
             "reason": "timeout"},
            _sent(0.095, P3, "t4"),
            {"event": "IceCompleted", "at": 0.100},
            {"event": "AgentClosed", "at": 0.200},
        ],
    },
}


def test_rows_follow_the_first_check_and_mark_selection() -> None:
    """One row per pair in the order first checked; the selected, nominated pair is marked;
    each check has its transmissions, result and RTT; a check never answered stays pending
    and stretches the span to the agent's end."""
    rows, span = timeline_rows(REPORT)
    assert [r.key for r in rows] == [KEY2, KEY1, KEY3]
    srflx, host, v6 = rows
    assert host.selected and host.nominated and not srflx.selected
    assert [b.result for b in host.checks] == ["succeeded", "nominated"]
    assert host.checks[0].rtt_ms == 2.0 and host.received == [0.031]
    (failed,) = srflx.checks
    assert failed.result == "failed" and failed.reason == "timeout"
    assert failed.transmissions == [0.010, 0.050] and failed.ended_at == 0.090
    assert v6.checks[0].result == "pending" and v6.checks[0].ended_at is None
    assert span == 0.2


def test_svg_is_well_formed_with_a_bar_per_check_coloured_by_result() -> None:
    """The SVG parses as XML; there is one bar per check with the colour of its result, a
    retransmission tick, a received-check marker, the highlighted selected row, and pair
    names escaped as text."""
    svg = render_timeline(REPORT)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    bars = [e for e in root.iter(f"{SVG}rect") if "check" in (e.get("class") or "")]
    results = sorted((e.get("class") or "").split()[1] for e in bars)
    assert results == ["failed", "nominated", "pending", "succeeded"]
    for bar in bars:
        assert bar.get("fill") == COLOURS[(bar.get("class") or "").split()[1]]
    assert len([e for e in root.iter(f"{SVG}line") if e.get("class") == "retransmission"]) == 1
    assert len([e for e in root.iter(f"{SVG}path") if e.get("class") == "received"]) == 1
    assert len([e for e in root.iter(f"{SVG}rect") if e.get("class") == "selected"]) == 1
    texts = "".join(root.itertext())
    assert f"\u2605 {KEY1}" in texts and KEY3 in texts and "4 checks on 3 pairs" in texts


def test_bars_are_placed_in_time_order() -> None:
    """A later check starts further right; a failed bar ends where its failure happened."""
    root = ET.fromstring(render_timeline(REPORT))
    bars = {(e.get("class") or "").split()[1]: e for e in root.iter(f"{SVG}rect")
            if "check" in (e.get("class") or "")}
    xs = {k: float(v.get("x") or 0) for k, v in bars.items()}
    assert xs["failed"] < xs["succeeded"] < xs["nominated"] < xs["pending"]
    failed = bars["failed"]
    assert float(failed.get("width") or 0) > float(bars["succeeded"].get("width") or 0)


def test_checks_table_alone_is_enough() -> None:
    """A report without the event timeline (an older or trimmed report) is drawn from its
    checks table; 'failed: reason' is split into result and reason."""
    report = {"ice": {"checks": [
        {"pair": KEY1, "component": 1, "sent_at": 0.01, "use_candidate": True,
         "result": "succeeded", "rtt_ms": 4.0},
        {"pair": KEY2, "component": 1, "sent_at": 0.02, "use_candidate": False,
         "result": "failed: 401", "rtt_ms": None},
    ], "selected": {}}}
    rows, span = timeline_rows(report)
    assert [(r.key, r.checks[0].result) for r in rows] == [(KEY1, "nominated"),
                                                             (KEY2, "failed")]
    assert rows[1].checks[0].reason == "401" and span == 0.02
    ET.fromstring(render_timeline(report))


def test_no_ice_says_so() -> None:
    """A call without checks still gives a valid picture that says there were none."""
    svg = render_timeline({"call_id": None, "ice": {"used": False, "checks": []}})
    assert "no connectivity checks" in "".join(ET.fromstring(svg).itertext())


_address = st.tuples(st.sampled_from(["10.0.0.1", "2001:db8::7", "<&\">"]),
                     st.integers(0, 65535))


@settings(max_examples=50)
@given(st.lists(st.tuples(st.floats(0, 100, allow_nan=False), _address,
                          st.sampled_from(["CheckSent", "CheckSucceeded", "CheckFailed",
                                           "CheckReceived", "PairNominated"]),
                          st.integers(0, 3)), max_size=20))
def test_any_event_sequence_renders_well_formed_xml(
        events: list[tuple[float, tuple[str, int], str, int]]) -> None:
    """Whatever order or mix of check events (including names needing escaping), the output
    is well-formed XML with one row per distinct pair."""
    timeline = []
    for at, remote, kind, tx in events:
        timeline.append({"event": kind, "at": at, "pair": _pair(("10.0.0.1", 1), remote),
                         "transaction_id": str(tx), "rtt": 0.001, "reason": "timeout",
                         "use_candidate": tx == 0})
    report = {"ice": {"timeline": timeline, "selected": {}}}
    root = ET.fromstring(render_timeline(report))
    rows, _ = timeline_rows(report)
    assert len({r.key for r in rows}) == len(rows)
    assert root.tag == f"{SVG}svg"
