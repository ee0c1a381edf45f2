"""Processes the lab runs in its namespaces: coturn, Kamailio and the link delayer.

Each is started in the foreground of its own session (so a Ctrl-C of ``sipua lab up`` does not
take it down), logs to a file in the lab directory, and has its PID recorded there before
anything else happens, so that ``down`` finds it even if ``up`` dies half-way.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sipua.errors import EnvironmentProblem
from sipua.lab import netns

#: Where the lab's configuration files live (``config/lab`` of the source tree), unless
#: ``SIPUA_LAB_CONFIG`` names another directory.
CONFIG_DIR = Path(
    os.environ.get("SIPUA_LAB_CONFIG", Path(__file__).resolve().parents[2] / "config" / "lab")
)


@dataclass(frozen=True)
class Started:
    """A process the lab started: its name, PID, namespace and log file."""

    name: str
    pid: int
    namespace: str
    log: Path


def pid_file(state_dir: Path, name: str) -> Path:
    """The file holding ``name``'s PID and namespace (``PID NAMESPACE``)."""
    return state_dir / f"{name}.pid"


def read_pid_files(state_dir: Path) -> dict[str, tuple[int, str]]:
    """Every recorded process of a lab: name -> (pid, namespace)."""
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(state_dir.glob("*.pid")):
        try:
            pid_text, ns = path.read_text().split()
            found[path.stem] = (int(pid_text), ns)
        except (OSError, ValueError):
            continue
    return found


def spawn(name: str, ns: str, argv: list[str], state_dir: Path) -> Started:
    """Start ``argv`` in namespace ``ns``, logging to ``<state_dir>/<name>.log``."""
    log = state_dir / f"{name}.log"
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                netns.ns_argv(ns, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=state_dir,
            )
        except OSError as exc:
            raise EnvironmentProblem(f"cannot start {name}: {exc.strerror}") from exc
    # ``ip netns exec`` execs the program in place, so this PID is the program's.
    pid_file(state_dir, name).write_text(f"{proc.pid} {ns}\n")
    # The Popen object is dropped on purpose: the process outlives this one (the CLI exits
    # after ``up``); ``netns.alive`` reaps it when this process is still its parent.
    proc.returncode = 0
    return Started(name, proc.pid, ns, log)


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _bound(pid: int, address: str, port: int, proto: str) -> bool:
    """Whether some socket in ``pid``'s network namespace is bound to ``address:port``."""
    try:
        rows = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        local = row.split()[1]
        hex_ip, hex_port = local.split(":")
        ip = socket.inet_ntoa(struct.pack("<I", int(hex_ip, 16)))
        if int(hex_port, 16) == port and ip in (address, "0.0.0.0"):
            return True
    return False


def wait_listening(started: Started, address: str, port: int, *, timeout: float = 10.0) -> None:
    """Wait until ``started`` listens on UDP ``address:port``; a dead process is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not netns.alive(started.pid):
            raise EnvironmentProblem(
                f"{started.name} exited at start: {_log_tail(started.log)} (log: {started.log})"
            )
        if _bound(started.pid, address, port, "udp"):
            return
        time.sleep(0.05)
    raise EnvironmentProblem(f"{started.name} did not listen on {address}:{port} in {timeout}s")


def wait_log_line(started: Started, text: str, *, timeout: float = 10.0) -> None:
    """Wait until ``started`` writes ``text`` to its log (the delayer's ``ready``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in started.log.read_text(errors="replace"):
                return
        except OSError:
            pass
        if not netns.alive(started.pid):
            raise EnvironmentProblem(f"{started.name} exited at start: {_log_tail(started.log)}")
        time.sleep(0.02)
    raise EnvironmentProblem(f"{started.name} was not ready in {timeout}s (log: {started.log})")


def start_turnserver(ns: str, address: str, port: int, state_dir: Path, *,
                     max_lifetime: int | None = None) -> Started:
    """coturn: STUN and TURN with long-term credentials (config/lab/turnserver.conf).

    ``max_lifetime``: the longest allocation lifetime granted, in seconds (coturn's
    ``--max-allocate-lifetime``): a short one makes clients refresh within a test's time."""
    exe = netns.require_tool("turnserver", "coturn")
    argv = [
        exe, "-c", str(CONFIG_DIR / "turnserver.conf"),
        "--listening-ip", address, "--relay-ip", address, "--listening-port", str(port),
        "--log-file", str(state_dir / "turnserver.log"), "--simple-log",
        "--pidfile", str(state_dir / "turnserver.pidfile"),
        "--userdb", str(state_dir / "turndb"),
    ]
    if max_lifetime is not None:
        argv.append(f"--max-allocate-lifetime={max_lifetime}")
    started = spawn("turnserver", ns, argv, state_dir)
    wait_listening(started, address, port)
    return started


def start_kamailio(ns: str, address: str, port: int, state_dir: Path) -> Started:
    """Kamailio: registrar and proxy (config/lab/kamailio.cfg), users in a copy of the db_text
    tables, so that nothing is ever written into the source tree."""
    exe = netns.require_tool("kamailio", "kamailio")
    db = state_dir / "kamailio-db"
    shutil.copytree(CONFIG_DIR / "kamailio-db", db, dirs_exist_ok=True)
    argv = [
        exe, "-f", str(CONFIG_DIR / "kamailio.cfg"), "-DD", "-E",
        "-l", f"udp:{address}:{port}", "-l", f"tcp:{address}:{port}",
        "-A", f'DBURL="text://{db}"',
        "-Y", str(state_dir), "-P", str(state_dir / "kamailio.pidfile"), "-w", str(state_dir),
        "-m", "32", "-M", "8",
    ]
    started = spawn("kamailio", ns, argv, state_dir)
    wait_listening(started, address, port)
    return started


def start_delayer(
    ns: str, delay_ms: float, jitter_ms: float, queue: int, state_dir: Path, *,
    reorder_pct: float = 0.0, duplicate_pct: float = 0.0,
) -> Started:
    """The NFQUEUE delayer in the internet namespace (see :mod:`sipua.lab.delayer`): delay,
    jitter, reordering and duplication."""
    argv = [
        sys.executable, "-m", "sipua.lab.delayer", "--queue", str(queue),
        "--delay", str(delay_ms), "--jitter", str(jitter_ms),
        "--reorder", str(reorder_pct), "--duplicate", str(duplicate_pct),
    ]
    started = spawn("delayer", ns, argv, state_dir)
    wait_log_line(started, "ready")
    return started


def stop(state_dir: Path, name: str, *, grace: float = 3.0) -> bool:
    """End the recorded process ``name`` (SIGTERM, then SIGKILL after ``grace`` seconds) if it
    still lives in its namespace, and forget its PID. Returns whether it was running."""
    recorded = read_pid_files(state_dir).get(name)
    if recorded is None:
        return False
    pid, ns = recorded
    running = netns.pid_netns_is(pid, ns) and netns.alive(pid)
    if running:
        netns.terminate([pid], grace=grace)
    pid_file(state_dir, name).unlink(missing_ok=True)
    return running
