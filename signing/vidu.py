"""Vidu callback signatures: HMAC-SHA256 under the API key, base64 in X-HMAC-SIGNATURE.

Signed text: ``METHOD\\nPATH\\nQUERY\\nvidu\\nDATE\\n`` plus ``Name:Value\\n`` for each header
in X-HMAC-SIGNED-HEADERS; the body is not covered. :func:`verify` raises at the first failure:

1. missing_header: Date, x-request-nonce, X-HMAC-SIGNED-HEADERS or X-HMAC-SIGNATURE absent
   or empty (a header read twice with different values is malformed_header, at any step);
2. unsupported_algorithm: X-HMAC-ALGORITHM non-empty and not hmac-sha256;
3. malformed_header: access key, signed list, values, nonce, signature encoding
   (missing_header for a signed header that is absent or empty);
4. malformed_date; 5. bad_signature, over the values received (also for an unusable URL);
6. stale_date, after the HMAC so that only an authenticated sender learns our clock skew.

Refusing a nonce seen before is the caller's job; :class:`Verified` carries it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import urlsplit

from signing import SignatureError

__all__ = ["Verified", "parse_date", "sign", "signing_string", "verify"]

ALGORITHM = "hmac-sha256"
ACCESS_KEY = "vidu"
# Both must be under the HMAC, or a captured callback replays with a fresh Date or nonce.
_MUST_SIGN = frozenset({"date", "x-request-nonce"})
_MAX_SIGNED, _MAX_VALUE, _MAX_NONCE = 20, 4096, 256
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# The one form Vidu sends (RFC 9110's IMF-fixdate), read without the general parser.
_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (" + "|".join(_MONTHS) + r") ([1-9]\d{3}) "
    r"(\d\d):(\d\d):(\d\d) GMT"
)


@dataclass(frozen=True)
class Verified:
    nonce: str
    date: datetime  # aware, UTC


def signing_string(method: str, url: str, date: str, headers: list[tuple[str, str]]) -> str:
    """The text Vidu signs; ``headers``: signed (name, value) pairs. ValueError for a bad URL."""
    parts = urlsplit(url)
    lines = [method.upper(), parts.path or "/", parts.query, ACCESS_KEY, date]
    return "\n".join(lines + [f"{name}:{value}" for name, value in headers]) + "\n"


def sign(
    secret: str,
    method: str,
    url: str,
    *,
    date: datetime | str | None = None,
    nonce: str | None = None,
    signed_headers: Sequence[str] = ("Date", "x-request-nonce"),
) -> dict[str, str]:
    """The six headers Vidu sends with a callback to ``url``. For trusted callers."""
    key = _key(secret)
    names = list(signed_headers)
    if sorted(n.lower() for n in names) != sorted(_MUST_SIGN):
        raise ValueError("signed_headers must name Date and x-request-nonce, once each")
    when = datetime.now(UTC) if date is None else date
    if isinstance(when, datetime):
        if when.utcoffset() is None:
            raise ValueError("date must be timezone-aware")
        when = format_datetime(when.astimezone(UTC), usegmt=True)
    nonce = str(uuid.uuid4()) if nonce is None else nonce
    values = {"date": when, "x-request-nonce": nonce}
    text = signing_string(method, url, when, [(n, values[n.lower()]) for n in names])
    return {
        "Date": when,
        "x-request-nonce": nonce,
        "X-HMAC-SIGNED-HEADERS": ";".join(names),
        "X-HMAC-SIGNATURE": base64.b64encode(_mac(key, text)).decode("ascii"),
        "X-HMAC-ALGORITHM": ALGORITHM,
        "X-HMAC-ACCESS-KEY": ACCESS_KEY,
    }


def verify(
    secret: str,
    method: str,
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    now: datetime | float | None = None,
    tolerance: float = 300,
) -> Verified:
    """Check a Vidu callback's headers; raise SignatureError naming the first failed check."""
    key = _key(secret)
    if isinstance(now, datetime) and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not isinstance(now, datetime):
        now = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    table: dict[str, list[str]] = {}
    # items(), not iteration: starlette's Headers gives every repeat of a header only there.
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        table.setdefault(name.lower(), []).append(value)

    date, nonce, listed, signature = (
        _get(table, name, required=True)
        for name in ("Date", "x-request-nonce", "X-HMAC-SIGNED-HEADERS", "X-HMAC-SIGNATURE")
    )
    if _get(table, "X-HMAC-ALGORITHM").lower() not in ("", ALGORITHM):
        raise SignatureError("unsupported_algorithm", "X-HMAC-ALGORITHM must be hmac-sha256")

    if _get(table, "X-HMAC-ACCESS-KEY") not in ("", ACCESS_KEY):
        raise _malformed("X-HMAC-ACCESS-KEY must be 'vidu' or left out")
    _check_value("X-HMAC-SIGNED-HEADERS", listed)
    _check_value("X-HMAC-SIGNATURE", signature)
    names = listed.split(";")
    lowered = {n.lower() for n in names}
    ok = len(names) <= _MAX_SIGNED and len(lowered) == len(names) and lowered >= _MUST_SIGN
    if not (ok and all(n and set(n) <= _TCHAR for n in names)):
        raise _malformed(
            f"X-HMAC-SIGNED-HEADERS must be at most {_MAX_SIGNED} distinct header names "
            "joined by ';' (no spaces), including Date and x-request-nonce"
        )
    signed = [(name, _get(table, name, required=True)) for name in names]
    for name, value in signed:  # Date and the nonce are among these
        _check_value(name, value)
    if len(nonce) > _MAX_NONCE:
        raise _malformed(f"x-request-nonce is over {_MAX_NONCE} characters")
    try:
        received = base64.b64decode(signature, validate=True)
    except ValueError:
        received = b""
    if len(received) != hashlib.sha256().digest_size:
        raise _malformed("X-HMAC-SIGNATURE must be base64 of a 32-byte HMAC-SHA256")

    sent_at = parse_date(date)
    if sent_at is None:
        raise SignatureError("malformed_date", "Date must be like 'Tue, 06 May 2025 12:09:42 GMT'")

    try:
        expected = _mac(key, signing_string(method, url, date, signed))
    except ValueError:  # urlsplit refusals; text that will not encode as UTF-8
        raise SignatureError(
            "bad_signature", "callback URL is unusable; fix the stored URL"
        ) from None
    if not hmac.compare_digest(expected, received):
        raise SignatureError("bad_signature", "signature does not match; check API key and URL")

    skew = abs((now - sent_at).total_seconds())
    if skew > tolerance:
        off = f"Date header is {skew:.0f} s away from this server's clock (limit {tolerance:g} s)"
        raise SignatureError("stale_date", off + "; check the sender's clock")
    return Verified(nonce=nonce, date=sent_at)


