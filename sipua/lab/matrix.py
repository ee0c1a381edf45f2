"""The interop matrix: calls for every scenario, peer, caller and nomination, in the NAT lab.

A *scenario* is a lab topology with its options (impairments, NAT binding timeout, overlapping
subnets) and the pair an engineer expects ICE to select there (:data:`EXPECTED`, from the NATs'
RFC 4787 behaviours, docs/lab.md). A *cell* is one call (SIP peers: registered with Kamailio,
ICE with the lab's coturn, a tone each way, the tones checked in the recordings) or one ICE-only
session (aioice and sipua's ``ice.peer`` through the ICE peer line protocol). Each cell ends
``ok``, ``failed`` (with the peers' own log lines as evidence) or ``n/a`` (the peer cannot do
that combination, with its reason).

One lab per scenario, reused by every cell of that scenario and always removed (also on Ctrl-C);
every peer process is ended by its PID when its cell ends.

    cells = run_matrix(plan_cells(peers=["sipua", "baresip"], quick=True), prefix="mx",
                       work_dir=Path("/tmp/mx"), on_cell=print)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sipua.errors import EnvironmentProblem, UserError
from sipua.lab import linphone as linphone_mod
from sipua.lab.icepair import PeerRun
from sipua.lab.lab import SERVER_ADDRESS, Lab, teardown
from sipua.lab.peers import (
    BaresipSipPeer,
    IcePeer,
    LinphoneSipPeer,
    PeerError,
    SipPeer,
    SipuaPeer,
    aioice_ice_peer,
    domain_uri,
    relevant_lines,
    run_ice_pair,
    sipua_ice_peer,
    tone_ok,
)
from sipua.lab.sipua_peer import ends, selected_pairs

__all__ = [
    "EXPECTED",
    "PEERS",
    "QUICK",
    "SCENARIOS",
    "Cell",
    "CellSpec",
    "Expectation",
    "Scenario",
    "markdown_table",
    "plan_cells",
    "run_matrix",
    "summary",
    "write_docs",
]

log = logging.getLogger(__name__)

#: Every peer the matrix knows; ``sipua`` means sipua calling sipua.
PEERS = ("sipua", "baresip", "aioice", "linphone")
#: Peers that are SIP user agents (the others are ICE-only).
SIP_PEERS = ("sipua", "baresip", "linphone")
NOMINATIONS = ("regular", "aggressive")

#: Tones (Hz) each party sends, so that a recording tells who it came from.
TONE_SIPUA_CALLER = 440.0
TONE_SIPUA_CALLEE = 660.0
TONE_PEER = {"baresip": 770.0, "linphone": 880.0}
#: Seconds allowed for media to flow (baresip needs seconds: one check at a time).
MEDIA_TIMEOUT = 30.0


@dataclass(frozen=True)
class Scenario:
    """A lab topology and its options."""

    #: Name on the command line (``prc-prc``, ``lossy``, ...).
    name: str
    #: Lab topology (``A-B`` or ``hairpin``).
    topology: str
    #: One line for the table's legend.
    description: str
    #: Packet loss (%) and delay (ms) across the simulated internet.
    loss_pct: float = 0.0
    delay_ms: float = 0.0
    #: NAT binding timeout (s); None keeps the kernel's.
    udp_timeout: int | None = None
    #: Both homes on 192.168.1.0/24 with the same host address.
    overlap: bool = False
    #: Seconds each call keeps media flowing before the caller hangs up.
    hold: float = 3.0


@dataclass(frozen=True)
class Expectation:
    """The selected pair an engineer expects, as a rule on (local type, remote type)."""

    #: Short label for the table.
    label: str
    #: Why (the NAT behaviour behind it).
    why: str
    #: Accepted (local, remote) candidate types.
    accepted: frozenset[tuple[str, str]]

    def holds(self, types: tuple[str, str]) -> bool:
        """Whether ``types`` is one of the accepted pairs."""
        return types in self.accepted


_REFLEXIVE = ("srflx", "prflx")
_HOST_HOST = Expectation("host-host", "hosts reach each other directly",
                         frozenset({("host", "host")}))
_DIRECT_NAT = Expectation(
    "reflexive both ends",
    "endpoint-independent mappings: a direct path between the NATs' public addresses; private "
    "addresses are no path",
    frozenset((a, b) for a in _REFLEXIVE for b in _REFLEXIVE))
_ONE_RELAY = Expectation(
    "one relay",
    "a symmetric NAT facing a filtering one: no direct path; one TURN relay is needed and "
    "enough (permissions are per IP address, RFC 8656 §9)",
    frozenset({("relay", r) for r in _REFLEXIVE} | {(r, "relay") for r in _REFLEXIVE}))

#: Every scenario, in the order the matrix runs them.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("pub-pub", "pub-pub", "no NAT"),
    Scenario("prc-prc", "prc-prc", "port-restricted cone NATs both sides"),
    Scenario("prc-sym", "prc-sym", "port-restricted (a) to symmetric (b): needs TURN"),
    Scenario("sym-sym", "sym-sym", "symmetric NATs both sides: needs TURN"),
    Scenario("full-sym", "full-sym", "full cone (a) to symmetric (b)"),
    Scenario("hairpin", "hairpin", "both behind one port-restricted NAT with hairpinning"),
    Scenario("overlap", "prc-prc", "prc-prc, both homes 192.168.1.0/24, same host address",
             overlap=True),
    Scenario("lossy", "prc-prc", "prc-prc, 5 % loss and 50 ms delay each way", loss_pct=5.0,
             delay_ms=50.0),
    # 15 s, not less: the lab's Kamailio pings NATed contacts every 10 s, the only traffic on
    # an idle SIP flow over UDP; a shorter timeout races those pings and loses the BYE.
    Scenario("short-binding", "prc-prc",
             "prc-prc, NAT bindings expire after 15 s idle, a 60 s call", udp_timeout=15,
             hold=60.0),
)}

#: The pair expected in each scenario (docs/lab.md; tests/lab/test_ice_lab.py checks the same).
EXPECTED: dict[str, Expectation] = {
    "pub-pub": _HOST_HOST,
    "prc-prc": _DIRECT_NAT,
    "prc-sym": _ONE_RELAY,
    "sym-sym": _ONE_RELAY,
    "full-sym": replace(_DIRECT_NAT, why="the full cone's public port takes the symmetric "
                        "side's new mapping, learned as peer-reflexive"),
    "hairpin": replace(_HOST_HOST, why="both hosts on one LAN: host to host, not through the "
                       "NAT"),
    "overlap": _DIRECT_NAT,
    "lossy": _DIRECT_NAT,
    "short-binding": _DIRECT_NAT,
}


@dataclass(frozen=True)
class CellSpec:
    """One cell to run."""

    scenario: str
    #: The peer sipua is paired with (``sipua`` for sipua-sipua).
    peer: str
    #: Who calls (SIP) or controls (ICE-only): ``sipua`` or the peer.
    caller: str
    #: The controlling side's nomination.
    nomination: str

    @property
    def callee(self) -> str:
        """The other party."""
        return self.peer if self.caller == "sipua" else "sipua"


@dataclass
class Cell:
    """The outcome of one cell (what the table and ``--json`` show)."""

    scenario: str
    peer: str
    caller: str
    callee: str
    nomination: str
    #: ``ok``, ``failed`` or ``n/a``.
    status: str = "failed"
    #: Selected pair (local-remote types) as sipua and as the other party see it.
    pair_sipua: str | None = None
    pair_peer: str | None = None
    #: Expected pair (label) and whether sipua's selected pair is it.
    expected: str = ""
    pair_as_expected: bool | None = None
    #: INVITE to first RTP (calls, sipua's report) or start of checks to selected (ICE only).
    setup_ms: float | None = None
    #: The other party's own figure, when it has one.
    peer_setup_ms: float | None = None
    #: Audio check: ``both ways (440/770 Hz)``, what failed, or ``n/a (ICE only)``.
    audio: str = ""
    audio_ok: bool | None = None
    #: Why it failed or is n/a.
    reason: str = ""
    #: Log lines backing ``reason`` (the peers' own).
    evidence: list[str] = field(default_factory=list)
    #: Wall-clock seconds the cell took.
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"event": "cell", **asdict(self)}


# ------------------------------------------------------------------------------ planning

#: The CI subset: every scenario once (sipua-sipua), every peer at least once.
QUICK: tuple[CellSpec, ...] = (
    *(CellSpec(s, "sipua", "sipua", "regular") for s in SCENARIOS),
    CellSpec("prc-prc", "sipua", "sipua", "aggressive"),
    CellSpec("sym-sym", "sipua", "sipua", "aggressive"),
    CellSpec("prc-prc", "baresip", "sipua", "regular"),
    CellSpec("prc-prc", "baresip", "baresip", "regular"),
    CellSpec("prc-sym", "baresip", "sipua", "aggressive"),
    CellSpec("prc-sym", "baresip", "baresip", "regular"),
    CellSpec("prc-prc", "aioice", "sipua", "regular"),
    CellSpec("prc-prc", "aioice", "aioice", "aggressive"),
    CellSpec("sym-sym", "aioice", "sipua", "aggressive"),
    CellSpec("sym-sym", "aioice", "aioice", "aggressive"),
    CellSpec("hairpin", "aioice", "sipua", "regular"),
    CellSpec("hairpin", "aioice", "aioice", "aggressive"),
    # sipua calling linphone across prc-prc is left to the full matrix: linphone starts its
    # checks about 100 ms after its 200 OK, and sipua's regular nomination sometimes settles
    # on the relayed pair before the direct one answers (docs/interop.md).
    CellSpec("prc-prc", "linphone", "linphone", "regular"),
    CellSpec("prc-sym", "linphone", "sipua", "regular"),
)


def _split(text: str | Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    if text is None:
        return list(known)
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)
             if t.strip()]
    for item in items:
        if item not in known:
            raise UserError(f"unknown {what} {item!r} (one of: {', '.join(known)})")
    return items


def plan_cells(*, peers: str | Sequence[str] | None = None,
               scenarios: str | Sequence[str] | None = None,
               nominations: str | Sequence[str] | None = None,
               quick: bool = False) -> list[CellSpec]:
    """The cells to run, grouped by scenario in :data:`SCENARIOS` order.

    Full: per scenario, per peer, each caller (sipua-sipua: one direction), each nomination.
    ``quick``: :data:`QUICK`, filtered by the same choices."""
    peer_list = _split(peers, PEERS, "peer")
    scen_list = _split(scenarios, list(SCENARIOS), "scenario")
    nom_list = _split(nominations, NOMINATIONS, "nomination")
    if quick:
        chosen = [c for c in QUICK if c.peer in peer_list and c.scenario in scen_list
                  and c.nomination in nom_list]
    else:
        chosen = []
        for s in scen_list:
            for p in peer_list:
                callers = ["sipua"] if p == "sipua" else ["sipua", p]
                chosen += [CellSpec(s, p, c, n) for c in callers for n in nom_list]
    order = {name: i for i, name in enumerate(SCENARIOS)}
    return sorted(chosen, key=lambda c: order[c.scenario])


# ------------------------------------------------------------------------------ running

def _not_available(peer: str) -> str | None:
    """Why ``peer`` cannot run on this machine (None when it can)."""
    if peer == "baresip" and shutil.which("baresip") is None:
        return "baresip is not installed (apt-get install baresip-core)"
    if peer == "linphone" and not linphone_mod.available():
        return "linphonec is not installed (apt-get install linphone-cli)"
    if peer == "aioice":
        try:
            import aioice  # noqa: F401
        except ImportError:
            return "aioice is not installed (pip install 'sipua[test]')"
    return None


def _cannot(spec: CellSpec) -> tuple[str, list[str]] | None:
    """Why a cell is n/a by the peer's own limits, and the evidence."""
    if spec.caller in ("baresip", "linphone") and spec.nomination != "regular":
        what = ("baresip's ice module (RFC 5245) nominates regularly only" if spec.caller ==
                "baresip" else "linphone's ICE (mediastreamer2) nominates regularly only")
        return what, [f"{spec.caller} has no setting for aggressive nomination"]
    if spec.peer == "aioice" and spec.caller == "aioice":
        peer = aioice_ice_peer()
        why = peer.cannot("controlling", spec.nomination)
        if why:
            return why, _own_refusal(peer, spec.nomination)
    return None


