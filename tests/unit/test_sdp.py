"""SDP offer/answer with ICE attributes (sipua/sdp.py), on SDP as real peers write it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ice.candidate import Candidate, CandidateType
from sipua.sdp import (
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    AudioOffer,
    Codec,
    IceAttributes,
    SdpError,
    build_description,
    default_candidate,
    has_ice_mismatch,
    negotiate_codecs,
    parse_sdp,
)

#: Shaped after what baresip 1.0 sends (docs: two components, a=rtcp, session-level ICE
#: credentials, hex foundations shared by both components, no ice-options).
BARESIP = (
    "v=0\r\n"
    "o=- 1906577563 3006563335 IN IP4 10.0.1.2\r\n"
    "s=-\r\n"
    "c=IN IP4 203.0.113.11\r\n"
    "t=0 0\r\n"
    "a=ice-ufrag:qLnQ\r\n"
    "a=ice-pwd:k0cX5QdDq5rCZ9gKf6jD3b\r\n"
    "m=audio 40002 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=rtcp:40003 IN IP4 203.0.113.11\r\n"
    "a=sendrecv\r\n"
    "a=label:1\r\n"
    "a=rtcp-rsize\r\n"
    "a=ssrc:2712113513 cname:7b0b5c8e\r\n"
    "a=ptime:20\r\n"
    "a=minptime:10\r\n"
    "a=candidate:0a000102 1 UDP 2113932031 10.0.1.2 40002 typ host\r\n"
    "a=candidate:0a000102 2 UDP 2113932030 10.0.1.2 40003 typ host\r\n"
    "a=candidate:0a000102 1 UDP 1845496575 203.0.113.11 40002 typ srflx raddr 10.0.1.2 rport 40002\r\n"  # noqa: E501
    "a=candidate:0a000102 2 UDP 1845496574 203.0.113.11 40003 typ srflx raddr 10.0.1.2 rport 40003\r\n"  # noqa: E501
)

#: Shaped after a browser: per-media credentials, extension pairs, trickle, IPv6 candidates.
BROWSER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    "a=ice-options:trickle\r\n"
    "a=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=candidate:0123 1 udp 2122260223 192.168.1.5 56143 typ host generation 0 "
    "network-id 1 network-cost 10\r\n"
    "a=candidate:842163049 1 udp 1686052607 203.0.113.7 56143 typ srflx raddr 192.168.1.5 "
    "rport 56143 generation 0 ufrag EsAw network-id 1\r\n"
    "a=candidate:2 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active\r\n"
    "a=candidate:3 1 udp 2122262783 2001:db8::5 50000 typ host generation 0\r\n"
    "a=candidate:broken line\r\n"
)


def test_baresip_offer_reads_session_level_ice_and_both_components() -> None:
    """Session-level credentials apply to the stream; both components' candidates are read."""
    media = parse_sdp(BARESIP).audio
    assert media.ice is not None
    assert (media.ice.ufrag, media.ice.pwd) == ("qLnQ", "k0cX5QdDq5rCZ9gKf6jD3b")
    assert len(media.candidates_for(1)) == 2 and len(media.candidates_for(2)) == 2
    assert media.candidates_for(1)[0].foundation == "0a000102"
    assert media.rtcp == ("203.0.113.11", 40003)
    assert media.default_address == ("203.0.113.11", 40002)
    assert [c.name for c in media.codecs] == ["PCMU", "PCMA", "telephone-event"]
    assert media.ptime == 20
    assert not has_ice_mismatch(media)


@pytest.mark.parametrize(("ufrag", "pwd"), [("200e2443", "0123456789012345678901"),
                                            ("1e999", "00000000000000000000001")])
def test_numeric_looking_credentials_are_read_as_written(ufrag: str, pwd: str) -> None:
    """A ufrag or pwd that looks like a number (linphone's ``200e2443``) is kept verbatim, at
    session and at media level: a float conversion would put the wrong USERNAME in checks."""
    session_level = BARESIP.replace("qLnQ", ufrag).replace("k0cX5QdDq5rCZ9gKf6jD3b", pwd)
    media = parse_sdp(session_level).audio
    assert media.ice is not None and (media.ice.ufrag, media.ice.pwd) == (ufrag, pwd)
    media_level = BROWSER.replace("EsAw", ufrag).replace("P2uYro0UCOQ4zxjKXaWCBui1", pwd)
    media = parse_sdp(media_level).audio
    assert media.ice is not None and (media.ice.ufrag, media.ice.pwd) == (ufrag, pwd)


def test_browser_offer_keeps_foundation_spelling_and_ignores_unusable_lines() -> None:
    """A numeric foundation keeps its leading zero; extensions kept; a broken line skipped."""
    media = parse_sdp(BROWSER).audio
    assert media.ice is not None
    cands = media.ice.candidates
    assert cands[0].foundation == "0123"
    assert ("network-cost", "10") in cands[0].extensions
    assert cands[1].type is CandidateType.SRFLX and cands[1].related == ("192.168.1.5", 56143)
    assert len(cands) == 4  # the broken one is dropped, never fatal
    assert media.rtcp_mux and media.ice.options == ("trickle",)
    assert media.codecs[0] == Codec(111, "opus", 48000, 2)


