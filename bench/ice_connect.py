"""ICE connection time in the NAT lab: this agent against aioice, same topology, same run.

For each topology one lab is built (with coturn for STUN and TURN), then pairs run in
alternating rounds so that drift of the shared machine favours no one:

- ``sipua-aggressive``: ``python -m ice.peer`` on both hosts, aggressive nomination;
- ``aioice-aggressive``: tests/support/aioice_peer.py on both hosts (aioice only nominates
  aggressively when it controls): the like-for-like comparison;
- ``sipua-regular``: our peers with regular nomination, for information;
- ``sipua-first``: our peers, aggressive, each offering only the candidate type of the pair
  an engineer expects on that topology (``WORKING_TYPES``), so that the first check each side
  sends is on the working path: the fastest any agent could connect there, NAT-opening race and
  the peers' own processing included.

Host a controls. A run's *connect time* is the later of the two peers' "selected" events, each
measured from that peer's start of checks (docs/ice-peer.md); each side is reported too. The
*physical minimum* is judged two ways: strictly, one round trip on the path the pair ends up
using (the median echo RTT our peers measure after selection: no check can be confirmed
faster); and as the median of ``sipua-first``, which adds what no check order can avoid (a
first check dying at the peer's still-closed NAT, the TURN permission, the nominating round,
both processes' reaction time). The issue's target: our median at most half of aioice's, our
maximum no worse, and our median within one RTT plus one Ta of the physical minimum.

Usage (root; the lab needs namespaces and netfilter)::

    python3 bench/ice_connect.py [--runs N] [--topologies prc-prc,prc-sym,...] [--json]
                                 [--logs DIR] [--verbose] [--sipua-ta SECONDS]

``--sipua-ta`` runs our peers with another pacing interval (``--ta``; the target's "one Ta" is
then that one). ``--logs DIR`` keeps every peer's stderr
(``DIR/TOPOLOGY/NNN-IMPL/{a,b}.stderr.log``); ``--verbose`` also passes ``--verbose`` to the
peers, so those logs show each check, its retransmissions and the pacing. The lab is removed at
the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from ice.agent import IceSettings
from sipua.errors import UserError
from sipua.lab import topology as lab_topology
from sipua.lab.icepair import PeerRun, run_pair
from sipua.lab.lab import SERVER_ADDRESS, STUN_PORT, TURN_PASSWORD, TURN_USER, Lab, teardown

ROOT = Path(__file__).resolve().parents[1]
AIOICE_PEER = ROOT / "tests" / "support" / "aioice_peer.py"
DEFAULT_TOPOLOGIES = "prc-prc,prc-sym,full-sym,sym-sym,hairpin"
#: Implementations in the order of one round (rotated every round).
IMPLS = ("sipua-aggressive", "aioice-aggressive", "sipua-regular", "sipua-first")
OURS, THEIRS = "sipua-aggressive", "aioice-aggressive"
#: Candidate types (host a, host b) of the pair expected on each topology, for ``sipua-first``.
WORKING_TYPES = {
    "pub-pub": ("host", "host"), "hairpin": ("host", "host"), "prc-prc": ("srflx", "srflx"),
    "full-sym": ("srflx", "srflx"), "prc-sym": ("srflx", "relay"), "sym-sym": ("srflx", "relay"),
    "prc-full": ("srflx", "srflx"), "full-full": ("srflx", "srflx"), "pub-prc": ("host", "srflx"),
}
PEER_ARGS = (
    "--stun", f"{SERVER_ADDRESS}:{STUN_PORT}", "--turn", f"{SERVER_ADDRESS}:{STUN_PORT}",
    "--turn-user", TURN_USER, "--turn-pass", TURN_PASSWORD, "--linger", "1",
)


def peer_argv(impl: str, role: str, verbose: bool, ta: float | None = None,
              candidates: str | None = None) -> list[str]:
    """Command line of one peer of implementation ``impl`` (``NAME-NOMINATION``, or
    ``sipua-first``: aggressive with only ``candidates``); ``ta`` overrides our agent's pacing
    interval (seconds)."""
    name, _, nomination = impl.partition("-")
    program = [sys.executable, "-m", "ice.peer"] if name == "sipua" else \
        [sys.executable, str(AIOICE_PEER)]
    extra = ["--ta", str(ta)] if ta is not None and name == "sipua" else []
    if nomination == "first":
        nomination = "aggressive"
        extra += ["--candidates", candidates or "host,srflx,relay"]
    return [*program, "--role", role, "--nomination", nomination, *PEER_ARGS, *extra,
            *(["--verbose"] if verbose else [])]


@dataclass
class Run:
    """One pairing: what the two peers printed, reduced to the figures."""

    impl: str
    ok: bool
    ms_a: float | None
    ms_b: float | None
    rtt_ms: float | None
    pair: str
    reason: str | None

    @property
    def connect_ms(self) -> float | None:
        """The later of the two selections: when both ends have a pair."""
        if self.ms_a is None or self.ms_b is None:
            return None
        return max(self.ms_a, self.ms_b)


def _reduce(impl: str, a: PeerRun, b: PeerRun) -> Run:
    def why(run: PeerRun) -> str | None:
        failed = run.event("failed") or run.event("data_failed")
        if failed is not None:
            return f"{run.name}: {failed.get('event')} {failed.get('reason')}"
        if run.error:
            return f"{run.name}: {run.error}"
        if run.selected is None or run.event("data_ok") is None:
            return f"{run.name}: no selection or echo"
        return None

    reasons = [r for r in (why(a), why(b)) if r]
    rtts = [float(e["rtt_ms"]) for e in (a.event("data_ok"), b.event("data_ok")) if e]
    sel = a.selected
    pair = f"{sel['local']['type']}-{sel['remote']['type']}" if sel else "-"
    return Run(impl, not reasons, a.connect_ms, b.connect_ms,
               statistics.median(rtts) if rtts else None, pair, "; ".join(reasons) or None)


def one_run(lab: Lab, impl: str, log_dir: Path, verbose: bool, ta: float | None,
            working: tuple[str, str] | None = None) -> Run:
    """Pair ``impl`` with itself, a controlling on host a, b controlled on host b;
    ``working``: the candidate types of ``sipua-first`` on a and b."""
    env = ["env", f"PYTHONPATH={ROOT}"]
    kinds = working or (None, None)
    a, b = run_pair(
        lab.argv("a", [*env, *peer_argv(impl, "controlling", verbose, ta, kinds[0])]),
        lab.argv("b", [*env, *peer_argv(impl, "controlled", verbose, ta, kinds[1])]),
        log_dir=log_dir, timeout=40)
    return _reduce(impl, a, b)


def _p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Median, p90 and max of the connect time and of each side; failures; pairs seen."""
    good = [r for r in runs if r.ok and r.connect_ms is not None]
    out: dict[str, Any] = {"runs": len(runs), "ok": len(good),
                           "failures": [r.reason for r in runs if not r.ok]}
    pairs: dict[str, int] = {}
    for r in good:
        pairs[r.pair] = pairs.get(r.pair, 0) + 1
    out["pairs_a"] = pairs
    if good:
        times = [r.connect_ms for r in good if r.connect_ms is not None]
        side_a = [r.ms_a for r in good if r.ms_a is not None]
        side_b = [r.ms_b for r in good if r.ms_b is not None]
        out.update({
            "median_ms": round(statistics.median(times), 1),
            "p90_ms": round(_p90(times), 1),
            "max_ms": round(max(times), 1),
            "min_ms": round(min(times), 1),
            "a_median_ms": round(statistics.median(side_a), 1),
            "a_max_ms": round(max(side_a), 1),
            "b_median_ms": round(statistics.median(side_b), 1),
            "b_max_ms": round(max(side_b), 1),
        })
        rtts = [r.rtt_ms for r in good if r.rtt_ms is not None]
        if rtts:
            out["rtt_ms"] = round(statistics.median(rtts), 2)
    return out


