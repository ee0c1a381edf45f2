"""``sipua phone`` driven through a pseudo-terminal, as a person at a keyboard would."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SIPUA = [sys.executable, "-m", "sipua"]


def _env(home: Path) -> dict[str, str]:
    """No configuration of the machine leaks into the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPUA_")}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return env


class Terminal:
    """A process on the slave side of a pty; we type on the master side and read the screen."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     close_fds=True)
        os.close(slave)
        self.screen = ""
        self._seen = 0

    def type(self, line: str) -> None:
        """Type one line and Enter."""
        os.write(self.master, line.encode() + b"\n")

    def expect(self, text: str, timeout: float = 20.0) -> str:
        """Wait until ``text`` appears after what was already matched; return what came."""
        deadline = time.monotonic() + timeout
        while text not in self.screen[self._seen:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} did not appear; screen:\n{self.screen[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:  # the slave side closed (EIO)
                data = b""
            if not data:
                raise AssertionError(f"the phone exited before {text!r}:\n{self.screen[-3000:]}")
            self.screen += data.decode("utf-8", "replace")
        start = self._seen
        self._seen = self.screen.index(text, start) + len(text)
        return self.screen[start:self._seen]

    def close(self) -> None:
        """Kill the process if it is still running and release the pty."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Terminal]:
    """``sipua phone --no-audio`` on loopback, ready for commands."""
    term = Terminal([*SIPUA, "phone", "--listen", "127.0.0.1:0", "--no-audio"], _env(tmp_path))
    try:
        term.expect("type 'help'")
        yield term
    finally:
        term.close()


def _answerer(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    """``sipua answer`` for one call; returns the process and its port."""
    proc = subprocess.Popen([*SIPUA, "answer", "--listen", "127.0.0.1:0", "--max-calls", "1",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(tmp_path))
    assert proc.stdout is not None
    for line in proc.stdout:
        data = json.loads(line)
        if "port" in data:
            return proc, int(data["port"])
    raise AssertionError("sipua answer did not say where it listens")


def _wait_for_event(proc: subprocess.Popen[str], name: str, timeout: float = 10.0) -> None:
    """Read the answerer's JSON lines (in a thread: a buffered pipe defeats select) until one
    is the event ``name``."""
    assert proc.stdout is not None
    stdout = proc.stdout
    found = threading.Event()

    def read() -> None:
        for line in stdout:
            if json.loads(line).get("event") == name:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"sipua answer printed no {name} event"


def test_dial_status_hold_hangup_quit(phone: Terminal, tmp_path: Path) -> None:
    """Without audio the phone says so; `dial` reaches `sipua answer` and media flows;
    `status` shows the selected pair; DTMF, hold and resume are acknowledged; `hangup` ends
    the call (the answerer exits 0 after its one call) and `quit` exits 0."""
    assert "audio: off (--no-audio): sending a 440 Hz tone" in phone.screen
    answer, port = _answerer(tmp_path)
    try:
        phone.type(f"dial sip:bob@127.0.0.1:{port}")
        progress = phone.expect("media flowing")
        assert "answered (200)" in progress and "selected host:127.0.0.1:" in progress
        # The phone heard the answerer; let the answerer hear the phone too before the quick
        # commands below end the call (else it rightly reports that no media reached it).
        _wait_for_event(answer, "FirstPacketReceived")
        phone.type("status")
        status = phone.expect("RTP sent")
        assert "outgoing, active" in status and "component 1: host:127.0.0.1:" in status
        phone.type("dtmf 12#")
        phone.expect("sent DTMF 12#")
        phone.type("hold")
        phone.expect("on hold")
        phone.type("resume")
        phone.expect("resumed")
        phone.type("hangup")
        assert "ended by local" in phone.expect("idle")
        assert answer.wait(timeout=20) == 0
    finally:
        if answer.poll() is None:
            answer.kill()
    phone.type("quit")
    phone.expect("bye")
    assert phone.proc.wait(timeout=20) == 0
    assert "Traceback" not in phone.screen


def test_incoming_call_is_answered_from_the_keyboard(phone: Terminal, tmp_path: Path) -> None:
    """`sipua call` to the phone rings it; `answer` takes the call; media flows and the caller
    (which hangs up after its --duration) exits 0; the phone goes back to idle."""
    port = phone.screen.split("listening on 127.0.0.1:")[1].split()[0]
    caller = subprocess.Popen([*SIPUA, "call", f"sip:phone@127.0.0.1:{port}", "--listen",
                               "127.0.0.1:0", "--duration", "1", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(tmp_path))
    try:
        assert "incoming call from" in phone.expect("type 'answer' or 'reject'")
        phone.type("answer")
        phone.expect("media flowing")
        assert "ended by remote" in phone.expect("idle", timeout=30)
        out, err = caller.communicate(timeout=30)
        assert caller.returncode == 0, err[-2000:]
        report = next(json.loads(x) for x in out.splitlines() if '"CallReport"' in x)
        assert report["status"] == 200 and report["ice"]["used"]
    finally:
        if caller.poll() is None:
            caller.kill()


def test_unknown_commands_and_misuse_are_explained(phone: Terminal) -> None:
    """Typos and commands out of place get a one-line answer, never a crash; end of input
    (Ctrl-D) quits with 0."""
    phone.type("dail sip:x")
    phone.expect("unknown command 'dail': type 'help'")
    phone.type("hangup")
    phone.expect("no call to hang up")
    phone.type("answer")
    phone.expect("no call is ringing")
    phone.type("dtmf 1")
    phone.expect("no call in progress")
    phone.type("help")
    phone.expect("quit            hang up, unregister and leave")
    os.write(phone.master, b"\x04")  # Ctrl-D: end of input
    assert phone.proc.wait(timeout=20) == 0
