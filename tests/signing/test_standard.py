"""Standard Webhooks: the reference vector, the reference library, Ed25519, every reason."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import string
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest
import standardwebhooks
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from signing import SignatureError, standard

# The v1 vector from the standard-webhooks project's own Python tests (test_sign_function).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_HEADERS = {
    "webhook-id": VECTOR_ID,
    "webhook-timestamp": str(VECTOR_TS),
    "webhook-signature": VECTOR_SIGNATURE,
}

# RFC 8032 section 7.1, test 1: an Ed25519 seed and the public key it must yield.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
SK = "whsk_" + base64.b64encode(RFC_SEED).decode()
SK64 = "whsk_" + base64.b64encode(RFC_SEED + RFC_PUBLIC).decode()
PK = "whpk_" + base64.b64encode(RFC_PUBLIC).decode()

OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
SIGNATURE = "webhook-signature"
ID, TS, BODY = "dlv_01HZX3", 1_767_000_000, b'{"type":"job.completed","id":"dlv_01HZX3"}'
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def hmac_b64(secret: str, content: bytes) -> str:
    """Computed here rather than through the module, so the two can disagree."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def headers(secret: str | list[str] = VECTOR_SECRET, /, **changes: str | None) -> dict[str, str]:
    """Signed headers for ID/TS/BODY; a keyword (webhook_ dropped) replaces or removes one."""
    signed = standard.sign_headers(secret, ID, BODY, timestamp=TS)
    for key, value in changes.items():
        name = "webhook-" + key
        if value is None:
            del signed[name]
        else:
            signed[name] = value
    return signed


def reason(
    given_headers: Headers,
    body: bytes | str = BODY,
    *,
    secret: str | list[str] = VECTOR_SECRET,
    now: float = TS,
) -> str:
    with pytest.raises(SignatureError) as caught:
        standard.verify(secret, given_headers, body, now=now)
    expected = hmac_b64(VECTOR_SECRET, f"{ID}.{TS}.".encode() + BODY)
    for hidden in (VECTOR_SECRET.removeprefix("whsec_"), expected):
        assert hidden not in caught.value.message
    return caught.value.reason


# --- the reference project ------------------------------------------------------------------


def test_reference_vector_signs_to_the_expected_signature() -> None:
    assert standard.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_reference_vector_verifies() -> None:
    verified = standard.verify(VECTOR_SECRET, VECTOR_HEADERS, VECTOR_BODY, now=VECTOR_TS + 299)
    assert verified == standard.Verified(id=VECTOR_ID, timestamp=VECTOR_TS)


def test_reference_vector_with_one_character_changed_is_bad_signature() -> None:
    # The reference tests' own "invalid signature": the last character before '=' differs.
    changed = {**VECTOR_HEADERS, "webhook-signature": VECTOR_SIGNATURE[:-2] + "A="}
    with pytest.raises(SignatureError) as caught:
        standard.verify(VECTOR_SECRET, changed, VECTOR_BODY, now=VECTOR_TS)
    assert caught.value.reason == "bad_signature"


def test_reference_library_accepts_what_we_sign() -> None:
    signed = standard.sign_headers(VECTOR_SECRET, ID, BODY)
    assert standardwebhooks.Webhook(VECTOR_SECRET).verify(BODY, signed) == {
        "type": "job.completed",
        "id": ID,
    }


def test_reference_library_rejects_what_we_signed_under_another_secret() -> None:
    signed = standard.sign_headers(OTHER_SECRET, ID, BODY)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(VECTOR_SECRET).verify(BODY, signed)


def test_reference_library_accepts_a_rotation_header_with_v1a_first() -> None:
    signed = standard.sign_headers([SK, VECTOR_SECRET], ID, BODY)
    assert signed["webhook-signature"].startswith("v1a,")
    assert standardwebhooks.Webhook(VECTOR_SECRET).verify(BODY, signed)["id"] == ID


@settings(max_examples=100, deadline=None)
@given(
    msg_id=st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=40),
    timestamp=st.integers(0, 10**11),
    body=st.text(max_size=200),
)
def test_same_signature_as_the_reference_library(msg_id: str, timestamp: int, body: str) -> None:
    moment = datetime.fromtimestamp(timestamp, UTC)
    theirs = standardwebhooks.Webhook(VECTOR_SECRET).sign(msg_id, moment, body)
    assert standard.sign(VECTOR_SECRET, msg_id, timestamp, body) == theirs
    assert standard.sign(VECTOR_SECRET, msg_id, moment, body.encode()) == theirs


