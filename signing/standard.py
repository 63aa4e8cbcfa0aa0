"""Standard Webhooks signatures: v1 (HMAC-SHA256) and v1a (Ed25519), to sign and to verify.

Signed content: ``{webhook-id}.{webhook-timestamp}.{body}``, the body as the exact bytes sent.
Secrets say their scheme by their prefix, as the specification serializes them:

- ``whsec_<base64>``: a shared v1 key (at least 24 bytes), to sign and to verify;
- ``whsk_<base64>``: an Ed25519 private key, the 32-byte seed or seed plus public key
  (64 bytes), to sign v1a; verify accepts it too and checks with its public half;
- ``whpk_<base64>``: an Ed25519 public key (32 bytes), to verify v1a only;
- bare ``<base64>``, without a prefix: a v1 key like ``whsec_``, as the reference
  libraries take it (base64 has no ``_``, so no other prefix can be mistaken for one).

A malformed secret is the caller's configuration error: ValueError, never SignatureError.
Several secrets may be given, for rotation: :func:`sign` then emits one signature per secret
and :func:`verify` passes if any listed signature matches any secret.

:func:`verify` raises :class:`signing.SignatureError` at the first failure:

1. missing_header: webhook-id, webhook-timestamp or webhook-signature absent or empty;
2. malformed_header: a header repeated with different values, not printable ASCII or
   too long; an id containing ``.``; a timestamp that is not a plain integer; more than
   16 signature entries, or not one entry that is ``version,value`` with a v1/v1a value
   that is strict base64 of the right length;
3. bad_signature: no v1/v1a signature matches. Entries that do not parse are skipped, as
   are versions other than v1 and v1a: a sender may list schemes we do not know.
4. stale_date: the timestamp is more than ``tolerance`` seconds from now, either way;
   checked after the signature so that only an authenticated sender learns our clock skew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets as _random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from signing import SignatureError

__all__ = [
    "Verified",
    "new_secret",
    "new_signing_key",
    "public_key",
    "sign",
    "sign_headers",
    "verify",
]

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
_HEADERS = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
MIN_SECRET_BYTES = 24  # the specification's floor for v1 keys
_HMAC_BYTES, _ED25519_BYTES = 32, 64
# Bounds keep a hostile header from costing more than a few Ed25519 checks.
_MAX_ID, _MAX_SIGNATURE_HEADER, _MAX_SIGNATURES, _MAX_SECRETS = 256, 4096, 16, 16
# Canonical decimal only: a sender's "0123" or "1e9" would sign other text than we rebuild.
_TIMESTAMP = re.compile(r"(?:0|[1-9][0-9]{0,11})")

Secrets = str | Sequence[str]
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class Verified:
    id: str  # webhook-id: the same on every retry of one event, so dedupe on it
    timestamp: int  # webhook-timestamp, unix seconds, of this attempt


@dataclass(frozen=True)
class _Key:
    version: str  # "v1" or "v1a"
    hmac_key: bytes | None = None
    private: Ed25519PrivateKey | None = None
    public: Ed25519PublicKey | None = None


def sign(secret: Secrets, msg_id: str, timestamp: int | float | datetime, body: bytes | str) -> str:
    """The ``webhook-signature`` value: one ``v1,...``/``v1a,...`` entry per secret."""
    keys = _keys(secret, signing=True)
    content = _content(_check_id(msg_id), _unix(timestamp), _bytes(body))
    return " ".join(_signature(key, content) for key in keys)


def sign_headers(
    secret: Secrets,
    msg_id: str,
    body: bytes | str,
    *,
    timestamp: int | float | datetime | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, stamped now unless told otherwise."""
    when = _unix(time.time() if timestamp is None else timestamp)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(when),
        SIGNATURE_HEADER: sign(secret, msg_id, when, body),
    }


