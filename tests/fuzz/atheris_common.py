"""What every atheris harness shares: instrumented imports, seeds as the starting corpus.

A harness is run as a script (``python3 tests/fuzz/atheris_sip.py -atheris_runs=100000``); the
libFuzzer options pass through (``-max_total_time=300``, ``-jobs``, a corpus directory). Without
a corpus directory the run starts from the layer's seeds (tests/fuzz/targets.py), valid
messages, and keeps nothing. A crash is an uncaught exception: atheris prints its traceback and
the input, and exits non-zero.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402  (after the path set-up: run as a script)

with atheris.instrument_imports(include=["sipua", "ice", "media", "sdp_transform"]):
    from tests.fuzz import targets


def run(*names: str) -> None:
    """Fuzz the targets ``names`` together on each input, starting from their seeds."""
    calls: list[Callable[[bytes], None]] = [targets.TARGETS[name][0] for name in names]
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        # No corpus directory: start from the seeds without keeping what the run finds
        # (libFuzzer exits without running Python's clean-up, so nothing temporary is left
        # to grow). The seed files are rewritten on each run, in one fixed place.
        folder = Path(tempfile.gettempdir(), "sipua-fuzz-seeds", "-".join(names))
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in names:
            for index, seed in enumerate(targets.TARGETS[name][1]):
                path = folder / f"{name}{index}"
                path.write_bytes(seed)
                paths.append(str(path))
        argv.append("-seed_inputs=" + ",".join(paths))

    def one_input(data: bytes) -> None:
        for call in calls:
            call(data)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
