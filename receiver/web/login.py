"""/ui/login and /ui/logout: the admin token in, a session cookie out."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver.access import session_of
from receiver.web.csrf import same_origin
from receiver.web.guard import CROSS_SITE, dashboard, problem
from receiver.web.sessions import SESSION_SECONDS, cookie_spec, csrf_matches, new_session
from receiver.web.templating import base_path

if TYPE_CHECKING:
    from receiver.runtime import Runtime

log = logging.getLogger("vidhook.web")

# A wrong token waits this long before its answer: guessing gets slow, a typo does not.
WRONG_TOKEN_DELAY = 1.0
MAX_LOGIN_BYTES = 4096


def safe_next(value: object) -> str:
    """Where to go after logging in: a dashboard path, never another site."""
    if isinstance(value, str) and value.startswith("/ui/") and "\\" not in value:
        return value
    return "/ui/"


async def form(request: Request) -> Response:
    root = base_path(request)
    target = safe_next(request.query_params.get("next"))
    if session_of(request) is not None:
        return RedirectResponse(root + target, status_code=303)
    return dashboard(request).pages.render(request, "login.html", {"next": target, "wrong": False})


async def submit(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    config = runtime.config
    if not same_origin(request, config):
        return problem(request, 403, "Refused", CROSS_SITE)
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_LOGIN_BYTES:
        return problem(request, 413, "Too large", "The login form sends only the token.")
    async with request.form(max_files=0, max_fields=5) as data:
        given = data.get("token")
        target = safe_next(data.get("next"))
    expected = config.admin_token.reveal().encode()
    token = given.strip().encode() if isinstance(given, str) else b""
    if not hmac.compare_digest(token, expected):
        log.warning("dashboard login refused: wrong token")
        await asyncio.sleep(WRONG_TOKEN_DELAY)
        context = {"next": target, "wrong": True}
        return dashboard(request).pages.render(request, "login.html", context, status_code=401)
    _, cookie = new_session(config, runtime.store.clock())
    spec = cookie_spec(config)
    root = base_path(request)
    response = RedirectResponse(root + target, status_code=303)
    response.set_cookie(
        spec.name,
        cookie,
        max_age=SESSION_SECONDS,
        path=spec.path,
        secure=spec.secure,
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    config = runtime.config
    if not same_origin(request, config):
        return problem(request, 403, "Refused", CROSS_SITE)
    session = session_of(request)
    root = base_path(request)
    if session is not None:
        async with request.form(max_files=0, max_fields=5) as data:
            token = data.get("csrf")
        if not csrf_matches(config, session, token if isinstance(token, str) else None):
            return problem(request, 403, "Refused", "Reload the page and sign out again.")
    spec = cookie_spec(config)
    response = RedirectResponse(f"{root}/ui/login", status_code=303)
    response.delete_cookie(
        spec.name, path=spec.path, secure=spec.secure, httponly=True, samesite="strict"
    )
    return response
