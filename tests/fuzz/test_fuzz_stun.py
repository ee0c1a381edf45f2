"""Fuzzing the STUN codec and the ICE agent's receive path.

Random bytes and mutations of valid messages raise only the layer's error.

The targets (tests/fuzz/targets.py) state the contract; hypothesis drives them here, atheris in
tests/fuzz/atheris_stun.py. ``SIPUA_FUZZ_EXAMPLES=20000`` makes a long run.
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz import targets
from tests.fuzz.strategies import FUZZ, inputs


@FUZZ
@given(inputs(targets.STUN_SEEDS, max_size=256))
def test_stun_raises_only_stun_error(data: bytes) -> None:
    """decode() raises StunError or gives a message whose every attribute can be read."""
    targets.stun(data)


@FUZZ
@given(inputs(targets.STUN_SEEDS, max_size=256))
def test_ice_agent_never_raises(data: bytes) -> None:
    """An ICE agent fed any datagram (mostly mutated checks and responses) raises nothing."""
    targets.ice(data)


def test_stun_seeds_decode() -> None:
    """The seeds are valid messages, the check with a correct MESSAGE-INTEGRITY."""
    from ice.stun import decode, short_term_key, verify_integrity
    messages = [decode(seed) for seed in targets.STUN_SEEDS]
    assert verify_integrity(messages[0], short_term_key(targets.ICE_PWD))