def verdict(stats: dict[str, dict[str, Any]], ta_ms: float) -> dict[str, Any]:
    """The issue's three targets for one topology, from the per-implementation figures."""
    ours, theirs = stats[OURS], stats[THEIRS]
    result: dict[str, Any] = {}
    if "median_ms" not in ours or "median_ms" not in theirs:
        result["met"] = False
        return result
    rtt = float(ours.get("rtt_ms", 0.0))
    physical = rtt
    bound = physical + rtt + ta_ms
    first = stats.get("sipua-first", {})
    if "median_ms" in first:
        result.update({
            "working_first_ms": first["median_ms"],
            "above_working_first_ms": round(ours["median_ms"] - first["median_ms"], 1),
            "within_rtt_plus_ta_of_working_first":
                ours["median_ms"] <= first["median_ms"] + rtt + ta_ms,
        })
    result.update({
        "median_ratio": round(ours["median_ms"] / theirs["median_ms"], 3),
        "max_ratio": round(ours["max_ms"] / theirs["max_ms"], 3),
        "physical_min_ms": round(physical, 2),
        "bound_ms": round(bound, 1),
        "above_physical_ms": round(ours["median_ms"] - physical, 1),
        "median_half_of_aioice": ours["median_ms"] <= 0.5 * theirs["median_ms"],
        "max_not_worse": ours["max_ms"] <= theirs["max_ms"],
        "within_rtt_plus_ta": ours["median_ms"] <= bound,
        "no_failures": not ours["failures"],
    })
    result["met"] = all(result[k] for k in ("median_half_of_aioice", "max_not_worse",
                                             "within_rtt_plus_ta", "no_failures"))
    return result


