"""Two of our agents, each in its own process, paired through the ICE peer line protocol on
127.0.0.1 with the real reactor: every nomination mode with either side controlling, and lite."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipua.lab.icepair import run_pair
from tests.support.peers import sipua_peer

LOOP = ("--interface", "127.0.0.1", "--linger", "2")


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
@pytest.mark.parametrize("first_controls", [True, False])
def test_pair_connects_and_echoes(tmp_path: Path, nomination: str, first_controls: bool) -> None:
    """Both peers select the same host pair, exchange PING/PONG and exit 0."""
    roles = ("controlling", "controlled") if first_controls else ("controlled", "controlling")
    a, b = run_pair(sipua_peer(roles[0], *LOOP, nomination=nomination),
                    sipua_peer(roles[1], *LOOP, nomination=nomination),
                    log_dir=tmp_path, timeout=30)
    for run in (a, b):
        assert run.error is None, (run.error, run.stderr_tail())
        assert run.selected is not None, run.stderr_tail()
        assert run.event("data_ok") is not None, run.events
        assert run.exit_code == 0
    assert a.selected and b.selected
    assert a.selected["local"]["addr"] == b.selected["remote"]["addr"]
    assert b.selected["local"]["addr"] == a.selected["remote"]["addr"]
    assert a.selected["role"] == roles[0]
    assert b.selected["role"] == roles[1]


def test_lite_peer(tmp_path: Path) -> None:
    """A full controlling agent connects to a lite one; the lite one never needs to check."""
    a, b = run_pair(sipua_peer("controlling", *LOOP),
                    sipua_peer("controlled", *LOOP, "--lite"), log_dir=tmp_path, timeout=30)
    assert b.description is not None and b.description["lite"] is True
    for run in (a, b):
        assert run.error is None, (run.error, run.stderr_tail())
        assert run.event("data_ok") is not None, run.events
        assert run.exit_code == 0


def test_unsupported_option_is_a_usage_error(tmp_path: Path) -> None:
    """An option the peer cannot do ends it at once with a non-zero status and a message."""
    import subprocess

    proc = subprocess.run(sipua_peer("controlling", "--nomination", "sometimes"),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0
    assert "nomination" in proc.stderr
