"""PixVerse webhook signatures: fixed vectors, both key orders, every reason, properties."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import string
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing import SignatureError, pixverse

SECRET = "pixverse-test-secret"
TS = 1752019770
NONCE = "0123456789abcdef0123456789abcdef"
# The body of PixVerse's webhook page, keys in the order the page gives them.
BODY = (
    b'{"id":"123456789","status":1,"url":"https://example.com/video.mp4","size":10.5,'
    b'"has_audio":true,"credits":100}'
)
SORTED_PAYLOAD = (
    "credits=100&has_audio=true&id=123456789&size=10.5&status=1"
    "&url=https%3A%2F%2Fexample.com%2Fvideo.mp4"
)
AS_SENT_PAYLOAD = (
    "id=123456789&status=1&url=https%3A%2F%2Fexample.com%2Fvideo.mp4&size=10.5"
    "&has_audio=true&credits=100"
)
# Made with `openssl dgst -sha256 -hmac pixverse-test-secret -binary | base64` over
# "{TS}\n{NONCE}\n{payload}": outside Python altogether.
SORTED_SIGNATURE = "1sPFvzppOLkfpYIdrrV2J1pw9lJvgfR1X+xwOaB+wRY="
AS_SENT_SIGNATURE = "ZSPIoRyk6LoqSiUs5XZkN0DSc53EaVQr28nWxTBWdzY="
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def render(value: Any) -> str:
    """A field's value as PixVerse writes it into the query string (this test's reading)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def reference_query(body: bytes, *, sort: bool = True) -> str:
    fields = json.loads(body)
    names = sorted(fields) if sort else list(fields)
    return urlencode([(name, render(fields[name])) for name in names])


def reference_sign(secret: str, ts: int, nonce: str, body: bytes, *, sort: bool = True) -> str:
    """The signature made here, by urlencode and the hmac module, not by the code under test."""
    text = f"{ts}\n{nonce}\n{reference_query(body, sort=sort)}".encode()
    return base64.b64encode(hmac.new(secret.encode(), text, hashlib.sha256).digest()).decode()


def signed(body: bytes = BODY, *, ts: int | str = TS, nonce: str = NONCE, sort: bool = True,
           secret: str = SECRET) -> dict[str, str]:  # fmt: skip
    return {
        "Webhook-Timestamp": str(ts),
        "Webhook-Nonce": nonce,
        "Webhook-Signature": reference_sign(secret, int(ts), nonce, body, sort=sort),
        "Ai-Trace-Id": "7e1c0f6a-9b1d-4d8e-8f4b-2a4c5e6f7a8b",
    }


def headers(**changes: str | None) -> dict[str, str]:
    """The vector's headers; a keyword (timestamp, nonce, signature) replaces or (None)
    removes one."""
    given_headers = signed()
    for key, value in changes.items():
        name = "Webhook-" + key.title()
        if value is None:
            del given_headers[name]
        else:
            given_headers[name] = value
    return given_headers


def reason(given_headers: Headers, body: bytes | str = BODY, *, now: float = TS) -> str:
    with pytest.raises(SignatureError) as caught:
        pixverse.verify(SECRET, given_headers, body, now=now)
    assert SORTED_SIGNATURE not in caught.value.message
    assert SECRET not in caught.value.message
    return caught.value.reason


# --- the vectors ----------------------------------------------------------------------------


def test_the_payload_is_the_body_as_a_query_string_in_either_order() -> None:
    assert pixverse.payload_text(BODY) == SORTED_PAYLOAD
    assert pixverse.payload_text(BODY, order=pixverse.AS_SENT) == AS_SENT_PAYLOAD
    assert pixverse.signed_text(str(TS), NONCE, SORTED_PAYLOAD) == (
        f"{TS}\n{NONCE}\n{SORTED_PAYLOAD}".encode()
    )


def test_the_test_signer_makes_the_openssl_vectors() -> None:
    assert reference_sign(SECRET, TS, NONCE, BODY) == SORTED_SIGNATURE
    assert reference_sign(SECRET, TS, NONCE, BODY, sort=False) == AS_SENT_SIGNATURE


def test_sign_makes_the_vectors() -> None:
    assert pixverse.sign(SECRET, TS, NONCE, BODY) == SORTED_SIGNATURE
    assert pixverse.sign(SECRET, TS, NONCE, BODY, order=pixverse.AS_SENT) == AS_SENT_SIGNATURE


