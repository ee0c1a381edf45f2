"""``sipua call`` and ``sipua answer`` as a user runs them: two processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

from media.sinks import dominant_frequency


def _env(home: Path) -> dict[str, str]:
    """No configuration file or SIPUA_* variable of the machine leaks into the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPUA_")}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return env


def _answerer(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipua", "answer", "--listen", "127.0.0.1:0", "--max-calls",
         "1", "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    assert proc.stdout is not None
    for _ in range(50):
        line = proc.stdout.readline()
        if not line:
            break
        data = json.loads(line)
        if data.get("event") == "Status" and "listening" in data["message"]:
            return proc, int(data["port"])
    proc.kill()
    raise AssertionError("the answering process did not say where it listens")


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _tone(path: Path) -> float:
    with wave.open(str(path)) as wav:
        frames = wav.readframes(wav.getnframes())
    return dominant_frequency(frames[-8000:], max_seconds=0.5)


def test_call_and_answer_processes_exchange_tones(tmp_path: Path) -> None:
    """`sipua answer` takes one call from `sipua call`: both exit 0, the JSON report names the
    selected pair and the setup times, and each recording holds the other side's tone."""
    answer, port = _answerer(tmp_path, "--record", str(tmp_path / "in.wav"))
    try:
        caller = subprocess.run(
            [sys.executable, "-m", "sipua", "call", f"sip:bob@127.0.0.1:{port}", "--listen",
             "127.0.0.1:0", "--duration", "1.5", "--json", "--nomination", "aggressive",
             "--record", str(tmp_path / "out.wav")],
            capture_output=True, text=True, timeout=60, env=_env(tmp_path), check=False)
        assert caller.returncode == 0, caller.stderr[-2000:]
        lines = _lines(caller.stdout)
        kinds = {line["event"] for line in lines}
        assert {"CallAnswered", "CheckSucceeded", "IceCompleted", "CallReport"} <= kinds
        report = next(line for line in lines if line["event"] == "CallReport")
        assert report["status"] == 200 and report["ice"]["nomination"] == "aggressive"
        assert report["ice"]["selected"]["1"]["local_type"] == "host"
        assert report["setup"]["invite_to_first_rtp_ms"] < 2000
        out, err = answer.communicate(timeout=30)
        assert answer.returncode == 0, err[-2000:]
        assert any(line["event"] == "CallReport" for line in _lines(out))
    finally:
        if answer.poll() is None:
            answer.kill()
    assert abs(_tone(tmp_path / "out.wav") - 660) < 5
    assert abs(_tone(tmp_path / "in.wav") - 440) < 5


def test_declined_call_exits_with_the_rejected_code(tmp_path: Path) -> None:
    """`sipua answer --code 486` declines; `sipua call` exits 4 (call rejected), one line."""
    answer, port = _answerer(tmp_path, "--code", "486")
    try:
        caller = subprocess.run(
            [sys.executable, "-m", "sipua", "call", f"sip:bob@127.0.0.1:{port}", "--listen",
             "127.0.0.1:0"],
            capture_output=True, text=True, timeout=60, env=_env(tmp_path), check=False)
        assert caller.returncode == 4, caller.stderr[-2000:]
        assert "486" in caller.stderr and "Traceback" not in caller.stderr
        answer.communicate(timeout=30)
        assert answer.returncode == 0
    finally:
        if answer.poll() is None:
            answer.kill()


def test_call_usage_errors_exit_2(tmp_path: Path) -> None:
    """A missing URI or a bad --listen is a usage error (exit 2) without a traceback."""
    for args in (["call"], ["call", "sip:bob@127.0.0.1", "--listen", "nowhere:xx"]):
        proc = subprocess.run([sys.executable, "-m", "sipua", *args], capture_output=True,
                              text=True, timeout=30, env=_env(tmp_path), check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr


def test_ice_knob_flags_reject_bad_values(tmp_path: Path) -> None:
    """Bad ICE knob values on `sipua call` and `sipua answer` exit 2 with a message naming the
    flag or the key, without a traceback and before any call is placed."""
    cases = [
        (["call", "sip:bob@127.0.0.1:9", "--ice-role", "bogus"], "--ice-role"),
        (["answer", "--listen", "127.0.0.1:0", "--drop-requests", "1.5"], "--drop-requests"),
        (["call", "sip:bob@127.0.0.1:9", "--candidates", "relay"], "ice.candidate_types"),
        (["answer", "--listen", "127.0.0.1:0", "--ta", "0.001"], "ice.ta"),
    ]
    for args, named in cases:
        proc = subprocess.run([sys.executable, "-m", "sipua", *args], capture_output=True,
                              text=True, timeout=30, env=_env(tmp_path), check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
