"""`sipua call` and `sipua answer` on lab hosts: re-exported from :mod:`sipua.lab.sipua_peer`
(where ``sipua lab matrix`` uses them too), plus the per-call results file the call tests write
and the markdown table made from it.

Shared by tests/lab/test_calls_lab.py, tests/interop/test_baresip_lab.py and
bench/call_setup.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sipua.lab.sipua_peer import (
    MEDIA_SERVER_ARGS,
    REFLEXIVE,
    Answerer,
    account_args,
    clean_env,
    ends,
    ip_of,
    json_lines,
    pair_summary,
    reports,
    run_call,
    selected_pairs,
    tone_of,
)

__all__ = [
    "MEDIA_SERVER_ARGS",
    "REFLEXIVE",
    "RESULTS_ENV",
    "Answerer",
    "account_args",
    "clean_env",
    "ends",
    "ip_of",
    "json_lines",
    "markdown_table",
    "pair_summary",
    "record_result",
    "reports",
    "run_call",
    "selected_pairs",
    "tone_of",
]


#: Environment variable naming a JSON-lines file that the call tests append one row per call
#: to (what docs/interop.md's table is made from); unset: nothing is written.
RESULTS_ENV = "SIPUA_CALL_RESULTS"


def record_result(row: Mapping[str, Any]) -> None:
    """Append ``row`` to the file named by $SIPUA_CALL_RESULTS, if set."""
    target = os.environ.get(RESULTS_ENV)
    if target:
        with open(target, "a") as out:
            out.write(json.dumps(dict(row), default=str) + "\n")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows recorded by :func:`record_result` as the table of docs/interop.md."""
    head = ["topology", "caller", "callee", "nomination", "result", "selected pair (sipua)",
            "sipua INVITE→first RTP", "peer's first RTP", "audio verified"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in (
            "topology", "caller", "callee", "nomination", "result", "pair", "sipua_setup",
            "peer_setup", "audio")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python3 -m tests.support.call_lab RESULTS.jsonl
    with open(sys.argv[1]) as results:
        print(markdown_table([json.loads(line) for line in results if line.strip()]))