def test_ice_mismatch_when_default_destination_is_not_a_candidate() -> None:
    """A rewritten c=/m= (an ALG or SBC touched it) is an ICE mismatch (RFC 8839 §4.4)."""
    rewritten = BARESIP.replace("c=IN IP4 203.0.113.11", "c=IN IP4 198.51.100.99")
    assert has_ice_mismatch(parse_sdp(rewritten).audio)


def test_offer_round_trip_with_ice() -> None:
    """What we build parses back to the same values, candidates byte for byte."""
    host = Candidate("1", 1, "udp", 2130706431, ("10.0.1.2", 4000), CandidateType.HOST)
    srflx = Candidate("2", 1, "udp", 1694498815, ("203.0.113.5", 4000), CandidateType.SRFLX,
                      related=("10.0.1.2", 4000))
    relay = Candidate("3", 1, "udp", 16777215, ("203.0.113.10", 50000), CandidateType.RELAY,
                      related=("203.0.113.5", 4000))
    default = default_candidate([host, srflx, relay], 1)
    assert default is relay
    ice = IceAttributes("abcd", "0123456789abcdefghijkl", (host, srflx, relay),
                        options=("ice2",), end_of_candidates=True)
    desc = build_description(AudioOffer(connection=default.address[0], port=default.address[1],
                                        ice=ice, rtcp_mux=True), session_id=7, session_version=1)
    text = desc.encode()
    assert "a=candidate:2 1 udp 1694498815 203.0.113.5 4000 typ srflx raddr 10.0.1.2 rport 4000" \
        in text.splitlines()
    back = parse_sdp(text)
    media = back.audio
    assert media.ice is not None
    assert media.ice.candidates == (host, srflx, relay)
    assert media.ice.end_of_candidates and media.rtcp_mux
    assert media.codecs == (PCMU, PCMA, TELEPHONE_EVENT)
    assert not has_ice_mismatch(media)
    assert back.session_id == 7


def test_remote_candidates_round_trip() -> None:
    """a=remote-candidates of an updated offer (RFC 5245 §9.1.3) survives a round trip."""
    ice = IceAttributes("abcd", "0123456789abcdefghijkl",
                        remote_candidates=((1, ("203.0.113.9", 5000)), (2, ("203.0.113.9", 5001))))
    desc = build_description(AudioOffer("203.0.113.5", 4000, ice=ice), session_id=1,
                             session_version=2)
    media = parse_sdp(desc.encode()).audio
    assert media.ice is not None
    assert media.ice.remote_candidates == ice.remote_candidates


def test_ice_pacing_is_written_at_session_level_and_read_back() -> None:
    """RFC 8839 §5.5: our proposed Ta goes out as a session-level a=ice-pacing; the peer's is
    read at session or media level, and a value that is not a usable number is ignored."""
    ice = IceAttributes("abcd", "0123456789abcdefghijkl", pacing=20)
    text = build_description(AudioOffer("203.0.113.5", 4000, ice=ice), session_id=1,
                             session_version=1).encode()
    lines = text.splitlines()
    assert "a=ice-pacing:20" in lines
    assert lines.index("a=ice-pacing:20") < next(i for i, x in enumerate(lines)
                                                  if x.startswith("m="))
    media = parse_sdp(text).audio
    assert media.ice is not None and media.ice.pacing == 20
    at_media = BARESIP.replace("a=sendrecv", "a=sendrecv\r\na=ice-pacing:50")
    assert parse_sdp(at_media).audio.ice.pacing == 50  # type: ignore[union-attr]
    assert parse_sdp(BARESIP).audio.ice.pacing is None  # type: ignore[union-attr]
    for bad in ("-5", "0", "abc", "1e3", "99999999999", "70000"):
        session_level = BARESIP.replace("t=0 0\r\n", f"t=0 0\r\na=ice-pacing:{bad}\r\n")
        assert parse_sdp(session_level).audio.ice.pacing is None, bad  # type: ignore[union-attr]


def test_hold_directions() -> None:
    """sendonly/inactive and the old c=0.0.0.0 form all read as hold."""
    for direction in ("sendonly", "inactive"):
        media = parse_sdp(BARESIP.replace("a=sendrecv", f"a={direction}")).audio
        assert media.on_hold
    assert not parse_sdp(BARESIP).audio.on_hold


def test_codec_negotiation_keeps_offerer_numbers() -> None:
    """RFC 3264 §6.1: the answer uses the offerer's payload numbers, in its order."""
    offered = (Codec(8, "PCMA"), Codec(96, "telephone-event", fmtp="0-15"), Codec(111, "opus",
                                                                                  48000, 2))
    assert negotiate_codecs(offered, (PCMU, PCMA, TELEPHONE_EVENT)) == (
        Codec(8, "PCMA"), Codec(96, "telephone-event", fmtp="0-15"))


@pytest.mark.parametrize("text", ["", "hello", "v=0\r\n", "v=0\r\nm=audio x RTP/AVP 0\r\n",
                                  "v=0\r\nm=audio 4000 RTP/AVP 0\r\n"])
def test_unusable_sdp_raises_sdp_error(text: str) -> None:
    """Bodies without a usable audio stream raise SdpError, nothing else."""
    with pytest.raises(SdpError):
        parse_sdp(text).audio  # noqa: B018


@given(st.text(max_size=300))
def test_garbage_raises_only_sdp_error(text: str) -> None:
    """Any text either parses or raises SdpError."""
    try:
        parse_sdp("v=0\r\n" + text)
    except SdpError:
        pass
