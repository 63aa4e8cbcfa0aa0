"""PixVerse webhook signatures: HMAC-SHA256 over the time, a nonce and the body's fields.

Signed text (UTF-8): ``{timestamp}\\n{nonce}\\n{payload}``, the first two as sent in
Webhook-Timestamp (unix seconds) and Webhook-Nonce, and ``payload`` the JSON body's
top-level fields written as a URL query string: ``key=value`` joined with ``&``, each key
and value percent-encoded as a form field is (space as ``+``, every byte but letters,
digits and ``-_.~`` escaped). Values are written as text: a string as it is, ``true`` and
``false``, a number as the body spells it, null as nothing, an object or a list as
compact JSON. The signature is the Base64 of HMAC-SHA256 under the account's webhook
secret, in Webhook-Signature.

PixVerse says the keys are put "in a fixed order" before joining, without naming it:
ascending order is the likely reading and the one :func:`sign` uses by default, and
:func:`verify` also accepts the order in which the body gives them. Both readings need
the secret, so accepting both admits nothing another sender could make.

:func:`verify` raises :class:`signing.SignatureError` at the first failure:

1. missing_header: one of the three headers absent or empty;
2. malformed_header: a header repeated with different values, not printable ASCII or
   too long; a timestamp that is not whole unix seconds; a signature that is not the
   Base64 of 32 bytes;
3. malformed_body: the body is not a JSON object of UTF-8 text (or has a key twice, or
   is larger than :data:`MAX_BODY`), so it cannot be what PixVerse signed;
4. bad_signature: neither reading of the key order gives the signature;
5. stale_date: the timestamp is more than ``tolerance`` seconds from now, either way;
   checked after the signature so that only PixVerse learns our clock skew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote_plus

from signing import SignatureError

__all__ = ["AS_SENT", "SORTED", "Verified", "payload_text", "sign", "signed_text", "verify"]

TIMESTAMP_HEADER = "webhook-timestamp"
NONCE_HEADER = "webhook-nonce"
SIGNATURE_HEADER = "webhook-signature"
_HEADERS = (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
SORTED: Literal["sorted"] = "sorted"
AS_SENT: Literal["as sent"] = "as sent"
Order = Literal["sorted", "as sent"]
MAX_BODY = 1024 * 1024  # bytes; a webhook is a few hundred
_MAX_NONCE = 128
_DIGEST_BYTES = 32
# Canonical decimal only: "0123" or "1e9" would be another text than the one PixVerse signed.
_TIMESTAMP = re.compile(r"(?:0|[1-9][0-9]{0,11})")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class Verified:
    timestamp: int  # unix seconds, of this delivery
    nonce: str  # names the delivery: a second request with it is a retry or a replay
    order: Order  # which reading of the key order the signature was made with


class _Number(str):
    """A JSON number, kept as the body spells it."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise ValueError("a key appears twice")
    return fields


def _parse(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise SignatureError("malformed_body", f"the body is over {MAX_BODY} bytes")
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_pairs,
            parse_int=_Number,
            parse_float=_Number,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        value = None
    if not isinstance(value, dict):
        raise SignatureError(
            "malformed_body", "the body is not a JSON object (each key once), so PixVerse did "
            "not sign it",
        )  # fmt: skip
    return value


def _text(value: Any) -> str:
    """A field's value as the query string writes it."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, str):  # a _Number too: its spelling in the body
        return value
    return _compact(value)


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        inner = ",".join(f"{_compact(str(k))}:{_compact(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return {True: "true", False: "false", None: "null"}[value]


def payload_text(body: bytes | str, *, order: Order = SORTED) -> str:
    """The body's fields as the query string that is signed; SignatureError
    (malformed_body) for a body that is not a JSON object."""
    fields = _parse(body.encode("utf-8") if isinstance(body, str) else bytes(body))
    return _query(fields, order)


def _query(fields: Mapping[str, Any], order: Order) -> str:
    keys = sorted(fields) if order == SORTED else list(fields)
    return "&".join(
        f"{quote_plus(k, safe='')}={quote_plus(_text(fields[k]), safe='')}" for k in keys
    )


def signed_text(timestamp: str, nonce: str, payload: str) -> bytes:
    return f"{timestamp}\n{nonce}\n{payload}".encode()


def sign(
    secret: str, timestamp: int, nonce: str, body: bytes | str, *, order: Order = SORTED
) -> str:
    """Webhook-Signature for ``body`` sent at ``timestamp`` with ``nonce``."""
    text = signed_text(str(timestamp), nonce, payload_text(body, order=order))
    return base64.b64encode(_mac(_key(secret), text)).decode()


def verify(
    secret: str,
    headers: Headers,
    body: bytes | str,
    *,
    now: float | None = None,
    tolerance: float = 300,
) -> Verified:
    """Check a PixVerse webhook's headers against ``body``; raise SignatureError if it is
    not PixVerse's."""
    key = _key(secret)
    now_s = time.time() if now is None else float(now)
    if not math.isfinite(now_s):
        raise ValueError("now must be a finite number of unix seconds")
    table = _table(headers)
    stamp, nonce, signature = (_get(table, name) for name in _HEADERS)
    if not _TIMESTAMP.fullmatch(stamp):
        raise _malformed(f"{TIMESTAMP_HEADER} must be whole unix seconds, like 1752019770")
    if len(nonce) > _MAX_NONCE:
        raise _malformed(f"{NONCE_HEADER} may be at most {_MAX_NONCE} characters")
    given = _unbase64(signature)
    if isinstance(body, str):
        try:
            body = body.encode("utf-8")
        except UnicodeEncodeError:
            raise SignatureError("malformed_body", "the body is not valid Unicode text") from None
    fields = _parse(bytes(body))
    matched: Order | None = None
    for order in (SORTED, AS_SENT):
        expected = _mac(key, signed_text(stamp, nonce, _query(fields, order)))
        # Both compared whatever the first gave: the time taken says nothing of either.
        if hmac.compare_digest(expected, given) and matched is None:
            matched = order
    if matched is None:
        raise SignatureError(
            "bad_signature",
            "the signature does not match; check webhook_secret_env and that the body is unchanged",
        )
    skew = abs(now_s - int(stamp))
    if skew > tolerance:
        raise SignatureError(
            "stale_date",
            f"{TIMESTAMP_HEADER} is {skew:.0f} s away from this server's clock "
            f"(limit {tolerance:g} s); check the sender's clock",
        )
    return Verified(int(stamp), nonce, matched)


def _key(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret:
        raise ValueError("the webhook secret is empty")
    return secret.encode("utf-8")


def _mac(key: bytes, text: bytes) -> bytes:
    return hmac.new(key, text, hashlib.sha256).digest()


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
    if len(value) > 256 or not (value.isascii() and value.isprintable()):
        raise _malformed(f"{name} must be printable ASCII, at most 256 characters")
    return value


def _unbase64(signature: str) -> bytes:
    try:
        raw = base64.b64decode(signature, validate=True) if len(signature) == 44 else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _DIGEST_BYTES:
        raise _malformed(f"{SIGNATURE_HEADER} must be the Base64 of a 32-byte HMAC-SHA256")
    return raw


def _malformed(message: str) -> SignatureError:
    return SignatureError("malformed_header", message)