# --- signing --------------------------------------------------------------------------------


def test_sign_headers_stamps_now_and_verifies_without_a_clock() -> None:
    signed = standard.sign_headers(VECTOR_SECRET, ID, BODY)
    assert list(signed) == ["webhook-id", "webhook-timestamp", "webhook-signature"]
    assert standard.verify(VECTOR_SECRET, signed, BODY, tolerance=5).id == ID


def test_sign_floors_fractional_and_datetime_timestamps() -> None:
    expected = standard.sign(VECTOR_SECRET, ID, TS, BODY)
    assert standard.sign(VECTOR_SECRET, ID, TS + 0.999, BODY) == expected
    plus_two = timezone(timedelta(hours=2))
    moment = datetime.fromtimestamp(TS, plus_two) + timedelta(milliseconds=400)
    assert standard.sign(VECTOR_SECRET, ID, moment, BODY) == expected
    assert headers()["webhook-timestamp"] == str(TS)


def test_unpadded_secret_signs_like_the_padded_one() -> None:
    padded = "whsec_" + base64.b64encode(b"x" * 25).decode()
    assert padded.endswith("=")
    assert standard.sign(padded.rstrip("="), ID, TS, BODY) == standard.sign(padded, ID, TS, BODY)


def test_several_secrets_give_one_signature_each_in_order() -> None:
    value = standard.sign([VECTOR_SECRET, OTHER_SECRET], ID, TS, BODY)
    content = f"{ID}.{TS}.".encode() + BODY
    assert value.split(" ") == [
        "v1," + hmac_b64(VECTOR_SECRET, content),
        "v1," + hmac_b64(OTHER_SECRET, content),
    ]


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",  # bare, but not base64 (one character short)
        "xyz_" + base64.b64encode(RFC_SEED).decode(),  # an unknown prefix is no scheme
        "whsk_",
        "whpk_",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",
        "whsec_MfKQ9r8GKYqrTwjU PD8ILPZIo2LaLaSw",
        "whsec_" + base64.b64encode(b"too-short-16byte").decode(),
        "whsk_" + base64.b64encode(b"\x01" * 48).decode(),
        "whsk_" + base64.b64encode(RFC_SEED + b"\x00" * 32).decode(),  # not its public half
        "whsk_" + base64.b64encode(RFC_SEED + b"\xff" * 32).decode(),  # nor this
        "whpk_" + base64.b64encode(RFC_PUBLIC).decode(),  # cannot sign
        "whpk_" + base64.b64encode(RFC_PUBLIC[:31]).decode(),
    ],
)
def test_malformed_secret_is_a_value_error_that_does_not_echo_it(secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        standard.sign(secret, ID, TS, BODY)
    assert not isinstance(caught.value, SignatureError)
    encoded = secret.partition("_")[2] if "_" in secret else secret
    assert not encoded or encoded not in str(caught.value)


def test_an_unknown_prefix_is_never_taken_for_an_ed25519_key() -> None:
    # The key material is a valid seed: only the prefix is wrong.
    for prefix in ("xyz_", "WHSK_", "whsk-_", "_"):
        with pytest.raises(ValueError, match="whsec_, whsk_ or whpk_"):
            standard.sign(prefix + base64.b64encode(RFC_SEED).decode(), ID, TS, BODY)
        with pytest.raises(ValueError):
            standard.verify(prefix + base64.b64encode(RFC_PUBLIC).decode(), headers(), BODY)


def test_a_bare_base64_secret_is_a_v1_key_as_in_the_reference_library() -> None:
    bare = VECTOR_SECRET.removeprefix("whsec_")
    assert standard.sign(bare, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    assert standard.verify(bare, VECTOR_HEADERS, VECTOR_BODY, now=VECTOR_TS).id == VECTOR_ID
    theirs = standardwebhooks.Webhook(bare)
    signed = standard.sign_headers(bare, ID, BODY)
    assert theirs.verify(BODY, signed)["id"] == ID
    moment = datetime.fromtimestamp(TS, UTC)
    listed = {**headers(), "webhook-signature": theirs.sign(ID, moment, BODY.decode())}
    assert standard.verify(bare, listed, BODY, now=TS).id == ID
    with pytest.raises(ValueError, match="at least 24 bytes"):
        standard.sign(base64.b64encode(b"x" * 23).decode(), ID, TS, BODY)


def test_sixteen_secrets_are_the_most_at_once() -> None:
    others = ["whsec_" + base64.b64encode(bytes([n]) * 32).decode() for n in range(15)]
    keys = [*others, VECTOR_SECRET]
    assert len(standard.sign(keys, ID, TS, BODY).split()) == 16
    assert standard.verify(keys, headers(), BODY, now=TS).id == ID
    seventeen = [OTHER_SECRET, *keys]
    for attempt in (
        lambda: standard.sign(seventeen, ID, TS, BODY),
        lambda: standard.verify(seventeen, headers(), BODY, now=TS),
    ):
        with pytest.raises(ValueError, match="at most 16 secrets"):
            attempt()


def test_verify_also_refuses_malformed_secrets_with_value_error() -> None:
    for secret in ("whsec_###", "whpk_" + base64.b64encode(b"\x01" * 31).decode(), "nope"):
        with pytest.raises(ValueError, match=r"whsec_|whpk_|base64"):
            standard.verify(secret, headers(), BODY, now=TS)
    with pytest.raises(ValueError, match="no secret"):
        standard.verify([], headers(), BODY, now=TS)


@pytest.mark.parametrize("msg_id", ["", "a.b", "spa ce", "né", "x" * 257, "tab\there"])
def test_sign_refuses_ids_that_cannot_travel_or_would_shift(msg_id: str) -> None:
    with pytest.raises(ValueError):
        standard.sign(VECTOR_SECRET, msg_id, TS, BODY)


@pytest.mark.parametrize("timestamp", [-1, float("nan"), float("inf"), datetime(2026, 1, 1)])
def test_sign_refuses_impossible_timestamps(timestamp: float | datetime) -> None:
    with pytest.raises(ValueError):
        standard.sign(VECTOR_SECRET, ID, timestamp, BODY)


# --- Ed25519 (v1a) --------------------------------------------------------------------------


def test_whsk_seed_yields_the_rfc8032_public_key() -> None:
    assert standard.public_key(SK) == PK
    assert standard.public_key(SK64) == PK
    with pytest.raises(ValueError):
        standard.public_key(VECTOR_SECRET)


def test_v1a_signature_is_ed25519_over_the_signed_content() -> None:
    value = standard.sign(SK, ID, TS, BODY)
    version, _, encoded = value.partition(",")
    assert version == "v1a"
    # Checked with cryptography directly, so a wrong signed content cannot hide.
    Ed25519PublicKey.from_public_bytes(RFC_PUBLIC).verify(
        base64.b64decode(encoded), f"{ID}.{TS}.".encode() + BODY
    )
    assert standard.sign(SK64, ID, TS, BODY) == value  # Ed25519 is deterministic


def test_v1a_verifies_with_the_public_key_or_the_secret_key() -> None:
    signed = headers(SK)
    assert standard.verify(PK, signed, BODY, now=TS) == standard.Verified(ID, TS)
    assert standard.verify(SK64, signed, BODY, now=TS).timestamp == TS


def test_v1a_under_another_key_is_bad_signature() -> None:
    _, other_public = standard.new_signing_key()
    assert reason(headers(SK), secret=other_public) == "bad_signature"
    assert reason(headers(SK), body=BODY + b" ", secret=PK) == "bad_signature"


def test_schemes_do_not_cross() -> None:
    assert reason(headers(SK), secret=VECTOR_SECRET) == "bad_signature"
    assert reason(headers(VECTOR_SECRET), secret=PK) == "bad_signature"


def test_new_keys_are_random_and_usable() -> None:
    first, second = standard.new_secret(), standard.new_secret()
    assert first != second and first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    secret, public = standard.new_signing_key()
    assert secret.startswith("whsk_") and public == standard.public_key(secret)
    assert standard.verify(public, standard.sign_headers(secret, ID, BODY), BODY).id == ID
    with pytest.raises(ValueError):
        standard.new_secret(16)


def test_a_new_secret_may_be_as_short_as_24_bytes() -> None:
    assert len(base64.b64decode(standard.new_secret(24).removeprefix("whsec_"))) == 24
    with pytest.raises(ValueError, match="at least 24 bytes"):
        standard.new_secret(23)


def test_only_a_secret_key_has_a_public_key() -> None:
    assert standard.public_key(SK) == standard.public_key(SK64) == PK
    with pytest.raises(ValueError, match="cannot sign"):
        standard.public_key(PK)
    with pytest.raises(ValueError, match="only a whsk_ secret"):
        standard.public_key(VECTOR_SECRET)


def test_a_public_key_is_exactly_32_bytes() -> None:
    for size in (31, 33, 64):
        wrong = "whpk_" + base64.b64encode((RFC_PUBLIC * 2)[:size]).decode()
        with pytest.raises(ValueError, match="must hold 32 bytes"):
            standard.verify(wrong, headers(SK), BODY, now=TS)


def test_times_and_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        standard.sign_headers(VECTOR_SECRET, ID, BODY, TS)  # type: ignore[misc]
    with pytest.raises(TypeError):
        standard.verify(VECTOR_SECRET, headers(), BODY, TS)  # type: ignore[misc]


# --- rotation -------------------------------------------------------------------------------


def test_either_listed_secret_verifies() -> None:
    for signer in (VECTOR_SECRET, OTHER_SECRET):
        assert standard.verify([OTHER_SECRET, PK, VECTOR_SECRET], headers(signer), BODY, now=TS)


def test_any_matching_signature_among_several_passes() -> None:
    good = headers()["webhook-signature"]
    junk_v1 = "v1," + base64.b64encode(b"\x00" * 32).decode()
    unknown = "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v9,x"
    listed = f"{junk_v1}  {unknown} {good} {junk_v1}"
    assert standard.verify(VECTOR_SECRET, headers(signature=listed), BODY, now=TS).id == ID


def standard_signature(msg_id: str = ID, body: bytes = BODY) -> str:
    """The reference library's v1 signature of the test message."""
    moment = datetime.fromtimestamp(TS, UTC)
    return str(standardwebhooks.Webhook(VECTOR_SECRET).sign(msg_id, moment, body.decode()))


@pytest.mark.parametrize(
    "junk",
    [
        "v1,bm90IHRoaXMgb25l",  # base64, but of 12 bytes
        "v1",
        ",AAAA",
        "v1,",
        "v1,not-base64!",
        "v1a," + base64.b64encode(b"\x00" * 32).decode(),  # v1a needs 64 bytes
    ],
)
def test_a_malformed_entry_is_skipped_when_another_matches(junk: str) -> None:
    good = standard_signature()
    for listed in (f"{junk} {good}", f"{good} {junk}"):
        assert standard.verify(VECTOR_SECRET, headers(signature=listed), BODY, now=TS).id == ID
    wrong = "v1," + base64.b64encode(b"\x00" * 32).decode()
    assert reason(headers(signature=f"{junk} {wrong}")) == "bad_signature"


def test_signature_base64_is_checked_strictly() -> None:
    # A lenient decoder drops the junk and finds the right bytes: it must not match.
    good = standard_signature().removeprefix("v1,")
    for spoiled in (good[:10] + "!" + good[10:], good[:10] + "-" + good[10:], good + "#"):
        assert reason(headers(signature="v1," + spoiled)) == "malformed_header"
        listed = f"v1,{spoiled} v2,AAAA"
        assert reason(headers(signature=listed)) == "bad_signature"


def test_a_256_character_id_is_the_longest() -> None:
    longest = "i" * 256
    signed = standard.sign_headers(VECTOR_SECRET, longest, BODY, timestamp=TS)
    assert signed["webhook-signature"] == standard_signature(longest)
    assert standard.verify(VECTOR_SECRET, signed, BODY, now=TS).id == longest
    with pytest.raises(ValueError):
        standard.sign(VECTOR_SECRET, longest + "i", TS, BODY)
    too_long = {**signed, "webhook-id": longest + "i"}
    assert reason(too_long) == "malformed_header"


def test_sixteen_signatures_are_the_most_listed() -> None:
    good = standard_signature()
    fifteen = [f"v2,{n:04}" for n in range(15)]
    listed = " ".join([*fifteen, good])
    assert standard.verify(VECTOR_SECRET, headers(signature=listed), BODY, now=TS).id == ID
    assert reason(headers(signature=" ".join(["v2,AAAA", *fifteen, good]))) == "malformed_header"


def test_a_signature_header_of_4096_characters_is_the_longest() -> None:
    good = standard_signature()
    filler = "v2," + "A" * (4096 - len(good) - 5)
    listed = f"{filler} {good}"
    assert len(listed) == 4095  # and one more space of padding inside the list:
    listed = f"{filler}  {good}"
    assert len(listed) == 4096
    assert standard.verify(VECTOR_SECRET, headers(signature=listed), BODY, now=TS).id == ID
    assert reason(headers(signature=f"{filler}   {good}")) == "malformed_header"
    for name in ("id", "timestamp"):
        assert reason(headers(**{name: "1" * 4097})) == "malformed_header"


def test_only_unknown_versions_is_bad_signature() -> None:
    listed = "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    assert reason(headers(signature=listed)) == "bad_signature"


# --- every reason ---------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["id", "timestamp", "signature"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_or_empty_header(header: str, value: str | None) -> None:
    assert reason(headers(**{header: value})) == "missing_header"


def test_header_names_are_case_insensitive_and_pairs_work() -> None:
    pairs = [(name.upper(), value) for name, value in headers().items()]
    pairs.append(("WEBHOOK-ID", ID[:3] + ID[3:]))  # the same value twice is fine
    pairs.append((1, "a name that is no text"))  # type: ignore[arg-type]
    pairs.append((b"webhook-id", b"other"))  # type: ignore[arg-type]
    verified = standard.verify(VECTOR_SECRET, pairs, BODY, now=TS)
    assert verified == standard.Verified(ID, TS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("other", ["v1,AAAA", "v1,zzzz", "v2,AAAA"])
@pytest.mark.parametrize("first", [True, False])
def test_header_repeated_with_another_value_is_malformed(other: str, first: bool) -> None:
    signed = headers()["webhook-signature"]
    listed = [(SIGNATURE, other), (SIGNATURE, signed)]
    pairs = [(k, v) for k, v in headers().items() if k != SIGNATURE]
    assert reason(pairs + (listed if first else listed[::-1])) == "malformed_header"


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "a.b"},
        {"id": "ünïcode"},
        {"id": "x" * 257},
        {"timestamp": "hello"},
        {"timestamp": "1767000000.5"},
        {"timestamp": "-1767000000"},
        {"timestamp": "01767000000"},
        {"timestamp": "1.767e9"},
        {"timestamp": "1" * 13},
        {"timestamp": "\uff11" * 10},  # fullwidth digits: isdigit() says yes
        {"signature": "v1"},
        {"signature": ",AAAA"},
        {"signature": "v1,"},
        {"signature": "v1,not base64!"},
        {"signature": "v1," + base64.b64encode(b"\x00" * 16).decode()},
        {"signature": "v1," + base64.b64encode(b"\x00" * 64).decode()},
        {"signature": "v1a," + base64.b64encode(b"\x00" * 32).decode()},
        {"signature": "v1,bm90IHRoaXMgb25l v1a,AAAA ,x v1"},  # not one entry parses
        {"signature": " ".join(["v2,AAAA"] * 17)},
        {"signature": "v1,\x00"},
        {"signature": "v1,AAAA" * 1000},
    ],
)
def test_malformed_header(changes: dict[str, str]) -> None:
    assert reason(headers(**changes)) == "malformed_header"


