"""linphone (Debian's ``linphone-cli`` 5.1, ``linphonec``) as a peer in the NAT lab.

linphonec runs headless inside a lab host: ``soundcard use files`` replaces the sound card by
WAV files (``play FILE`` is the microphone, ``record FILE`` what arrives), ``firewall ice`` with
a ``stun`` server turns on its ICE (mediastreamer2's agent: STUN, no TURN here), ``register``
registers with the lab's Kamailio and ``autoanswer enable`` answers calls. It is driven by lines
on its stdin; its stdout says what happens (``Call 1 with ... connected.``, ``Media streams
established ...``, ``... ended``), which is read as events. Its debug log (``-d 4 -l FILE``)
holds the ICE details, among them the valid pair it selected.

    with LinphonePeer(lab, "b", "bob", tone=880) as peer:
        peer.start()             # registered, auto-answer on
        ...                      # sipua calls sip:bob@lab.test
        peer.wait_for("ended", timeout=30)
        peer.recording()         # what it received
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from sipua.errors import EnvironmentProblem
from sipua.lab.baresip import write_tone_wav
from sipua.lab.lab import SERVER_ADDRESS, SIP_DOMAIN, SIP_PORT, SIP_USERS, STUN_PORT, Lab

__all__ = ["LinphoneError", "LinphonePeer", "available"]

#: A candidate of a pair in the valid list its ICE agent logs (``Local: ... type=srflx ...``).
_END_RE = re.compile(r"\b(Local|Remote): .*type=(\w+) .*componentID=(\d+)")


def available() -> bool:
    """Whether linphonec is installed."""
    return shutil.which("linphonec") is not None


class LinphoneError(Exception):
    """linphonec did not start, register or report a call state in time."""


class LinphonePeer:
    """One linphonec on a lab host, registered with the lab's Kamailio (module doc)."""

    def __init__(self, lab: Lab, host: str, user: str, *, tone: float = 880.0,
                 play: Path | str | None = None, answer: bool = True, sip_port: int = 5062,
                 work_dir: Path | str | None = None) -> None:
        if not available():
            raise EnvironmentProblem("linphonec is not installed (apt-get install linphone-cli)")
        self.lab = lab
        self.host = host
        self.user = user
        self.answer = answer
        self.sip_port = sip_port
        self.work_dir = Path(work_dir) if work_dir is not None else Path(
            tempfile.mkdtemp(prefix=f"linphone-{host}-{user}-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.work_dir / "linphone.log"
        self.out_path = self.work_dir / "linphonec.out"
        self.play = Path(play) if play is not None else write_tone_wav(
            self.work_dir / f"tone-{tone:g}.wav", tone)
        self._calls = 0
        self.proc: subprocess.Popen[str] | None = None
        self._out: IO[str] | None = None
        self._lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def aor(self) -> str:
        """Its address-of-record."""
        return f"sip:{self.user}@{SIP_DOMAIN}"

    def config_text(self) -> str:
        """The ``linphonerc``: its SIP port and the lab's STUN server; the rest is commands."""
        return (f"[sip]\nsip_port={self.sip_port}\n"
                f"[net]\nstun_server={SERVER_ADDRESS}:{STUN_PORT}\nfirewall_policy=3\n"
                "[sound]\n")

    def start(self, timeout: float = 15.0) -> None:
        """Run it, switch to WAV files and ICE, register; return once registered."""
        home = self.work_dir / "home"
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        rc = self.work_dir / "linphonerc"
        rc.write_text(self.config_text())
        argv = ["linphonec", "-c", str(rc), "-d", "4", "-l", str(self.log_path)]
        if self.answer:
            argv.append("-a")
        env = {**os.environ, "HOME": str(home)}
        self.proc = self.lab.popen(self.host, argv, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   encoding="utf-8", errors="replace", env=env, bufsize=1)
        self._out = self.out_path.open("w")
        self._reader = threading.Thread(target=self._read, daemon=True, name="linphonec")
        self._reader.start()
        self.send("soundcard use files")
        self.send(f"play {self.play}")
        self._next_recording()
        self.send(f"stun {SERVER_ADDRESS}:{STUN_PORT}")
        self.send("firewall ice")
        self.send(f"register {self.aor} sip:{SERVER_ADDRESS}:{SIP_PORT} {SIP_USERS[self.user]}")
        if self.answer:
            self.send("autoanswer enable")
        deadline = time.monotonic() + timeout
        while True:
            self.send("status register")
            try:
                self.wait_for("registered,", timeout=1.0)
                return
            except LinphoneError:
                if time.monotonic() > deadline:
                    raise LinphoneError(f"linphonec did not register:\n{self.log()[-1500:]}")\
                        from None

    def _next_recording(self) -> None:
        self._calls += 1
        self.send(f"record {self.recording_path(self._calls)}")

    def recording_path(self, call: int | None = None) -> Path:
        """The WAV it records call number ``call`` (the latest by default) into."""
        return self.work_dir / f"rec-{call if call is not None else self._calls}.wav"

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._out is not None:
                self._out.write(line)
                self._out.flush()
            with self._cond:
                self._lines.append((time.time(), line.rstrip("\n")))
                self._cond.notify_all()

    def send(self, command: str) -> None:
        """One command line to linphonec."""
        if self.proc is None or self.proc.stdin is None:
            raise LinphoneError("not started")
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise LinphoneError(f"linphonec is gone: {exc}") from None
        time.sleep(0.1)

    def wait_for(self, text: str, timeout: float = 30.0, *, after: float | None = None) -> float:
        """Wall-clock time of the first stdout line containing ``text`` (at or after
        ``after``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in self._lines:
                    if text in line and (after is None or at >= after):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LinphoneError(f"linphonec: no {text!r} within {timeout:g} s")
                self._cond.wait(left)

    def dial(self, uri: str) -> float:
        """Call ``uri``; returns when the command was sent (wall clock).

        linphonec's ``register`` command sets no outbound proxy and ``lab.test`` is in no DNS,
        so a lab URI gets ``maddr`` = Kamailio (RFC 3261 §19.1.1): the INVITE goes there."""
        if uri.endswith(f"@{SIP_DOMAIN}"):
            uri += f";maddr={SERVER_ADDRESS}"
        at = time.time()
        self.send(f"call {uri}")
        return at

    def hangup(self) -> None:
        """End the current call, and record the next one into a new file."""
        self.send("terminate")
        self._next_recording()

    def stop(self, timeout: float = 5.0) -> int | None:
        """``quit``, then SIGTERM and SIGKILL to its PID; returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                self.send("quit")
            except LinphoneError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self._out is not None:
            self._out.close()
            self._out = None
        return proc.returncode

    def __enter__(self) -> LinphonePeer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log(self) -> str:
        """Its stdout followed by its debug log, so far."""
        parts = []
        for path in (self.out_path, self.log_path):
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                continue
        return "\n".join(parts)

    def selected_pair(self) -> str | None:
        """``local-remote`` candidate types of the pairs its ICE agent selected (the last
        ``Valid list:`` of its debug log, entries marked ``--> selected``); None when none."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        _, found, block = text.rpartition("Valid list:")
        if not found:
            return None
        chosen: dict[str, str] = {}
        ends: dict[str, str] = {}
        component = "1"
        for line in block.splitlines()[1:]:
            if "mediastreamer-message-\t" not in line and "--> selected" not in line:
                break
            match = _END_RE.search(line)
            if match:
                ends[match.group(1)] = match.group(2)
                component = match.group(3)
            elif "--> selected" in line:
                chosen[component] = f"{ends.get('Local', '?')}-{ends.get('Remote', '?')}"
        if not chosen:
            return None
        if len(set(chosen.values())) == 1:
            return next(iter(chosen.values()))
        return ", ".join(f"{c}: {k}" for c, k in sorted(chosen.items()))
