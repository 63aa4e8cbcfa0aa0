"""JSON responses, errors included, in the one shape every endpoint uses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # made once


def dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def error(status: int, code: str, message: str, **extra: Any) -> JSON:
    """``{"error": {"code", "message", ...}}``; messages never echo a secret."""
    return JSON({"error": {"code": code, "message": message, **extra}}, status_code=status)


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