def _own_refusal(peer: IcePeer, nomination: str) -> list[str]:
    """The peer's own words when asked for what it cannot do (it exits with a usage error)."""
    try:
        done = subprocess.run(peer.argv("controlling", nomination), capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"could not ask {peer.kind}: {exc}"]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    return [f"{peer.kind} (exit {done.returncode}): {ln}" for ln in lines[-1:]]


def _make_sip_peer(kind: str, lab: Lab, host: str, user: str, scenario: Scenario,
                   work_dir: Path, *, tone: float, nomination: str | None,
                   rtcp_mux: bool) -> SipPeer:
    if kind == "sipua":
        return SipuaPeer(lab, host, user, tone=tone, work_dir=work_dir, nomination=nomination,
                         rtcp_mux=rtcp_mux)
    if kind == "baresip":
        return BaresipSipPeer(lab, host, user, tone=tone, work_dir=work_dir,
                              turn="sym" in scenario.topology)
    if kind == "linphone":
        return LinphoneSipPeer(lab, host, user, tone=tone, work_dir=work_dir)
    raise UserError(f"{kind} is not a SIP peer")


def _evidence(peers: Iterable[SipPeer]) -> list[str]:
    out = []
    for peer in peers:
        out += [f"{peer.kind}@{peer.host}: {ln.strip()[:300]}" for ln in
                relevant_lines(peer.log())]
    return out


