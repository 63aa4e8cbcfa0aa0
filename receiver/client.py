"""The admin API of a running vidhook, as the command line speaks to it.

Every failure ends in ``SystemExit`` with a message that says what to do: the commands
that use a Client have nothing to add to it, and a traceback would only hide it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "VIDHOOK_ADMIN_TOKEN"  # noqa: S105 (a variable's name)
# The largest page the API gives; --all walks pages of this size.
MAX_PAGE = 500


@dataclass(frozen=True)
class ServerEvent:
    """One server-sent event: its ``event`` name, its ``data`` and its ``id``."""

    type: str
    data: str
    id: str | None


class NoEventStream(Exception):
    """The service does not stream events (an older vidhook): poll instead."""


class Client:
    def __init__(self, url: str, token_env: str = TOKEN_ENV, timeout: float = 120) -> None:
        token = os.environ.get(token_env)
        if token is None:
            raise SystemExit(f"vidhook: set {token_env} to the service's admin token")
        if not token.strip():
            raise SystemExit(f"vidhook: {token_env} is set but empty; set it to the admin token")
        self.token_env = token_env
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token.strip()}"},
            timeout=timeout,
        )
        # The service's clock minus ours, from the Date of its last answer: elapsed times
        # and poll times are the service's, and this machine's clock may be off.
        self.clock_offset = 0.0

    def close(self) -> None:
        self.http.close()

    def now(self) -> float:
        """The service's time, as well as this machine can tell."""
        return time.time() + self.clock_offset

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SystemExit(self.unreachable(exc)) from None
        self._note_clock(response)
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None  # not JSON: not vidhook answering (a proxy, another service)
        if response.status_code >= 400:
            raise SystemExit(self.refusal(response, body))
        if not isinstance(body, dict):
            raise SystemExit(self.not_vidhook(response))
        return body

    def pages(
        self, path: str, key: str, params: Mapping[str, str], limit: int | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` rows (all of them when None), newest first, and the cursor of
        the rest (None when nothing is left)."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            want = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(rows))
            query = {**params, "limit": str(want), **({"cursor": cursor} if cursor else {})}
            page = self.call("GET", path, params=query)
            rows += page[key]
            cursor = page.get("next_cursor")
            if cursor is None or (limit is not None and len(rows) >= limit):
                return rows, cursor

    def count_beyond(
        self, path: str, key: str, params: Mapping[str, str], cursor: str, most: int
    ) -> int:
        """How many rows follow ``cursor``, counting at most ``most`` (one request)."""
        query = {**params, "limit": str(most + 1), "cursor": cursor}
        return len(self.call("GET", path, params=query)[key])

    @contextmanager
    def event_stream(self, last_event_id: str | None = None) -> Iterator[Iterator[ServerEvent]]:
        """The service's event stream, from after ``last_event_id`` when given.

        Connected on entry (raises NoEventStream when the service does not answer with
        text/event-stream); the events end when the connection does.
        """
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        # A read timeout ends a stream that went silent; the caller connects again.
        timeout = httpx.Timeout(10.0, read=60.0)
        try:
            with self.http.stream("GET", "/api/events", headers=headers, timeout=timeout) as r:
                media = r.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if r.status_code == 401:
                    r.read()
                    raise SystemExit(self.refusal(r, _json_or_none(r)))
                if r.status_code != 200 or media != "text/event-stream":
                    raise NoEventStream(f"HTTP {r.status_code} {media or 'no content type'}")
                self._note_clock(r)
                yield _until_closed(parse_events(r.iter_lines()))
        except httpx.HTTPError as exc:
            raise NoEventStream(exc.__class__.__name__) from None

    # -- messages --

    def unreachable(self, exc: Exception) -> str:
        return (
            f"vidhook: cannot reach {self.http.base_url} ({exc.__class__.__name__}); "
            "is `vidhook serve` running? (--url or VIDHOOK_URL)"
        )

    def not_vidhook(self, response: httpx.Response) -> str:
        return (
            f"vidhook: {self.http.base_url} answered HTTP {response.status_code} "
            f"{response.reason_phrase} without a vidhook JSON body; "
            "is --url (or VIDHOOK_URL) a vidhook service?"
        )

    def refusal(self, response: httpx.Response, body: Any) -> str:
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict) or not err.get("message"):
            return self.not_vidhook(response)
        lines = [f"vidhook: {err['message']}"]
        fields = err.get("fields")
        if isinstance(fields, dict):
            lines += [f"  {k}: {v}" for k, v in fields.items()]
        if response.status_code == 401:
            lines.append(
                f"  this command sent the value of {self.token_env} "
                "(--token-env names another variable)"
            )
        return "\n".join(lines)

    def _note_clock(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if not date:
            return
        try:
            offset = parsedate_to_datetime(date).timestamp() - time.time()
        except (TypeError, ValueError):
            return
        # A Date has whole seconds: smaller offsets are its rounding, not a wrong clock.
        self.clock_offset = offset if abs(offset) > 2 else 0.0


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _until_closed(events: Iterator[ServerEvent]) -> Iterator[ServerEvent]:
    """The events, ending quietly when the connection drops midway."""
    try:
        yield from events
    except httpx.HTTPError:
        return


def parse_events(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """Server-sent events from the lines of a text/event-stream body."""
    kind, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(kind, "\n".join(data), event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            event_id = value
