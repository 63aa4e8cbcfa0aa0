"""Slack: an incoming webhook, or a bot token posting with chat.postMessage.

The message is rendered by pure functions (``render`` and its helpers) so that most of
it can be tested without a network; ``SlackChannel`` only posts it and classifies
Slack's answer. Incoming webhooks report failures as an HTTP status with a plain-text
code; the Web API answers HTTP 200 with ``{"ok": false, "error": code}``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from receiver.config import ChannelConfig
from receiver.notify.base import Channel, DeliveryError, Event, Kind, http_failure, post
from receiver.notify.links import result_links
from receiver.providers.base import retry_after_seconds

__all__ = ["DEFAULT_API_URL", "DEFAULT_MIN_INTERVAL", "DEFAULT_TIMEOUT", "SlackChannel",
           "error_kind", "escape", "excerpt", "format_elapsed", "render", "slack_len"]  # fmt: skip

DEFAULT_API_URL = "https://slack.com/api"
DEFAULT_TIMEOUT = 10.0
# Slack asks incoming webhooks for at most one message a second; Slack-compatible
# servers (Mattermost, Rocket.Chat) may allow more, a proxy in front of Slack less.
DEFAULT_MIN_INTERVAL = 1.0

# Block Kit limits, as Slack documents them.
SECTION_TEXT_LIMIT = 3000
MAX_FIELDS = 10
IMAGE_URL_LIMIT = 3000
# Our own choices, well inside those limits (a field's text may hold 2000, a message 50
# blocks; we send one): an error is a reason, not a log dump; a field value longer than
# this is a bug upstream; the fallback only has to identify the job in a push
# notification; a link longer than this would crowd the prompt out.
ERROR_LIMIT = 1000
FIELD_VALUE_LIMIT = 200
FALLBACK_EXCERPT = 150
LINK_LIMIT = 1500

ELLIPSIS = "…"
COVER_ALT_TEXT = "Cover frame of the generated video"
_HEADERS = {"Content-Type": "application/json; charset=utf-8"}

_STATUS_LINES: dict[str, tuple[str, str]] = {
    "completed": (":white_check_mark:", "Video ready"),
    "failed": (":x:", "Video failed"),
    "canceled": (":no_entry_sign:", "Video canceled"),
    "processing": (":hourglass_flowing_sand:", "Video in progress"),
    "queued": (":inbox_tray:", "Video queued"),
}

# How each Slack error code is handled. From the Web API, a code not listed is permanent:
# retrying a refusal we do not understand would only repeat it; from a webhook, the HTTP
# status decides for a code not listed. A code that means the token, the
# webhook or the channel no longer works is "gone": every later message would fail the
# same way until someone changes the config, so the channel is disabled rather than
# filling the dead-letter list one message at a time. not_in_channel is gone too: the
# bot must be invited, which no retry will do. message_limit_exceeded is a free
# workspace's message allowance running out: it comes back, so the message waits.
_TRANSIENT_CODES = frozenset({
    "ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
    "request_timeout", "team_added_to_org", "rollup_error", "message_limit_exceeded",
})  # fmt: skip
_GONE_CODES = frozenset({
    # The destination.
    "channel_not_found", "channel_is_archived", "is_archived", "not_in_channel",
    "posting_to_general_channel_denied", "restricted_action",
    "restricted_action_read_only_channel", "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel", "action_prohibited",
    # The webhook or the token.
    "no_service", "no_service_id", "no_team", "invalid_token", "no_active_hooks",
    "team_disabled", "invalid_auth", "not_authed", "token_revoked", "token_expired",
    "account_inactive",
    "missing_scope", "no_permission", "not_allowed_token_type", "ekm_access_denied",
    "access_denied", "accesslimited", "org_login_required", "enterprise_is_restricted",
    "team_access_not_granted", "two_factor_setup_required",
})  # fmt: skip
_PERMANENT_CODES = frozenset({
    "invalid_payload", "invalid_blocks", "invalid_blocks_format", "msg_too_long",
    "msg_blocks_too_long", "no_text", "missing_text_or_fallback_or_attachments",
    "too_many_attachments", "user_not_found", "invalid_arguments", "invalid_json",
    "json_not_object", "invalid_charset", "invalid_form_data", "invalid_post_type",
    "missing_post_type",
})  # fmt: skip
# Slack's codes are short snake_case words; anything else in a body (an HTML page, a
# proxy's echo of the request) is not repeated in a message, where a secret could leak.
_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


def error_kind(code: str) -> Kind | None:
    """How a Slack error code is handled: retried, dead-lettered, the channel disabled;
    None for a code we do not know."""
    if code in _TRANSIENT_CODES:
        return "transient"
    if code in _GONE_CODES:
        return "gone"
    if code in _PERMANENT_CODES:
        return "permanent"
    return None


# -- rendering: pure functions --


def slack_len(text: str) -> int:
    """Length as Slack's limits count it, in UTF-16 code units (an emoji counts twice).

    Slack does not say whether it counts code points or UTF-16 units; units are never
    fewer, so a text that fits by this count fits either way.
    """
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def escape(text: str) -> str:
    """Make text literal in mrkdwn: &, < and > are Slack's control characters.

    Escaping < and > also means a prompt cannot mention @channel or forge a link. A lone
    surrogate (JSON allows one) becomes "?", since it cannot be sent as UTF-8.
    """
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def excerpt(text: str, limit: int) -> str:
    """``text`` escaped, cut to at most ``limit`` Slack characters, with an ellipsis if cut.

    The cut is made before escaping a character, so it never splits an entity like &amp;.
    """
    escaped = escape(text)
    if slack_len(escaped) <= limit:
        return escaped
    budget = limit - slack_len(ELLIPSIS)
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = escape(char)
        size = slack_len(piece)
        if used + size > budget:
            break
        pieces.append(piece)
        used += size
    return "".join(pieces).rstrip() + ELLIPSIS


def format_elapsed(seconds: float) -> str:
    """45s, 2m 05s, 1h 02m 05s."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
    except ValueError:
        return None


