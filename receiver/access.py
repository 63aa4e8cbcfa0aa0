"""Who may use the admin surfaces (/api, /media, /ui): the holder of the admin token,
sent as ``Authorization: Bearer``, or a browser with the dashboard's session cookie."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request

from receiver.responses import JSON, error
from receiver.web.csrf import SAFE_METHODS, same_origin
from receiver.web.sessions import Session, cookie_spec, read_session

if TYPE_CHECKING:
    from receiver.runtime import Runtime


def has_bearer_token(request: Request) -> bool:
    """``Authorization: Bearer <admin token>``, compared in constant time."""
    runtime: Runtime = request.app.state.runtime
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = runtime.config.admin_token.reveal().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


def session_of(request: Request) -> Session | None:
    """The request's genuine, unexpired dashboard session, if it has one."""
    runtime: Runtime = request.app.state.runtime
    config = runtime.config
    value = request.cookies.get(cookie_spec(config).name)
    return read_session(config, value, runtime.store.clock())


def is_admin(request: Request) -> bool:
    """The bearer token, or the session cookie; the cookie, being sent by the browser on
    its own, opens an unsafe method only for a request that shows it is same-origin."""
    if has_bearer_token(request):
        return True
    if session_of(request) is None:
        return False
    runtime: Runtime = request.app.state.runtime
    return request.method in SAFE_METHODS or same_origin(request, runtime.config)


def unauthorized() -> JSON:
    response = error(401, "unauthorized", "send Authorization: Bearer <admin token>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="vidhook"'
    return response