@pytest.mark.parametrize(
    ("signature", "order"),
    [(SORTED_SIGNATURE, pixverse.SORTED), (AS_SENT_SIGNATURE, pixverse.AS_SENT)],
)
def test_either_reading_of_the_key_order_verifies(signature: str, order: str) -> None:
    vector = {
        "webhook-timestamp": str(TS),
        "webhook-nonce": NONCE,
        "webhook-signature": signature,
    }
    verified = pixverse.verify(SECRET, vector, BODY, now=TS + 299)
    assert verified == pixverse.Verified(TS, NONCE, order)  # type: ignore[arg-type]


def test_a_text_body_verifies_as_its_utf8() -> None:
    assert pixverse.verify(SECRET, headers(), BODY.decode(), now=TS).nonce == NONCE


def test_values_are_written_as_text() -> None:
    body = (
        b'{"b":false,"n":null,"s":"a b/\xc3\xa9&=","f":1.50,"e":1e3,"o":{"k":[1,"x",true]},'
        b'"big":123456789012345678901234567890}'
    )
    assert pixverse.payload_text(body, order=pixverse.AS_SENT) == (
        "b=false&n=&s=a+b%2F%C3%A9%26%3D&f=1.50&e=1e3"
        "&o=%7B%22k%22%3A%5B1%2C%22x%22%2Ctrue%5D%7D&big=123456789012345678901234567890"
    )


def test_an_order_read_at_run_time_is_the_same_order() -> None:
    # Equal to the constant, not the same object: as an order read from a setting would be.
    order: Any = "".join(["sor", "ted"])
    assert pixverse.payload_text(BODY, order=order) == SORTED_PAYLOAD
    assert pixverse.sign(SECRET, TS, NONCE, BODY, order=order) == SORTED_SIGNATURE


def test_a_body_of_many_fields_verifies() -> None:
    body = json.dumps({f"field_{i:03}": i for i in range(300)}).encode()
    assert pixverse.verify(SECRET, signed(body), body, now=TS).order == pixverse.SORTED


def test_nested_values_are_written_as_compact_json() -> None:
    body = '{"o":{"k":[true,false,null,-2.50,{"d":{},"é":"a\\"b"}],"":[]}}'.encode()
    assert pixverse.payload_text(body) == (
        "o=%7B%22k%22%3A%5Btrue%2Cfalse%2Cnull%2C-2.50%2C%7B%22d%22%3A%7B%7D%2C%22%C3%A9%22"
        "%3A%22a%5C%22b%22%7D%5D%2C%22%22%3A%5B%5D%7D"
    )


def test_the_vector_with_one_character_changed_is_bad_signature() -> None:
    changed = ("A" if SORTED_SIGNATURE[0] != "A" else "B") + SORTED_SIGNATURE[1:]
    assert reason(headers(signature=changed)) == "bad_signature"


def test_an_empty_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        pixverse.verify("", headers(), BODY, now=TS)
    with pytest.raises(ValueError, match="empty"):
        pixverse.sign("", TS, NONCE, BODY)


# --- every reason ---------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["timestamp", "nonce", "signature"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_or_empty_header(header: str, value: str | None) -> None:
    assert reason(headers(**{header: value})) == "missing_header"


def test_header_names_are_case_insensitive_and_pairs_work() -> None:
    pairs = [(name.upper(), value) for name, value in headers().items()]
    pairs.append(("webhook-nonce", NONCE[:3] + NONCE[3:]))  # the same value twice is fine
    verified = pixverse.verify(SECRET, pairs, BODY, now=TS)
    assert verified == pixverse.Verified(TS, NONCE, pixverse.SORTED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.nonce = "other"  # type: ignore[misc]


@pytest.mark.parametrize("other", ["another", "0000"])  # after and before the first
def test_header_repeated_with_another_value_is_malformed(other: str) -> None:
    pairs = [*headers().items(), ("Webhook-Nonce", other)]
    assert reason(pairs) == "malformed_header"


@pytest.mark.parametrize(
    "changes",
    [
        {"nonce": "ünïcode"},
        {"nonce": "two\nlines"},
        {"nonce": "x" * 129},
        {"nonce": "tab\there"},
        {"timestamp": "soon"},
        {"timestamp": "1752019770.5"},
        {"timestamp": "-1752019770"},
        {"timestamp": "01752019770"},
        {"timestamp": "1.75e9"},
        {"timestamp": "1" * 13},
        {"timestamp": "\uff11" * 10},  # fullwidth digits: isdigit() says yes
        {"signature": SORTED_SIGNATURE[:-4]},
        {"signature": SORTED_SIGNATURE + "AAAA"},
        {"signature": SORTED_SIGNATURE.rstrip("=")},
        {"signature": "*" + SORTED_SIGNATURE[1:]},
        {"signature": base64.b64decode(SORTED_SIGNATURE).hex()},
        {"signature": base64.urlsafe_b64encode(b"\xfb" * 32).decode()},
        {"signature": base64.b64encode(b"\x00" * 33).decode()},  # 44 characters, 33 bytes
    ],
)
def test_malformed_header(changes: dict[str, str]) -> None:
    assert reason(headers(**changes)) == "malformed_header"


def test_non_text_header_values_and_non_pairs_are_malformed() -> None:
    odd: dict[str, object] = {**headers(), "Webhook-Nonce": 4242}
    assert reason(odd) == "malformed_header"  # type: ignore[arg-type]
    assert reason([("only-a-name",)]) == "malformed_header"  # type: ignore[list-item]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b'{"id": "1", "id": "2"}',
        b'{"size": NaN}',
        b'{"size": Infinity}',
        b"\xff\xfe{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"pad": "' + b"x" * pixverse.MAX_BODY + b'"}',
    ],
)
def test_a_body_that_is_no_json_object_is_malformed(body: bytes) -> None:
    assert reason(headers(), body) == "malformed_body"


