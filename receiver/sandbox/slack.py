"""A fake Slack for tests and benchmarks: incoming webhooks and chat.postMessage.

``POST /services/{path}`` is an incoming webhook: it answers ``ok`` (text/plain) or an
HTTP status with Slack's plain-text error code. ``POST /api/chat.postMessage`` checks the
Bearer token and answers HTTP 200 with ``{ok: true, channel, ts, message}`` or
``{ok: false, error}``. Both take JSON bodies only (Slack also takes forms; vidhook
never sends one).

Every message is checked against Block Kit's documented limits and refused as Slack
refuses it (``invalid_blocks``, ``msg_too_long``, ...), so a test that gets ``ok`` has
shown the message fits. Answers can be injected (``SlackSink.answer``) to play Slack's
failures, and every request is recorded, Authorization header left out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

__all__ = [
    "SlackAnswer",
    "SlackRequest",
    "SlackSink",
    "SlackSinkSettings",
    "block_kit_problems",
    "create_slack_sink",
]

# Slack's documented limits, kept apart from the channel's own copy on purpose: the sink
# is the check on the channel, so it must not share its mistakes.
TEXT_LIMIT = 40_000
MAX_BLOCKS = 50
SECTION_TEXT = 3000
MAX_FIELDS = 10
FIELD_TEXT = 2000
HEADER_TEXT = 150
BLOCK_ID = 255
IMAGE_URL = 3000
ALT_TEXT = 2000
CONTEXT_ELEMENTS = 10
ACTIONS_ELEMENTS = 25
MARKDOWN_TEXT = 12_000
MESSAGE_BLOCKS = frozenset({
    "section", "divider", "image", "context", "actions", "header", "rich_text", "markdown",
    "video", "file",
})  # fmt: skip

# The code each endpoint uses when an injected answer names none.
_WEBHOOK_DEFAULTS = {429: "rate_limited", 500: "rollup_error"}
_API_DEFAULTS = {429: "ratelimited"}


@dataclass(frozen=True)
class SlackAnswer:
    """One injected answer, used by the next request to either endpoint.

    ``error`` is Slack's code: the webhook answers it as text with ``status``; the Web
    API as ``{ok: false, error}`` with ``status`` (Slack's usual is 200). With no error
    and a 2xx status the message is accepted unchecked. ``body`` replaces the body
    entirely (say, a proxy's HTML page); ``delay`` holds the answer back, to outlast a
    client's timeout.
    """

    status: int = 200
    error: str | None = None
    retry_after: float | None = None
    body: bytes | None = None
    delay: float = 0.0


@dataclass
class SlackSinkSettings:
    bot_tokens: list[str] = field(default_factory=list)  # empty: any non-empty token
    webhook_paths: list[str] = field(default_factory=list)  # after /services/; empty: any
    channels: list[str] = field(default_factory=list)  # empty: any channel exists
    archived: list[str] = field(default_factory=list)
    # Webhook paths whose webhook was removed: Slack answers 400 no_service_id.
    removed_webhooks: list[str] = field(default_factory=list)
    # A free workspace's allowance: once this many messages were accepted,
    # chat.postMessage answers message_limit_exceeded until the limit is raised.
    message_limit: int | None = None
    answers: deque[SlackAnswer] = field(default_factory=deque)
    # Refuse with 429 a message that comes sooner than this after the last one accepted
    # for the same webhook or channel. Slack tolerates short bursts; 0 does too.
    min_interval: float = 0.0
    latency: float = 0.0  # added to every answer, for benchmarks


class SlackRequest(NamedTuple):
    time: float  # time.monotonic() when the request arrived
    method: str
    path: str
    headers: dict[str, str]  # without Authorization
    body: Any  # the JSON body, or None if it was not JSON
    status_code: int
    error: str | None  # the error code answered; None when the message was accepted


class _Reply(NamedTuple):
    status: int
    error: str | None
    response: Response
    delay: float = 0.0


class SlackSink:
    """The fake's state: settings, injected answers and the requests it received."""

    def __init__(self, settings: SlackSinkSettings | None = None) -> None:
        self.settings = settings or SlackSinkSettings()
        self.requests: list[SlackRequest] = []
        self._last: dict[str, float] = {}
        self._ts = itertools.count(1)

    def reset(self, settings: SlackSinkSettings | None = None) -> None:
        """Start afresh (new settings, nothing recorded) without restarting the server."""
        self.settings = settings or SlackSinkSettings()
        self.requests.clear()
        self._last.clear()

    def answer(self, *answers: SlackAnswer) -> None:
        """Queue answers for the next requests, in order."""
        self.settings.answers.extend(answers)

    @property
    def accepted(self) -> list[SlackRequest]:
        return [r for r in self.requests if r.error is None and 200 <= r.status_code < 300]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The bodies of the messages accepted, in arrival order."""
        return [r.body for r in self.accepted]

    # -- endpoints --

    async def webhook(self, request: Request) -> Response:
        arrived = time.monotonic()
        path = request.path_params["path"]
        body = _json_body(await request.body())
        return await self._finish(request, arrived, body, self._webhook_reply(path, body, arrived))

    def _webhook_reply(self, path: str, body: Any, arrived: float) -> _Reply:
        injected = self._injected()
        if injected is not None:
            error = injected.error
            if error is None and injected.status >= 300:
                error = _WEBHOOK_DEFAULTS.get(injected.status, "error")
            return _Reply(injected.status, error, _text(injected, error or "ok"), injected.delay)
        allowed = self.settings.webhook_paths
        if path in self.settings.removed_webhooks:
            return self._refuse_text(400, "no_service_id")
        if allowed and path not in allowed:
            return self._refuse_text(404, "no_service")
        if not isinstance(body, dict):
            return self._refuse_text(400, "invalid_payload")
        code = _message_error(body)
        if code is not None:
            return self._refuse_text(400, code)
        wait = self._too_soon(f"webhook:{path}", arrived)
        if wait is not None:
            limited = SlackAnswer(429, retry_after=wait)
            return _Reply(429, "rate_limited", _text(limited, "rate_limited"))
        return _Reply(200, None, PlainTextResponse("ok"))

    async def post_message(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = _json_body(await request.body())
        token = _bearer(request.headers.get("authorization", ""))
        return await self._finish(request, arrived, body, self._api_reply(token, body, arrived))

    def _api_reply(self, token: str, body: Any, arrived: float) -> _Reply:
        injected = self._injected()
        if injected is not None:
            error = injected.error
            if error is None and injected.status >= 300:
                error = _API_DEFAULTS.get(injected.status, "internal_error")
            if error is None:
                return _Reply(injected.status, None, self._posted(injected, body), injected.delay)
            content = {"ok": False, "error": error}
            return _Reply(injected.status, error, _api(injected, content), injected.delay)
        tokens = self.settings.bot_tokens
        if not token:
            return self._refuse_api("not_authed")
        if tokens and token not in tokens:
            return self._refuse_api("invalid_auth")
        if not isinstance(body, dict):
            return self._refuse_api("invalid_json")
        channel = body.get("channel")
        if not isinstance(channel, str) or not channel:
            return self._refuse_api("channel_not_found")
        if self.settings.channels and channel not in self.settings.channels:
            return self._refuse_api("channel_not_found")
        if channel in self.settings.archived:
            return self._refuse_api("is_archived")
        code = _message_error(body)
        if code is not None:
            return self._refuse_api(code)
        limit = self.settings.message_limit
        if limit is not None and len(self.accepted) >= limit:
            return self._refuse_api("message_limit_exceeded")
        wait = self._too_soon(f"channel:{channel}", arrived)
        if wait is not None:
            limited = SlackAnswer(429, retry_after=wait)
            return _Reply(429, "ratelimited", _api(limited, {"ok": False, "error": "ratelimited"}))
        return _Reply(200, None, self._posted(SlackAnswer(), body))

    async def unknown_method(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = _json_body(await request.body())
        response = JSONResponse({"ok": False, "error": "unknown_method"}, status_code=404)
        return await self._finish(request, arrived, body, _Reply(404, "unknown_method", response))

    # -- helpers --

    def _injected(self) -> SlackAnswer | None:
        try:
            return self.settings.answers.popleft()
        except IndexError:
            return None

    def _refuse_text(self, status: int, code: str) -> _Reply:
        return _Reply(status, code, PlainTextResponse(code, status_code=status))

    def _refuse_api(self, code: str) -> _Reply:
        return _Reply(200, code, JSONResponse({"ok": False, "error": code}))

    def _too_soon(self, destination: str, arrived: float) -> float | None:
        """Seconds still to wait, or None (and the arrival noted) if the message may pass."""
        interval = self.settings.min_interval
        last = self._last.get(destination)
        if interval > 0 and last is not None and arrived - last < interval:
            return interval - (arrived - last)
        self._last[destination] = arrived
        return None

    def _posted(self, answer: SlackAnswer, body: Any) -> Response:
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message = body if isinstance(body, dict) else {}
        content = {
            "ok": True,
            "channel": message.get("channel"),
            "ts": ts,
            "message": {"type": "message", "bot_id": "B0FAKESLACK", "ts": ts,
                        "text": message.get("text"), "blocks": message.get("blocks")},
        }  # fmt: skip
        return _api(answer, content)

    async def _finish(self, request: Request, arrived: float, body: Any, reply: _Reply) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.requests.append(SlackRequest(arrived, request.method, request.url.path, headers,
                                          body, reply.status, reply.error))  # fmt: skip
        delay = self.settings.latency + reply.delay
        if delay > 0:
            await asyncio.sleep(delay)
        return reply.response


def create_slack_sink(settings: SlackSinkSettings | None = None) -> Starlette:
    """The fake as an ASGI app; ``app.state.slack`` is its :class:`SlackSink`."""
    sink = SlackSink(settings)
    app = Starlette(
        routes=[
            Route("/services/{path:path}", sink.webhook, methods=["POST"]),
            Route("/api/chat.postMessage", sink.post_message, methods=["POST"]),
            Route("/api/{method}", sink.unknown_method, methods=["GET", "POST"]),
        ]
    )
    app.state.slack = sink
    return app


# -- Block Kit checks --


def block_kit_problems(message: Mapping[str, Any]) -> list[str]:
    """What in a message breaks Block Kit's documented limits; empty if nothing does."""
    problems: list[str] = []
    blocks = message.get("blocks")
    if blocks is None:
        return problems
    if not isinstance(blocks, list):
        return ["blocks must be an array"]
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"{len(blocks)} blocks; at most {MAX_BLOCKS}")
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not isinstance(block, dict):
            problems.append(f"{where} must be an object")
            continue
        kind = block.get("type")
        if kind not in MESSAGE_BLOCKS:
            problems.append(f"{where}: unknown block type {kind!r}")
            continue
        block_id = block.get("block_id")
        if block_id is not None and not _fits(block_id, BLOCK_ID):
            problems.append(f"{where}.block_id must be a string of 1 to {BLOCK_ID} characters")
        problems.extend(_block_problems(where, kind, block))
    return problems


def _block_problems(where: str, kind: str, block: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    if kind == "section":
        text, fields = block.get("text"), block.get("fields")
        if text is None and fields is None:
            problems.append(f"{where}: a section needs text or fields")
        if text is not None:
            problems += _text_problems(f"{where}.text", text, SECTION_TEXT)
        if fields is not None:
            if not isinstance(fields, list) or not 1 <= len(fields) <= MAX_FIELDS:
                problems.append(f"{where}.fields must hold 1 to {MAX_FIELDS} items")
            else:
                for i, item in enumerate(fields):
                    problems += _text_problems(f"{where}.fields[{i}]", item, FIELD_TEXT)
        accessory = block.get("accessory")
        if accessory is not None:
            if not isinstance(accessory, dict) or not isinstance(accessory.get("type"), str):
                problems.append(f"{where}.accessory must be an element with a type")
            elif accessory["type"] == "image":
                problems += _image_problems(f"{where}.accessory", accessory)
    elif kind == "header":
        problems += _text_problems(f"{where}.text", block.get("text"), HEADER_TEXT, plain=True)
    elif kind == "image":
        problems += _image_problems(where, block)
    elif kind == "markdown":
        if not _fits(block.get("text"), MARKDOWN_TEXT):
            problems.append(f"{where}.text must be 1 to {MARKDOWN_TEXT} characters")
    elif kind in ("context", "actions"):
        limit = CONTEXT_ELEMENTS if kind == "context" else ACTIONS_ELEMENTS
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= limit:
            problems.append(f"{where}.elements must hold 1 to {limit} items")
    return problems


def _text_problems(where: str, obj: Any, limit: int, *, plain: bool = False) -> list[str]:
    kinds = ("plain_text",) if plain else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in kinds:
        return [f"{where} must be a text object of type {' or '.join(kinds)}"]
    if not _fits(obj.get("text"), limit):
        return [f"{where}.text must be 1 to {limit} characters"]
    return []


def _image_problems(where: str, obj: Mapping[str, Any]) -> list[str]:
    problems = []
    url = obj.get("image_url")
    if not _fits(url, IMAGE_URL) or not str(url).startswith(("http://", "https://")):
        problems.append(f"{where}.image_url must be an http(s) URL of at most {IMAGE_URL}")
    if not _fits(obj.get("alt_text"), ALT_TEXT):
        problems.append(f"{where}.alt_text must be 1 to {ALT_TEXT} characters")
    return problems


def _fits(value: Any, limit: int) -> bool:
    # Counted in UTF-16 units, the stricter of the ways Slack might count.
    return isinstance(value, str) and 1 <= len(value.encode("utf-16-le")) // 2 <= limit


def _message_error(message: Mapping[str, Any]) -> str | None:
    """The code Slack would refuse this message with, or None."""
    text, blocks = message.get("text"), message.get("blocks")
    if not (isinstance(text, str) and text.strip()) and not blocks:
        return "no_text"
    if isinstance(text, str) and len(text.encode("utf-16-le")) // 2 > TEXT_LIMIT:
        return "msg_too_long"
    if block_kit_problems(message):
        return "invalid_blocks"
    return None


# -- responses --


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _headers(answer: SlackAnswer) -> dict[str, str]:
    if answer.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(answer.retry_after)))}


def _text(answer: SlackAnswer, text: str) -> Response:
    if answer.body is not None:
        return Response(answer.body, answer.status, _headers(answer), media_type="text/html")
    return PlainTextResponse(text, answer.status, _headers(answer))


def _api(answer: SlackAnswer, content: dict[str, Any]) -> Response:
    if answer.body is not None:
        return _text(answer, "")
    return JSONResponse(content, status_code=answer.status, headers=_headers(answer))
