"""Who may use the admin surface: the one question every guarded route asks."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request

from receiver.responses import JSON, error

if TYPE_CHECKING:
    from receiver.runtime import Runtime


def has_bearer_token(request: Request) -> bool:
    """``Authorization: Bearer <admin token>``, compared in constant time."""
    runtime: Runtime = request.app.state.runtime
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = runtime.config.admin_token.reveal().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


def is_admin(request: Request) -> bool:
    """Whether the request comes from the admin: the bearer token."""
    return has_bearer_token(request)


def unauthorized() -> JSON:
    response = error(401, "unauthorized", "send Authorization: Bearer <admin token>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="vidhook"'
    return response
