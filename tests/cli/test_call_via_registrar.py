"""Three processes as a user would start them: ``sipua registrar``, ``sipua answer`` registered
as bob, and ``sipua call sip:bob@example.org`` registered as alice, with digest on every
REGISTER; the call is routed by address-of-record through the registrar's proxy."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.sinks import dominant_frequency
from tests.cli.test_call_cli import _env

SIPUA = [sys.executable, "-m", "sipua"]


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[str]:
    """``sipua registrar`` for example.org with alice and bob, on a free UDP port."""
    users = tmp_path / "users"
    users.write_text("alice:alicepw\nbob:bobpw\n")
    proc = subprocess.Popen([*SIPUA, "registrar", "--listen", "127.0.0.1:0", "--users",
                             str(users), "--domain", "example.org"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        yield line.split("udp ")[1].split(",")[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _tone(path: Path) -> float:
    with wave.open(str(path)) as wav:
        frames = wav.readframes(wav.getnframes())
    return dominant_frequency(frames[-8000:], max_seconds=0.5)


def test_call_and_answer_through_sipua_registrar(tmp_path: Path, registrar: str) -> None:
    """bob answers once registered; alice calls his address-of-record: both exit 0, both
    registered first, and each recording holds the other side's tone."""
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
