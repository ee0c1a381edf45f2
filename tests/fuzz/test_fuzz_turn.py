"""Fuzzing TURN: ChannelData framing and the TURN client's receive path.

Random bytes and mutations of valid messages raise only the layer's error.

The targets (tests/fuzz/targets.py) state the contract; hypothesis drives them here, atheris in
tests/fuzz/atheris_turn.py. ``SIPUA_FUZZ_EXAMPLES=20000`` makes a long run.
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz import targets
from tests.fuzz.strategies import FUZZ, inputs


@FUZZ
@given(inputs(targets.TURN_SEEDS, max_size=256))
def test_turn_client_never_raises(data: bytes) -> None:
    """ChannelData decodes or raises StunError; the client consumes anything from its server."""
    targets.turn(data)


def test_turn_seed_channel_data() -> None:
    """The ChannelData seed carries channel 0x4001 and its payload."""
    from ice.stun import decode_channel_data
    assert decode_channel_data(targets.TURN_SEEDS[0])[0] == 0x4001
