"""Who may see a page or send a form, and what a refusal looks like.

A page needs the session cookie (or the bearer token); without it the browser is sent
to the login form, which brings it back. A form also needs to come from this site: a
same-origin request (``csrf.same_origin``) carrying the CSRF token of its session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver.access import has_bearer_token, session_of
from receiver.web.csrf import same_origin
from receiver.web.sessions import csrf_matches, csrf_token
from receiver.web.templating import base_path

if TYPE_CHECKING:
    from receiver.runtime import Runtime
    from receiver.web.dashboard import Dashboard

Page = Callable[[Request], Awaitable[Response]]
FormHandler = Callable[[Request, FormData], Awaitable[Response]]

CSRF_SCOPE_KEY = "vidhook.csrf"
MAX_FORM_BYTES = 25 * 1024 * 1024  # images uploaded with /ui/new; the API takes as much
MAX_FILES = 8
MAX_FIELDS = 100
CROSS_SITE = (
    "This request did not come from the dashboard's own pages, so it was refused. "
    "If you sent it from the dashboard, reload the page and try again."
)
STALE_FORM = (
    "This form has expired or belongs to another session. Reload the page and send it again."
)


def dashboard(request: Request) -> Dashboard:
    board: Dashboard = request.app.state.dashboard
    return board


def login_redirect(request: Request) -> RedirectResponse:
    root = base_path(request)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = here[len(root) :] if root and here.startswith(root) else here
    return RedirectResponse(f"{root}/ui/login?next={quote(target, safe='/')}", status_code=303)


def problem(request: Request, status: int, title: str, message: str) -> Response:
    return dashboard(request).pages.render(
        request, "problem.html", {"title": title, "message": message}, status_code=status
    )


def page(handler: Page) -> Page:
    async def guarded(request: Request) -> Response:
        if not has_bearer_token(request):
            session = session_of(request)
            if session is None:
                return login_redirect(request)
            runtime: Runtime = request.app.state.runtime
            request.scope[CSRF_SCOPE_KEY] = csrf_token(runtime.config, session)
        return await handler(request)

    return guarded


def form(handler: FormHandler) -> Page:
    async def guarded(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        bearer = has_bearer_token(request)
        if not bearer and not same_origin(request, runtime.config):
            return problem(request, 403, "Refused", CROSS_SITE)
        session = None if bearer else session_of(request)
        if not bearer and session is None:
            return login_redirect(request)
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return problem(request, 411, "Length required", "Send the form with its length.")
        if int(length) > MAX_FORM_BYTES:
            limit = MAX_FORM_BYTES // (1024 * 1024)
            message = f"A form may send at most {limit} MB; send smaller images or links."
            return problem(request, 413, "Too large", message)
        async with request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS) as data:
            if session is not None:
                if not csrf_matches(runtime.config, session, _text(data.get("csrf"))):
                    return problem(request, 403, "Refused", STALE_FORM)
                request.scope[CSRF_SCOPE_KEY] = csrf_token(runtime.config, session)
            return await handler(request, data)

    return guarded


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
