"""fal webhook signatures: Ed25519 over the request, the account, the time and the body.

Signed text (UTF-8): ``{request id}\\n{user id}\\n{timestamp}\\n{hex SHA-256 of the body}``,
the first three as sent in X-Fal-Webhook-Request-Id, X-Fal-Webhook-User-Id and
X-Fal-Webhook-Timestamp (unix seconds); the signature is hex in X-Fal-Webhook-Signature.
fal publishes its public keys as a JWKS (:func:`load_jwks`), and names no key in the
webhook: a webhook is fal's when any published key verifies it.

:func:`verify` raises :class:`signing.SignatureError` at the first failure:

1. missing_header: one of the four headers absent or empty;
2. malformed_header: a header repeated with different values, not printable ASCII or
   too long; a timestamp that is not whole unix seconds; a signature that is not the
   hex of 64 bytes;
3. bad_signature: no key verifies the signature;
4. stale_date: the timestamp is more than ``tolerance`` seconds from now, either way;
   checked after the signature so that only fal learns our clock skew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from signing import SignatureError

__all__ = ["PublicKey", "Verified", "load_jwks", "signed_text", "verify"]

REQUEST_ID_HEADER = "x-fal-webhook-request-id"
USER_ID_HEADER = "x-fal-webhook-user-id"
TIMESTAMP_HEADER = "x-fal-webhook-timestamp"
SIGNATURE_HEADER = "x-fal-webhook-signature"
_HEADERS = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
_SIGNATURE_BYTES = 64
# Bounds keep a hostile request from costing more than a few Ed25519 checks.
_MAX_ID, _MAX_KEYS, _MAX_JWKS_BYTES = 256, 16, 65536
# Canonical decimal only: "0123" or "1e9" would be another text than the one fal signed.
_TIMESTAMP = re.compile(r"(?:0|[1-9][0-9]{0,11})")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class PublicKey:
    """One Ed25519 key of fal's JWKS; ``kid`` as published, if it was."""

    key: Ed25519PublicKey
    kid: str | None = None


@dataclass(frozen=True)
class Verified:
    request_id: str  # the same on every retry of one webhook: dedupe on it
    user_id: str
    timestamp: int  # unix seconds, of this attempt
    kid: str | None  # the key that verified it


def load_jwks(document: bytes | str | Mapping[str, Any]) -> tuple[PublicKey, ...]:
    """The Ed25519 keys of a JWKS (``{"keys": [{"kty": "OKP", "crv": "Ed25519", "x"}]}``).

    Keys of other types, and keys that do not decode, are skipped: a JWKS may hold keys
    for other uses. ValueError when it is not a JWKS or holds no usable key (a problem of
    the configured URL or of the answer, never of a webhook).
    """
    if isinstance(document, bytes | str):
        if len(document) > _MAX_JWKS_BYTES:
            raise ValueError(f"the JWKS is over {_MAX_JWKS_BYTES} bytes")
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):
            raise ValueError("the JWKS is not JSON") from None
    listed = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(listed, list):
        raise ValueError('the JWKS is not an object with a "keys" list')
    keys = [key for key in map(_jwk, listed) if key is not None][:_MAX_KEYS]
    if not keys:
        raise ValueError("the JWKS holds no Ed25519 (OKP) key")
    return tuple(keys)


def signed_text(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def verify(
    keys: Sequence[PublicKey],
    headers: Headers,
    body: bytes | str,
    *,
    now: float | None = None,
    tolerance: float = 300,
) -> Verified:
    """Check a fal webhook's headers against ``body``; raise SignatureError if it is not fal's."""
    if not keys:
        raise ValueError("no public keys given; load fal's JWKS first")
    now_s = time.time() if now is None else float(now)
    if not math.isfinite(now_s):
        raise ValueError("now must be a finite number of unix seconds")
    table = _table(headers)
    request_id, user_id, stamp, signature = (_get(table, name) for name in _HEADERS)
    if not _TIMESTAMP.fullmatch(stamp):
        raise _malformed(f"{TIMESTAMP_HEADER} must be whole unix seconds, like 1752019770")
    raw = _unhex(signature)
    if isinstance(body, str):
        try:
            body = body.encode("utf-8")
        except UnicodeEncodeError:
            raise SignatureError("bad_signature", "body is not valid Unicode text") from None
    text = signed_text(request_id, user_id, stamp, bytes(body))
    for public in keys[:_MAX_KEYS]:
        if _verifies(public.key, raw, text):
            break
    else:
        raise SignatureError(
            "bad_signature",
            "no fal public key verifies the signature; check the JWKS URL and that the body "
            "is unchanged",
        )
    skew = abs(now_s - int(stamp))
    if skew > tolerance:
        raise SignatureError(
            "stale_date",
            f"{TIMESTAMP_HEADER} is {skew:.0f} s away from this server's clock "
            f"(limit {tolerance:g} s); check the sender's clock",
        )
    return Verified(request_id, user_id, int(stamp), public.kid)


def _jwk(entry: Any) -> PublicKey | None:
    if not isinstance(entry, Mapping):
        return None
    if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
        return None
    encoded, kid = entry.get("x"), entry.get("kid")
    if not isinstance(encoded, str) or len(encoded) > 64:
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        return None
    return PublicKey(key, kid if isinstance(kid, str) and kid else None)


def _verifies(key: Ed25519PublicKey, signature: bytes, text: bytes) -> bool:
    try:
        key.verify(signature, text)
    except InvalidSignature:
        return False
    return True


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
    # Printable ASCII: no line break can move a part of the signed text into another.
    if len(value) > _MAX_ID or not (value.isascii() and value.isprintable()):
        raise _malformed(f"{name} must be printable ASCII, at most {_MAX_ID} characters")
    return value


def _unhex(signature: str) -> bytes:
    try:
        raw = bytes.fromhex(signature) if len(signature) == 2 * _SIGNATURE_BYTES else b""
    except ValueError:
        raw = b""
    if len(raw) != _SIGNATURE_BYTES:
        raise _malformed(f"{SIGNATURE_HEADER} must be the hex of a 64-byte Ed25519 signature")
    return raw


def _malformed(message: str) -> SignatureError:
    return SignatureError("malformed_header", message)