def test_a_text_body_that_cannot_be_utf8_is_malformed() -> None:
    assert reason(headers(), "\ud800") == "malformed_body"


@pytest.mark.parametrize("offset", [-301, 301, -86400, 10**6])
def test_stale_date_in_either_direction(offset: int) -> None:
    assert reason(headers(), now=TS + offset) == "stale_date"


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_at_the_tolerance_edge_is_fresh(offset: int) -> None:
    assert pixverse.verify(SECRET, headers(), BODY, now=TS + offset).timestamp == TS


def test_tolerance_is_the_caller_s() -> None:
    assert pixverse.verify(SECRET, headers(), BODY, now=TS + 1000, tolerance=1000)
    with pytest.raises(SignatureError):
        pixverse.verify(SECRET, headers(), BODY, now=TS + 11, tolerance=10)


def test_signature_is_checked_before_the_clock() -> None:
    # A forger learns nothing about our clock: a stale forgery is a bad signature.
    forged = signed(secret="not-the-secret")
    assert reason(forged, now=TS + 10**6) == "bad_signature"


@pytest.mark.parametrize(
    ("changes", "body"),
    [
        ({}, BODY.replace(b'"status":1', b'"status":8')),
        ({}, BODY.replace(b"10.5", b"10.50")),  # the number as spelled is signed
        ({}, BODY[:-1] + b',"extra":1}'),
        ({"nonce": NONCE[::-1]}, BODY),
        ({"timestamp": str(TS + 1)}, BODY),
    ],
)
def test_bad_signature(changes: dict[str, str], body: bytes) -> None:
    assert reason(headers(**changes), body, now=TS + 1) == "bad_signature"


def test_whitespace_and_escapes_in_the_json_are_not_signed() -> None:
    # The fields are signed, not the bytes: another spelling of the same JSON verifies.
    spaced = json.dumps(json.loads(BODY), indent=2, ensure_ascii=True).encode()
    assert pixverse.verify(SECRET, headers(), spaced, now=TS).order == pixverse.SORTED


def sized_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    frame = b'{"id":"123456789","pad":""}'
    return frame[:-2] + b"x" * (size - len(frame)) + frame[-2:]


def test_a_body_of_up_to_one_mib_is_read_and_a_byte_more_is_malformed() -> None:
    mib = 1024 * 1024
    body = sized_body(mib)
    assert len(body) == mib
    assert pixverse.verify(SECRET, signed(body), body, now=TS).nonce == NONCE
    longer = sized_body(mib + 1)
    assert reason(signed(longer), longer) == "malformed_body"


def test_a_nonce_of_128_characters_is_read() -> None:
    nonce = "n" * 128
    assert pixverse.verify(SECRET, signed(nonce=nonce), BODY, now=TS).nonce == nonce


def test_headers_that_are_not_pairs_are_malformed_and_other_names_are_ignored() -> None:
    assert reason([1, 2]) == "malformed_header"  # type: ignore[list-item]
    assert reason(None) == "malformed_header"  # type: ignore[arg-type]
    odd_names = [(4242, "x"), (b"webhook-nonce", "x"), *headers().items()]
    verified = pixverse.verify(SECRET, odd_names, BODY, now=TS)  # type: ignore[arg-type]
    assert verified.nonce == NONCE


