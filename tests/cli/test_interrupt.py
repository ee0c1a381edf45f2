"""Stopping ``sipua answer`` and ``sipua call`` with a signal, as a user does with Ctrl-C or a
test rig with SIGTERM: they hang up, unregister and exit cleanly, never with a traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.cli.test_call_cli import _answerer, _env

SIPUA = [sys.executable, "-m", "sipua"]


def _registrar(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    users = tmp_path / "users.txt"
    users.write_text("bob:bobpw\n")
    proc = subprocess.Popen([*SIPUA, "registrar", "--listen", "127.0.0.1:0", "--users",
                             str(users), "--domain", "lab.test", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    assert proc.stdout is not None
    for _ in range(20):
        line = proc.stdout.readline()
        if not line:
            break
        data = json.loads(line)
        if data.get("event") == "Listening":
            return proc, int(data["addresses"]["udp"].rpartition(":")[2])
    proc.kill()
    raise AssertionError("sipua registrar did not say where it listens")


def _read_lines(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    assert proc.stdout is not None
    stdout = proc.stdout

    def read() -> None:
        lines.extend(stdout)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_sigterm_unregisters_and_exits_zero(tmp_path: Path) -> None:
    """`sipua answer` registered with a registrar: SIGTERM makes it unregister and exit 0."""
    registrar, port = _registrar(tmp_path)
    try:
        answer = subprocess.Popen(
            [*SIPUA, "answer", "--listen", "127.0.0.1:0", "--user", "sip:bob@lab.test",
             "--password", "bobpw", "--registrar", f"127.0.0.1:{port}", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
        lines: list[str] = []
        reader = _read_lines(answer, lines)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("Registered" in line for line in lines):
            time.sleep(0.05)
        assert any("Registered" in line for line in lines), lines
        answer.send_signal(signal.SIGTERM)
        assert answer.wait(timeout=20) == 0
        reader.join(timeout=5)
        stderr = answer.stderr.read() if answer.stderr else ""
        assert "Traceback" not in stderr, stderr
        assert any("Unregistered" in line for line in lines), lines
    finally:
        registrar.terminate()
        registrar.wait(timeout=10)


def test_sigint_during_a_call_hangs_up_and_reports(tmp_path: Path) -> None:
    """Ctrl-C in `sipua call` while media flows: BYE, the report, exit 0, no traceback; the
    answerer sees the call ended by the remote side."""
    answer, port = _answerer(tmp_path)
    try:
        caller = subprocess.Popen(
            [*SIPUA, "call", f"sip:bob@127.0.0.1:{port}", "--listen", "127.0.0.1:0",
             "--duration", "30", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
        lines: list[str] = []
        reader = _read_lines(caller, lines)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("media flowing" in x for x in lines):
            time.sleep(0.05)
        assert any("media flowing" in line for line in lines), lines
        caller.send_signal(signal.SIGINT)
        assert caller.wait(timeout=20) == 0
        reader.join(timeout=5)
        stderr = caller.stderr.read() if caller.stderr else ""
        assert "Traceback" not in stderr, stderr
        reports = [json.loads(x) for x in lines if '"CallReport"' in x]
        assert reports and reports[-1]["ended_by"] == "local"
        assert answer.wait(timeout=20) == 0
    finally:
        if answer.poll() is None:
            answer.kill()
