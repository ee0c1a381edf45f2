"""The lab's peers behind one interface, so that a scenario can be run with any of them.

- :class:`SipPeer` is what a SIP user agent on a lab host can be asked to do: register, call a
  URI or answer automatically, send a tone, record what arrives, hang up, stop, show its log.
  :class:`SipuaPeer` (``sipua call`` / ``sipua answer``), :class:`BaresipSipPeer` (over
  :class:`sipua.lab.baresip.BaresipPeer`) and :class:`LinphoneSipPeer` (over
  :class:`sipua.lab.linphone.LinphonePeer`) implement it.
- :class:`IcePeer` is an ICE-only peer speaking the ICE peer line protocol (our ``ice.peer`` or
  aioice through :mod:`sipua.lab.aioice_peer`), paired with :func:`run_ice_pair`.

Every peer is one process on one lab host, ended by its PID by ``stop()``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from media.sinks import dominant_frequency
from sipua.lab.baresip import BaresipPeer
from sipua.lab.icepair import PeerRun, run_pair
from sipua.lab.lab import SERVER_ADDRESS, SIP_DOMAIN, STUN_PORT, TURN_PASSWORD, TURN_USER, Lab
from sipua.lab.linphone import LinphonePeer
from sipua.lab.sipua_peer import (
    Answerer,
    Caller,
    clean_env,
    in_host,
    pair_summary,
    reports,
    tone_of,
)

__all__ = [
    "ICE_SERVER_ARGS",
    "BaresipSipPeer",
    "IcePeer",
    "LinphoneSipPeer",
    "PeerError",
    "SipPeer",
    "SipuaPeer",
    "aioice_ice_peer",
    "domain_uri",
    "relevant_lines",
    "run_ice_pair",
    "sipua_ice_peer",
    "tone_ok",
]


class PeerError(Exception):
    """A peer did not do what it was asked in time (the message says what it printed)."""


class SipPeer(Protocol):
    """One SIP user agent on a lab host, registered with the lab's Kamailio."""

    #: ``sipua``, ``baresip``, ``linphone``.
    kind: str
    #: Lab host it runs on (``a`` or ``b``).
    host: str
    #: Lab user it registers as (``alice``, ``bob``).
    user: str
    #: Frequency (Hz) of the tone it sends.
    tone: float

    def start(self, *, answer: bool) -> None:
        """Run it and register; with ``answer`` it answers incoming calls by itself."""

    def call(self, uri: str, *, hold: float, timeout: float) -> float:
        """Call ``uri``; returns the wall-clock time the call was started."""

    def wait_media(self, timeout: float) -> float:
        """Wall-clock time at which media of the current call arrived (raises PeerError)."""

    def hangup(self) -> None:
        """End the current call (a sipua caller ends it by itself after ``hold``)."""

    def wait_ended(self, timeout: float) -> None:
        """Return once the current call has ended."""

    def stop(self) -> None:
        """End its process (by PID)."""

    def recording(self) -> Path | None:
        """WAV of what it received in the last call."""

    def log(self) -> str:
        """Its output and log so far."""

    def selected_pair(self) -> str | None:
        """``local-remote`` candidate types it selected (None when unknown)."""

    def setup_ms(self) -> float | None:
        """Its own INVITE-to-first-RTP time of the last call, when it reports one."""


def _relevant(text: str, words: Sequence[str], lines: int) -> list[str]:
    """The last ``lines`` lines mentioning any of ``words`` (or the last lines when none)."""
    all_lines = [ln for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in all_lines if any(w in ln.lower() for w in words)]
    return (hits or all_lines)[-lines:]