def test_non_text_header_values_are_malformed() -> None:
    junk: dict[str, object] = {**headers(), "webhook-signature": b"v1,AAAA"}
    assert reason(junk) == "malformed_header"  # type: ignore[arg-type]
    assert reason([("webhook-id",)]) == "malformed_header"  # type: ignore[list-item]


@pytest.mark.parametrize("offset", [-301, 301, -(10**9)])
def test_stale_date_in_either_direction(offset: int) -> None:
    assert reason(headers(), now=TS + offset) == "stale_date"


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_at_the_tolerance_edge_is_fresh(offset: int) -> None:
    assert standard.verify(VECTOR_SECRET, headers(), BODY, now=TS + offset).timestamp == TS


def test_tolerance_and_datetime_now() -> None:
    now = datetime.fromtimestamp(TS + 30, UTC)
    assert standard.verify(VECTOR_SECRET, headers(), BODY, now=now, tolerance=30)
    with pytest.raises(SignatureError) as caught:
        standard.verify(VECTOR_SECRET, headers(), BODY, now=now, tolerance=29)
    assert caught.value.reason == "stale_date" and "30 s" in caught.value.message


def test_signature_is_checked_before_the_clock() -> None:
    # A forger must not learn our clock skew: a stale, wrong signature is just wrong.
    assert reason(headers(OTHER_SECRET), now=TS + 10_000) == "bad_signature"