def _pair_check(report: dict[str, Any] | None, expectation: Expectation) -> bool | None:
    """Whether every component's selected pair in sipua's report is the expected one."""
    if report is None:
        return None
    pairs = selected_pairs(report)
    return bool(pairs) and all(expectation.holds(ends(p)) for p in pairs.values())


def _run_sip_cell(lab: Lab, scenario: Scenario, spec: CellSpec, cell: Cell,
                  work_dir: Path) -> None:
    """One call; fills ``cell``."""
    rtcp_mux = spec.peer != "baresip"  # baresip offers and answers two components
    if spec.peer == "sipua":
        caller_tone, callee_tone = TONE_SIPUA_CALLER, TONE_SIPUA_CALLEE
    elif spec.caller == "sipua":
        caller_tone, callee_tone = TONE_SIPUA_CALLER, TONE_PEER[spec.peer]
    else:
        caller_tone, callee_tone = TONE_PEER[spec.peer], TONE_SIPUA_CALLER
    caller = _make_sip_peer(spec.caller, lab, "a", "alice", scenario, work_dir / "caller",
                            tone=caller_tone, nomination=spec.nomination, rtcp_mux=rtcp_mux)
    callee = _make_sip_peer(spec.callee, lab, "b", "bob", scenario, work_dir / "callee",
                            tone=callee_tone, nomination=None, rtcp_mux=rtcp_mux)
    expectation = EXPECTED[scenario.name]
    cell.expected = expectation.label
    sipua = caller if isinstance(caller, SipuaPeer) else callee
    other = callee if sipua is caller else caller
    assert isinstance(sipua, SipuaPeer)
    try:
        callee.start(answer=True)
        caller.start(answer=False)
        caller.call(domain_uri(callee.user), hold=scenario.hold, timeout=MEDIA_TIMEOUT)
        caller.wait_media(MEDIA_TIMEOUT + 15)
        callee.wait_media(MEDIA_TIMEOUT)
        if not isinstance(caller, SipuaPeer):
            time.sleep(scenario.hold)
            caller.hangup()
        caller.wait_ended(scenario.hold + 60)
        callee.wait_ended(40)
    except PeerError as exc:
        cell.reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "error"
        cell.evidence = _evidence((caller, callee))
    finally:
        caller.stop()
        callee.stop()
    report = sipua.report()
    cell.pair_sipua = sipua.selected_pair()
    cell.pair_peer = other.selected_pair()
    cell.setup_ms = sipua.setup_ms()
    cell.peer_setup_ms = other.setup_ms()
    cell.pair_as_expected = _pair_check(report, expectation)
    heard_by_caller = tone_ok(caller.recording(), callee.tone)
    heard_by_callee = tone_ok(callee.recording(), caller.tone)
    cell.audio_ok = heard_by_caller[0] and heard_by_callee[0]
    if cell.audio_ok:
        cell.audio = f"both ways ({caller.tone:g} / {callee.tone:g} Hz)"
    else:
        cell.audio = (f"caller heard {heard_by_caller[1]:.0f} Hz (want {callee.tone:g}), "
                      f"callee heard {heard_by_callee[1]:.0f} Hz (want {caller.tone:g})")
    if cell.reason:
        return
    problems = []
    if report is None or report.get("error"):
        problems.append(f"sipua: {(report or {}).get('error') or 'no call report'}")
    only_the_pair = not problems and cell.audio_ok
    if not cell.pair_as_expected:
        chooser = "" if spec.caller == "sipua" else f" (nominated by {spec.caller})"
        problems.append(f"pair {cell.pair_sipua}{chooser} is not {expectation.label}")
    else:
        only_the_pair = False
    if not cell.audio_ok:
        problems.append(f"audio: {cell.audio}")
    limit = _peer_limit(other) if only_the_pair and spec.caller != "sipua" else None
    if limit is not None:
        # The peer controls and could not use the direct path: its own log says why. The call
        # still connected (through the relay) with audio both ways.
        cell.status, cell.reason = "n/a", f"{limit[0]} (connected through {cell.pair_sipua})"
        cell.evidence = [f"{other.kind}@{other.host}: {limit[1]}"]
    elif problems:
        cell.reason = "; ".join(problems)
        cell.evidence = _evidence((caller, callee))
    else:
        cell.status = "ok"


