"""Fuzzing the SDP reader (sdp-transform plus ICE attributes).

Random bytes and mutations of valid messages raise only the layer's error.

The targets (tests/fuzz/targets.py) state the contract; hypothesis drives them here, atheris in
tests/fuzz/atheris_sdp.py. ``SIPUA_FUZZ_EXAMPLES=20000`` makes a long run.
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz import targets
from tests.fuzz.strategies import FUZZ, inputs


@FUZZ
@given(inputs(targets.SDP_SEEDS, max_size=1024))
def test_sdp_raises_only_sdp_error(data: bytes) -> None:
    """An SDP body parses or raises SdpError, whatever its bytes."""
    targets.sdp(data)


def test_sdp_seed_parses() -> None:
    """The seed is valid: one audio stream with its three candidates."""
    from sipua.sdp import parse_sdp
    media = parse_sdp(targets.SIP_SDP).media[0]
    assert media.ice is not None and len(media.ice.candidates) == 3