@pytest.mark.parametrize(
    "changes, body",
    [
        ({}, BODY + b"\n"),
        ({"id": "dlv_01HZX4"}, BODY),
        ({"timestamp": str(TS + 1)}, BODY),
        ({"signature": "v1," + base64.b64encode(b"\x00" * 32).decode()}, BODY),
    ],
)
def test_bad_signature(changes: dict[str, str], body: bytes) -> None:
    assert reason(headers(**changes), body) == "bad_signature"


def test_body_may_be_given_as_text() -> None:
    assert standard.verify(VECTOR_SECRET, headers(), BODY.decode(), now=TS).id == ID
    assert reason(headers(), "\udcff") == "bad_signature"  # a lone surrogate cannot be UTF-8


# --- properties -----------------------------------------------------------------------------

ids = st.text(string.ascii_letters + string.digits + "_-:", min_size=1, max_size=64)
timestamps = st.integers(0, 10**11)
bodies = st.binary(max_size=300)
secrets = st.sampled_from([VECTOR_SECRET, OTHER_SECRET, SK])


@settings(max_examples=150, deadline=None)
@given(secrets, ids, timestamps, bodies)
def test_sign_then_verify_round_trips(secret: str, msg_id: str, ts: int, body: bytes) -> None:
    signed = standard.sign_headers(secret, msg_id, body, timestamp=ts)
    checker = PK if secret == SK else secret
    assert standard.verify(checker, signed, body, now=ts) == standard.Verified(msg_id, ts)
    if secret != SK:
        content = f"{msg_id}.{ts}.".encode() + body
        assert signed["webhook-signature"] == "v1," + hmac_b64(secret, content)