def verify(
    secret: Secrets,
    headers: Headers,
    body: bytes | str,
    *,
    now: float | datetime | None = None,
    tolerance: float = 300,
) -> Verified:
    """Check a webhook's headers against ``body``; raise SignatureError if it is not ours."""
    keys = _keys(secret, signing=False)
    now_s = time.time() if now is None else _when(now)
    table = _table(headers)
    msg_id, stamp, listed = (
        _get(table, name) for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    )
    if len(msg_id) > _MAX_ID or "." in msg_id:
        # A dot would let the id absorb part of the timestamp and the body shift along.
        raise _malformed(f"webhook-id must be at most {_MAX_ID} characters, without '.'")
    if not _TIMESTAMP.fullmatch(stamp):
        raise _malformed("webhook-timestamp must be whole unix seconds, like 1674087231")
    signatures = _parse_signatures(listed)

    try:
        content = _content(msg_id, int(stamp), _bytes(body))
    except UnicodeEncodeError:
        raise SignatureError("bad_signature", "body is not valid Unicode text") from None
    if not any(_matches(key, version, raw, content) for version, raw in signatures for key in keys):
        raise SignatureError(
            "bad_signature", "no signature matches; check the secret and that the body is unchanged"
        )
    skew = abs(now_s - int(stamp))
    if skew > tolerance:
        raise SignatureError(
            "stale_date",
            f"webhook-timestamp is {skew:.0f} s away from this server's clock "
            f"(limit {tolerance:g} s); check the sender's clock",
        )
    return Verified(id=msg_id, timestamp=int(stamp))


def new_secret(size: int = 32) -> str:
    """A fresh random ``whsec_`` secret."""
    if size < MIN_SECRET_BYTES:
        raise ValueError(f"a whsec_ secret needs at least {MIN_SECRET_BYTES} bytes")
    return "whsec_" + base64.b64encode(_random.token_bytes(size)).decode("ascii")


def new_signing_key() -> tuple[str, str]:
    """A fresh Ed25519 pair: (``whsk_`` to sign with, ``whpk_`` to give receivers)."""
    seed = _random.token_bytes(32)
    secret = "whsk_" + base64.b64encode(seed).decode("ascii")
    return secret, public_key(secret)


def public_key(secret: str) -> str:
    """The ``whpk_`` public key for a ``whsk_`` secret, to hand to receivers."""
    key = _key(secret, signing=True)
    if key.private is None:
        raise ValueError("only a whsk_ secret has a public key")
    raw = key.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "whpk_" + base64.b64encode(raw).decode("ascii")


# -- keys ------------------------------------------------------------------------------------


def _keys(secret: Secrets, *, signing: bool) -> list[_Key]:
    listed = [secret] if isinstance(secret, str) else list(secret)
    if not listed:
        raise ValueError("no secret given")
    if len(listed) > _MAX_SECRETS:
        raise ValueError(f"at most {_MAX_SECRETS} secrets at once")
    return [_key(item, signing=signing) for item in listed]


def _key(secret: str, *, signing: bool) -> _Key:
    # Messages name the prefix and the problem, never any part of the secret.
    if not isinstance(secret, str):
        raise TypeError("a secret must be a str")
    prefix, underscore, encoded = secret.partition("_")
    if not underscore:
        prefix, encoded = "whsec", secret
    # Each scheme is named, and anything else refused: an unknown prefix must never fall
    # through to one of them.
    if prefix == "whsec" and encoded:
        raw = _b64_secret(encoded, "whsec_")
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(f"a whsec_ secret must hold at least {MIN_SECRET_BYTES} bytes")
        return _Key("v1", hmac_key=raw)
    if prefix == "whpk" and encoded:
        if signing:
            raise ValueError("a whpk_ public key cannot sign; use the whsk_ secret key")
        raw = _b64_secret(encoded, "whpk_")
        if len(raw) != 32:
            raise ValueError("a whpk_ key must hold 32 bytes")
        return _Key("v1a", public=Ed25519PublicKey.from_public_bytes(raw))
    if prefix == "whsk" and encoded:
        raw = _b64_secret(encoded, "whsk_")
        if len(raw) not in (32, 64):
            raise ValueError("a whsk_ key must hold 32 bytes (seed) or 64 (seed and public key)")
        private = Ed25519PrivateKey.from_private_bytes(raw[:32])
        public = private.public_key()
        if len(raw) == 64 and public.public_bytes(Encoding.Raw, PublicFormat.Raw) != raw[32:]:
            raise ValueError("the whsk_ key's public half does not belong to its seed")
        return _Key("v1a", private=private, public=public)
    raise ValueError(
        "a Standard Webhooks secret is whsec_, whsk_ or whpk_ followed by base64, or bare base64"
    )


