"""A fake PixVerse platform API (``/openapi/v2``) for the demo, development and tests.

Shapes follow PixVerse's docs: every request carries ``API-KEY`` and an ``Ai-trace-id``,
every answer is an envelope ``{ErrCode, ErrMsg, Resp}``. An image is uploaded first (a
multipart ``image`` file, or an ``image_url`` as a form field or in JSON) and its
``img_id`` generated from; text generates directly. A video is 5 (generating) and then
1 (done, with its ``url``), 7 (refused by moderation) or 8 (failed), as
``/openapi/v2/video/result/{id}`` shows.

Webhooks go to the one URL set in the account's console (``webhook_url``; None: none
are sent), for every video that ends: ``{id, status, url, size, has_audio, credits}``,
signed with the account's secret: Base64 HMAC-SHA256 over ``{timestamp}\\n{nonce}\\n``
and the body's fields as a URL query string (``Webhook-Timestamp``, ``Webhook-Nonce``,
``Webhook-Signature``, ``Ai-Trace-Id``). A webhook not answered 200 with the body
exactly ``ok`` is sent again after 2 s, 10 s, 30 s, 1 min, 5 min, 15 min, 1 h and 4 h
(``webhook_retry_delays``, shortened in tests), each time freshly signed.

What the docs leave open is a setting: the order of the keys in the signed query string
(ascending, or as the body has them), errors as HTTP 200 with their ErrCode or with a
fitting HTTP status, a webhook for the start of the generation too, and how long a
video's link works. PixVerse publishes no list of its error codes: the fake's are its
own. Prompt markers: ``[fail]`` (8), ``[moderation]`` (7), ``[slow]``, ``[unknown]`` (an
undocumented status number before generating), ``[never]``, ``[lost]`` (no webhook),
``[duplicate]`` (each webhook sent twice), and refusals of the generate: ``[429]``,
``[500]``, ``[concurrent]`` (the concurrency limit, inside a 200).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import quote_plus

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, scenario_of
from receiver.sandbox.media import file_response, sample_video
from receiver.sandbox.revid import RevidError, parse_multipart

MODELS = ("v3.5", "v4", "v4.5", "v5")
QUALITIES = ("360p", "540p", "720p", "1080p")
ASPECT_RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16")
MARKERS = (
    "fail", "moderation", "slow", "unknown", "never", "lost", "duplicate", "429", "500",
    "concurrent",
)  # fmt: skip
GENERATING, DONE, MODERATED, FAILED = 5, 1, 7, 8
ENDED = (DONE, MODERATED, FAILED)
# Not in PixVerse's list; [unknown] videos report it before they generate.
UNDOCUMENTED_STATUS = 2
MAX_PROMPT = 2048
MAX_SEED = 2_147_483_647
# The fake's own ErrCodes (PixVerse publishes none): one per kind of refusal.
INVALID_PARAMETER, INVALID_KEY, NOT_FOUND, RATE_LIMITED, CONCURRENCY, INTERNAL = (
    400017, 10005, 400018, 500069, 500044, 500000,
)  # fmt: skip
HTTP_STATUS = {INVALID_PARAMETER: 400, INVALID_KEY: 401, NOT_FOUND: 404, RATE_LIMITED: 429,
               CONCURRENCY: 429, INTERNAL: 500}  # fmt: skip
CONCURRENCY_MESSAGE = "Reached the limit for concurrent generations."
CREDITS = {"360p": 20, "540p": 30, "720p": 40, "1080p": 80}
SIZES = {"360p": (640, 360), "540p": (960, 540), "720p": (1280, 720), "1080p": (1920, 1080)}
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class PixVerseFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    # The account's console: where webhooks go (None: nowhere), and the signing secret
    # (the same in every fake unless set, so that `vidhook init --sandbox` can name it).
    webhook_url: str | None = None
    webhook_secret: str = "pixverse-fake-webhook-secret"  # noqa: S105 (a fake's, on loopback)
    # Unconfirmed: the signed query string's keys "sorted", or "as sent" in the body.
    key_order: str = "sorted"
    # Unconfirmed: webhooks for the end only, or for the start of the generation too.
    webhook_on_start: bool = False
    webhook_retry_delays: tuple[float, ...] = (2.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                                               14400.0)  # fmt: skip
    webhook_timeout: float = 10.0
    # Unconfirmed: False, every refusal is an HTTP 200 carrying its ErrCode; True, the
    # HTTP status fits it (a rate limit is then a 429 with Retry-After).
    http_errors: bool = False
    retry_after: int = 1
    # Unconfirmed: seconds a video's link works after the video is done; None: for ever.
    url_lifetime: float | None = None


class PixVerseRefusal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class RecordedWebhook(NamedTuple):
    time: float  # time.monotonic() when the attempt finished
    video_id: int
    status: int
    headers: dict[str, str]
    body: bytes
    status_code: int | None
    answer: bytes
    error: str | None


@dataclass
class Video:
    id: int
    key: str
    params: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    created: str
    status: int = GENERATING
    modified: str = ""
    done_at: float | None = None  # time.monotonic()
    runner: asyncio.Task[None] | None = field(default=None, repr=False)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_http_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)


def _require(ok: bool, detail: str) -> None:
    if not ok:
        raise PixVerseRefusal(INVALID_PARAMETER, f"Invalid parameter: {detail}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def field_text(value: Any) -> str:
    """A webhook field's value as the signed query string writes it."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


