"""A fake Luma Dream Machine API (``/generations``) for the demo, development and tests.

Shapes follow Luma's SDK: a create answers 201 with the generation, which goes queued ->
dreaming -> completed (``assets.video`` and ``assets.image``) or failed
(``failure_reason``); ``GET /generations`` lists, ``DELETE /generations/{id}`` deletes
(the status then answers 404). Errors read ``{"detail": "..."}``.

The generation is POSTed, unsigned, to its ``callback_url`` on every state change, each
one twice on purpose (Luma may resend); a delivery not answered 200 is sent again three
times 100 ms apart, each attempt with a 5 s timeout. What Luma's docs leave open is a
setting: the create route (``/generations`` or ``/generations/video``), the states
that call back, the shape of a validation error, the Retry-After of a 429, how long an
asset URL lives. Prompt markers select misbehaviour: ``[fail]``, ``[slow]``,
``[unknown]``, ``[never]``, ``[429]``, ``[500]``, and for callbacks ``[lost]``,
``[early]`` (a completed callback while still dreaming) and ``[out-of-order]`` (the
dreaming callback after the final one).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, bearer_key, scenario_of
from receiver.sandbox.hooks import CallbackSender, RecordedCallback
from receiver.sandbox.media import file_response

__all__ = ["LumaFake", "LumaFakeSettings", "RecordedCallback"]

MODELS = ("ray-1-6", "ray-2", "ray-flash-2")
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21")
RESOLUTIONS = ("540p", "720p", "1080p", "4k")
DURATIONS = ("5s", "9s")
MARKERS = (
    "fail", "slow", "unknown", "never", "429", "500", "lost", "early", "out-of-order",
)  # fmt: skip
# Not in Luma's vocabulary; [unknown] generations report it between queued and dreaming.
UNDOCUMENTED_STATE = "pending"
CREATE_PATHS = ("/generations", "/generations/video")
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class LumaFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    # Which create routes are served: the SDK's, the docs' examples', or both.
    create_paths: tuple[str, ...] = ("/generations",)
    # None: every state change calls back ("any and all updates"); the SDK's docstring
    # names only ("dreaming", "completed", "failed").
    callback_states: tuple[str, ...] | None = None
    callback_copies: int = 2  # each callback is sent this many times, on purpose
    callback_retries: int = 3
    callback_retry_delay: float = 0.1
    callback_timeout: float = 5.0
    fail_reason: str = "The prompt was rejected by content moderation"
    # "text": {"detail": "..."}; "list": FastAPI's 422 {"detail": [{"loc", "msg", ...}]}.
    validation_errors: str = "text"
    retry_after: int | None = 1  # the Retry-After of a 429; None sends none
    creates_per_minute: int | None = None  # the Build tier allows 20
    max_concurrent: int | None = None  # the Build tier allows 10 generations at once
    asset_ttl: float | None = None  # seconds an asset URL answers; None: for ever


class LumaError(Exception):
    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.headers = status, detail, headers or {}


@dataclass
class Generation:
    id: str
    key: str  # the API key that created it
    request: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    created_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds")
    )
    state: str = "queued"
    failure_reason: str | None = None
    completed_at: float | None = None  # time.monotonic()
    state_times: dict[str, float] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def callback_url(self) -> str | None:
        url = self.request.get("callback_url")
        return url if isinstance(url, str) else None


def _is_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise _Invalid(where, message)


class _Invalid(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message


def _keyframe(value: Any, where: str) -> None:
    _check(isinstance(value, dict), where, "must be an object")
    kind = value.get("type")
    if kind == "image":
        _check(_is_url(value.get("url")), f"{where}.url", "must be an image URL")
    elif kind == "generation":
        _check(isinstance(value.get("id"), str), f"{where}.id", "must be a generation id")
    else:
        _check(False, f"{where}.type", "must be 'image' or 'generation'")


def _validate(body: dict[str, Any]) -> dict[str, Any]:
    """The generation request as Luma keeps it; _Invalid names the first bad field."""
    model = body.get("model")
    _check(model in MODELS, "model", f"must be one of {', '.join(MODELS)}")
    prompt = body.get("prompt")
    _check(prompt is None or isinstance(prompt, str), "prompt", "must be a string")
    keyframes = body.get("keyframes")
    if keyframes is not None:
        _check(isinstance(keyframes, dict), "keyframes", "must be an object")
        unknown = sorted(set(keyframes) - {"frame0", "frame1"})
        _check(not unknown, "keyframes", f"unexpected frames {unknown}")
        for name, frame in keyframes.items():
            _keyframe(frame, f"keyframes.{name}")
    _check(bool(prompt) or bool(keyframes), "prompt", "a prompt or a keyframe is required")
    choices = {"aspect_ratio": ASPECT_RATIOS, "resolution": RESOLUTIONS, "duration": DURATIONS}
    for name, allowed in choices.items():
        value = body.get(name)
        _check(value is None or value in allowed, name, f"must be one of {', '.join(allowed)}")
    loop = body.get("loop")
    _check(loop is None or isinstance(loop, bool), "loop", "must be a boolean")
    kind = body.get("generation_type")
    _check(kind in (None, "video"), "generation_type", "must be 'video'")
    url = body.get("callback_url")
    _check(url is None or _is_url(url), "callback_url", "must be an http(s) URL")
    concepts = body.get("concepts")
    listed = isinstance(concepts, list) and all(
        isinstance(c, dict) and "key" in c for c in concepts
    )
    _check(concepts is None or listed, "concepts", "must be a list of {key}")
    return {k: v for k, v in body.items() if v is not None}


class LumaFake(FakeProvider):
    prefix = "luma"
    settings: LumaFakeSettings
    tasks: dict[str, Generation]

    def __init__(self, settings: LumaFakeSettings | None = None) -> None:
        self.hooks = CallbackSender()
        self._creates: list[float] = []
        self.deleted: set[str] = set()
        super().__init__(settings or LumaFakeSettings())

    @property
    def callbacks(self) -> list[RecordedCallback]:
        return self.hooks.sent

    def routes(self) -> list[BaseRoute]:
        return [
            *(Route(p, self._guard(self._create_at(p)), methods=["POST"]) for p in CREATE_PATHS),
            Route("/generations", self._guard(self._list), methods=["GET"]),
            Route("/generations/{id}", self._guard(self._get), methods=["GET"]),
            Route("/generations/{id}", self._guard(self._delete), methods=["DELETE"]),
            Route("/assets/{name}", self._asset, methods=["GET"]),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    async def aclose(self) -> None:
        await super().aclose()
        await self.hooks.aclose()

    def _guard(self, handler: Handler) -> Handler:
        """The key first, then the handler; a LumaError answers in Luma's shape."""

        async def guarded(request: Request) -> Response:
            try:
                if not self.key_allowed(bearer_key(request)):
                    raise LumaError(401, "Invalid API key")
                return await handler(request)
            except LumaError as exc:
                return JSONResponse(
                    {"detail": exc.detail}, status_code=exc.status, headers=exc.headers
                )

        return guarded

    # --- HTTP endpoints ---------------------------------------------------

    def _create_at(self, path: str) -> Handler:
        async def create(request: Request) -> Response:
            if path not in self.settings.create_paths:
                # What a router answers for a route it lacks (or, at /generations, for
                # the method: the list is served there).
                raise LumaError(405 if path == "/generations" else 404, "Not Found")
            return await self._create(request)

        return create

    async def _create(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise LumaError(400, "The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise LumaError(400, "The request body must be a JSON object")
        scenario = scenario_of(body.get("prompt"), MARKERS)
        if "429" in scenario:
            raise self._too_many("Rate limit exceeded")
        if "500" in scenario:
            raise LumaError(500, "Internal server error")
        self._limit_creates()
        try:
            params = _validate(body)
        except _Invalid as bad:
            raise self._invalid(bad) from None
        generation = Generation(
            id=str(uuid.uuid4()),
            key=bearer_key(request),
            request={**params, "generation_type": "video"},
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}"
            f"{request.scope.get('root_path', '')}",
        )
        generation.state_times["queued"] = time.monotonic()
        self.tasks[generation.id] = generation
        request.state.task_id = generation.id
        generation.runner = self.spawn(self._progress(generation))
        return JSONResponse(self._body(generation), status_code=201)

    def _limit_creates(self) -> None:
        now = time.monotonic()
        per_minute = self.settings.creates_per_minute
        if per_minute is not None:
            self._creates = [t for t in self._creates if now - t < 60]
            if len(self._creates) >= per_minute:
                raise self._too_many("Rate limit exceeded: too many generation requests")
        running = sum(1 for g in self.tasks.values() if g.state not in ("completed", "failed"))
        if self.settings.max_concurrent is not None and running >= self.settings.max_concurrent:
            raise self._too_many("Too many concurrent generations")
        self._creates.append(now)

    def _too_many(self, detail: str) -> LumaError:
        wait = self.settings.retry_after
        return LumaError(429, detail, {"Retry-After": str(wait)} if wait is not None else None)

    def _invalid(self, bad: _Invalid) -> LumaError:
        if self.settings.validation_errors == "list":
            item = {
                "type": "value_error",
                "loc": ["body", *bad.where.split(".")],
                "msg": bad.message,
            }
            return LumaError(422, [item])
        return LumaError(400, f"Invalid request: {bad.where} {bad.message}")

    async def _list(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "10"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            raise LumaError(400, "limit and offset must be integers") from None
        key = bearer_key(request)
        mine = [g for g in reversed(self.tasks.values()) if g.key == key]
        page = [self._body(g) for g in mine[offset : offset + limit]]
        return JSONResponse({"generations": page, "count": len(mine), "limit": limit,
                             "offset": offset})  # fmt: skip

    def _find(self, request: Request) -> Generation:
        generation_id = request.path_params["id"]
        request.state.task_id = generation_id
        generation = self.tasks.get(generation_id)
        if generation is None or generation.key != bearer_key(request):
            raise LumaError(404, "Generation not found")
        return generation

    async def _get(self, request: Request) -> Response:
        return JSONResponse(self._body(self._find(request)))

    async def _delete(self, request: Request) -> Response:
        generation = self._find(request)
        if generation.runner is not None:
            generation.runner.cancel()
        del self.tasks[generation.id]
        self.deleted.add(generation.id)
        return Response(status_code=204)

    async def _asset(self, request: Request) -> Response:
        stem, _, ext = request.path_params["name"].rpartition(".")
        generation = self.tasks.get(stem)
        request.state.task_id = stem
        if generation is None or generation.state != "completed" or ext not in ("mp4", "png"):
            return Response("Not Found", status_code=404, media_type="text/plain")
        ttl = self.settings.asset_ttl
        done = generation.completed_at
        if ttl is not None and done is not None and time.monotonic() - done > ttl:
            return Response("Request has expired", status_code=403, media_type="text/plain")
        served = file_response(ext, self.settings.files)
        assert served is not None  # the extension was checked above
        return served

    # --- the generation object ---------------------------------------------

    def _body(self, generation: Generation, state: str | None = None) -> dict[str, Any]:
        """The generation as Luma shows it, or as it would be in ``state``."""
        state = state or generation.state
        assets: dict[str, Any] | None = None
        if state == "completed":
            base = f"{generation.base_url}/assets/{generation.id}"
            assets = {"video": f"{base}.mp4", "image": f"{base}.png", "progress_video": None}
        elif state == "dreaming":
            assets = {"video": None, "image": None, "progress_video": None}
        return {
            "id": generation.id,
            "generation_type": "video",
            "state": state,
            "failure_reason": generation.failure_reason if state == "failed" else None,
            "created_at": generation.created_at,
            "model": generation.request["model"],
            "assets": assets,
            "request": generation.request,
        }

    # --- progression and callbacks ---------------------------------------

    async def _progress(self, generation: Generation) -> None:
        queue, start, run = self.settings.timing.stages(generation.scenario)
        await asyncio.sleep(queue)
        if "unknown" in generation.scenario:
            self._set_state(generation, UNDOCUMENTED_STATE)
        await asyncio.sleep(start)
        late: dict[str, Any] | None = None
        if "out-of-order" in generation.scenario:
            generation.state = "dreaming"
            generation.state_times["dreaming"] = time.monotonic()
            late = self._body(generation)
        else:
            self._set_state(generation, "dreaming")
        if "early" in generation.scenario:
            self._call_back(generation, self._body(generation, "completed"))
        if "never" in generation.scenario:
            return
        await asyncio.sleep(run)
        if "fail" in generation.scenario:
            generation.failure_reason = self.settings.fail_reason
            self._set_state(generation, "failed")
        else:
            generation.completed_at = time.monotonic()
            self._set_state(generation, "completed")
        if late is not None:
            self._call_back(generation, late)

    def _set_state(self, generation: Generation, state: str) -> None:
        generation.state = state
        generation.state_times[state] = time.monotonic()
        states = self.settings.callback_states
        if states is None or state in states:
            self._call_back(generation, self._body(generation))

    def _call_back(self, generation: Generation, body: dict[str, Any]) -> None:
        if generation.callback_url is None or "lost" in generation.scenario:
            return
        # Serialized once: every copy and retry of a delivery is the same bytes.
        payload = json.dumps(body).encode()
        self.spawn(self._deliver(generation, str(body["state"]), payload))

    async def _deliver(self, generation: Generation, state: str, payload: bytes) -> None:
        url = generation.callback_url
        assert url is not None
        # In order: a state's callbacks leave after those of the state before.
        async with generation.delivery_lock:
            for _ in range(max(1, self.settings.callback_copies)):
                for attempt in range(1 + self.settings.callback_retries):
                    if attempt:
                        await asyncio.sleep(self.settings.callback_retry_delay)
                    sent = await self.hooks.post(
                        url,
                        payload,
                        task_id=generation.id,
                        status=state,
                        timeout=self.settings.callback_timeout,
                    )
                    if sent.status_code == 200:
                        break
