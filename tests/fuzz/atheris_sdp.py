#!/usr/bin/env python3
"""atheris harness for the SDP reader.

See tests/fuzz/atheris_common.py and docs/security.md. Run:

    python3 tests/fuzz/atheris_sdp.py -atheris_runs=100000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.atheris_common import run

if __name__ == "__main__":
    run("sdp")
