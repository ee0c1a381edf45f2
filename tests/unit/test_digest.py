"""Digest authentication (RFC 2617, RFC 7616, RFC 8760): vectors, client and server side."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipua.auth import (
    ALGORITHMS,
    Challenge,
    DigestAuthFailed,
    DigestClient,
    DigestCredentials,
    answer_challenge,
    choose_challenge,
    digest_ha1,
    make_challenge,
    parse_authorization,
    parse_challenges,
    verify_authorization,
)
from sipua.message import Response, SipParseError

RFC7616_CHALLENGE = ('Digest realm="http-auth@example.org", qop="auth, auth-int", '
                     'algorithm={alg}, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                     'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def test_rfc2617_section_3_5_example() -> None:
    """The Mufasa example of RFC 2617 §3.5 (MD5, qop=auth)."""
    challenge = parse_challenges(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')[0]
    value = answer_challenge(challenge, DigestCredentials("Mufasa", "Circle Of Life"), "GET",
                             "/dir/index.html", nc=1, cnonce="0a4f113b")
    fields = parse_authorization(value)
    assert fields["response"] == "6629fae49393a05397450978507c4ef1"
    assert (fields["qop"], fields["nc"], fields["opaque"]) == (
        "auth", "00000001", "5ccc069c403ebaf9f0171e9517f40e41")
    assert verify_authorization(fields, "GET", "Circle Of Life")


@pytest.mark.parametrize("algorithm,expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_section_3_9_1_examples(algorithm: str, expected: str) -> None:
    """The examples of RFC 7616 §3.9.1, MD5 and SHA-256."""
    challenge = parse_challenges(RFC7616_CHALLENGE.format(alg=algorithm))[0]
    value = answer_challenge(challenge, DigestCredentials("Mufasa", "Circle of Life"), "GET",
                             "/dir/index.html", nc=1, cnonce=RFC7616_CNONCE)
    fields = parse_authorization(value)
    assert fields["response"] == expected
    assert fields["algorithm"] == algorithm
    ha1 = digest_ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    assert verify_authorization(fields, "GET", ha1, is_ha1=True)
    assert not verify_authorization(fields, "GET", "Circle of Lies")
    assert not verify_authorization(fields, "POST", "Circle of Life")


def test_rfc2069_style_without_qop() -> None:
    """Without qop the response is H(HA1:nonce:HA2), with no cnonce or nc."""
    challenge = parse_challenges('Digest realm="r", nonce="n"')[0]
    value = answer_challenge(challenge, DigestCredentials("u", "p"), "REGISTER", "sip:r")
    fields = parse_authorization(value)
    assert "cnonce" not in fields and "nc" not in fields and "qop" not in fields
    assert verify_authorization(fields, "REGISTER", "p", realm="r", nonce="n")
    assert not verify_authorization(fields, "REGISTER", "p", realm="other")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("qop", [None, "auth", "auth-int"])
def test_server_verifies_what_the_client_computes(algorithm: str, qop: str | None) -> None:
    """Every algorithm and qop: the registrar side accepts the client's answer, not others."""
    challenge = parse_challenges(make_challenge("example.org", "abc123", algorithm, qop))[0]
    value = answer_challenge(challenge, DigestCredentials("alice", "pw"), "REGISTER",
                             "sip:example.org", nc=3, cnonce="c0ffee", body=b"body")
    fields = parse_authorization(value)
    assert verify_authorization(fields, "REGISTER", "pw", body=b"body")
    assert not verify_authorization(fields, "REGISTER", "wrong", body=b"body")
    if qop == "auth-int":
        assert not verify_authorization(fields, "REGISTER", "pw", body=b"other")


def test_several_challenges_choose_strongest() -> None:
    """SHA-256 is chosen over MD5 (RFC 8760 §2.4), unsupported ones are ignored."""
    value = ('Digest realm="r", nonce="1", algorithm=MD5, qop="auth", '
             'Digest realm="r", nonce="2", algorithm=SHA-256, qop="auth", '
             'Digest realm="r", nonce="3", algorithm=UNKNOWN-HASH, '
             'Basic realm="r"')
    challenges = parse_challenges(value)
    assert [c.nonce for c in challenges] == ["1", "2", "3"]
    chosen = choose_challenge(challenges)
    assert chosen is not None and chosen.algorithm == "SHA-256"
    assert choose_challenge([challenges[2]]) is None
    sess = choose_challenge([challenges[0], Challenge("r", "4", "SHA-256-SESS", ("auth",))])
    assert sess is not None and sess.algorithm == "SHA-256-SESS"