#: What a peer's own log says when it cannot take a direct path that exists: (peer kind, log
#: text, what it means). Used only when that peer controls, the call connected and the audio
#: was verified, and sipua's pair was not the expected one.
PEER_LIMITS: tuple[tuple[str, str, str], ...] = (
    ("baresip", "candidate pair not found",
     "baresip learns no peer-reflexive candidate from a check from an unknown address "
     "(RFC 8445 §7.3.1.3), so it cannot use the direct path through a symmetric NAT"),
)


def _peer_limit(peer: SipPeer) -> tuple[str, str] | None:
    """(what the peer cannot do, its log line saying so), from :data:`PEER_LIMITS`."""
    text = peer.log()
    for kind, marker, meaning in PEER_LIMITS:
        if peer.kind != kind:
            continue
        line = next((ln.strip() for ln in text.splitlines() if marker in ln), None)
        if line is not None:
            return meaning, line[:300]
    return None


def _types(sel: dict[str, Any]) -> tuple[str, str]:
    return str(sel["local"]["type"]), str(sel["remote"]["type"])


def _run_ice_cell(lab: Lab, scenario: Scenario, spec: CellSpec, cell: Cell,
                  work_dir: Path) -> None:
    """One ICE-only session through the ICE peer line protocol; fills ``cell``."""
    ours, theirs = sipua_ice_peer(), aioice_ice_peer()
    controlling, controlled = (ours, theirs) if spec.caller == "sipua" else (theirs, ours)
    a, b = run_ice_pair(lab, controlling.argv("controlling", spec.nomination),
                        controlled.argv("controlled", spec.nomination), work_dir)
    ours_run, theirs_run = (a, b) if spec.caller == "sipua" else (b, a)
    expectation = EXPECTED[scenario.name]
    cell.audio = "n/a (ICE only)"
    problems = []
    for run, peer in ((ours_run, ours), (theirs_run, theirs)):
        if run.selected is None or run.event("data_ok") is None or run.exit_code != 0:
            problems.append(f"{peer.kind}: {run.error or _last_event(run)}")
    mine, their = ours_run.selected, theirs_run.selected
    if mine is not None:
        cell.pair_sipua = "-".join(_types(mine))
        cell.setup_ms = float(mine["ms_from_start_of_checks"])
    if their is not None:
        # aioice names the base of its local candidate ("host") even behind a NAT.
        cell.pair_peer = "-".join(_types(their))
        cell.peer_setup_ms = float(their["ms_from_start_of_checks"])
    if spec.caller == "sipua":
        cell.expected = expectation.label
        cell.pair_as_expected = mine is not None and expectation.holds(_types(mine))
    else:
        # aioice controls aggressively and keeps the first nominated pair that works: we must
        # select exactly that pair; through a symmetric NAT it still has to be relayed.
        needs_relay = expectation is _ONE_RELAY
        cell.expected = "aioice's nominated pair" + (", relayed" if needs_relay else "")
        cell.pair_as_expected = (
            mine is not None and their is not None
            and mine["local"]["addr"] == their["remote"]["addr"]
            and (not needs_relay or "relay" in _types(mine)))
    if mine is not None and their is not None and not problems and not any(
            str(s["remote"]["addr"]).startswith(pfx) for s in (their,)
            for pfx in (f"{SERVER_ADDRESS}:", f"{lab.hosts['a'].public_address}:",
                        f"{lab.hosts['b'].public_address}:", f"{lab.hosts['a'].address}:",
                        f"{lab.hosts['b'].address}:")):
        problems.append(f"{theirs.kind}'s remote end {their['remote']['addr']} is none of ours")
    if not problems and not cell.pair_as_expected:
        problems.append(f"pair {cell.pair_sipua} is not {cell.expected}")
    if problems:
        cell.reason = "; ".join(problems)
        cell.evidence = [f"{r.name} ({p.kind}): {ln.strip()[:300]}"
                         for r, p in ((ours_run, ours), (theirs_run, theirs))
                         for ln in relevant_lines(r.stderr_tail(200))]
    else:
        cell.status = "ok"


