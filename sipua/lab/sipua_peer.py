"""`sipua call` and `sipua answer` on lab hosts, registered with the lab's Kamailio, and what is
read back from them: the JSON event lines, the call report, the tone in a recording.

The lab tests, the interop tests, ``bench/call_setup.py`` and ``sipua lab matrix`` all run sipua
this way: as a separate process in a host's namespace (``ip netns exec``), with this source tree
on ``PYTHONPATH`` and an environment without the machine's sipua configuration, so that what is
measured is exactly what a user running the command gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from media.sinks import dominant_frequency
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
    "MEDIA_SERVER_ARGS",
    "REFLEXIVE",
    "ROOT",
    "Answerer",
    "Caller",
    "JsonProcess",
    "account_args",
    "call_argv",
    "clean_env",
    "ends",
    "in_host",
    "ip_of",
    "json_lines",
    "pair_summary",
    "reports",
    "run_call",
    "selected_pairs",
    "tone_of",
]

#: The source tree this module was imported from (put on PYTHONPATH of lab processes, so that
#: ``-m sipua`` and ``-m ice.peer`` run this tree's code whatever the working directory).
ROOT = Path(__file__).resolve().parents[2]

#: STUN and TURN at the lab's coturn, as `sipua call`/`answer` options.
MEDIA_SERVER_ARGS: tuple[str, ...] = (
    "--stun", f"{SERVER_ADDRESS}:{STUN_PORT}",
    "--turn", f"{SERVER_ADDRESS}:{STUN_PORT}",
    "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD,
)
#: Candidate types of a direct path across the NATs.
REFLEXIVE = frozenset({"srflx", "prflx"})


def in_host(lab: Lab, host: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in lab host ``host`` with this source tree importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return lab.argv(host, ["env", f"PYTHONPATH={path}", *argv])


def clean_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment for a sipua process: no SIPUA_* variable or configuration file of the
    machine, plus ``settings`` (e.g. ``SIPUA_ICE__RTCP_MUX="false"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPUA_")}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env.update(settings)
    return env


def account_args(user: str) -> list[str]:
    """Register as ``user`` with Kamailio (and call through it)."""
    return ["--user", f"sip:{user}@{SIP_DOMAIN}", "--password", SIP_USERS[user],
            "--registrar", f"{SERVER_ADDRESS}:{SIP_PORT}"]


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a `--json` output (other lines skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def reports(lines: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The CallReport lines."""
    return [dict(line) for line in lines if line.get("event") == "CallReport"]


def tone_of(path: Path, seconds: float = 0.5) -> float:
    """The dominant frequency of the last ``seconds`` of a 16-bit WAV (0.0 when too short or
    missing)."""
    try:
        with wave.open(str(path)) as wav:
            rate = wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error):
        return 0.0
    tail = frames[-int(rate * seconds) * 2:]
    if len(tail) < 320:
        return 0.0
    return float(dominant_frequency(tail, rate=rate, max_seconds=seconds))


