"""`sipua probe` as a user runs it: bad arguments exit 2, an unreachable peer exits 7 with one
line and no traceback, `--json` prints one valid JSON object, and a probe of a live `sipua
answer` exits 0 with the findings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPUA_")}
    env["HOME"] = str(tmp_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / ".config")
    env["PYTHONPATH"] = str(ROOT)
    return env


def _probe(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipua", "probe", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(tmp_path), check=False)


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    """A URI that is not a SIP URI and an unknown --skip step are usage errors (exit 2), one
    line each, no traceback."""
    for args in (["notauri"], ["sip:bob@127.0.0.1:9", "--skip", "restart,bogus"]):
        proc = _probe(tmp_path, *args, "--listen", "127.0.0.1:0")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("sipua: error:") and "Traceback" not in proc.stderr
    assert "bogus" in proc.stderr and "role-conflict" in proc.stderr


def test_unreachable_peer_exits_7_with_json(tmp_path: Path) -> None:
    """Nobody at the URI (T1 = 50 ms so that Timer B fires in 3.2 s): exit 7 (no answer),
    the reason on standard error, and one JSON object on standard output saying the same."""
    proc = _probe(tmp_path, "sip:bob@127.0.0.1:9", "--listen", "127.0.0.1:0", "--json",
                  "--set", "ua.t1=0.05")
    assert proc.returncode == 7, proc.stderr
    assert "408" in proc.stderr and "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["exit_code"] == 7 and data["uri"] == "sip:bob@127.0.0.1:9"
    assert [f["key"] for f in data["findings"]] == ["answered"]
    assert data["findings"][0]["status"] == "no"


def test_probe_of_sipua_answer_prints_json_and_exits_0(tmp_path: Path) -> None:
    """`sipua probe --json` against `sipua answer`: exit 0, one JSON object naming the peer,
    full ICE and a restart answered with new credentials."""
    answer = subprocess.Popen(
        [sys.executable, "-m", "sipua", "answer", "--listen", "127.0.0.1:0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        assert answer.stdout is not None
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = answer.stdout.readline()
            match = re.search(r'"port": (\d+)', line)
            port = int(match.group(1)) if match else None
        assert port is not None, "the answerer did not say where it listens"
        proc = _probe(tmp_path, f"sip:bob@127.0.0.1:{port}", "--listen", "127.0.0.1:0",
                      "--json", "--listen-for", "1", "--skip", "role-conflict,mismatch")
        assert proc.returncode == 0, proc.stderr[-2000:]
        data = json.loads(proc.stdout)
        assert data["exit_code"] == 0 and data["peer"].startswith("sipua")
        found = {(f["step"], f["key"]): f for f in data["findings"]}
        assert found[("call", "ice")]["value"] == "full"
        assert found[("restart", "restart.new_credentials")]["status"] == "yes"
        assert found[("role-conflict-win", "asked")]["status"] == "n/a"
    finally:
        answer.terminate()
        answer.wait(timeout=10)


def test_markdown_form_of_a_report() -> None:
    """`--markdown` prints one table row per finding; a value's | is escaped, a reason stands
    in for a missing value, a message (evidence with a time) does not."""
    from sipua.probe import report_markdown

    text = report_markdown({"peer": "peer/1", "exit_code": 0, "findings": [
        {"step": "call", "question": "q1", "status": "yes", "value": {"1": {"host": 2}},
         "evidence": []},
        {"step": "call", "question": "q2", "status": "n/a", "value": None,
         "evidence": ["skipped"]},
        {"step": "call", "question": "q3", "status": "unknown", "value": "a|b",
         "evidence": []},
        {"step": "call", "question": "q4", "status": "unknown", "value": None,
         "evidence": ["+0.1 s <- Binding request"]}]})
    lines = text.splitlines()
    assert lines[0] == "Peer: `peer/1`; exit code 0."
    assert "| call | q1 | yes | 1=(host=2) |" in lines
    assert "| call | q2 | n/a | skipped |" in lines
    assert "| call | q3 | unknown | a\\|b |" in lines
    assert "| call | q4 | unknown |  |" in lines