class SipuaPeer:
    """sipua as a :class:`SipPeer`: ``sipua answer`` when answering, ``sipua call`` when
    calling, each a process on the host with its JSON report."""

    kind = "sipua"

    def __init__(self, lab: Lab, host: str, user: str, *, tone: float, work_dir: Path,
                 nomination: str | None = None, rtcp_mux: bool = True,
                 play: Path | None = None) -> None:
        self.lab = lab
        self.host = host
        self.user = user
        self.tone = tone
        self.work_dir = work_dir
        self.nomination = nomination
        self.play = play
        work_dir.mkdir(parents=True, exist_ok=True)
        settings = {} if rtcp_mux else {"SIPUA_ICE__RTCP_MUX": "false"}
        self.env = clean_env(work_dir / "home", **settings)
        self._answerer: Answerer | None = None
        self._caller: Caller | None = None
        self._record = work_dir / f"{user}-received.wav"

    def _media_args(self) -> list[str]:
        args = ["--record", str(self._record)]
        args += ["--play", str(self.play)] if self.play else ["--tone", f"{self.tone:g}"]
        if self.nomination:
            args += ["--nomination", self.nomination]
        return args

    @property
    def _proc(self) -> Answerer | Caller:
        proc = self._caller or self._answerer
        if proc is None:
            raise PeerError("sipua: neither calling nor answering")
        return proc

    def start(self, *, answer: bool, timeout: float = 60.0) -> None:
        """Answering: run ``sipua answer`` (one call) and wait for its registration. Calling:
        nothing yet, ``sipua call`` registers when it starts."""
        if answer:
            self._answerer = Answerer(self.lab, self.host, self.user, env=self.env,
                                      timeout=timeout, extra=self._media_args())
            try:
                self._answerer.registered(timeout=20)
            except AssertionError as exc:
                raise PeerError(str(exc)) from None

    def call(self, uri: str, *, hold: float, timeout: float) -> float:
        """``sipua call URI --duration HOLD``: it hangs up after ``hold`` s of media."""
        at = time.time()
        self._caller = Caller(self.lab, self.host, self.user, uri, env=self.env,
                              duration=hold, timeout=timeout, extra=self._media_args())
        return at

    def wait_media(self, timeout: float) -> float:
        """When its first RTP packet arrived (read from its JSON lines)."""
        try:
            self._proc.wait_for("FirstPacketReceived", timeout)
        except AssertionError as exc:
            raise PeerError(str(exc)) from None
        return time.time()

    def hangup(self) -> None:
        """A caller ends the call itself after ``hold``: wait for that."""

    def wait_ended(self, timeout: float) -> None:
        """Wait for its process to exit after the call (``--max-calls 1`` / ``--duration``)."""
        try:
            code = self._proc.finish(timeout=timeout)
        except Exception as exc:  # a hung process: end it and say so
            self._proc.stop()
            raise PeerError(f"sipua did not exit: {exc}") from None
        if code != 0:
            raise PeerError(f"sipua exited {code}: " + " | ".join(
                _relevant(self._proc.stderr, ["error", "fail"], 5)))

    def stop(self) -> None:
        """End its processes by PID if they still run; keep their output in the work dir."""
        for name, proc in (("call", self._caller), ("answer", self._answerer)):
            if proc is not None:
                proc.stop()
                (self.work_dir / f"sipua-{name}.jsonl").write_text(
                    "".join(json.dumps(line) + "\n" for line in proc.lines))
                (self.work_dir / f"sipua-{name}.stderr").write_text(proc.stderr)

    def report(self) -> dict[str, Any] | None:
        """Its CallReport of the call (None before the call has ended)."""
        if self._caller is None and self._answerer is None:
            return None
        found = reports(self._proc.lines)
        return found[-1] if found else None

    def recording(self) -> Path | None:
        """What it recorded."""
        return self._record if self._record.exists() else None

    def log(self) -> str:
        """Its stderr (and the JSON lines' event names)."""
        if self._caller is None and self._answerer is None:
            return ""
        proc = self._proc
        events = " ".join(str(line.get("event")) for line in proc.lines)
        return f"{proc.stderr}\nevents: {events}"

    def selected_pair(self) -> str | None:
        """From its call report."""
        report = self.report()
        return pair_summary(report) or None if report else None

    def setup_ms(self) -> float | None:
        """``setup.invite_to_first_rtp_ms`` of its report."""
        report = self.report()
        value = ((report or {}).get("setup") or {}).get("invite_to_first_rtp_ms")
        return float(value) if value is not None else None


