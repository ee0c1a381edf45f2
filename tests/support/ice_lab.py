"""ICE peers in the NAT lab: command lines run inside a lab host, and what a connected pair
must look like. Shared by tests/lab/test_ice_lab.py and tests/interop/test_aioice_lab.py.

The peers run through ``ip netns exec``, which keeps the working directory and the environment;
``PYTHONPATH`` is set to the repository anyway so that ``-m ice.peer`` and the aioice adapter
import this tree's code whatever directory pytest started in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sipua.lab.icepair import PeerRun, run_pair
from sipua.lab.lab import SERVER_ADDRESS, STUN_PORT, TURN_PASSWORD, TURN_USER, Lab
from tests.support.peers import ROOT

#: Candidate types that are a direct path (no TURN server in the middle).
DIRECT = frozenset({"host", "srflx", "prflx"})

#: Gathering options every lab peer gets: the lab's coturn for STUN and for TURN.
SERVER_ARGS: tuple[str, ...] = (
    "--stun", f"{SERVER_ADDRESS}:{STUN_PORT}",
    "--turn", f"{SERVER_ADDRESS}:{STUN_PORT}",
    "--turn-user", TURN_USER, "--turn-pass", TURN_PASSWORD,
    "--linger", "2",
)


def in_host(lab: Lab, host: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in lab host ``host`` with this repository importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return lab.argv(host, ["env", f"PYTHONPATH={path}", *argv])


def lab_pair(lab: Lab, argv_a: Sequence[str], argv_b: Sequence[str], log_dir: Path,
             timeout: float = 40.0) -> tuple[PeerRun, PeerRun]:
    """Run peer ``argv_a`` on host a and ``argv_b`` on host b to the end of the protocol."""
    return run_pair(in_host(lab, "a", argv_a), in_host(lab, "b", argv_b), log_dir=log_dir,
                    timeout=timeout)


def why(run: PeerRun) -> str:
    """What to print when an assertion about ``run`` fails."""
    return (f"{run.name}: error={run.error} exit={run.exit_code} events={run.events}\n"
            f"description={run.description}\nstderr:\n{run.stderr_tail(40)}")


def assert_connected(run: PeerRun, role: str) -> dict[str, Any]:
    """``run`` selected a pair in ``role``, passed the echo test and exited 0; returns its
    "selected" event."""
    assert run.error is None, why(run)
    selected = run.selected
    assert selected is not None, why(run)
    assert selected["role"] == role, why(run)
    assert run.event("data_ok") is not None, why(run)
    assert run.exit_code == 0, why(run)
    return selected


def types(selected: dict[str, Any]) -> tuple[str, str]:
    """(local type, remote type) of a "selected" event."""
    return str(selected["local"]["type"]), str(selected["remote"]["type"])


def ips(selected: dict[str, Any]) -> tuple[str, str]:
    """(local IP, remote IP) of a "selected" event."""
    return (str(selected["local"]["addr"]).rpartition(":")[0],
            str(selected["remote"]["addr"]).rpartition(":")[0])
