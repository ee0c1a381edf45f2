"""bench/load.py's core at a size CI affords: 50 registrations and 10 calls through the embedded
registrar (a child process on 127.0.0.1), with junk at 500 datagrams per second meanwhile."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor as global_reactor

REACTOR: Any = global_reactor


def _bench() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "load.py"
    spec = importlib.util.spec_from_file_location("sipua_bench_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_small_load_all_succeed() -> None:
    """Every registration (digest included) and every call succeeds, media reaches both ends
    of every call, and the registrar counted the junk it was sent."""
    load = _bench()
    result = await load.run_load(REACTOR, registrations=50, calls=10, junk_pps=500.0, hosts=4,
                                 window=20, hold=1.0, call_timeout=15.0)
    summary = result.summary()
    assert result.registered == 50, summary
    assert result.answered == 10 and result.media == 10, summary
    assert result.media_callee == 10, summary
    assert result.held_together == 10, summary
    assert len(result.registration_ms) == 50 and len(result.setup_ms) == 10
    assert summary["registrar"]["bindings"] == 50
    junk = summary["junk"]
    assert junk["sent"] > 100
    assert junk["parse_errors"] > 0