def parse_date(value: str) -> datetime | None:
    """The moment a Date header names, aware and in UTC; None if it names none.

    IMF-fixdate, the form every HTTP sender uses, is read directly; anything else goes
    to the email parser, which also takes the obsolete forms and numeric zones (and
    reads years below 100 as two-digit years). Both give the same moment for an
    IMF-fixdate from year 1000 on.
    """
    fixed = _FIXDATE.fullmatch(value)
    if fixed is not None:
        day, month, year, hour, minute, second = fixed.groups()
        try:
            return datetime(
                int(year), _MONTHS.index(month) + 1, int(day),
                int(hour), int(minute), int(second), tzinfo=UTC,
            )  # fmt: skip
        except ValueError:  # 30 February, 25 o'clock: the general parser decides
            pass
    try:
        parsed = parsedate_to_datetime(value)
        return parsed.astimezone(UTC) if parsed.utcoffset() is not None else None
    except Exception:  # its failure modes (ValueError, IndexError, ...) vary by Python release
        return None


def _key(secret: str) -> bytes:
    if not isinstance(secret, str):
        raise TypeError("secret must be a str")
    if not secret:  # anyone can compute an HMAC under an empty key
        raise ValueError("the Vidu API key is empty; configure it")
    try:
        # A key read from the environment holds its non-UTF-8 bytes as escapes: give
        # them back as they were.
        return secret.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # any other lone surrogate: still a key, never a crash
        return secret.encode("utf-8", "surrogatepass")


def _mac(key: bytes, text: str) -> bytes:
    return hmac.digest(key, text.encode("utf-8"), "sha256")


def _malformed(message: str) -> SignatureError:
    return SignatureError("malformed_header", message)


def _get(table: dict[str, list[str]], name: str, *, required: bool = False) -> str:
    values = table.get(name.lower()) or [""]  # absent reads as empty
    if any(v != values[0] for v in values):
        raise _malformed(f"{name[:64]} header arrives twice with different values")
    if required and not values[0]:
        raise SignatureError("missing_header", f"{name[:64]} header is missing or empty")
    return values[0]


def _check_value(name: str, value: str) -> None:
    if len(value) > _MAX_VALUE:
        raise _malformed(f"{name[:64]} header is over {_MAX_VALUE} characters")
    # isprintable() also rules out tab and DEL; non-ASCII cannot match what Vidu signs.
    if not (value.isascii() and value.isprintable()):
        raise _malformed(f"{name[:64]} header must be printable ASCII")
