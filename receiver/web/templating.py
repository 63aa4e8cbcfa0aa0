"""The pages' Jinja environment, the helpers templates call, and rendering a page."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from receiver.notify.links import human_size
from receiver.responses import iso

HERE = Path(__file__).parent
STATIC = HERE / "static"


def base_path(request: Request) -> str:
    """The public URL's path prefix ("" or, say, "/vidhook"), which every link starts with."""
    prefix: str = request.app.state.runtime.config.public_path
    return prefix


def ago(moment: datetime, now: datetime) -> str:
    """Relative time in words: "just now", "4 min ago", "in 2 h", "3 days ago"."""
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for size, unit in ((86400 * 365, "y"), (86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= size:
            count = int(seconds // size)
            text = f"{count} {'day' if unit == 'days' and count == 1 else unit}"
            break
    else:
        text = f"{int(seconds)} s"
    return f"in {text}" if future else f"{text} ago"


def exact(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """A span of time for people: 0.42 s, 12.3 s, 4 min 05 s, 2 h 10 min."""
    if seconds is None:
        return "\N{EN DASH}"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@jinja2.pass_context
def when(context: jinja2.runtime.Context, value: str | None) -> Markup:
    """A <time> element: relative to the page's ``now``, exact in its title."""
    if not value:
        return Markup("\N{EN DASH}")
    moment = datetime.fromisoformat(value)
    # Made by hand: Markup.format costs ten times more, on every time of every row. The
    # value is escaped; the other two are made here from a datetime.
    return Markup(  # noqa: S704
        f'<time datetime="{escape(value)}" title="{exact(moment)}" data-relative>'
        f"{ago(moment, context['now'])}</time>"
    )


def status(value: str) -> Markup:
    """A status as a coloured mark and its word: never colour alone."""
    word = escape(value)
    return Markup(  # noqa: S704 - the only input is escaped
        f'<span class="status status-{word}"><span class="dot" aria-hidden="true"></span>'
        f"{word}</span>"
    )


def took(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "\N{EN DASH}"
    return duration((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


def _file_versions() -> dict[str, str]:
    """A short hash of each static file, put in its URL so browsers may cache it for long."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        for path in STATIC.iterdir()
        if path.is_file()
    }


class Pages:
    """Renders the templates; made once per app."""

    def __init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
            auto_reload=False,
        )
        self.versions = _file_versions()
        self.env.filters.update(size=human_size, duration=duration)
        self.env.globals.update(when=when, status=status, took=took, iso=iso)

    def static(self, root: str, name: str) -> str:
        return f"{root}/ui/static/{name}?v={self.versions[name]}"

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
    ) -> HTMLResponse:
        root = base_path(request)
        runtime = request.app.state.runtime
        now = datetime.fromtimestamp(runtime.store.clock(), UTC)
        html = self.env.get_template(template).render(
            root=root,
            now=now,
            static=lambda name: self.static(root, name),
            csrf=request.scope.get("vidhook.csrf"),
            **context,
        )
        return HTMLResponse(html, status_code=status_code)