def elapsed_seconds(job: Mapping[str, Any]) -> float | None:
    """From creation to the end, or to the last change for a job still running."""
    start = _timestamp(job.get("created_at"))
    end = _timestamp(job.get("finished_at"))
    if end is None:
        end = _timestamp(job.get("updated_at"))
    if start is None or end is None or end < start:
        return None
    return end - start


def _format_credits(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, int | float):
        return str(value)
    return f"{value:.4f}".rstrip("0").rstrip(".") if math.isfinite(value) else None


def _http_url(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None


def _link(url: str, label: str) -> str:
    # Inside <url|label>, a | or > would end the URL early: percent-encode them (and
    # spaces, which Slack would not link), and escape & as everywhere else.
    target = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E")
    target = target.replace("|", "%7C").replace(" ", "%20")
    return f"<{target}|{label}>"


def _section_text(event: Event) -> str:
    job = event.job
    emoji, title = _STATUS_LINES.get(event.status, (":grey_question:", f"Job {event.status}"))
    lines = [f"{emoji} *{escape(title)}*"]
    if event.status == "failed":
        error = job.get("error")
        reason = str(error) if error else "no reason was given"
        lines.append(f"*Error:* {excerpt(reason, ERROR_LIMIT)}")
    if event.status == "completed":
        links = result_links(job)
        url = _http_url(links.video)
        if url is not None:
            link = _link(url, "Open the video")
            too_long = slack_len(link) > LINK_LIMIT
            lines.append("_The video link is too long to show here._" if too_long else link)
        if links.note is not None:
            lines.append(f"_{excerpt(links.note, ERROR_LIMIT)}_")
    # The prompt goes last: it is the only part that can be cut, and any stray mrkdwn in
    # it (an unclosed ``` or *) cannot then swallow the status or the link.
    prompt = job.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        head = "\n".join(lines) + "\n*Prompt:* "
        room = SECTION_TEXT_LIMIT - slack_len(head)
        if room > len(ELLIPSIS):
            return head + excerpt(prompt, room)
    return "\n".join(lines)


def _fields(job: Mapping[str, Any]) -> list[dict[str, str]]:
    elapsed = elapsed_seconds(job)
    values = [
        ("Provider", job.get("provider")),
        ("Model", job.get("model")),
        ("Elapsed", None if elapsed is None else format_elapsed(elapsed)),
        ("Credits", _format_credits(job.get("credits"))),
        ("Job", job.get("id")),
    ]
    fields = [
        {"type": "mrkdwn", "text": f"*{label}*\n{excerpt(str(value), FIELD_VALUE_LIMIT)}"}
        for label, value in values
        if value is not None and str(value) != ""
    ]
    return fields[:MAX_FIELDS]


def _fallback(event: Event) -> str:
    """The text Slack shows in notifications, and wherever blocks cannot be shown."""
    job = event.job
    text = escape(_STATUS_LINES.get(event.status, ("", f"Job {event.status}"))[1])
    if job.get("provider"):
        text += f" ({excerpt(str(job['provider']), 50)})"
    separator = ": "
    if event.status == "failed" and job.get("error"):
        text += separator + excerpt(str(job["error"]), FALLBACK_EXCERPT)
        separator = " — "
    prompt = job.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        text += separator + excerpt(" ".join(prompt.split()), FALLBACK_EXCERPT)
    return text


def render(event: Event, *, cover: bool = True) -> dict[str, Any]:
    """The JSON payload for one event: ``text`` (fallback) and ``blocks``.

    Within Slack's limits whatever the job holds; ``cover=False`` leaves out the cover
    image, for when Slack could not fetch it.
    """
    section: dict[str, Any] = {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _section_text(event)},
    }
    fields = _fields(event.job)
    if fields:
        section["fields"] = fields
    cover_url = _http_url(result_links(event.job).cover) if cover else None
    if cover_url is not None and slack_len(cover_url) <= IMAGE_URL_LIMIT:
        section["accessory"] = {"type": "image", "image_url": cover_url,
                                "alt_text": COVER_ALT_TEXT}  # fmt: skip
    return {"text": _fallback(event), "blocks": [section]}


