"""``sipua registrar`` and ``sipua register`` as a user runs them: real processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SIPUA = [sys.executable, "-m", "sipua"]


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A running ``sipua registrar`` on a free loopback port; yields ("127.0.0.1:PORT", proc)."""
    users = tmp_path / "users"
    users.write_text("# lab users\nalice:alicepw\nbob:bobpw\n")
    proc = subprocess.Popen([*SIPUA, "registrar", "--listen", "127.0.0.1:0", "--users",
                             str(users), "--domain", "example.org", "--min-expires", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "registrar listening on udp 127.0.0.1:" in line, line
    address = line.split("udp ")[1].split(",")[0]
    try:
        yield address, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def register(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sipua register`` for alice against ``address``."""
    return subprocess.run([*SIPUA, "register", "--user", "sip:alice@example.org", "--registrar",
                           address, "--listen", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_register_json_then_unregister(registrar: tuple[str, subprocess.Popen[str]]) -> None:
    """Right password: one Registered JSON object and exit 0; the registrar prints a line;
    --unregister removes the binding (exit 0, Unregistered confirmed)."""
    address, proc = registrar
    done = register(address, "--password", "alicepw", "--json", "--expires", "120")
    assert done.returncode == 0, done.stderr
    (event,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert event["event"] == "Registered" and event["expires"] == 120
    assert event["contact"].startswith("sip:alice@127.0.0.1:")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("registered alice: sip:alice@127.0.0.1:")
    gone = register(address, "--password", "alicepw", "--json", "--unregister")
    assert gone.returncode == 0, gone.stderr
    (event,) = [json.loads(line) for line in gone.stdout.splitlines()]
    assert event["event"] == "Unregistered" and event["confirmed"] is True
    assert proc.stdout.readline().startswith("removed alice:")


def test_wrong_password_exits_3(registrar: tuple[str, subprocess.Popen[str]]) -> None:
    """A wrong password: exit 3, one error line naming bad credentials, no traceback."""
    address, _ = registrar
    done = register(address, "--password", "nope")
    assert done.returncode == 3
    assert done.stderr.startswith("sipua: error: registration failed:")
    assert "bad credentials" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.count("failed") == 1


def test_no_registrar_exits_7() -> None:
    """Nobody answers: exit 7 after --timeout."""
    done = register("127.0.0.1:9", "--password", "x", "--timeout", "1")
    assert done.returncode == 7
    assert done.stderr.startswith("sipua: error: no answer")


def test_refresh_with_duration(registrar: tuple[str, subprocess.Popen[str]]) -> None:
    """--duration with a short lifetime: refreshes, then unregisters before exiting, over TCP."""
    address, _ = registrar
    done = register(address, "--password", "alicepw", "--json", "--expires", "2",
                    "--duration", "2.2", "--transport", "tcp")
    assert done.returncode == 0, done.stderr
    kinds = [json.loads(line)["event"] for line in done.stdout.splitlines()]
    assert kinds.count("Registered") >= 2 and kinds[-1] == "Unregistered"


def test_registrar_bad_users_file(tmp_path: Path) -> None:
    """A malformed users file is a one-line usage error (exit 2) naming the line."""
    users = tmp_path / "users"
    users.write_text("alice\n")
    done = subprocess.run([*SIPUA, "registrar", "--listen", "127.0.0.1:0", "--users",
                           str(users)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("sipua: error:") and "line 1" in done.stderr


def test_register_bad_user() -> None:
    """An AOR without a user part is a usage error (exit 2)."""
    done = subprocess.run([*SIPUA, "register", "--user", "sip:example.org"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and done.stderr.startswith("sipua: error:")