def test_without_now_the_clock_decides() -> None:
    fresh = int(time.time())
    assert pixverse.verify(SECRET, signed(ts=fresh), BODY).timestamp == fresh
    with pytest.raises(SignatureError) as caught:
        pixverse.verify(SECRET, headers(), BODY)
    assert caught.value.reason == "stale_date"


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_a_now_that_is_no_time_is_a_programming_error(now: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        pixverse.verify(SECRET, headers(), BODY, now=now)


# --- properties -----------------------------------------------------------------------------

keys = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.text(max_size=30),
    st.sampled_from([10.5, 0.25, -3.75, 100.0]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
payloads = st.dictionaries(keys, values, max_size=6)
nonces = st.text(string.ascii_letters + string.digits, min_size=1, max_size=64)
timestamps = st.integers(0, 10**11)
secrets_ = st.text(string.printable, min_size=1, max_size=40)


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@settings(max_examples=200, deadline=None)
@given(secrets_, payloads, nonces, timestamps, st.booleans(), st.integers(-300, 300))
def test_sign_then_verify_round_trips_in_either_order(
    secret: str, payload: dict[str, Any], nonce: str, ts: int, sort: bool, skew: int
) -> None:
    body = encode(payload)
    order = pixverse.SORTED if sort else pixverse.AS_SENT
    signature = pixverse.sign(secret, ts, nonce, body, order=order)
    assert signature == reference_sign(secret, ts, nonce, body, sort=sort)
    given_headers = {
        "Webhook-Timestamp": str(ts), "Webhook-Nonce": nonce, "Webhook-Signature": signature,
    }  # fmt: skip
    verified = pixverse.verify(secret, given_headers, body, now=ts + skew)
    assert (verified.timestamp, verified.nonce) == (ts, nonce)
    if sort or list(payload) == sorted(payload):
        assert verified.order == pixverse.SORTED


@settings(max_examples=200, deadline=None)
@given(payloads, nonces, timestamps, st.data())
def test_any_change_to_a_signed_part_is_bad_signature(
    payload: dict[str, Any], nonce: str, ts: int, data: st.DataObject
) -> None:
    body = encode(payload)
    given_headers = signed(body, ts=ts, nonce=nonce)
    part = data.draw(st.sampled_from(["field", "nonce", "timestamp", "secret", "signature"]))
    secret = SECRET
    if part == "field":
        # Changed as the signed text sees it: null and "" are both written as nothing.
        signed_query = reference_query(body)
        changed = data.draw(
            payloads.filter(lambda other: reference_query(encode(other)) != signed_query)
        )
        body = encode(changed)
    elif part == "nonce":
        given_headers["Webhook-Nonce"] = data.draw(nonces.filter(lambda o: o != nonce))
    elif part == "timestamp":
        given_headers["Webhook-Timestamp"] = str(data.draw(timestamps.filter(lambda t: t != ts)))
    elif part == "secret":
        secret = data.draw(secrets_.filter(lambda s: s != SECRET))
    else:
        raw = bytearray(base64.b64decode(given_headers["Webhook-Signature"]))
        raw[data.draw(st.integers(0, 31))] ^= 1 << data.draw(st.integers(0, 7))
        given_headers["Webhook-Signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SignatureError) as caught:
        pixverse.verify(secret, given_headers, body, now=int(given_headers["Webhook-Timestamp"]))
    assert caught.value.reason == "bad_signature"


header_names = st.sampled_from(
    ["webhook-timestamp", "Webhook-Nonce", "WEBHOOK-SIGNATURE", "ai-trace-id", "other"]
)
header_values = st.one_of(
    st.text(max_size=80),
    st.text(string.printable, max_size=140),
    st.text(string.ascii_letters + string.digits + "+/=", min_size=40, max_size=48),
    st.integers(0, 10**14).map(str),
    st.sampled_from([SORTED_SIGNATURE, AS_SENT_SIGNATURE, NONCE, str(TS)]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=6), st.binary(max_size=80))
def test_junk_only_ever_raises_signature_error(pairs: list[tuple[str, str]], body: bytes) -> None:
    for given_headers in (pairs, dict(pairs)):
        for given_body in (body, BODY):
            try:
                pixverse.verify(SECRET, given_headers, given_body, now=TS)
            except SignatureError as caught:
                assert caught.reason in {
                    "missing_header", "malformed_header", "malformed_body", "bad_signature",
                    "stale_date",
                }  # fmt: skip
                assert SORTED_SIGNATURE not in caught.message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["timestamp", "nonce", "signature"]), header_values, st.binary(max_size=60))
def test_one_junk_header_or_body_among_good_ones_only_raises_signature_error(
    header: str, value: str, body: bytes
) -> None:
    with contextlib.suppress(SignatureError):
        pixverse.verify(SECRET, headers(**{header: value}), BODY, now=TS)
    with contextlib.suppress(SignatureError):
        pixverse.verify(SECRET, headers(), body, now=TS)