@settings(max_examples=150, deadline=None)
@given(secrets, ids, timestamps, bodies, st.data())
def test_any_change_to_a_signed_part_is_bad_signature(
    secret: str, msg_id: str, ts: int, body: bytes, data: st.DataObject
) -> None:
    signed = standard.sign_headers(secret, msg_id, body, timestamp=ts)
    part = data.draw(st.sampled_from(["body", "id", "timestamp"]))
    if part == "body":
        body = data.draw(bodies.filter(lambda other: other != body))
    elif part == "id":
        signed["webhook-id"] = data.draw(ids.filter(lambda other: other != msg_id))
    else:
        signed["webhook-timestamp"] = str(data.draw(timestamps.filter(lambda t: t != ts)))
    checker = PK if secret == SK else secret
    with pytest.raises(SignatureError) as caught:
        standard.verify(checker, signed, body, now=int(signed["webhook-timestamp"]))
    assert caught.value.reason == "bad_signature"


header_names = st.sampled_from(
    ["webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "webhook-signature", "other"]
)
header_values = st.one_of(
    st.text(max_size=80),
    st.text(string.printable, max_size=80),
    st.builds(lambda v, s: f"{v},{s}", st.sampled_from(["v1", "v1a", "v2", ""]), st.text()),
    st.integers(0, 10**14).map(str),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=6), st.binary(max_size=50))
def test_header_junk_only_ever_raises_signature_error(
    pairs: list[tuple[str, str]], body: bytes
) -> None:
    for given_headers in (pairs, dict(pairs)):
        try:
            standard.verify([VECTOR_SECRET, PK], given_headers, body, now=TS)
        except SignatureError as caught:
            assert caught.reason in {
                "missing_header",
                "malformed_header",
                "bad_signature",
                "stale_date",
            }


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["id", "timestamp", "signature"]), header_values)
def test_one_junk_header_among_good_ones_only_raises_signature_error(
    header: str, value: str
) -> None:
    with contextlib.suppress(SignatureError):
        standard.verify(VECTOR_SECRET, headers(**{header: value}), BODY, now=TS)