def selected_pairs(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's selected pair per component (components without one left out)."""
    selected = (report.get("ice") or {}).get("selected") or {}
    return {str(c): dict(p) for c, p in selected.items() if p is not None}


def ends(pair: Mapping[str, Any]) -> tuple[str, str]:
    """(local type, remote type) of a selected pair."""
    return str(pair["local_type"]), str(pair["remote_type"])


def ip_of(address: str) -> str:
    """The IP of ``IP:PORT``."""
    return address.rpartition(":")[0]


def pair_summary(report: Mapping[str, Any]) -> str:
    """``local-remote`` types of the selected pair per component, e.g. ``srflx-srflx`` (one
    entry when every component agrees)."""
    pairs = selected_pairs(report)
    kinds = {c: "-".join(ends(p)) for c, p in sorted(pairs.items())}
    if len(set(kinds.values())) <= 1:
        return next(iter(kinds.values()), "")
    return ", ".join(f"{c}: {k}" for c, k in kinds.items())


def call_argv(uri: str, user: str, *, duration: float, timeout: float,
              extra: Sequence[str] = ()) -> list[str]:
    """The `sipua call` command line (registered as ``user``, lab's STUN/TURN, JSON lines)."""
    return [sys.executable, "-m", "sipua", "call", uri, "--listen", "0.0.0.0:0",
            *account_args(user), *MEDIA_SERVER_ARGS, "--json", "--duration", str(duration),
            "--timeout", str(timeout), *extra]


class JsonProcess:
    """A child process that prints JSON lines (a `sipua` command, a lab peer script), in a
    lab host or on this machine; threads collect its lines and its stderr as they come, so
    that a test or a benchmark can wait for an event while the child runs on.

    ``argv`` runs in lab host ``host`` when one is given (with this source tree importable,
    :func:`in_host`), else as it is. ``env`` is the child's whole environment (None: this
    process's). ``log`` also keeps the child's stderr in a file. With ``stdin`` the child
    reads lines from :meth:`send`, and closing its stdin is the request to end (:meth:`stop`).
    """

    #: What the process is, in error messages.
    what = "process"

    def __init__(self, argv: Sequence[str], *, lab: Lab | None = None,
                 host: str | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, log: Path | None = None,
                 stdin: bool = False) -> None:
        if host is not None:
            if lab is None:
                raise ValueError("a lab host needs its lab")
            argv = in_host(lab, host, argv)
        self._log = log.open("w") if log is not None else None
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin else None,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=None if env is None else dict(env),
                                     cwd=None if cwd is None else str(cwd))
        self.lines: list[dict[str, Any]] = []
        self.stderr = ""
        self._cond = threading.Condition()
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parsed = json_lines(line)
            with self._cond:
                self.lines.extend(parsed)
                self._cond.notify_all()
        with self._cond:  # the end of the output: waiters stop waiting
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line
            if self._log is not None:
                self._log.write(line)
                self._log.flush()

    def found(self, event: str | tuple[str, ...], **match: Any) -> list[dict[str, Any]]:
        """The lines so far of kind ``event`` (or of one of the kinds) whose fields equal
        ``match``."""
        kinds = (event,) if isinstance(event, str) else event
        with self._cond:
            return [line for line in self.lines if line.get("event") in kinds
                    and all(line.get(k) == v for k, v in match.items())]

    def last(self, event: str) -> dict[str, Any]:
        """The last line of kind ``event``; AssertionError when there is none."""
        found = self.found(event)
        assert found, f"{self.what}: no {event} line; last lines: {self.lines[-5:]}"
        return found[-1]

    def wait_for(self, event: str | tuple[str, ...], timeout: float = 15.0, count: int = 1,
                 **match: Any) -> dict[str, Any]:
        """The ``count``-th line of kind ``event`` (or of one of the kinds) whose fields equal
        ``match``; AssertionError after ``timeout`` s or when the process ended without it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.found(event, **match)
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._out.is_alive()):
                    if self.proc.poll() is not None:
                        self._err.join(timeout=1)  # its last words, for the message
                    raise AssertionError(
                        f"{self.what}: no {event} (#{count}{self._matching(match)}); "
                        f"last lines: {self.lines[-5:]}; stderr:\n{self.tail()}")
                self._cond.wait(min(left, 0.2))

    @staticmethod
    def _matching(match: Mapping[str, Any]) -> str:
        return "".join(f", {k}={v!r}" for k, v in match.items())

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its stderr."""
        return "\n".join(self.stderr.splitlines()[-lines:])

    def send(self, line: str) -> None:
        """One line on its stdin (started with ``stdin=True``)."""
        assert self.proc.stdin is not None, "started without stdin"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for it to exit; returns the exit code."""
        code = self.proc.wait(timeout=timeout)
        self._join()
        return code

    def stop(self, timeout: float = 5.0) -> None:
        """End it if still running: closing its stdin (when it reads one) asks it to, then
        SIGTERM and last SIGKILL, each after ``timeout`` s; by PID."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._join()

    def _join(self) -> None:
        self._out.join(timeout=5)
        self._err.join(timeout=5)
        if self._log is not None and not self._err.is_alive():
            self._log.close()
            self._log = None


class Answerer(JsonProcess):
    """`sipua answer` running on a lab host, registered; its output collected as it comes."""

    what = "answerer"

    def __init__(self, lab: Lab, host: str, user: str, *, env: Mapping[str, str],
                 extra: Sequence[str] = (), max_calls: int = 1, timeout: float = 15.0) -> None:
        argv = [sys.executable, "-m", "sipua", "answer", "--listen", "0.0.0.0:5060",
                *account_args(user), *MEDIA_SERVER_ARGS, "--json", "--max-calls",
                str(max_calls), "--timeout", str(timeout), *extra]
        super().__init__(argv, lab=lab, host=host, env=env)

    def registered(self, timeout: float = 15.0) -> None:
        """Wait until it has registered."""
        self.wait_for("Registered", timeout)


class Caller(JsonProcess):
    """`sipua call URI` running on a lab host (registered first), in the background: it hangs
    up by itself after ``duration`` seconds of media."""

    what = "caller"

    def __init__(self, lab: Lab, host: str, user: str, uri: str, *, env: Mapping[str, str],
                 extra: Sequence[str] = (), duration: float = 2.0,
                 timeout: float = 15.0) -> None:
        super().__init__(call_argv(uri, user, duration=duration, timeout=timeout, extra=extra),
                         lab=lab, host=host, env=env)


def run_call(lab: Lab, host: str, user: str, uri: str, *, env: Mapping[str, str],
             extra: Sequence[str] = (), duration: float = 2.0, timeout: float = 15.0,
             limit: float = 60.0) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`sipua call URI` on ``host`` as ``user`` (registered); returns the finished process and
    its JSON lines. ``limit`` bounds the whole run (the process is killed past it)."""
    argv = call_argv(uri, user, duration=duration, timeout=timeout, extra=extra)
    done = subprocess.run(in_host(lab, host, argv), capture_output=True, text=True,
                          env=dict(env), timeout=limit, check=False)
    return done, json_lines(done.stdout)
