"""baresip as a peer in the NAT lab: configure it, run it on a lab host, drive it, stop it.

The interop tests and the call-setup benchmark call baresip (Debian's baresip-core 1.0.0)
through the lab's Kamailio, and let it call us. :class:`BaresipPeer` hides how:

- a private config directory (``config``, ``accounts``, ``contacts``) written per peer, with the
  modules the lab needs: ``ice`` with ``stun``/``turn`` (one STUN or TURN server per account,
  a ``turn:`` URI with credentials for relaying), ``aufile`` to play a WAV as the microphone,
  ``sndfile`` to record each direction (``dump-TIME-enc.wav`` is what it sent,
  ``dump-TIME-dec.wav`` what it received), ``g711`` (PCMU only, so both ends agree), and
  ``ctrl_tcp`` for commands;
- commands and events over ``ctrl_tcp``: netstring-framed JSON (``{"command": "dial",
  "params": URI, "token": T}``; responses carry ``"response": true`` and the token, events
  ``"event": true`` and a ``type`` such as ``CALL_ESTABLISHED``, ``CALL_RTPESTAB`` or
  ``CALL_CLOSED``). The control socket listens on 127.0.0.1 *inside* the host's namespace; we
  reach it with a socket created in that namespace (:func:`netns_socket`);
- its log (stdout and stderr) kept in the work directory; stopping it by ``quit``, then by
  signals to its own PID (``ip netns exec`` executes baresip in place, so the PID we started
  is baresip's).

    with BaresipPeer(lab, "b", "bob", play=wav, record=True) as peer:
        peer.start()
        ...                      # sipua calls sip:bob@lab.test: baresip answers
        peer.wait_event("CALL_CLOSED", timeout=30)
        enc, dec = peer.recordings()[-1]

baresip answers automatically (``answermode=auto``) unless ``answer=False``; it offers two
components (no rtcp-mux) and nominates regularly only.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sipua.errors import EnvironmentProblem
from sipua.lab.lab import (
    SERVER_ADDRESS,
    SIP_DOMAIN,
    SIP_PORT,
    SIP_USERS,
    STUN_PORT,
    TURN_PASSWORD,
    TURN_USER,
    Lab,
)

__all__ = [
    "MODULE_PATH",
    "BaresipError",
    "BaresipEvent",
    "BaresipPeer",
    "netns_socket",
    "write_tone_wav",
]

#: Where Debian installs baresip's modules.
MODULE_PATH = "/usr/lib/baresip/modules"
#: setns(2) flag of a network namespace.
_CLONE_NEWNET = 0x40000000
#: Where ``ip netns add`` keeps its namespace handles.
_NETNS_DIR = Path("/run/netns")


class BaresipError(Exception):
    """baresip did not start, register, answer a command or send an event in time."""


@dataclass(frozen=True)
class BaresipEvent:
    """One event baresip sent on its control connection."""

    #: ``CALL_INCOMING``, ``CALL_ESTABLISHED``, ``CALL_RTPESTAB``, ``CALL_CLOSED``, ...
    type: str
    #: Wall-clock time (``time.time()``) at which we read it.
    at: float
    #: The whole JSON object.
    data: dict[str, Any]


def netns_socket(namespace: str, family: int = socket.AF_INET,
                 kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in network namespace ``namespace``.

    A socket belongs to the namespace of the thread that created it, for its whole life; so a
    short-lived thread enters the namespace (setns(2) changes only the calling thread) and
    creates it, and this process can then use it from any thread."""
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(_NETNS_DIR / namespace, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=work, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def write_tone_wav(path: Path | str, frequency: float, seconds: float = 60.0,
                   rate: int = 8000) -> Path:
    """A mono 16-bit WAV of one sine tone (what baresip's ``aufile`` plays as microphone)."""
    from media.sources import Tone

    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(Tone(frequency, sample_rate=rate).read(int(rate * seconds)))
    return path


def _netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class BaresipPeer:
    """One baresip process on a lab host, registered with the lab's Kamailio (module doc)."""

    def __init__(self, lab: Lab, host: str, user: str, *, password: str | None = None,
                 play: Path | str | None = None, tone: float = 770.0, record: bool = True,
                 turn: bool = False, answer: bool = True, register: bool = True,
                 sip_port: int = 5060, ctrl_port: int = 4444, verbose: bool = False,
                 work_dir: Path | str | None = None) -> None:
        if shutil.which("baresip") is None:
            raise EnvironmentProblem("baresip is not installed (apt-get install baresip-core)")
        self.lab = lab
        self.host = host
        self.user = user
        self.password = password if password is not None else SIP_USERS[user]
        self.turn = turn
        self.answer = answer
        self.register = register
        self.sip_port = sip_port
        self.ctrl_port = ctrl_port
        self.verbose = verbose
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(
            tempfile.mkdtemp(prefix=f"baresip-{host}-{user}-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir = self.work_dir / "conf"
        self.record_dir = self.work_dir / "rec" if record else None
        self.log_path = self.work_dir / "baresip.log"
        self.play = Path(play) if play is not None else write_tone_wav(
            self.work_dir / f"tone-{tone:g}.wav", tone)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._events: queue.Queue[BaresipEvent] = queue.Queue()
        #: Every event received so far, in order.
        self.events: list[BaresipEvent] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._token = 0

    # --- configuration ----------------------------------------------------------------------------
    @property
    def aor(self) -> str:
        """Its address-of-record."""
        return f"sip:{self.user}@{SIP_DOMAIN}"

    def config_text(self) -> str:
        """The ``config`` file."""
        address = self.lab.hosts[self.host].address
        modules = ["g711", "aufile", "aubridge", "stun", "turn", "ice", "account", "menu",
                   "ctrl_tcp"]
        lines = [
            "poll_method epoll",
            f"sip_listen {address}:{self.sip_port}",
            "net_interface eth0",
            "call_local_timeout 120",
            "call_max_calls 4",
            # Nothing to play on: aubridge without a source is a silent sink.
            "audio_player aubridge,nil",
            "audio_alert aubridge,nil",
            f"audio_source aufile,{self.play}",
            "rtcp_mux no",
            "jitter_buffer_delay 5-10",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"module_path {MODULE_PATH}",
        ]
        if self.record_dir is not None:
            lines.append(f"snd_path {self.record_dir}")
            modules.insert(3, "sndfile")
        lines += [f"module {m}.so" for m in modules]
        return "\n".join(lines) + "\n"

    def account_line(self) -> str:
        """The ``accounts`` line: Kamailio as outbound proxy, ICE with the lab's coturn."""
        server = f"{SERVER_ADDRESS}:{STUN_PORT}"
        nat = (f"stunserver=turn:{TURN_USER}:{TURN_PASSWORD}@{server};"
               f"stunuser={TURN_USER};stunpass={TURN_PASSWORD}"
               if self.turn else f"stunserver=stun:{server}")
        params = [
            f"auth_pass={self.password}",
            f'outbound="sip:{SERVER_ADDRESS}:{SIP_PORT}"',
            f"answermode={'auto' if self.answer else 'manual'}",
            "audio_codecs=pcmu",
            "medianat=ice",
            nat,
            f"regint={600 if self.register else 0}",
        ]
        return f"<{self.aor}>;" + ";".join(params) + "\n"

    def write_config(self) -> Path:
        """Write the config directory; returns it."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "config").write_text(self.config_text())
        (self.config_dir / "accounts").write_text(self.account_line())
        (self.config_dir / "contacts").write_text("")
        return self.config_dir

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Run it; return once it is ready (and registered, unless ``register=False``) and the
        control connection is up."""
        self.write_config()
        argv = ["baresip", "-f", str(self.config_dir)] + (["-v"] if self.verbose else [])
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = self.lab.popen(self.host, argv, stdout=self._log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        self._wait_log("baresip is ready", deadline)
        if self.register:
            self._wait_log("200 OK", deadline)
        self._connect(deadline)

    def _wait_log(self, text: str, deadline: float) -> None:
        while True:
            if text in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise BaresipError(f"baresip exited ({self.proc.returncode}) before "
                                   f"{text!r}:\n{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise BaresipError(f"baresip: no {text!r} in time:\n{self.log()[-2000:]}")
            time.sleep(0.05)

    def _connect(self, deadline: float) -> None:
        namespace = self.lab.namespace(self.host)
        while True:
            sock = netns_socket(namespace)
            try:
                sock.connect(("127.0.0.1", self.ctrl_port))
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise BaresipError(f"cannot reach ctrl_tcp: {exc}") from None
                time.sleep(0.05)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name="baresip-ctrl",
                                        daemon=True)
        self._reader.start()

    def stop(self, timeout: float = 5.0) -> int | None:
        """Quit it (``quit``, then SIGTERM, then SIGKILL to its PID); returns its exit code."""
        proc = self.proc
        if proc is not None and proc.poll() is None and self._sock is not None:
            try:
                self._send("quit", "")
            except OSError:
                pass
            try:
                proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode if proc is not None else None

    def cleanup(self) -> None:
        """Remove the work directory if we made it."""
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> BaresipPeer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- control ----------------------------------------------------------------------------------
    def _send(self, command: str, params: str) -> str:
        if self._sock is None:
            raise BaresipError("not connected (start() first)")
        with self._cond:
            self._token += 1
            token = f"t{self._token}"
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(_netstring(body))
        return token

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Run one command (``dial``, ``hangup``, ``quit``, ...); returns baresip's response."""
        token = self._send(command, params)
        deadline = time.monotonic() + timeout
        with self._cond:
            while token not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BaresipError(f"no response to {command!r}")
                self._cond.wait(left)
            return self._responses.pop(token)

    def dial(self, uri: str) -> dict[str, Any]:
        """Call ``uri`` (through Kamailio)."""
        return self.command("dial", uri)

    def hangup(self) -> dict[str, Any]:
        """Hang up the current call."""
        return self.command("hangup")

    def wait_event(self, kind: str, timeout: float = 30.0, *,
                   after: float | None = None) -> BaresipEvent:
        """The first event of type ``kind`` (received at or after ``after``, wall clock);
        waits up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event.type == kind and (after is None or event.at >= after):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BaresipError(f"no {kind} event within {timeout:g} s:\n"
                                       f"{self.log()[-1500:]}")
                self._cond.wait(left)

    def _read_loop(self) -> None:
        sock = self._sock
        buffer = b""
        while sock is not None:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                length, colon, rest = buffer.partition(b":")
                if not colon or not length.isdigit():
                    break
                size = int(length)
                if len(rest) < size + 1:
                    break
                payload, buffer = rest[:size], rest[size + 1:]
                self._deliver(payload)

    def _deliver(self, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        with self._cond:
            if data.get("response"):
                self._responses[str(data.get("token"))] = data
            elif data.get("event"):
                self.events.append(BaresipEvent(str(data.get("type")), time.time(), data))
            self._cond.notify_all()

    # --- results ----------------------------------------------------------------------------------
    def log(self) -> str:
        """Its output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def recordings(self) -> list[tuple[Path, Path]]:
        """(sent, received) WAV files, one pair per call, oldest first (complete once the call
        has closed)."""
        if self.record_dir is None:
            return []
        encs = sorted(self.record_dir.glob("dump-*-enc.wav"))
        return [(enc, enc.with_name(enc.name[:-len("enc.wav")] + "dec.wav")) for enc in encs]