class PixVerseFake(FakeProvider):
    prefix = "pixverse"
    settings: PixVerseFakeSettings
    tasks: dict[str, Video]

    def __init__(self, settings: PixVerseFakeSettings | None = None) -> None:
        self.webhooks: list[RecordedWebhook] = []
        self.trace_ids: list[str] = []
        self.images: dict[int, tuple[str, str]] = {}  # img_id -> (key, where it came from)
        self._client: httpx.AsyncClient | None = None
        self._next_id = 366_000_000_000 + secrets.randbelow(10**9)
        super().__init__(settings or PixVerseFakeSettings())

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/openapi/v2/image/upload", self._guard(self._upload), methods=["POST"]),
            Route("/openapi/v2/video/text/generate", self._guard(self._text), methods=["POST"]),
            Route("/openapi/v2/video/img/generate", self._guard(self._image), methods=["POST"]),
            Route("/openapi/v2/video/result/{video_id}", self._guard(self._result),
                  methods=["GET"]),
            Route("/media/{name}", self._media, methods=["GET"]),
            Route("/uploads/{name}", self._uploaded, methods=["GET"]),
        ]  # fmt: skip

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        code = next((c for c, s in HTTP_STATUS.items() if s == status), INTERNAL)
        body = {"ErrCode": code, "ErrMsg": message, "Resp": {}}
        return JSONResponse(body, status_code=status, headers=headers)

    def _refusal(self, refusal: PixVerseRefusal) -> Response:
        body = {"ErrCode": refusal.code, "ErrMsg": refusal.message, "Resp": {}}
        if not self.settings.http_errors:
            return JSONResponse(body)
        status = HTTP_STATUS.get(refusal.code, 400)
        headers = {"Retry-After": str(self.settings.retry_after)} if status == 429 else None
        return JSONResponse(body, status_code=status, headers=headers)

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _guard(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                if not self.key_allowed(request.headers.get("api-key", "").strip()):
                    raise PixVerseRefusal(INVALID_KEY, "Invalid API-KEY")
                trace = request.headers.get("ai-trace-id", "").strip()
                if not trace:
                    raise PixVerseRefusal(INVALID_PARAMETER, "Ai-trace-id is required")
                self.trace_ids.append(trace)
                return await handler(request)
            except PixVerseRefusal as refusal:
                return self._refusal(refusal)

        return endpoint

    @staticmethod
    def _ok(resp: dict[str, Any]) -> Response:
        return JSONResponse({"ErrCode": 0, "ErrMsg": "success", "Resp": resp})

    def _new_id(self) -> int:
        self._next_id += 1 + secrets.randbelow(1000)
        return self._next_id

    # --- HTTP endpoints ---------------------------------------------------

    async def _upload(self, request: Request) -> Response:
        key = request.headers["api-key"].strip()
        root = f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"
        kind = request.headers.get("content-type", "")
        source: str | None = None
        if kind.startswith("multipart/form-data"):
            try:
                parts = parse_multipart(kind, await request.body())
            except RevidError:
                raise PixVerseRefusal(INVALID_PARAMETER, "Invalid binding request") from None
            image, url = parts.get("image"), parts.get("image_url")
            if image is not None and image.filename is not None:
                _require(bool(image.content), "image is empty")
                _require(image.content_type.startswith("image/"), "Unsupported image format")
                source = f"upload:{image.content_type}:{len(image.content)}"
            elif url is not None and url.filename is None:
                source = url.content.decode("utf-8", "replace").strip()
        else:
            try:
                body = json.loads(await request.body())
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("image_url"), str):
                source = body["image_url"]
        _require(source is not None, "image or image_url is required")
        assert source is not None
        _require(source.startswith("upload:") or _is_http_url(source), "image_url")
        img_id = self._new_id()
        self.images[img_id] = (key, source)
        return self._ok({"img_id": img_id, "img_url": f"{root}/uploads/{img_id}.png"})

    async def _text(self, request: Request) -> Response:
        body = await self._body(request)
        params = self._validate(body, image=False)
        _require(params.get("aspect_ratio") in ASPECT_RATIOS, "aspect_ratio")
        return self._start(request, params)

    async def _image(self, request: Request) -> Response:
        body = await self._body(request)
        params = self._validate(body, image=True)
        img_id = body.get("img_id")
        known = self.images.get(img_id) if isinstance(img_id, int) else None
        _require(known is not None and known[0] == request.headers["api-key"].strip(), "img_id")
        return self._start(request, params)

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise PixVerseRefusal(INVALID_PARAMETER, "Invalid binding request")
        return body

    @staticmethod
    def _validate(body: dict[str, Any], *, image: bool) -> dict[str, Any]:
        _require(body.get("model") in MODELS, f"model must be one of {', '.join(MODELS)}")
        prompt = body.get("prompt")
        _require(isinstance(prompt, str) and 0 < len(prompt) <= MAX_PROMPT, "prompt")
        quality = body.get("quality")
        _require(quality in QUALITIES, f"quality must be one of {', '.join(QUALITIES)}")
        duration = body.get("duration")
        _require(duration in (5, 8) and _is_int(duration), "duration must be 5 or 8")
        _require(not (quality == "1080p" and duration == 8), "1080p does not support 8 s")
        motion = body.get("motion_mode", "normal")
        _require(motion in ("normal", "fast"), "motion_mode")
        _require(motion == "normal" or duration == 5, "fast motion allows 5 s only")
        seed = body.get("seed", 0)
        _require(_is_int(seed) and 0 <= seed <= MAX_SEED, "seed")
        negative = body.get("negative_prompt", "")
        _require(isinstance(negative, str) and len(negative) <= MAX_PROMPT, "negative_prompt")
        _require(not image or "aspect_ratio" not in body, "aspect_ratio")
        return {**body, "motion_mode": motion, "seed": seed}

    def _start(self, request: Request, params: dict[str, Any]) -> Response:
        scenario = scenario_of(params.get("prompt"), MARKERS)
        if "429" in scenario:
            raise PixVerseRefusal(RATE_LIMITED, "Too many requests, please try again later")
        if "500" in scenario:
            raise PixVerseRefusal(INTERNAL, "Internal server error")
        if "concurrent" in scenario:
            raise PixVerseRefusal(CONCURRENCY, CONCURRENCY_MESSAGE)
        root = request.scope.get("root_path", "")
        video = Video(
            id=self._new_id(),
            key=request.headers["api-key"].strip(),
            params=params,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
            created=_now(),
        )
        video.modified = video.created
        self.tasks[str(video.id)] = video
        request.state.task_id = str(video.id)
        video.runner = self.spawn(self._progress(video))
        return self._ok({"video_id": video.id})

    async def _result(self, request: Request) -> Response:
        video_id = request.path_params["video_id"]
        request.state.task_id = video_id
        video = self.tasks.get(video_id)
        if video is None or video.key != request.headers["api-key"].strip():
            raise PixVerseRefusal(NOT_FOUND, "Video does not exist")
        return self._ok(self.result(video))

    async def _media(self, request: Request) -> Response:
        name, _, ext = request.path_params["name"].partition(".")
        video = self.tasks.get(name)
        request.state.task_id = None if video is None else name
        if video is None or video.status != DONE or ext != "mp4" or self.expired(video):
            return _not_found()
        return file_response("mp4", self.settings.files) or _not_found()

    async def _uploaded(self, request: Request) -> Response:
        name, _, ext = request.path_params["name"].partition(".")
        if ext != "png" or not name.isdigit() or int(name) not in self.images:
            return _not_found()
        return file_response("png", self.settings.files) or _not_found()

    def expired(self, video: Video) -> bool:
        lifetime = self.settings.url_lifetime
        done = video.done_at
        return lifetime is not None and done is not None and time.monotonic() - done >= lifetime

    # --- bodies -------------------------------------------------------------

    def result(self, video: Video) -> dict[str, Any]:
        """The video as ``/openapi/v2/video/result/{id}`` shows it."""
        quality = video.params["quality"]
        width, height = SIZES[quality]
        done = video.status == DONE
        return {
            "id": video.id,
            "status": video.status,
            "url": f"{video.base_url}/media/{video.id}.mp4" if done else "",
            "prompt": video.params["prompt"],
            "negative_prompt": video.params.get("negative_prompt", ""),
            "seed": video.params["seed"],
            "size": len(sample_video(self.settings.files.video_bytes)) if done else 0,
            "style": video.params.get("style", ""),
            "create_time": video.created,
            "modify_time": video.modified,
            "outputWidth": width,
            "outputHeight": height,
            "resolution_ratio": int(quality.removesuffix("p")),
            "credits": CREDITS[quality] if video.status != GENERATING else 0,
        }

    def webhook_body(self, video: Video) -> dict[str, Any]:
        """The webhook's fields, in the order PixVerse's page lists them."""
        done = video.status == DONE
        size = len(sample_video(self.settings.files.video_bytes)) / 1_000_000 if done else 0
        return {
            "id": str(video.id),
            "status": video.status,
            "url": f"{video.base_url}/media/{video.id}.mp4" if done else "",
            "size": round(size, 3),
            "has_audio": False,
            "credits": CREDITS[video.params["quality"]] if video.status in ENDED else 0,
        }

    # --- progression and webhooks -------------------------------------------

    async def _progress(self, video: Video) -> None:
        queue, start, run = self.settings.timing.stages(video.scenario)
        if "unknown" in video.scenario:
            self._set(video, UNDOCUMENTED_STATUS)
        await asyncio.sleep(queue + start)
        self._set(video, GENERATING)
        if self.settings.webhook_on_start:
            self._send(video)
        if "never" in video.scenario:
            return
        await asyncio.sleep(run)
        if "moderation" in video.scenario:
            self._set(video, MODERATED)
        elif "fail" in video.scenario:
            self._set(video, FAILED)
        else:
            video.done_at = time.monotonic()
            self._set(video, DONE)
        self._send(video)

    def _set(self, video: Video, status: int) -> None:
        video.status, video.modified = status, _now()

    def _send(self, video: Video) -> None:
        if self.settings.webhook_url is None or "lost" in video.scenario:
            return
        # Serialized once: every attempt sends the same body (each freshly signed).
        fields = self.webhook_body(video)
        self.spawn(self._deliver(video, fields, json.dumps(fields).encode()))

    def sign(self, fields: dict[str, Any], timestamp: int, nonce: str) -> str:
        """Webhook-Signature as PixVerse makes it, with the key order of the settings."""
        keys = sorted(fields) if self.settings.key_order == "sorted" else list(fields)
        query = "&".join(
            f"{quote_plus(k, safe='')}={quote_plus(field_text(fields[k]), safe='')}" for k in keys
        )
        text = f"{timestamp}\n{nonce}\n{query}".encode()
        secret = self.settings.webhook_secret.encode()
        return base64.b64encode(hmac.new(secret, text, hashlib.sha256).digest()).decode()

    async def _deliver(self, video: Video, fields: dict[str, Any], body: bytes) -> None:
        for delay in (0.0, *self.settings.webhook_retry_delays):
            await asyncio.sleep(delay)
            timestamp, nonce = int(time.time()), secrets.token_hex(16)
            headers = {
                "Content-Type": "application/json",
                "Webhook-Timestamp": str(timestamp),
                "Webhook-Nonce": nonce,
                "Webhook-Signature": self.sign(fields, timestamp, nonce),
                "Ai-Trace-Id": str(uuid.uuid4()),
            }
            ok = await self._post(video, headers, body)
            if "duplicate" in video.scenario:
                ok = await self._post(video, headers, body) or ok
            if ok:
                return

    async def _post(self, video: Video, headers: dict[str, str], body: bytes) -> bool:
        url = self.settings.webhook_url
        if url is None:  # the console's URL was cleared meanwhile
            return True
        self._client = self._client or httpx.AsyncClient()
        code: int | None = None
        answer = b""
        error: str | None = None
        try:
            response = await self._client.post(
                url, content=body, headers=headers, timeout=self.settings.webhook_timeout
            )
            code, answer = response.status_code, response.content
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        status = int(json.loads(body)["status"])
        self.webhooks.append(
            RecordedWebhook(time.monotonic(), video.id, status, headers, body, code, answer, error)
        )
        # Only a 200 whose body is exactly "ok" counts as received.
        return code == 200 and answer == b"ok"

    def webhooks_of(self, video_id: int | str) -> list[RecordedWebhook]:
        return [w for w in list(self.webhooks) if str(w.video_id) == str(video_id)]


def _not_found() -> Response:
    return Response("not found", status_code=404, media_type="text/plain")
