"""Three processes as a user would start them: ``sipua registrar``, ``sipua answer`` registered
as bob, and ``sipua call sip:bob@example.org`` registered as alice, with digest on every
REGISTER; the call is routed by address-of-record through the registrar's proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cli.conftest import StartRegistrar
from tests.cli.test_call_cli import _env, _lines, _tone

SIPUA = [sys.executable, "-m", "sipua"]


def test_call_and_answer_through_sipua_registrar(tmp_path: Path,
                                                 start_registrar: StartRegistrar) -> None:
    """bob answers once registered; alice calls his address-of-record: both exit 0, both
    registered first, and each recording holds the other side's tone."""
    registrar = start_registrar({"alice": "alicepw", "bob": "bobpw"})
    answer = subprocess.Popen(
        [*SIPUA, "answer", "--listen", "127.0.0.1:0", "--user", "sip:bob@example.org",
         "--password", "bobpw", "--registrar", registrar, "--max-calls", "1", "--json",
         "--record", str(tmp_path / "bob.wav")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        assert answer.stdout is not None
        seen: list[dict[str, Any]] = []
        for _ in range(50):
            line = answer.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                seen.append(json.loads(line))
                if seen[-1].get("event") == "Registered":
                    break
        assert seen and seen[-1].get("event") == "Registered", seen
        caller = subprocess.run(
            [*SIPUA, "call", "sip:bob@example.org", "--listen", "127.0.0.1:0", "--user",
             "sip:alice@example.org", "--password", "alicepw", "--registrar", registrar,
             "--duration", "1.5", "--json", "--record", str(tmp_path / "alice.wav")],
            capture_output=True, text=True, timeout=60, env=_env(tmp_path), check=False)
        assert caller.returncode == 0, caller.stderr[-2000:]
        lines = _lines(caller.stdout)
        kinds = [line["event"] for line in lines]
        assert "Registered" in kinds and "CallReport" in kinds, kinds
        assert kinds.index("Registered") < kinds.index("CallReport")
        report = next(line for line in lines if line["event"] == "CallReport")
        assert report["status"] == 200 and report["ice"]["selected"]["1"] is not None
        out, err = answer.communicate(timeout=30)
        assert answer.returncode == 0, err[-2000:]
        assert any(line["event"] == "CallReport" for line in _lines(out))
    finally:
        if answer.poll() is None:
            answer.kill()
            answer.wait()
    assert abs(_tone(tmp_path / "alice.wav") - 660) < 5
    assert abs(_tone(tmp_path / "bob.wav") - 440) < 5