class BaresipSipPeer:
    """baresip as a :class:`SipPeer` (regular nomination only, two components, RFC 5245)."""

    kind = "baresip"
    #: Nominations it can do when it controls.
    nominations = ("regular",)

    def __init__(self, lab: Lab, host: str, user: str, *, tone: float, work_dir: Path,
                 turn: bool = False, play: Path | None = None) -> None:
        self.lab = lab
        self.host = host
        self.user = user
        self.tone = tone
        self.turn = turn
        #: A WAV to send instead of the tone.
        self.play = play
        self.work_dir = work_dir
        self._peer: BaresipPeer | None = None
        self._short_dir: Path | None = None
        self._started = 0.0
        self._media_at: float | None = None
        self._dialled: float | None = None

    def start(self, *, answer: bool) -> None:
        """Run baresip with ``answermode=auto`` (or manual) and wait for its registration.

        It runs in a short temporary directory: its ``sndfile`` module cuts file names at 127
        characters (the recordings lose their ``.wav``); ``stop()`` moves everything into
        ``work_dir``."""
        self._short_dir = Path(tempfile.mkdtemp(prefix="bs-"))
        self._peer = BaresipPeer(self.lab, self.host, self.user, tone=self.tone,
                                 play=self.play, work_dir=self._short_dir, answer=answer,
                                 turn=self.turn)
        self._started = time.time()
        try:
            self._peer.start(timeout=20)
        except Exception as exc:
            raise PeerError(str(exc)) from None

    @property
    def peer(self) -> BaresipPeer:
        """The underlying :class:`BaresipPeer`."""
        if self._peer is None:
            raise PeerError("baresip is not started")
        return self._peer

    def call(self, uri: str, *, hold: float, timeout: float) -> float:
        """``dial`` over ctrl_tcp."""
        self._dialled = time.time()
        response = self.peer.dial(uri)
        if not response.get("ok"):
            raise PeerError(f"baresip refused to dial: {response}")
        return self._dialled

    def wait_media(self, timeout: float) -> float:
        """Its ``CALL_RTPESTAB`` event."""
        try:
            event = self.peer.wait_event("CALL_RTPESTAB", timeout, after=self._started)
        except Exception as exc:
            raise PeerError(str(exc).splitlines()[0]) from None
        self._media_at = event.at
        return event.at

    def hangup(self) -> None:
        """``hangup`` over ctrl_tcp."""
        self.peer.hangup()

    def wait_ended(self, timeout: float) -> None:
        """Its ``CALL_CLOSED`` event."""
        try:
            self.peer.wait_event("CALL_CLOSED", timeout, after=self._started)
        except Exception as exc:
            raise PeerError(str(exc).splitlines()[0]) from None

    def stop(self) -> None:
        """``quit``, then signals to its PID; its files move into ``work_dir``."""
        if self._peer is not None:
            self._peer.stop()
        if self._short_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self._short_dir, self.work_dir, dirs_exist_ok=True)
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    def _dir(self) -> Path:
        return self._short_dir if self._short_dir is not None else self.work_dir

    def recording(self) -> Path | None:
        """``dump-*-dec.wav`` of its last call."""
        decs = sorted((self._dir() / "rec").glob("dump-*-dec.wav"))
        return decs[-1] if decs else None

    def log(self) -> str:
        """Its stdout and stderr."""
        try:
            return (self._dir() / "baresip.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def selected_pair(self) -> str | None:
        """Not reported by baresip's ice module without debug output."""
        return None

    def setup_ms(self) -> float | None:
        """Dial to ``CALL_RTPESTAB`` when it called."""
        if self._dialled is None or self._media_at is None:
            return None
        return round(1000 * (self._media_at - self._dialled), 1)


class LinphoneSipPeer:
    """linphone (linphonec) as a :class:`SipPeer`: mediastreamer2's ICE, STUN only here."""

    kind = "linphone"
    #: Nominations it can do when it controls.
    nominations = ("regular",)

    def __init__(self, lab: Lab, host: str, user: str, *, tone: float, work_dir: Path,
                 play: Path | None = None) -> None:
        self.lab = lab
        self.host = host
        self.user = user
        self.tone = tone
        self.work_dir = work_dir
        #: A WAV to send instead of the tone.
        self.play = play
        self._peer: LinphonePeer | None = None
        self._since = 0.0
        self._dialled: float | None = None
        self._media_at: float | None = None

    @property
    def peer(self) -> LinphonePeer:
        """The underlying :class:`LinphonePeer`."""
        if self._peer is None:
            raise PeerError("linphone is not started")
        return self._peer

    def start(self, *, answer: bool) -> None:
        """Run linphonec, WAV files as sound card, ICE on; wait for its registration."""
        self._peer = LinphonePeer(self.lab, self.host, self.user, tone=self.tone,
                                  play=self.play, answer=answer, work_dir=self.work_dir)
        self._since = time.time()
        try:
            self._peer.start(timeout=20)
        except Exception as exc:
            raise PeerError(str(exc)) from None

    def call(self, uri: str, *, hold: float, timeout: float) -> float:
        """``call URI``."""
        self._dialled = self.peer.dial(uri)
        return self._dialled

    def wait_media(self, timeout: float) -> float:
        """Its ``Media streams established`` line."""
        try:
            self._media_at = self.peer.wait_for("Media streams established", timeout,
                                                after=self._since)
        except Exception as exc:
            raise PeerError(str(exc)) from None
        return self._media_at

    def hangup(self) -> None:
        """``terminate``."""
        self.peer.hangup()

    def wait_ended(self, timeout: float) -> None:
        """Its ``... ended`` line."""
        try:
            self.peer.wait_for(" ended (", timeout, after=self._since)
        except Exception as exc:
            raise PeerError(str(exc)) from None

    def stop(self) -> None:
        """``quit``, then signals to its PID."""
        if self._peer is not None:
            self._peer.stop()

    def recording(self) -> Path | None:
        """The WAV it recorded the call into (the one before the current ``record``)."""
        if self._peer is None:
            return None
        for path in sorted(self.work_dir.glob("rec-*.wav"), reverse=True):
            if path.stat().st_size > 44:
                return path
        return None

    def log(self) -> str:
        """Its stdout and debug log."""
        return self._peer.log() if self._peer is not None else ""

    def selected_pair(self) -> str | None:
        """From its debug log (``ice: Select ... valid pair``)."""
        return self._peer.selected_pair() if self._peer is not None else None

    def setup_ms(self) -> float | None:
        """Dial to ``Media streams established`` when it called."""
        if self._dialled is None or self._media_at is None:
            return None
        return round(1000 * (self._media_at - self._dialled), 1)


# ---------------------------------------------------------------------------------- ICE only

#: Gathering options every ICE-only lab peer gets: the lab's coturn for STUN and for TURN.
ICE_SERVER_ARGS: tuple[str, ...] = (
    "--stun", f"{SERVER_ADDRESS}:{STUN_PORT}",
    "--turn", f"{SERVER_ADDRESS}:{STUN_PORT}",
    "--turn-user", TURN_USER, "--turn-pass", TURN_PASSWORD,
    "--linger", "2",
)


@dataclass(frozen=True)
class IcePeer:
    """An ICE-only peer of the ICE peer line protocol (/work/shared/ICE_PEER.md)."""

    #: ``sipua`` or ``aioice``.
    kind: str
    #: Python module run with ``python -m``.
    module: str
    #: Nominations it can do when it controls (a controlled peer follows any).
    controlling_nominations: tuple[str, ...] = ("regular", "aggressive")
    #: Why it cannot do the others, as the peer itself says.
    why_not: str = ""

    def argv(self, role: str, nomination: str, *extra: str) -> list[str]:
        """Its command line."""
        return [sys.executable, "-m", self.module, "--role", role, "--nomination", nomination,
                *ICE_SERVER_ARGS, *extra]

    def cannot(self, role: str, nomination: str) -> str | None:
        """Why it cannot run in ``role`` with ``nomination`` (None when it can)."""
        if role == "controlling" and nomination not in self.controlling_nominations:
            return self.why_not or f"{self.kind} cannot nominate {nomination}ly"
        return None


def sipua_ice_peer() -> IcePeer:
    """sipua's own agent (``python -m ice.peer``)."""
    return IcePeer("sipua", "ice.peer")


def aioice_ice_peer() -> IcePeer:
    """aioice 0.13 (``python -m sipua.lab.aioice_peer``): aggressive only when controlling."""
    return IcePeer("aioice", "sipua.lab.aioice_peer", ("aggressive",),
                   "aioice nominates aggressively when controlling: "
                   "--nomination regular unsupported")


def run_ice_pair(lab: Lab, a: Sequence[str], b: Sequence[str], log_dir: Path,
                 timeout: float = 60.0) -> tuple[PeerRun, PeerRun]:
    """Run peer command ``a`` on host a and ``b`` on host b to the end of the protocol."""
    return run_pair(in_host(lab, "a", a), in_host(lab, "b", b), log_dir=log_dir,
                    timeout=timeout)


def tone_ok(path: Path | None, expected: float, tolerance: float = 5.0,
            windows: int = 6) -> tuple[bool, float]:
    """Whether ``path`` ends with the tone ``expected`` (within ``tolerance`` Hz); returns that
    and the frequency found.

    The frequency is the median of the dominant frequencies of the last ``windows`` half
    seconds: a window holding lost packets or the call's last, partly silent moments (gaps in
    the tone, as across the lossy scenario) shifts its own estimate by 10-20 Hz, not the
    median."""
    if path is None:
        return False, 0.0
    try:
        with wave.open(str(path)) as wav:
            rate = wav.getframerate()
            pcm = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error):
        return False, 0.0
    size = rate  # bytes in half a second of 16-bit mono
    found = [dominant_frequency(pcm[len(pcm) - (i + 1) * size:len(pcm) - i * size], rate=rate,
                                max_seconds=0.5)
             for i in range(windows) if len(pcm) >= (i + 1) * size]
    if not found:
        return False, tone_of(path)
    freq = float(statistics.median(found))
    return abs(freq - expected) < tolerance, freq


def domain_uri(user: str) -> str:
    """``sip:USER@lab.test``."""
    return f"sip:{user}@{SIP_DOMAIN}"


def relevant_lines(text: str, lines: int = 6,
                   words: Sequence[str] = ("error", "fail", "warn", "ice", "timeout", "turn",
                                           "unsupported", "cannot", "refuse")) -> list[str]:
    """The last ``lines`` lines of a log that look like evidence."""
    return _relevant(text, words, lines)

