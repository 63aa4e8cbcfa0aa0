"""fal webhook signatures: a fixed vector, JWKS parsing, every reason, properties."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import string
import time
from collections.abc import Iterable, Mapping, Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from signing import SignatureError, fal

# RFC 8032 section 7.1, test 1: a fixed Ed25519 seed, so the vector below is fixed too.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
REQUEST_ID = "5057fca7-2eb3-468f-b95d-cefe92b0b9d4"
USER_ID = "github|4242"
TS = 1752019770
BODY = (
    b'{"request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "gateway_request_id": '
    b'"5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "status": "OK", "payload": {"video": {"url": '
    b'"https://v3.fal.media/files/out.mp4"}}, "error": null}'
)
BODY_SHA256 = "049cdaacd5556ac142a12dd8412cd92d2fa47e497822c903622441e2adccedd9"
# Ed25519 (RFC seed) over the four lines: fixed, since Ed25519 signatures are deterministic.
SIGNATURE = (
    "40aa298461c05e1531615f6ca64c94b00e45248ad434bf07688aac8cda164d24"
    "c65ebe171bd9a9612b9d00ea9c6682abfc70833f4204898e080a12bbf5934c04"
)
RFC_KEY = Ed25519PrivateKey.from_private_bytes(RFC_SEED)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def jwk(key: Ed25519PrivateKey, kid: str | None = None) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    entry = {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).decode()}
    return entry | ({"kid": kid} if kid else {})


def keys(*private: Ed25519PrivateKey) -> tuple[fal.PublicKey, ...]:
    return fal.load_jwks({"keys": [jwk(k, f"k{i}") for i, k in enumerate(private)]})


def sign(
    key: Ed25519PrivateKey, request_id: str, user_id: str, ts: int | str, body: bytes
) -> dict[str, str]:
    """The headers fal sends, made here rather than through the module under test."""
    text = "\n".join([request_id, user_id, str(ts), hashlib.sha256(body).hexdigest()])
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(ts),
        "X-Fal-Webhook-Signature": key.sign(text.encode()).hex(),
    }


def headers(**changes: str | None) -> dict[str, str]:
    """The vector's headers; a keyword (request_id, user_id, timestamp, signature) replaces
    or (None) removes one."""
    signed = sign(RFC_KEY, REQUEST_ID, USER_ID, TS, BODY)
    for key, value in changes.items():
        name = "X-Fal-Webhook-" + key.replace("_", "-").title()
        if value is None:
            del signed[name]
        else:
            signed[name] = value
    return signed


def reason(given_headers: Headers, body: bytes | str = BODY, *, now: float = TS) -> str:
    with pytest.raises(SignatureError) as caught:
        fal.verify(keys(RFC_KEY), given_headers, body, now=now)
    assert SIGNATURE not in caught.value.message
    return caught.value.reason


def reason_with(published: Sequence[fal.PublicKey], given_headers: Headers) -> str:
    with pytest.raises(SignatureError) as caught:
        fal.verify(published, given_headers, BODY, now=TS)
    return caught.value.reason


# --- the vector -----------------------------------------------------------------------------


def test_signed_text_is_four_lines_ending_in_the_body_hash() -> None:
    expected = f"{REQUEST_ID}\n{USER_ID}\n{TS}\n{BODY_SHA256}".encode()
    assert fal.signed_text(REQUEST_ID, USER_ID, str(TS), BODY) == expected
    assert hashlib.sha256(BODY).hexdigest() == BODY_SHA256


def test_the_test_signer_makes_the_vector() -> None:
    assert RFC_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == RFC_PUBLIC
    assert sign(RFC_KEY, REQUEST_ID, USER_ID, TS, BODY)["X-Fal-Webhook-Signature"] == SIGNATURE


def test_the_vector_verifies_against_a_jwks_of_the_public_key() -> None:
    x = base64.urlsafe_b64encode(RFC_PUBLIC).rstrip(b"=").decode()
    published = fal.load_jwks({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "a"}]})
    vector = {
        "x-fal-webhook-request-id": REQUEST_ID,
        "x-fal-webhook-user-id": USER_ID,
        "x-fal-webhook-timestamp": str(TS),
        "x-fal-webhook-signature": SIGNATURE,
    }
    assert fal.verify(published, vector, BODY, now=TS + 299) == fal.Verified(
        REQUEST_ID, USER_ID, TS, "a"
    )


def test_uppercase_hex_and_text_bodies_verify() -> None:
    upper = headers(signature=SIGNATURE.upper())
    assert fal.verify(keys(RFC_KEY), upper, BODY.decode(), now=TS).request_id == REQUEST_ID


def test_any_published_key_verifies_and_is_named() -> None:
    published = keys(OTHER_KEY, RFC_KEY)
    assert fal.verify(published, headers(), BODY, now=TS).kid == "k1"


def test_the_vector_with_one_digit_changed_is_bad_signature() -> None:
    changed = SIGNATURE[:-1] + ("0" if SIGNATURE[-1] != "0" else "1")
    assert reason(headers(signature=changed)) == "bad_signature"


def test_no_keys_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no public keys"):
        fal.verify((), headers(), BODY, now=TS)


# --- the JWKS -------------------------------------------------------------------------------


def test_load_jwks_takes_bytes_text_or_a_mapping_and_keeps_kids() -> None:
    document = {"keys": [jwk(RFC_KEY, "one"), jwk(OTHER_KEY)]}
    text = json.dumps(document)
    for form in (document, text, text.encode()):
        loaded = fal.load_jwks(form)
        assert [k.kid for k in loaded] == ["one", None]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded[0].kid = "other"  # type: ignore[misc]


def test_load_jwks_skips_keys_it_cannot_use() -> None:
    document = {
        "keys": [
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "x": jwk(RFC_KEY)["x"]},
            {"kty": "OKP", "crv": "Ed25519", "x": "not base64!"},
            {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(b"short").decode()},
            {"kty": "OKP", "crv": "Ed25519"},
            {"kty": "OKP", "x": jwk(RFC_KEY)["x"]},
            {"kty": "OKP", "crv": "ED25519", "x": jwk(RFC_KEY)["x"]},
            "a string",
            jwk(RFC_KEY, "good"),
        ]
    }
    assert [k.kid for k in fal.load_jwks(document)] == ["good"]


@pytest.mark.parametrize(
    "document",
    [b"not json", b"[]", b'{"keys": {}}', b'{"keys": []}', b'{"other": 1}', "{" * 5000,
     {"keys": [{"kty": "RSA"}]}, b" " * 70000],
)  # fmt: skip
def test_load_jwks_refuses_what_holds_no_key(document: bytes | str | dict[str, object]) -> None:
    with pytest.raises(ValueError):
        fal.load_jwks(document)


def padded(document: dict[str, object], size: int) -> bytes:
    """The JWKS as JSON, with spaces after it up to ``size`` bytes."""
    text = json.dumps(document).encode()
    return text + b" " * (size - len(text))


def test_a_jwks_of_up_to_64_kib_loads_and_a_byte_more_is_refused() -> None:
    document = {"keys": [jwk(RFC_KEY, "edge")]}
    for form in (padded(document, 65536), padded(document, 65536).decode()):
        assert [k.kid for k in fal.load_jwks(form)] == ["edge"]
    for form in (padded(document, 65537), padded(document, 65537).decode()):
        with pytest.raises(ValueError, match="over 65536 bytes"):
            fal.load_jwks(form)


def test_a_jwks_nested_too_deep_to_read_is_not_json() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        fal.load_jwks("[" * 30000 + "]" * 30000)


def test_a_jwks_gives_at_most_sixteen_keys() -> None:
    many = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(17)]
    loaded = fal.load_jwks({"keys": [jwk(k, f"k{i}") for i, k in enumerate(many)]})
    assert [k.kid for k in loaded] == [f"k{i}" for i in range(16)]


def test_verify_tries_at_most_sixteen_keys() -> None:
    others = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(16)]
    published = [*keys(*others), *keys(RFC_KEY)]
    assert reason_with(published, headers()) == "bad_signature"
    assert fal.verify(published[1:], headers(), BODY, now=TS).timestamp == TS


@pytest.mark.parametrize("kid", ["", 7, None, ["k"]])
def test_a_kid_that_is_not_a_name_is_none(kid: object) -> None:
    entry: dict[str, object] = {**jwk(RFC_KEY), "kid": kid}
    (loaded,) = fal.load_jwks({"keys": [entry]})
    assert loaded.kid is None


# --- every reason ---------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["request_id", "user_id", "timestamp", "signature"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_or_empty_header(header: str, value: str | None) -> None:
    assert reason(headers(**{header: value})) == "missing_header"


def test_header_names_are_case_insensitive_and_pairs_work() -> None:
    pairs = [(name.upper(), value) for name, value in headers().items()]
    pairs.append(("x-fal-webhook-user-id", USER_ID[:3] + USER_ID[3:]))  # the same value twice
    verified = fal.verify(keys(RFC_KEY), pairs, BODY, now=TS)
    assert verified == fal.Verified(REQUEST_ID, USER_ID, TS, "k0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.user_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("other", ["another", "0000"])  # after and before the first
def test_header_repeated_with_another_value_is_malformed(other: str) -> None:
    pairs = [*headers().items(), ("X-Fal-Webhook-Request-Id", other)]
    assert reason(pairs) == "malformed_header"


@pytest.mark.parametrize(
    "changes",
    [
        {"request_id": "ünïcode"},
        {"request_id": "two\nlines"},
        {"user_id": "x" * 257},
        {"user_id": "tab\there"},
        {"timestamp": "soon"},
        {"timestamp": "1752019770.5"},
        {"timestamp": "-1752019770"},
        {"timestamp": "01752019770"},
        {"timestamp": "1.75e9"},
        {"timestamp": "1" * 13},
        {"timestamp": "\uff11" * 10},  # fullwidth digits: isdigit() says yes
        {"signature": SIGNATURE[:-2]},
        {"signature": SIGNATURE + "00"},
        {"signature": "zz" + SIGNATURE[2:]},
        {"signature": SIGNATURE[:64] + " " + SIGNATURE[65:]},
        {"signature": base64.b64encode(bytes.fromhex(SIGNATURE)).decode()},
    ],
)
def test_malformed_header(changes: dict[str, str]) -> None:
    assert reason(headers(**changes)) == "malformed_header"


def test_non_text_header_values_and_non_pairs_are_malformed() -> None:
    odd: dict[str, object] = {**headers(), "X-Fal-Webhook-User-Id": 4242}
    assert reason(odd) == "malformed_header"  # type: ignore[arg-type]
    assert reason([("only-a-name",)]) == "malformed_header"  # type: ignore[list-item]


@pytest.mark.parametrize("offset", [-301, 301, -86400, 10**6])
def test_stale_date_in_either_direction(offset: int) -> None:
    assert reason(headers(), now=TS + offset) == "stale_date"


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_at_the_tolerance_edge_is_fresh(offset: int) -> None:
    assert fal.verify(keys(RFC_KEY), headers(), BODY, now=TS + offset).timestamp == TS


def test_tolerance_is_the_caller_s() -> None:
    assert fal.verify(keys(RFC_KEY), headers(), BODY, now=TS + 1000, tolerance=1000)
    with pytest.raises(SignatureError):
        fal.verify(keys(RFC_KEY), headers(), BODY, now=TS + 11, tolerance=10)


def test_signature_is_checked_before_the_clock() -> None:
    # A forger learns nothing about our clock: a stale forgery is a bad signature.
    forged = sign(OTHER_KEY, REQUEST_ID, USER_ID, TS, BODY)
    assert reason(forged, now=TS + 10**6) == "bad_signature"


@pytest.mark.parametrize(
    ("changes", "body"),
    [
        ({}, BODY + b" "),
        ({}, b""),
        ({"request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d5"}, BODY),
        ({"user_id": "github|4243"}, BODY),
        ({"timestamp": str(TS + 1)}, BODY),
    ],
)
def test_bad_signature(changes: dict[str, str], body: bytes) -> None:
    assert reason(headers(**changes), body, now=TS + 1) == "bad_signature"


def test_a_text_body_that_cannot_be_utf8_is_bad_signature() -> None:
    assert reason(headers(), "\ud800") == "bad_signature"


def test_an_id_of_256_characters_is_read() -> None:
    long_id = "u" * 256
    signed = sign(RFC_KEY, REQUEST_ID, long_id, TS, BODY)
    assert fal.verify(keys(RFC_KEY), signed, BODY, now=TS).user_id == long_id


def test_headers_that_are_not_pairs_are_malformed_and_other_names_are_ignored() -> None:
    assert reason([1, 2]) == "malformed_header"  # type: ignore[list-item]
    assert reason(None) == "malformed_header"  # type: ignore[arg-type]
    odd_names = [(4242, "x"), (b"x-fal-webhook-user-id", "x"), *headers().items()]
    assert fal.verify(keys(RFC_KEY), odd_names, BODY, now=TS).user_id == USER_ID  # type: ignore[arg-type]


def test_without_now_the_clock_decides() -> None:
    fresh = int(time.time())
    signed = sign(RFC_KEY, REQUEST_ID, USER_ID, fresh, BODY)
    assert fal.verify(keys(RFC_KEY), signed, BODY).timestamp == fresh
    with pytest.raises(SignatureError) as caught:
        fal.verify(keys(RFC_KEY), headers(), BODY)
    assert caught.value.reason == "stale_date"


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_a_now_that_is_no_time_is_a_programming_error(now: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        fal.verify(keys(RFC_KEY), headers(), BODY, now=now)


# --- properties -----------------------------------------------------------------------------

ids = st.text(string.ascii_letters + string.digits + "-_|:.@", min_size=1, max_size=80)
timestamps = st.integers(0, 10**11)
bodies = st.binary(max_size=300)
signers = st.sampled_from([RFC_KEY, OTHER_KEY])


@settings(max_examples=150, deadline=None)
@given(signers, ids, ids, timestamps, bodies, st.integers(-300, 300), st.data())
def test_sign_then_verify_round_trips(
    key: Ed25519PrivateKey,
    request_id: str,
    user_id: str,
    ts: int,
    body: bytes,
    skew: int,
    data: st.DataObject,
) -> None:
    signed = sign(key, request_id, user_id, ts, body)
    if data.draw(st.booleans()):
        signed = {name.lower(): value for name, value in signed.items()}
    published = keys(*data.draw(st.permutations([RFC_KEY, OTHER_KEY])))
    verified = fal.verify(published, signed, body, now=ts + skew)
    assert (verified.request_id, verified.user_id, verified.timestamp) == (request_id, user_id, ts)


@settings(max_examples=150, deadline=None)
@given(ids, ids, timestamps, bodies, st.data())
def test_any_change_to_a_signed_part_is_bad_signature(
    request_id: str, user_id: str, ts: int, body: bytes, data: st.DataObject
) -> None:
    signed = sign(RFC_KEY, request_id, user_id, ts, body)
    part = data.draw(st.sampled_from(["body", "request", "user", "timestamp", "key", "sig"]))
    published = keys(RFC_KEY)
    if part == "body":
        body = data.draw(bodies.filter(lambda other: other != body))
    elif part == "request":
        signed["X-Fal-Webhook-Request-Id"] = data.draw(ids.filter(lambda o: o != request_id))
    elif part == "user":
        signed["X-Fal-Webhook-User-Id"] = data.draw(ids.filter(lambda o: o != user_id))
    elif part == "timestamp":
        signed["X-Fal-Webhook-Timestamp"] = str(data.draw(timestamps.filter(lambda t: t != ts)))
    elif part == "key":
        published = keys(OTHER_KEY)
    else:
        raw = bytearray(bytes.fromhex(signed["X-Fal-Webhook-Signature"]))
        raw[data.draw(st.integers(0, 63))] ^= 1 << data.draw(st.integers(0, 7))
        signed["X-Fal-Webhook-Signature"] = raw.hex()
    with pytest.raises(SignatureError) as caught:
        fal.verify(published, signed, body, now=int(signed["X-Fal-Webhook-Timestamp"]))
    assert caught.value.reason == "bad_signature"


header_names = st.sampled_from(
    [
        "x-fal-webhook-request-id",
        "X-Fal-Webhook-User-Id",
        "X-FAL-WEBHOOK-TIMESTAMP",
        "x-fal-webhook-signature",
        "other",
    ]
)
header_values = st.one_of(
    st.text(max_size=80),
    st.text(string.printable, max_size=140),
    st.text("0123456789abcdefABCDEF", min_size=126, max_size=130),
    st.integers(0, 10**14).map(str),
    st.sampled_from([SIGNATURE, REQUEST_ID, USER_ID, str(TS)]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=6), st.binary(max_size=50))
def test_header_junk_only_ever_raises_signature_error(
    pairs: list[tuple[str, str]], body: bytes
) -> None:
    for given_headers in (pairs, dict(pairs)):
        try:
            fal.verify(keys(RFC_KEY, OTHER_KEY), given_headers, body, now=TS)
        except SignatureError as caught:
            assert caught.reason in {
                "missing_header",
                "malformed_header",
                "bad_signature",
                "stale_date",
            }
            assert SIGNATURE not in caught.message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["request_id", "user_id", "timestamp", "signature"]), header_values)
def test_one_junk_header_among_good_ones_only_raises_signature_error(
    header: str, value: str
) -> None:
    with contextlib.suppress(SignatureError):
        fal.verify(keys(RFC_KEY), headers(**{header: value}), BODY, now=TS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), json_values))
def test_load_jwks_only_ever_raises_value_error(document: object) -> None:
    given_document = {"keys": document} if not isinstance(document, bytes | str) else document
    with contextlib.suppress(ValueError):
        fal.load_jwks(given_document)  # type: ignore[arg-type]
