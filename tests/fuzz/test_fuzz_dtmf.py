"""Fuzzing the telephone-event (RFC 4733) payload parser.

Random bytes and mutations of valid messages raise only the layer's error.

The targets (tests/fuzz/targets.py) state the contract; hypothesis drives them here, atheris in
tests/fuzz/atheris_dtmf.py. ``SIPUA_FUZZ_EXAMPLES=20000`` makes a long run.
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz import targets
from tests.fuzz.strategies import FUZZ, inputs


@FUZZ
@given(inputs(targets.DTMF_SEEDS, max_size=32))
def test_dtmf_raises_only_dtmf_error(data: bytes) -> None:
    """A payload parses or raises DtmfError, alone or through the receiver."""
    targets.dtmf(data)


def test_dtmf_seed_parses() -> None:
    """The first seed is the end packet of digit 5."""
    from media.dtmf import parse_telephone_event
    event = parse_telephone_event(targets.DTMF_SEEDS[0])
    assert (event.event, event.end) == (5, True)