def test_malformed_challenges_raise_sip_parse_error() -> None:
    """Challenges without realm/nonce, or junk, raise SipParseError."""
    for value in ('Digest nonce="1"', 'Digest realm="r"', '=junk', 'Digest realm="unterminated'):
        with pytest.raises(SipParseError):
            parse_challenges(value)
    with pytest.raises(SipParseError):
        parse_authorization('Basic dXNlcjpwYXNz')
    with pytest.raises(SipParseError):
        parse_authorization('Digest username="u", realm="r"')


@given(st.text(max_size=80))
def test_garbage_raises_only_sip_parse_error(value: str) -> None:
    """Any header value either parses or raises SipParseError."""
    for func in (parse_challenges, parse_authorization):
        try:
            func(value)
        except SipParseError:
            pass


def _challenge_response(status: int, *values: str) -> Response:
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    return Response(status, None, [(name, v) for v in values])


def test_client_answers_and_counts_nc_per_nonce() -> None:
    """nc counts the requests sent with one nonce and restarts with a new one."""
    client = DigestClient(DigestCredentials("alice", "pw"), random.Random(1))
    headers = client.handle_challenge(_challenge_response(401, make_challenge("r", "n1")),
                                      "REGISTER", "sip:r")
    assert [h[0] for h in headers] == ["Authorization"]
    assert parse_authorization(headers[0][1])["nc"] == "00000001"
    client.succeeded()
    later = client.authorization("REGISTER", "sip:r")
    fields = parse_authorization(later[0][1])
    assert (fields["nonce"], fields["nc"]) == ("n1", "00000002")
    assert verify_authorization(fields, "REGISTER", "pw")
    again = client.handle_challenge(_challenge_response(401, make_challenge("r", "n2")),
                                    "REGISTER", "sip:r")
    assert parse_authorization(again[0][1])["nc"] == "00000001"


def test_client_cnonce_from_rng_is_deterministic() -> None:
    """The same seed gives byte-identical Authorization values."""
    def run() -> str:
        client = DigestClient(DigestCredentials("alice", "pw"), random.Random(5))
        return client.handle_challenge(_challenge_response(401, make_challenge("r", "n")),
                                       "REGISTER", "sip:r")[0][1]
    assert run() == run()


def test_stale_challenge_is_not_a_failure_but_a_repeat_is() -> None:
    """stale=true gets the new nonce answered; a second non-stale challenge means wrong
    credentials (RFC 3261 §22.2)."""
    client = DigestClient(DigestCredentials("alice", "wrong"), random.Random(2))
    client.handle_challenge(_challenge_response(401, make_challenge("r", "n1")), "REGISTER",
                            "sip:r")
    stale = client.handle_challenge(
        _challenge_response(401, make_challenge("r", "n2", stale=True)), "REGISTER", "sip:r")
    assert parse_authorization(stale[0][1])["nonce"] == "n2"
    with pytest.raises(DigestAuthFailed) as info:
        client.handle_challenge(_challenge_response(401, make_challenge("r", "n3")),
                                "REGISTER", "sip:r")
    assert info.value.realm == "r"


def test_proxy_challenge_and_credentials_per_realm() -> None:
    """407 answers go in Proxy-Authorization; credentials are picked by realm."""
    client = DigestClient([DigestCredentials("alice", "pa", "a.example"),
                           DigestCredentials("bob", "pb", "b.example")], random.Random(3))
    headers = client.handle_challenge(
        _challenge_response(407, make_challenge("b.example", "n", "SHA-256")), "INVITE",
        "sip:carol@b.example")
    assert headers[0][0] == "Proxy-Authorization"
    fields = parse_authorization(headers[0][1])
    assert fields["username"] == "bob"
    assert verify_authorization(fields, "INVITE", "pb")
    with pytest.raises(DigestAuthFailed):
        client.handle_challenge(_challenge_response(401, make_challenge("c.example", "n")),
                                "INVITE", "sip:c")


def test_client_rejects_unanswerable_challenges() -> None:
    """No Digest challenge, or only unsupported algorithms: DigestAuthFailed."""
    client = DigestClient(DigestCredentials("u", "p"), random.Random(4))
    with pytest.raises(DigestAuthFailed):
        client.handle_challenge(Response(401), "REGISTER", "sip:r")
    with pytest.raises(DigestAuthFailed):
        client.handle_challenge(_challenge_response(
            401, 'Digest realm="r", nonce="n", algorithm=SHA3-999'), "REGISTER", "sip:r")
