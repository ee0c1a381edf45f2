"""Fuzzing the SIP parser (messages, stream framing, URIs, digest headers).

Random bytes and mutations of valid messages raise only the layer's error.

The targets (tests/fuzz/targets.py) state the contract; hypothesis drives them here, atheris in
tests/fuzz/atheris_sip.py. ``SIPUA_FUZZ_EXAMPLES=20000`` makes a long run.
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz import targets
from tests.fuzz.strategies import FUZZ, inputs


@FUZZ
@given(inputs(targets.SIP_SEEDS, max_size=2048))
def test_sip_message_raises_only_sip_parse_error(data: bytes) -> None:
    """Datagram and stream parsing, every typed header and the 400 built from the error."""
    targets.sip(data)


@FUZZ
@given(inputs((b"sip:alice@example.com:5060;transport=tcp;lr?subject=x",
               b"Digest realm=\"a\", nonce=\"b\", qop=\"auth\", algorithm=SHA-256",
               b"Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", "
               b"response=\"00\"")))
def test_sip_header_values_raise_only_sip_parse_error(data: bytes) -> None:
    """URIs, challenges and Authorization values parse or raise SipParseError."""
    targets.sip_headers(data)


def test_sip_seeds_parse() -> None:
    """The seeds are valid, so mutations start from messages that get deep into the parser."""
    from sipua.message import parse
    assert [parse(seed).cseq.method for seed in targets.SIP_SEEDS] == ["INVITE", "REGISTER"]
