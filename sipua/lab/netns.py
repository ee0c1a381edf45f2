"""Network namespaces and processes: the few system calls the lab needs, with clean errors.

Everything goes through ``ip`` (iproute2) and ``nft``; a failing command becomes an
:class:`~sipua.errors.EnvironmentProblem` naming the command and its complaint, so the CLI
prints one line instead of a traceback. Processes are only ever ended by PID, and only after
checking that the PID still lives in the lab's namespace (a PID in a state file may be reused).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sipua.errors import EnvironmentProblem

NETNS_DIR = Path("/run/netns")


def require_root() -> None:
    """The lab creates namespaces and netfilter rules: only root may."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("the NAT lab needs root (network namespaces and netfilter)")


def require_tool(name: str, package: str) -> str:
    """The path of a program the lab runs, or a one-line hint about the Debian package."""
    path = shutil.which(name)
    if path is None:
        raise EnvironmentProblem(f"'{name}' is missing: apt-get install {package}")
    return path


def run(
    argv: Sequence[str], *, input_text: str | None = None, what: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a set-up command; failure is an environment problem with the command's own words."""
    try:
        proc = subprocess.run(
            list(argv), input=input_text, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"cannot run {argv[0]}: {exc.strerror}") from exc
    if proc.returncode != 0:
        msg = " ".join((proc.stderr or proc.stdout).split()) or f"exit code {proc.returncode}"
        raise EnvironmentProblem(f"{what or ' '.join(argv[:4])} failed: {msg}")
    return proc


def ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped to run inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def ip_batch(lines: Iterable[str], *, ns: str | None = None, what: str = "ip") -> None:
    """Run many ``ip`` commands in one process (stops at the first failing line)."""
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    run(argv, input_text="\n".join(lines) + "\n", what=what)


def sysctl(ns: str, settings: dict[str, str]) -> None:
    """Set per-namespace sysctls (conntrack timeouts, forwarding, bridge netfilter, IPv6)."""
    if settings:
        args = [f"{k}={v}" for k, v in settings.items()]
        run(ns_argv(ns, ["sysctl", "-q", "-w", *args]), what=f"sysctl in {ns}")


def nft_load(ns: str, ruleset: str) -> None:
    """Load an nftables ruleset atomically in namespace ``ns``."""
    run(ns_argv(ns, ["nft", "-f", "-"]), input_text=ruleset, what=f"nft in {ns}")


def exists(ns: str) -> bool:
    """Whether namespace ``ns`` exists (``ip netns add`` created its handle)."""
    return (NETNS_DIR / ns).exists()


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pid_netns_is(pid: int, ns: str) -> bool:
    """Whether process ``pid`` runs in namespace ``ns`` (guards against reused PIDs)."""
    want = _netns_id(str(NETNS_DIR / ns))
    return want is not None and _netns_id(f"/proc/{pid}/ns/net") == want


def pids_in(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (like ``ip netns pids``)."""
    want = _netns_id(str(NETNS_DIR / ns))
    if want is None:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _netns_id(f"/proc/{entry.name}/ns/net") == want:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaping our own children on the way)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def terminate(pids: Iterable[int], *, grace: float = 3.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` seconds, then SIGKILL the ones left."""
    todo = [p for p in set(pids) if p != os.getpid()]
    for pid in todo:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while todo and time.monotonic() < deadline:
        todo = [p for p in todo if alive(p)]
        if todo:
            time.sleep(0.02)
    for pid in todo:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2.0
    while todo and time.monotonic() < deadline:
        todo = [p for p in todo if alive(p)]
        if todo:
            time.sleep(0.02)


def delete(ns: str) -> None:
    """Remove namespace ``ns``; its interfaces go with it (veth peers vanish too)."""
    if exists(ns):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