def _last_event(run: PeerRun) -> str:
    return json.dumps(run.events[-1]) if run.events else "no event"


def _run_cell(lab: Lab | None, lab_error: str | None, scenario: Scenario, spec: CellSpec,
              work_dir: Path) -> Cell:
    cell = Cell(spec.scenario, spec.peer, spec.caller, spec.callee, spec.nomination)
    started = time.monotonic()
    try:
        cannot = _cannot(spec)
        missing = _not_available(spec.peer)
        if cannot is not None:
            cell.status, cell.reason, cell.evidence = "n/a", cannot[0], cannot[1]
            if spec.peer not in SIP_PEERS:
                cell.audio = "n/a (ICE only)"
        elif missing is not None:
            cell.reason = missing
        elif lab is None:
            cell.reason = f"lab did not come up: {lab_error}"
        elif spec.peer in SIP_PEERS:
            _run_sip_cell(lab, scenario, spec, cell, work_dir)
        else:
            _run_ice_cell(lab, scenario, spec, cell, work_dir)
    except (PeerError, EnvironmentProblem, UserError, OSError, subprocess.SubprocessError,
            AssertionError) as exc:
        cell.status = "failed"
        cell.reason = cell.reason or f"{type(exc).__name__}: {exc}"[:300]
    cell.seconds = round(time.monotonic() - started, 1)
    return cell


