"""``JsonProcess``, the reader of a child's JSON lines that the lab tests, the interop tests and
the benchmarks share: here with small Python children on this machine (no lab host)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from sipua.lab.sipua_peer import JsonProcess

#: A child that prints a few lines (one not JSON) and some stderr, then exits 3.
CHATTY = """
import json, sys
for i, kind in enumerate(["ready", "tick", "tick", "tick"]):
    print(json.dumps({"event": kind, "n": i}), flush=True)
print("not json", flush=True)
print("warning: something", file=sys.stderr, flush=True)
sys.exit(3)
"""
#: A child that answers each stdin line with a JSON line and ends cleanly on EOF.
ECHO = """
import json, sys
print(json.dumps({"event": "ready"}), flush=True)
for line in sys.stdin:
    print(json.dumps({"event": "got", "line": line.strip()}), flush=True)
print(json.dumps({"event": "bye"}), flush=True)
"""
#: A child that ignores stdin and runs until signalled.
STUBBORN = """
import json, time
print(json.dumps({"event": "ready"}), flush=True)
time.sleep(60)
"""


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_lines_events_and_stderr(tmp_path: Path) -> None:
    """The count-th line of an event, lines matching fields, the last one; non-JSON output
    skipped; stderr kept in memory and in the log file; the exit code from finish()."""
    log = tmp_path / "child.log"
    proc = JsonProcess(child(CHATTY), log=log)
    try:
        assert proc.wait_for("tick", 10, count=2)["n"] == 2
        assert proc.wait_for(("ready", "tick"), 10, n=3)["event"] == "tick"
        assert proc.finish(10) == 3
    finally:
        proc.stop()
    assert [line["event"] for line in proc.lines] == ["ready", "tick", "tick", "tick"]
    assert [line["n"] for line in proc.found("tick")] == [1, 2, 3]
    assert proc.last("tick")["n"] == 3
    assert proc.tail() == "warning: something"
    assert log.read_text() == "warning: something\n"


def test_wait_for_fails_at_once_when_the_child_ended() -> None:
    """Waiting for a line that never comes ends when the child has exited, well before the
    timeout, with an AssertionError that shows the child's stderr."""
    proc = JsonProcess(child(CHATTY))
    proc.what = "chatty"
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)chatty: no flowing .*warning: something"):
        proc.wait_for("flowing", 30)
    assert time.monotonic() - started < 15
    with pytest.raises(AssertionError, match="no tick"):
        proc.wait_for("tick", 1, count=9)
    with pytest.raises(AssertionError, match="no flowing line"):
        proc.last("flowing")
    proc.stop()


def test_send_and_stop_by_closing_stdin() -> None:
    """Lines sent reach the child; stop() closes its stdin, which ends it cleanly (exit 0,
    its last line read)."""
    proc = JsonProcess(child(ECHO), stdin=True)
    try:
        proc.wait_for("ready", 10)
        proc.send("call")
        proc.send("call")
        assert proc.wait_for("got", 10, count=2)["line"] == "call"
    finally:
        proc.stop(timeout=10)
    assert proc.proc.returncode == 0
    assert proc.lines[-1] == {"event": "bye"}


def test_stop_terminates_a_child_that_does_not_end() -> None:
    """A child that ignores its stdin is ended by SIGTERM once the grace period is over."""
    proc = JsonProcess(child(STUBBORN), stdin=True)
    proc.wait_for("ready", 10)
    proc.stop(timeout=0.5)
    assert proc.proc.returncode == -15


def test_a_host_needs_a_lab() -> None:
    """Naming a lab host without the lab is the caller's mistake."""
    with pytest.raises(ValueError, match="lab"):
        JsonProcess(child(ECHO), host="a")
