"""An SVG picture of a call's ICE connectivity checks over time (``sipua call --timeline``).

Sans-IO: the call report (``call.report().to_dict()``, see :mod:`sipua.report`) goes in, SVG text
comes out. One row per candidate pair, in the order the pair was first checked; each check we
sent is a bar from its first transmission to its outcome (the response, the failure, or the end
of the picture while pending), with a tick per retransmission, coloured by result: succeeded,
failed, pending, or nominated (a check with USE-CANDIDATE that succeeded, RFC 8445 §8.1.1).
Checks the peer sent us are small triangles on the pair they arrived on. The selected pair of
each component is marked with a star and a highlighted row.

The SVG is written by hand (no plotting dependency): plain shapes, text and ``<title>`` tooltips
that browsers and image viewers show as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["COLOURS", "CheckBar", "PairRow", "render_timeline", "timeline_rows"]

#: Fill colour per check result.
COLOURS = {
    "succeeded": "#2e9d4f",
    "nominated": "#6a3fc1",
    "failed": "#d8433b",
    "pending": "#a0a6ad",
}
_SELECTED_ROW = "#fff4c2"
_RECEIVED = "#1f6fb2"
#: Events that bound the picture's time axis (not the keepalives and consent checks after).
_CHECK_EVENTS = {"CheckSent", "CheckSucceeded", "CheckFailed", "CheckReceived", "PairNominated",
                 "PairSelected", "IceCompleted", "IceFailed"}

# Layout, in SVG user units (pixels).
_LEFT = 380          # room for the pair names
_RIGHT = 30
_TOP = 56
_ROW = 26
_BAR = 12
_PLOT_WIDTH = 760
_LEGEND = 44


@dataclass
class CheckBar:
    """One check we sent on a pair: when, how often, how it ended."""

    sent_at: float
    #: "succeeded", "nominated", "failed" or "pending".
    result: str
    ended_at: float | None = None
    transmissions: list[float] = field(default_factory=list)
    rtt_ms: float | None = None
    use_candidate: bool = False
    triggered: bool = False
    reason: str | None = None


@dataclass
class PairRow:
    """One candidate pair and what happened on it."""

    key: str
    component: int
    checks: list[CheckBar] = field(default_factory=list)
    #: Times checks from the peer arrived on this pair.
    received: list[float] = field(default_factory=list)
    nominated: bool = False
    selected: bool = False


def _addr(value: Any) -> str:
    if isinstance(value, str):
        return value
    host, port = value[0], value[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _pair_key(pair: Mapping[str, Any]) -> str:
    """The report's pair key (``host:IP:P->srflx:IP:P/1``) from an event's pair snapshot."""
    if "key" in pair:
        return str(pair["key"])
    return (f"{pair['local_type']}:{_addr(pair['local_address'])}->"
            f"{pair['remote_type']}:{_addr(pair['remote_address'])}/{pair['component']}")


def timeline_rows(report: Mapping[str, Any]) -> tuple[list[PairRow], float]:
    """The rows to draw and the time span (seconds from the call start) they cover.

    Reads the event ``timeline`` of the report when present (it has every transmission and the
    time of each outcome), else the ``checks`` table.
    """
    ice = report.get("ice") or {}
    rows: dict[str, PairRow] = {}
    span = 0.0

    def row(key: str, component: int) -> PairRow:
        if key not in rows:
            rows[key] = PairRow(key, component)
        return rows[key]

    events: Sequence[Mapping[str, Any]] = ice.get("timeline") or []
    by_tx: dict[str, CheckBar] = {}
    last_event = 0.0
    for event in events:
        kind = event.get("event")
        at = float(event.get("at") or 0.0)
        last_event = max(last_event, at)
        if kind in _CHECK_EVENTS:
            span = max(span, at)
        pair = event.get("pair")
        if not isinstance(pair, Mapping):
            continue
        key = _pair_key(pair)
        tx = str(event.get("transaction_id", ""))
        if kind == "CheckSent":
            bar = by_tx.get(tx)
            if bar is None:
                bar = CheckBar(sent_at=at, result="pending",
                               use_candidate=bool(event.get("use_candidate")),
                               triggered=bool(event.get("triggered")))
                by_tx[tx] = bar
                row(key, int(pair.get("component", 1))).checks.append(bar)
            bar.transmissions.append(at)
        elif kind == "CheckSucceeded" and tx in by_tx:
            bar = by_tx[tx]
            bar.ended_at = at
            bar.rtt_ms = round(float(event.get("rtt") or 0.0) * 1000, 3)
            bar.result = "nominated" if bar.use_candidate else "succeeded"
        elif kind == "CheckFailed" and tx in by_tx:
            bar = by_tx[tx]
            bar.ended_at = at
            bar.result = "failed"
            bar.reason = str(event.get("reason"))
        elif kind == "CheckReceived":
            row(key, int(pair.get("component", 1))).received.append(at)
        elif kind == "PairNominated":
            row(key, int(pair.get("component", 1))).nominated = True
    if any(bar.result == "pending" for bar in by_tx.values()):
        span = last_event  # pending checks run until the agent stopped or the call ended
    if not events:
        for check in ice.get("checks") or []:
            sent = float(check.get("sent_at") or 0.0)
            result = str(check.get("result", "pending"))
            rtt = check.get("rtt_ms")
            ended = sent + float(rtt) / 1000 if rtt is not None else None
            if result == "succeeded" and check.get("use_candidate"):
                result = "nominated"
            reason = None
            if result.startswith("failed"):
                result, reason = "failed", result.partition(": ")[2] or None
            bar = CheckBar(sent_at=sent, result=result, ended_at=ended, transmissions=[sent],
                           rtt_ms=rtt, use_candidate=bool(check.get("use_candidate")),
                           triggered=bool(check.get("triggered")), reason=reason)
            row(str(check["pair"]), int(check.get("component", 1))).checks.append(bar)
            span = max(span, ended or sent)
    for pair in (ice.get("selected") or {}).values():
        if isinstance(pair, Mapping):
            selected = row(_pair_key(pair), int(pair.get("component", 1)))
            selected.selected = True
            selected.nominated = selected.nominated or bool(pair.get("nominated"))
    return list(rows.values()), span


def _nice_step(span_ms: float) -> float:
    """A round tick interval giving 4-10 ticks."""
    step = 1.0
    while span_ms / step > 10:
        for factor in (2, 2.5, 2):
            step *= factor
            if span_ms / step <= 10:
                break
    return step


def _fmt_ms(value: float) -> str:
    return f"{value:g}" if value < 100 else f"{value:.0f}"


def render_timeline(report: Mapping[str, Any], *, title: str | None = None) -> str:
    """The SVG document (text) for one call report."""
    rows, span = timeline_rows(report)
    span_ms = max(span * 1000, 1.0)
    # Leave room after the last event so that the last bars are visible.
    end_ms = span_ms * 1.05
    height = _TOP + _ROW * max(len(rows), 1) + 40 + _LEGEND
    width = _LEFT + _PLOT_WIDTH + _RIGHT

    def x(seconds: float) -> float:
        return round(_LEFT + seconds * 1000 / end_ms * _PLOT_WIDTH, 2)

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    ice = report.get("ice") or {}
    heading = title or (f"ICE checks of call {report.get('call_id') or '?'}: "
                        f"{ice.get('role') or 'no ICE'}, {ice.get('nomination', '?')} "
                        f"nomination, {sum(len(r.checks) for r in rows)} checks on "
                        f"{len(rows)} pairs")
    out.append(f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(heading)}</text>')
    plot_bottom = _TOP + _ROW * max(len(rows), 1)
    # Time axis: grid lines and labels in milliseconds from the start of the call.
    step = _nice_step(end_ms)
    tick = 0.0
    while tick <= end_ms:
        tx = x(tick / 1000)
        out.append(f'<line x1="{tx}" y1="{_TOP - 6}" x2="{tx}" y2="{plot_bottom}" '
                   f'stroke="#e3e6ea"/>')
        out.append(f'<text x="{tx}" y="{plot_bottom + 16}" text-anchor="middle" '
                   f'fill="#555">{_fmt_ms(tick)}</text>')
        tick += step
    out.append(f'<text x="{_LEFT + _PLOT_WIDTH / 2}" y="{plot_bottom + 32}" '
               f'text-anchor="middle" fill="#555">ms since the call started</text>')
    if not rows:
        out.append(f'<text x="{_LEFT}" y="{_TOP + 16}" fill="#555">no connectivity checks '
                   f'in this call</text>')
    for index, pair_row in enumerate(rows):
        top = _TOP + index * _ROW
        middle = top + _ROW / 2
        if pair_row.selected:
            out.append(f'<rect class="selected" x="0" y="{top}" width="{width}" height="{_ROW}" '
                       f'fill="{_SELECTED_ROW}"/>')
        marker = "\u2605 " if pair_row.selected else ""
        label = f"{marker}{pair_row.key}"
        weight = ' font-weight="bold"' if pair_row.selected else ""
        out.append(f'<text x="10" y="{middle + 4}" font-family="monospace" font-size="11"'
                   f'{weight}><title>{escape(_row_title(pair_row))}</title>{escape(label)}'
                   f'</text>')
        for bar in pair_row.checks:
            start = x(bar.sent_at)
            end = x(bar.ended_at) if bar.ended_at is not None else x(end_ms / 1000)
            bar_width = max(end - start, 3.0)
            out.append(
                f'<rect class="check {bar.result}" x="{start}" y="{middle - _BAR / 2}" '
                f'width="{round(bar_width, 2)}" height="{_BAR}" rx="2" '
                f'fill="{COLOURS.get(bar.result, COLOURS["pending"])}" fill-opacity="0.85">'
                f'<title>{escape(_bar_title(bar))}</title></rect>')
            for again in bar.transmissions[1:]:
                tx = x(again)
                out.append(f'<line class="retransmission" x1="{tx}" y1="{middle - _BAR / 2 - 3}"'
                           f' x2="{tx}" y2="{middle + _BAR / 2 + 3}" stroke="#222" '
                           f'stroke-width="1.5"/>')
        for arrived in pair_row.received:
            rx = x(arrived)
            out.append(f'<path class="received" d="M{rx},{middle - _BAR / 2 - 1} '
                       f'l-4,-6 h8 z" fill="{_RECEIVED}"><title>check from the peer at '
                       f'{arrived * 1000:.1f} ms</title></path>')
    out.extend(_legend(plot_bottom + 48))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _row_title(row: PairRow) -> str:
    states = [b.result for b in row.checks]
    parts = [row.key, f"{len(row.checks)} checks sent"]
    if row.received:
        parts.append(f"{len(row.received)} received")
    if row.nominated:
        parts.append("nominated")
    if row.selected:
        parts.append("selected")
    if states:
        parts.append("last: " + states[-1])
    return ", ".join(parts)


def _bar_title(bar: CheckBar) -> str:
    text = f"sent at {bar.sent_at * 1000:.1f} ms"
    if len(bar.transmissions) > 1:
        text += f", {len(bar.transmissions)} transmissions"
    if bar.use_candidate:
        text += ", USE-CANDIDATE"
    if bar.triggered:
        text += ", triggered"
    if bar.result in ("succeeded", "nominated"):
        text += f": {bar.result}, RTT {bar.rtt_ms} ms"
    elif bar.result == "failed":
        text += f": failed ({bar.reason})"
    else:
        text += ": no answer yet"
    return text


def _legend(y: float) -> list[str]:
    out = []
    x = 10.0
    for name in ("succeeded", "nominated", "failed", "pending"):
        out.append(f'<rect x="{x}" y="{y}" width="14" height="{_BAR}" rx="2" '
                   f'fill="{COLOURS[name]}"/>')
        out.append(f'<text x="{x + 20}" y="{y + 10}">{name}</text>')
        x += 110
    out.append(f'<path d="M{x + 7},{y + 12} l-5,-9 h10 z" fill="{_RECEIVED}"/>')
    out.append(f'<text x="{x + 20}" y="{y + 10}">check from the peer</text>')
    x += 160
    out.append(f'<line x1="{x + 7}" y1="{y - 2}" x2="{x + 7}" y2="{y + 14}" stroke="#222" '
               f'stroke-width="1.5"/>')
    out.append(f'<text x="{x + 16}" y="{y + 10}">retransmission</text>')
    x += 130
    out.append(f'<rect x="{x}" y="{y - 2}" width="16" height="16" fill="{_SELECTED_ROW}" '
               f'stroke="#d9c36a"/>')
    out.append(f'<text x="{x + 22}" y="{y + 10}">{escape(chr(0x2605))} selected pair</text>')
    return out
