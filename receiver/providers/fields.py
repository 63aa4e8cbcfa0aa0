"""Reading loosely typed fields out of provider JSON, the same way in every adapter."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

MAX_MESSAGE = 500


def text(value: Any) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def number(value: Any) -> float | None:
    """A finite number from a JSON number or a numeric string; booleans are not numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        result = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int past a float's range
        return None
    return result if math.isfinite(result) else None


def first_message(body: Mapping[str, Any], names: Iterable[str]) -> str | None:
    """The first non-empty message among ``names``; a nested {message|msg} counts too."""
    for name in names:
        value = body.get(name)
        if isinstance(value, Mapping):
            value = value.get("message") or value.get("msg")
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_MESSAGE]
    return None


def is_http_url(value: Any) -> bool:
    """An absolute http(s) URL with a host."""
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)
