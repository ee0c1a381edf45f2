"""The driver side of the ICE peer line protocol (docs/ice-peer.md): pair two ICE peers.

Starts one peer process per side (anywhere: on this host, or in a lab host through
``ip netns exec``), hands each the other's description, collects their events until both printed
their final one, then tells both to quit. Used by the interop tests, the lab tests and
``bench/ice_connect.py``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class PeerRun:
    """What one peer printed and how it ended."""

    name: str
    argv: list[str]
    description: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    stderr_path: Path | None = None
    error: str | None = None

    def event(self, kind: str) -> dict[str, Any] | None:
        """The first event of that kind, if any."""
        return next((e for e in self.events if e.get("event") == kind), None)

    @property
    def selected(self) -> dict[str, Any] | None:
        return self.event("selected")

    @property
    def connect_ms(self) -> float | None:
        sel = self.selected
        return float(sel["ms_from_start_of_checks"]) if sel else None

    def stderr_tail(self, lines: int = 30) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])


def _reader(stream: IO[str], out: queue.Queue[tuple[str, str | None]], name: str) -> None:
    for line in stream:
        out.put((name, line))
    out.put((name, None))


def _final(run: PeerRun, hold: bool) -> bool:
    kinds = {e.get("event") for e in run.events}
    if "failed" in kinds or "data_failed" in kinds:
        return True
    if hold:
        return "hold_done" in kinds
    return "data_ok" in kinds


def run_pair(argv_a: Sequence[str], argv_b: Sequence[str], *, log_dir: Path,
             hold: bool = False, timeout: float = 60.0,
             names: tuple[str, str] = ("a", "b")) -> tuple[PeerRun, PeerRun]:
    """Run two peers to the end of the protocol and return what each printed.

    ``argv_*`` are complete command lines (wrap them in ``ip netns exec NS`` to run in a lab
    host). Processes that do not end after ``quit`` are killed by their PID.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = (PeerRun(names[0], list(argv_a)), PeerRun(names[1], list(argv_b)))
    procs: list[subprocess.Popen[str]] = []
    events: queue.Queue[tuple[str, str | None]] = queue.Queue()
    by_name = {r.name: r for r in runs}
    errfiles = []
    try:
        for run in runs:
            run.stderr_path = log_dir / f"{run.name}.stderr.log"
            err = run.stderr_path.open("w")
            errfiles.append(err)
            proc = subprocess.Popen(run.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True, bufsize=1)
            procs.append(proc)
            assert proc.stdout is not None
            threading.Thread(target=_reader, args=(proc.stdout, events, run.name),
                             daemon=True).start()
        deadline = time.monotonic() + timeout
        closed: set[str] = set()
        fed = False
        while time.monotonic() < deadline:
            if not fed and all(r.description for r in runs):
                for run, other in ((runs[0], runs[1]), (runs[1], runs[0])):
                    proc = procs[runs.index(run)]
                    assert proc.stdin is not None
                    proc.stdin.write(json.dumps(other.description) + "\n")
                    proc.stdin.flush()
                fed = True
            if fed and all(_final(r, hold) for r in runs):
                break
            if len(closed) == 2:
                break
            try:
                name, line = events.get(timeout=0.1)
            except queue.Empty:
                continue
            run = by_name[name]
            if line is None:
                closed.add(name)
                if not run.description or not _final(run, hold):
                    run.error = run.error or "exited before its final event"
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                run.error = f"not a JSON line on stdout: {line[:100]!r}"
                continue
            if run.description is None and isinstance(obj, dict) and "ufrag" in obj:
                run.description = obj
            elif isinstance(obj, dict) and "event" in obj:
                run.events.append(obj)
        else:
            for run in runs:
                if not _final(run, hold):
                    run.error = run.error or f"no final event within {timeout:.0f} s"
    finally:
        for proc in procs:
            try:
                if proc.stdin is not None and proc.poll() is None:
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                    proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        for run, proc in zip(runs, procs, strict=False):
            try:
                run.exit_code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                run.exit_code = proc.wait(timeout=5)
                run.error = run.error or "did not exit after quit: killed"
        for err in errfiles:
            err.close()
    return runs
