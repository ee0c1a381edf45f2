"""Command lines of the ICE peers the tests pair with each other (docs/ice-peer.md)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sipua_peer(role: str, *extra: str, nomination: str = "regular") -> list[str]:
    """This project's agent as a peer."""
    return [sys.executable, "-m", "ice.peer", "--role", role, "--nomination", nomination,
            *extra]


def aioice_peer(role: str, *extra: str, nomination: str = "aggressive") -> list[str]:
    """aioice as a peer (through tests/support/aioice_peer.py)."""
    return [sys.executable, str(ROOT / "tests" / "support" / "aioice_peer.py"), "--role", role,
            "--nomination", nomination, *extra]
