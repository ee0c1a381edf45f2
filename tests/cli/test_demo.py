"""The README's main job, run as a user runs it: ``sipua demo`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [[], ["--rtcp-mux", "--nomination", "aggressive"]])
def test_demo_exits_zero_with_a_report(args: list[str]) -> None:
    """A real call with ICE through the embedded registrar: both register, ICE selects a pair
    per component, each side hears the other's tone; the JSON report says so."""
    proc = subprocess.run([sys.executable, "-m", "sipua", "demo", "--json", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert set(report["registrations"]) == {"alice", "bob"}
    call = report["call"]
    assert call["ice"]["used"] is True
    components = report["components"]
    assert all(call["ice"]["selected"][str(c)] for c in range(1, components + 1))
    assert any(c["result"] == "succeeded" for c in call["ice"]["checks"])
    lines = [m["start_line"] for m in call["sip"]["messages"]]
    assert lines[0].startswith("INVITE sip:bob@demo.test")
    assert any(line.startswith("SIP/2.0 200") for line in lines)
    assert any(line.startswith("BYE") for line in lines)
    audio = report["audio"]
    assert abs(audio["bob_heard_hz"] - audio["alice_sent_hz"]) <= 10
    assert abs(audio["alice_heard_hz"] - audio["bob_sent_hz"]) <= 10


def test_demo_human_report() -> None:
    """Without --json the demo prints the SIP timeline, the ICE checks and the verdict."""
    proc = subprocess.run([sys.executable, "-m", "sipua", "demo"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "INVITE sip:bob@demo.test" in proc.stdout
    assert "selected" in proc.stdout
    assert "result: OK" in proc.stdout


def test_bad_option_is_a_one_line_usage_error() -> None:
    """A wrong value is a usage error (exit 2) with a message, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "sipua", "demo", "--nomination", "often"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--nomination" in proc.stderr
