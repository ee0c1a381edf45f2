"""A short atheris run of every harness (2000 inputs each): zero uncaught exceptions.

Skipped, with the reason printed, where atheris does not import. The long runs and their
figures are in docs/security.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
HARNESSES = sorted(p.stem.removeprefix("atheris_") for p in HERE.glob("atheris_*.py")
                   if p.stem != "atheris_common")

try:
    import atheris  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    print(f"atheris unavailable, harness runs skipped: {exc}")
    pytestmark = pytest.mark.skip(reason=f"atheris does not import: {exc}")


def test_every_layer_has_a_harness() -> None:
    """One harness per parser layer."""
    assert HARNESSES == ["dtmf", "rtcp", "rtp", "sdp", "sip", "stun", "turn"]


@pytest.mark.parametrize("layer", HARNESSES)
def test_harness_short_run(layer: str) -> None:
    """2000 inputs from the seeds: the run completes (exit 0) and reports them done."""
    result = subprocess.run(
        [sys.executable, str(HERE / f"atheris_{layer}.py"), "-atheris_runs=2000", "-seed=1"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 2000 runs" in result.stderr or "Done 2000 in" in result.stderr