def _has_cover(payload: Mapping[str, Any]) -> bool:
    return any("accessory" in block for block in payload.get("blocks", ()))


# -- delivery --


class SlackChannel(Channel):
    """Posts each event as one Block Kit message; by default at most one message a second
    (``min_interval``, in seconds; 0 leaves the spacing out).

    ValueError, naming the key, for options that cannot work: startup stops there
    rather than at every delivery.
    """

    min_interval = DEFAULT_MIN_INTERVAL

    def __init__(self, config: ChannelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        self.what = f"Slack channel {self.name!r}"
        where = f"channels.{self.name}"
        options = config.options
        self.timeout = _timeout(options.get("timeout", DEFAULT_TIMEOUT), f"{where}.timeout")
        self.min_interval = _interval(
            options.get("min_interval", DEFAULT_MIN_INTERVAL), f"{where}.min_interval"
        )
        self.api_url = str(options.get("api_url") or DEFAULT_API_URL).rstrip("/")
        self.target = options.get("channel")
        self._webhook = config.secrets.get("webhook_url")
        self._token = config.secrets.get("bot_token")
        self._secrets = tuple(s.reveal() for s in (self._webhook, self._token) if s)
        if self.target is not None and not (isinstance(self.target, str) and self.target):
            raise ValueError(f'{where}.channel: must be a channel name or ID, like "#videos"')
        # A bot token with a channel wins over a webhook: its answers say more.
        if self._token is not None and self.target is not None:
            self.mode = "api"
            if not _TOKEN_RE.fullmatch(self._token.reveal()):
                raise ValueError(f"{where}.bot_token_env: the token holds spaces or non-ASCII")
            if not _valid_url(self.api_url):
                raise ValueError(f"{where}.api_url: must be an http(s) URL with a host")
        elif self._webhook is not None:
            self.mode = "webhook"
            if not _valid_url(self._webhook.reveal()):
                raise ValueError(f"{where}.webhook_url_env: the variable holds no http(s) URL")
        elif self._token is not None:
            raise ValueError(f'{where}.channel: missing; the bot posts to it, like "#videos"')
        else:
            raise ValueError(
                f"{where}.webhook_url_env: missing; name the variable holding an "
                "incoming-webhook URL, or set bot_token_env and channel"
            )
        self._lock = asyncio.Lock()
        self._last_post = -math.inf

    async def send(self, event: Event) -> None:
        payload = render(event)
        try:
            await self._deliver(payload)
        except DeliveryError as exc:
            if exc.kind != "permanent" or not _has_cover(payload):
                raise
            # Slack downloads the cover itself and refuses the whole message when it
            # cannot; the news matters more than the picture.
            await self._deliver(render(event, cover=False))

    async def _deliver(self, payload: dict[str, Any]) -> None:
        async with self._lock:
            # The outbox spaces messages by min_interval too; this holds even when a
            # caller does not, since Slack counts arrivals per channel.
            wait = self._last_post + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_post = time.monotonic()
            if self.mode == "api":
                await self._post_api(payload)
            else:
                await self._post_webhook(payload)

    async def _post_webhook(self, payload: dict[str, Any]) -> None:
        assert self._webhook is not None
        response = await post(self.client, self._webhook.reveal(), self.what,
                              content=_json(payload), headers=_HEADERS,
                              timeout=self.timeout)  # fmt: skip
        failure = http_failure(response, self.what)
        if failure is None:
            return
        code = self._code(response.text.strip())
        if code is None:
            raise failure
        kind = failure.kind
        status = response.status_code
        # 408, 429 and 5xx are retried whatever the body says.
        if kind != "transient":
            kind = error_kind(code) or kind
        raise DeliveryError(f"{failure.message}: {code}", kind=kind,
                            retry_after=failure.retry_after, status_code=status)  # fmt: skip

    async def _post_api(self, payload: dict[str, Any]) -> None:
        assert self._token is not None
        headers = {**_HEADERS, "Authorization": f"Bearer {self._token.reveal()}"}
        response = await post(self.client, f"{self.api_url}/chat.postMessage", self.what,
                              content=_json({"channel": self.target, **payload}),
                              headers=headers, timeout=self.timeout)  # fmt: skip
        failure = http_failure(response, self.what)
        if failure is not None:
            raise failure
        status = response.status_code
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            # A proxy or captive portal, most likely; Slack itself always answers JSON.
            raise DeliveryError(f"{self.what} answered HTTP {status} with a body that is not "
                                "Slack's JSON", kind="transient", status_code=status)  # fmt: skip
        if answer.get("ok") is True:
            return
        code = self._code(answer.get("error"))
        if code is None:
            raise DeliveryError(f"{self.what} refused the message without a usable error code",
                                kind="permanent", status_code=status)  # fmt: skip
        kind = error_kind(code) or "permanent"
        retry_after = None
        if kind == "transient":
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
        raise DeliveryError(f"{self.what} refused the message: {code}", kind=kind,
                            retry_after=retry_after, status_code=status)  # fmt: skip

    def _code(self, value: object) -> str | None:
        """Slack's error code from an answer, or None if it does not look like one."""
        if not isinstance(value, str) or not _CODE_RE.fullmatch(value):
            return None
        if any(value in secret for secret in self._secrets):
            return None
        return value


def _json(payload: Mapping[str, Any]) -> bytes:
    # ASCII escapes: no text the job holds can make the encoding fail.
    return json.dumps(payload).encode()


def _timeout(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: must be a number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: must be more than 0 seconds")
    return float(value)


def _interval(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: must be a number of seconds")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{where}: must be 0 or more seconds")
    return float(value)


def _valid_url(value: str) -> bool:
    # httpx raises InvalidURL, which is no httpx.HTTPError, only when it sends: catch it
    # here rather than let it escape send() with the URL in its message.
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return url.scheme in ("http", "https") and bool(url.host)