def bench_topology(topology: str, runs: int, logs: Path, verbose: bool,
                   ta: float | None) -> dict[str, Any]:
    """One lab for ``topology``; ``runs`` alternating rounds of every implementation."""
    name = "bc" + uuid.uuid4().hex[:8]
    lab = Lab.up(topology, name, servers=True)
    working = WORKING_TYPES.get(topology)
    impls = tuple(i for i in IMPLS if i != "sipua-first" or working is not None)
    results: dict[str, list[Run]] = {impl: [] for impl in impls}
    try:
        for i in range(runs):
            order = impls[i % len(impls):] + impls[:i % len(impls)]
            for impl in order:
                run = one_run(lab, impl, logs / topology / f"{i:03d}-{impl}", verbose, ta,
                              working if impl == "sipua-first" else None)
                results[impl].append(run)
                mark = f"{run.connect_ms:.0f}" if run.ok and run.connect_ms else "FAIL"
                print(f"{topology} {i + 1}/{runs} {impl}: {mark}", file=sys.stderr, flush=True)
    finally:
        teardown(name)
    stats = {impl: summarize(rs) for impl, rs in results.items()}
    return {"stats": stats, "runs": {k: [asdict(r) | {"connect_ms": r.connect_ms} for r in v]
                                     for k, v in results.items()}}


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def print_table(topology: str, result: dict[str, Any], ta_ms: float) -> None:
    """Human-readable figures for one topology."""
    stats, check = result["stats"], result["verdict"]
    print(f"\n== {topology}   (Ta {ta_ms:.0f} ms; times in ms from start of checks)")
    print(f"{'implementation':<19}{'ok':>7}{'median':>8}{'p90':>8}{'max':>8}"
          f"{'a med':>8}{'b med':>8}{'rtt':>6}  pairs seen by a")
    for impl in IMPLS:
        if impl not in stats:
            continue
        s = stats[impl]
        pairs = ", ".join(f"{k} x{v}" for k, v in sorted(s["pairs_a"].items()))
        print(f"{impl:<19}{s['ok']:>3}/{s['runs']:<3}{_fmt(s.get('median_ms')):>8}"
              f"{_fmt(s.get('p90_ms')):>8}{_fmt(s.get('max_ms')):>8}"
              f"{_fmt(s.get('a_median_ms')):>8}{_fmt(s.get('b_median_ms')):>8}"
              f"{_fmt(s.get('rtt_ms')):>6}  {pairs}")
        for reason in s["failures"]:
            print(f"    failure: {reason}")
    if "median_ratio" not in check:
        print("target: cannot be judged (no successful runs on one side)")
        return
    print(f"sipua/aioice (aggressive): median ratio {check['median_ratio']:.2f}, "
          f"max ratio {check['max_ratio']:.2f}")
    print(f"physical minimum ~ 1 RTT = {check['physical_min_ms']:.2f} ms; sipua median is "
          f"{check['above_physical_ms']:.1f} ms above it (allowed: RTT + Ta = "
          f"{check['bound_ms'] - check['physical_min_ms']:.1f} ms)")
    if "working_first_ms" in check:
        print(f"working pair checked first (sipua-first) {check['working_first_ms']:.1f} ms; "
              f"sipua median is {check['above_working_first_ms']:.1f} ms above it: within "
              f"RTT + Ta: {'yes' if check['within_rtt_plus_ta_of_working_first'] else 'NO'}")
    marks = {True: "yes", False: "NO"}
    print(f"target met: {marks[check['met']]} (median <= aioice/2: "
          f"{marks[check['median_half_of_aioice']]}, max <= aioice max: "
          f"{marks[check['max_not_worse']]}, within RTT + Ta of the minimum: "
          f"{marks[check['within_rtt_plus_ta']]}, no failures: {marks[check['no_failures']]})")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ice_connect.py",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per implementation")
    parser.add_argument("--topologies", default=DEFAULT_TOPOLOGIES,
                        help=f"comma-separated lab topologies (default {DEFAULT_TOPOLOGIES})")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--logs", type=Path, help="keep every peer's stderr under this directory")
    parser.add_argument("--verbose", action="store_true", help="peers log at debug level")
    parser.add_argument("--sipua-ta", type=float, metavar="SECONDS",
                        help="our agent's pacing interval Ta (default: its own default)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.sipua_ta is not None and not args.sipua_ta > 0:
        parser.error("--sipua-ta must be positive")
    topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    try:
        for name in topologies:
            lab_topology.plan(name)
    except UserError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0:
        print("ice_connect.py: error: needs root (the NAT lab uses network namespaces and "
              "netfilter)", file=sys.stderr)
        return 8
    signal.signal(signal.SIGTERM, _terminate)
    ta_ms = (args.sipua_ta if args.sipua_ta is not None else IceSettings().ta) * 1000
    logs = args.logs or Path(tempfile.mkdtemp(prefix="ice_connect-"))
    report: dict[str, Any] = {"command": " ".join(["python3", "bench/ice_connect.py",
                                                   *(argv or sys.argv[1:])]),
                              "runs_per_impl": args.runs, "ta_ms": ta_ms, "topologies": {}}
    try:
        for name in topologies:
            result = bench_topology(name, args.runs, logs, args.verbose, args.sipua_ta)
            result["verdict"] = verdict(result["stats"], ta_ms)
            report["topologies"][name] = result
            if not args.json:
                print_table(name, result, ta_ms)
    except UserError as exc:
        print(f"ice_connect.py: error: {exc}", file=sys.stderr)
        return int(exc.code)
    finally:
        if args.logs is None:
            shutil.rmtree(logs, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        met = all(t["verdict"].get("met") for t in report["topologies"].values())
        print(f"\noverall target met: {'yes' if met else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
