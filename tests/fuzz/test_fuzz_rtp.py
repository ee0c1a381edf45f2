"""Fuzzing the RTP parser.

Random bytes and mutations of valid messages raise only the layer's error.

The targets (tests/fuzz/targets.py) state the contract; hypothesis drives them here, atheris in
tests/fuzz/atheris_rtp.py. ``SIPUA_FUZZ_EXAMPLES=20000`` makes a long run.
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz import targets
from tests.fuzz.strategies import FUZZ, inputs


@FUZZ
@given(inputs(targets.RTP_SEEDS, max_size=256))
def test_rtp_raises_only_rtp_error(data: bytes) -> None:
    """parse_rtp() succeeds or raises RtpError."""
    targets.rtp(data)


def test_rtp_seeds_parse() -> None:
    """The seeds are valid: a plain packet and one with CSRCs and padding."""
    from media.rtp import parse_rtp
    assert [parse_rtp(seed).payload_type for seed in targets.RTP_SEEDS] == [0, 101]