def lab_name(prefix: str, index: int) -> str:
    """The lab of the ``index``-th scenario (a valid lab name)."""
    return f"{prefix}{index}"


def run_matrix(specs: Sequence[CellSpec], *, prefix: str, work_dir: Path,
               on_cell: Callable[[Cell], None] | None = None) -> list[Cell]:
    """Run ``specs`` scenario by scenario; one lab each, always removed (also on Ctrl-C).

    ``prefix`` names the labs (``PREFIX0``, ``PREFIX1``, ...; at most 10 characters)."""
    if len(prefix) > 10 or not re.match(r"^[a-z][a-z0-9]*$", prefix):
        raise UserError(f"bad --name {prefix!r}: 1-10 lower-case letters and digits, starting "
                        "with a letter")
    cells: list[Cell] = []
    by_scenario: dict[str, list[CellSpec]] = {}
    for spec in specs:
        by_scenario.setdefault(spec.scenario, []).append(spec)
    for index, (name, group) in enumerate(by_scenario.items()):
        scenario = SCENARIOS[name]
        lab: Lab | None = None
        lab_error: str | None = None
        labname = lab_name(prefix, index)
        needs_lab = any(_cannot(s) is None and _not_available(s.peer) is None for s in group)
        try:
            if needs_lab:
                try:
                    lab = Lab.up(scenario.topology, labname, delay_ms=scenario.delay_ms,
                                 loss_pct=scenario.loss_pct, udp_timeout=scenario.udp_timeout,
                                 overlap=scenario.overlap, servers=True)
                except (EnvironmentProblem, UserError) as exc:
                    lab_error = str(exc)
            for number, spec in enumerate(group):
                cell_dir = work_dir / name / f"{number:02d}-{spec.peer}-{spec.caller}-" \
                    f"{spec.nomination}"
                cell_dir.mkdir(parents=True, exist_ok=True)
                cell = _run_cell(lab, lab_error, scenario, spec, cell_dir)
                log.info("%s %s: %s %s", name, spec, cell.status, cell.reason)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
        finally:
            if needs_lab:
                teardown(labname)
    return cells


