"""Hypothesis strategies shared by the fuzz tests: random bytes and mutations of valid seeds.

``SIPUA_FUZZ_EXAMPLES`` raises the number of examples per test for a long run (default 300,
which keeps each file to a few seconds in CI).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SIPUA_FUZZ_EXAMPLES", "300"))

#: The settings of every fuzz test: bounded in CI, no deadline (the machine is shared).
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Bytes that tend to matter to text protocols: separators, line ends, quotes, escapes, digits.
_INTERESTING = b"\r\n\t :;,=<>\"\\%@/0123456789\x00\xff"


@st.composite
def mutations(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with 1 to 8 edits: flip a bit, overwrite, insert, delete, duplicate or truncate."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "dup", "cut")))
        size = len(data)
        pos = draw(st.integers(0, size))
        if op == "flip" and size:
            pos = min(pos, size - 1)
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and size:
            pos = min(pos, size - 1)
            data[pos] = draw(st.sampled_from(_INTERESTING) | st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16)
                                 | st.sampled_from([b"\r\n", b";", b"\"", b"%", b":", b"\x00"]))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "dup":
            end = min(size, pos + draw(st.integers(1, 64)))
            data[pos:pos] = data[pos:end]
        elif op == "cut":
            del data[pos:]
    return bytes(data)


def inputs(seeds: tuple[bytes, ...], max_size: int = 512) -> st.SearchStrategy[bytes]:
    """Random bytes, or a mutated seed (most examples: they get past the first checks)."""
    return st.one_of(st.binary(max_size=max_size), mutations(seeds), mutations(seeds))
