"""Fuzzing the RTCP compound parser.

Random bytes and mutations of valid messages raise only the layer's error.

The targets (tests/fuzz/targets.py) state the contract; hypothesis drives them here, atheris in
tests/fuzz/atheris_rtcp.py. ``SIPUA_FUZZ_EXAMPLES=20000`` makes a long run.
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz import targets
from tests.fuzz.strategies import FUZZ, inputs


@FUZZ
@given(inputs(targets.RTCP_SEEDS, max_size=512))
def test_rtcp_raises_only_rtcp_error(data: bytes) -> None:
    """parse_rtcp() succeeds or raises RtcpError; a CNAME can always be read."""
    targets.rtcp(data)


def test_rtcp_seed_parses() -> None:
    """The seed is a compound SR + SDES + BYE."""
    from media.rtcp import parse_rtcp
    kinds = [type(p).__name__ for p in parse_rtcp(targets.RTCP_SEEDS[0])]
    assert kinds == ["SenderReport", "SourceDescription", "Bye"]