# ------------------------------------------------------------------------------ output

def summary(cells: Sequence[Cell], seconds: float) -> dict[str, Any]:
    """Counts per status and the verdict (``ok`` when every cell is ok or n/a)."""
    counts = {s: sum(c.status == s for c in cells) for s in ("ok", "failed", "n/a")}
    return {"event": "summary", "cells": len(cells), **counts,
            "passed": counts["failed"] == 0, "seconds": round(seconds, 1)}


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else ""


def row(cell: Cell) -> list[str]:
    """One table row (the columns of :data:`COLUMNS`)."""
    expected = cell.expected
    if cell.pair_as_expected is not None:
        expected += " ✓" if cell.pair_as_expected else " ✗"
    result = cell.status if cell.status == "ok" else f"{cell.status}: {cell.reason}"
    return [cell.scenario, cell.peer, f"{cell.caller} → {cell.callee}", cell.nomination, result,
            cell.pair_sipua or "", cell.pair_peer or "", expected, _ms(cell.setup_ms),
            _ms(cell.peer_setup_ms), cell.audio]


#: Columns of the table.
COLUMNS = ("scenario", "peer", "who calls", "nomination", "result", "pair (sipua)",
           "pair (peer)", "expected pair", "setup (sipua)", "setup (peer)", "audio verified")


