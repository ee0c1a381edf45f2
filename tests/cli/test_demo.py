"""The README's main job, run as a user runs it: ``sipua demo`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [[], ["--components", "1", "--nomination", "aggressive"]])
def test_demo_exits_zero_with_a_report(args: list[str]) -> None:
    """The demo connects two agents, moves media both ways and says so in its JSON report."""
    proc = subprocess.run([sys.executable, "-m", "sipua", "demo", "--json", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    components = report["components"]
    for name in ("alice", "bob"):
        side = report[name]
        assert all(side["selected"][str(c)] for c in range(1, components + 1))
        kinds = [e["event"] for e in side["timeline"]]
        assert "CheckSent" in kinds or "CheckReceived" in kinds
        assert kinds.count("PairSelected") >= components
        assert report[f"{name}_received"] == 50 * components
    assert report["alice"]["role"] == "controlling"
    assert report["bob"]["role"] == "controlled"


def test_demo_human_report() -> None:
    """Without --json the demo prints a readable timeline and the verdict."""
    proc = subprocess.run([sys.executable, "-m", "sipua", "demo"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "selected" in proc.stdout
    assert "result: OK" in proc.stdout


def test_bad_option_is_a_one_line_usage_error() -> None:
    """A wrong value is a usage error (exit 2) with a message, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "sipua", "demo", "--components", "7"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--components" in proc.stderr
