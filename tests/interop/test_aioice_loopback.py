"""Our agent against aioice (PyPI) over loopback, in both roles, through the peer protocol.

aioice nominates aggressively when it controls; as controlled it follows either mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipua.lab.icepair import run_pair
from tests.support.peers import aioice_peer, sipua_peer

LOOP = ("--interface", "127.0.0.1", "--linger", "2")


@pytest.mark.interop
@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_sipua_controls_aioice(tmp_path: Path, nomination: str) -> None:
    """sipua controlling (either nomination mode), aioice controlled: both select and echo."""
    a, b = run_pair(sipua_peer("controlling", *LOOP, nomination=nomination),
                    aioice_peer("controlled", *LOOP, nomination=nomination),
                    log_dir=tmp_path, timeout=40)
    for run in (a, b):
        assert run.error is None, (run.name, run.error, run.stderr_tail())
        assert run.event("data_ok") is not None, (run.name, run.events, run.stderr_tail())
    assert a.selected and b.selected
    assert a.selected["local"]["addr"] == b.selected["remote"]["addr"]


@pytest.mark.interop
def test_aioice_controls_sipua(tmp_path: Path) -> None:
    """aioice controlling (aggressive), sipua controlled: both select and echo."""
    a, b = run_pair(aioice_peer("controlling", *LOOP),
                    sipua_peer("controlled", *LOOP, nomination="aggressive"),
                    log_dir=tmp_path, timeout=40)
    for run in (a, b):
        assert run.error is None, (run.name, run.error, run.stderr_tail())
        assert run.event("data_ok") is not None, (run.name, run.events, run.stderr_tail())
    assert a.selected and b.selected
    assert b.selected["local"]["addr"] == a.selected["remote"]["addr"]