def markdown_table(cells: Sequence[Cell]) -> str:
    """The cells as a markdown table, then the evidence of every failed or n/a cell."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(esc(v) for v in row(c)) + " |" for c in cells]
    notes = [c for c in cells if c.status != "ok" and c.evidence]
    if notes:
        lines += ["", "Evidence (the peers' own lines):", ""]
        for c in notes:
            lines.append(f"- {c.scenario}, {c.caller} → {c.callee}, {c.nomination} "
                         f"({c.status}): {esc(c.reason)}")
            lines += ["  - `" + esc(e).replace("`", "'") + "`" for e in c.evidence[-6:]]
    return "\n".join(lines)


BEGIN = "<!-- matrix:begin -->"
END = "<!-- matrix:end -->"


def write_docs(path: Path, cells: Sequence[Cell], *, command: str, seconds: float,
               when: str | None = None) -> None:
    """Replace the generated section of ``path`` (between :data:`BEGIN` and :data:`END`) with
    the table, the command and the date; the rest of the file is kept. Without markers the
    section is appended."""
    when = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    verdict = summary(cells, seconds)
    legend = "\n".join(f"- **{s.name}** ({s.topology}): {s.description}; expected "
                       f"{EXPECTED[s.name].label}: {EXPECTED[s.name].why}."
                       for s in SCENARIOS.values() if any(c.scenario == s.name for c in cells))
    body = (f"{BEGIN}\n"
            f"Generated by `{command}` on {when}: {verdict['cells']} cells, {verdict['ok']} ok, "
            f"{verdict['failed']} failed, {verdict['n/a']} n/a, {verdict['seconds']:.0f} s.\n\n"
            f"{markdown_table(cells)}\n\nScenarios:\n\n{legend}\n{END}")
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this run was started, for the docs."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "sipua " + " ".join(args)


def run_command(*, peers: str, scenarios: str | None, nominations: str, quick: bool,
                as_json: bool, docs_path: str | None, prefix: str,
                work_dir: str | None) -> int:
    """``sipua lab matrix``: run, print as cells complete, print the table, write the docs;
    returns the exit code (0 when every cell is ok or n/a)."""
    import tempfile

    import click
    from rich.console import Console
    from rich.table import Table

    from sipua.lab.lab import check_environment

    specs = plan_cells(peers=peers, scenarios=scenarios, nominations=nominations, quick=quick)
    if not specs:
        raise UserError("no cell to run: check --peers, --scenarios and --nomination")
    check_environment(delay=any(SCENARIOS[s.scenario].delay_ms for s in specs), servers=True)
    own_dir = work_dir is None
    base = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sipua-matrix-"))
    base.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=as_json, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 220)  # a log file: do not fold the table

    def show(cell: Cell) -> None:
        if as_json:
            click.echo(json.dumps(cell.to_dict(), default=str))
            return
        style = {"ok": "green", "n/a": "yellow"}.get(cell.status, "red")
        values = row(cell)
        console.print(f"[{style}]{cell.status:>6}[/] {values[0]:<13} {values[2]:<20} "
                      f"{cell.nomination:<10} {values[5] or '-':<14} {values[8] or '-':>8}  "
                      f"{cell.audio}  ({cell.seconds:.0f} s)"
                      + (f"\n        {cell.reason}" if cell.reason else ""))

    if not as_json:
        console.print(f"{len(specs)} cells in {len({s.scenario for s in specs})} scenarios; "
                      f"logs in {base}")
    started = time.monotonic()
    try:
        cells = run_matrix(specs, prefix=prefix, work_dir=base, on_cell=show)
    finally:
        if own_dir and not as_json:
            console.print(f"logs kept in {base}")
    seconds = time.monotonic() - started
    verdict = summary(cells, seconds)
    if as_json:
        click.echo(json.dumps(verdict))
    else:
        table = Table(*COLUMNS, title="interop matrix", show_lines=False)
        for cell in cells:
            style = {"ok": "green", "n/a": "yellow"}.get(cell.status, "red")
            table.add_row(*row(cell), style=style)
        console.print(table)
        console.print(f"{verdict['cells']} cells: {verdict['ok']} ok, {verdict['failed']} "
                      f"failed, {verdict['n/a']} n/a in {seconds:.0f} s")
    if docs_path is not None:
        write_docs(Path(docs_path), cells, command=command_line(), seconds=seconds)
        if not as_json:
            console.print(f"wrote {docs_path}")
    return 0 if verdict["passed"] else 1