def _b64_secret(encoded: str, prefix: str) -> bytes:
    # Padding is optional, as in the reference libraries; anything else must be base64.
    bare = encoded.rstrip("=")
    try:
        return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {prefix} is not valid base64") from None


# -- signing ---------------------------------------------------------------------------------


def _signature(key: _Key, content: bytes) -> str:
    if key.hmac_key is not None:
        raw = hmac.new(key.hmac_key, content, hashlib.sha256).digest()
    else:
        assert key.private is not None
        raw = key.private.sign(content)
    return f"{key.version},{base64.b64encode(raw).decode('ascii')}"


def _content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode("ascii") + body


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _check_id(msg_id: str) -> str:
    if not (isinstance(msg_id, str) and msg_id and len(msg_id) <= _MAX_ID):
        raise ValueError(f"a message id must be 1 to {_MAX_ID} characters")
    if "." in msg_id or not (msg_id.isascii() and msg_id.isprintable()) or " " in msg_id:
        raise ValueError("a message id must be printable ASCII without '.' or spaces")
    return msg_id


def _unix(timestamp: int | float | datetime) -> int:
    seconds = math.floor(_when(timestamp))
    if seconds < 0:
        raise ValueError("the timestamp must not be before 1970")
    return seconds


def _when(moment: int | float | datetime) -> float:
    if isinstance(moment, datetime):
        if moment.utcoffset() is None:
            raise ValueError("datetimes must be timezone-aware")
        return moment.timestamp()
    if isinstance(moment, bool) or not math.isfinite(moment):
        raise ValueError("a time must be a finite number of unix seconds or a datetime")
    return float(moment)


# -- verifying -------------------------------------------------------------------------------


def _table(headers: Headers) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    try:
        # items(), not iteration: starlette's Headers gives every repeat of a header only there.
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            if isinstance(name, str) and name.lower() in _HEADERS:
                table.setdefault(name.lower(), []).append(value)
    except (TypeError, ValueError):  # not pairs at all
        raise _malformed("headers must be name/value pairs") from None
    return table


def _get(table: dict[str, list[str]], name: str) -> str:
    values = table.get(name) or [""]
    if any(not isinstance(v, str) for v in values):
        raise _malformed(f"{name} must be text")
    if any(v != values[0] for v in values):
        raise _malformed(f"{name} arrives twice with different values")
    value = values[0].strip(" \t")
    if not value:
        raise SignatureError("missing_header", f"{name} header is missing or empty")
    if len(value) > _MAX_SIGNATURE_HEADER or not (value.isascii() and value.isprintable()):
        raise _malformed(f"{name} must be printable ASCII, at most {_MAX_SIGNATURE_HEADER} long")
    return value


def _parse_signatures(listed: str) -> list[tuple[str, bytes]]:
    entries = listed.split()
    if len(entries) > _MAX_SIGNATURES:
        raise _malformed(f"webhook-signature lists over {_MAX_SIGNATURES} signatures")
    found: list[tuple[str, bytes]] = []
    well_formed = False
    for entry in entries:
        version, comma, value = entry.partition(",")
        if not (version and comma and value):
            continue
        size = {"v1": _HMAC_BYTES, "v1a": _ED25519_BYTES}.get(version)
        if size is None:
            well_formed = True  # a scheme from a later version of the specification
            continue
        try:
            # Strict: without validate, junk characters would be dropped, not refused.
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == size:
            well_formed = True
            found.append((version, raw))
    if not well_formed:
        raise _malformed(
            "no webhook-signature entry is like v1,<base64 of 32 bytes> or v1a,<base64 of 64>"
        )
    return found


def _matches(key: _Key, version: str, raw: bytes, content: bytes) -> bool:
    if version != key.version:
        return False
    if key.hmac_key is not None:
        expected = hmac.new(key.hmac_key, content, hashlib.sha256).digest()
        return hmac.compare_digest(expected, raw)
    assert key.public is not None
    try:
        key.public.verify(raw, content)
    except InvalidSignature:
        return False
    return True


def _malformed(message: str) -> SignatureError:
    return SignatureError("malformed_header", message)
