"""A fake apimodels (``/api/v1/video/generations``) for the demo, development and tests.

Shapes follow the apimodels docs: every answer is ``{code, msg, data}``, tasks go
pending -> processing -> completed or failed, and one unsigned callback is POSTed when a
task ends, retried after 1, 2 and 4 s if the receiver does not answer 2xx. Markers in the
prompt select misbehaviour: ``[fail]``, ``[slow]``, ``[unknown]``, ``[never]``, ``[429]``,
``[500]``, ``[policy]``, and for callbacks ``[lost]``, ``[duplicate]`` and ``[early]``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, bearer_key, scenario_of
from receiver.sandbox.media import file_response

PATH = "/api/v1/video/generations"
# API name -> price in USD per video, from the docs' model table.
MODELS = {
    "grok-video-3": 0.028,
    "grok-video-3-10s": 0.056,
    "grok-video-3-15s": 0.070,
    "veo-3.1-fast": 0.06,
    "veo-3.1": 0.12,
    "kling-motion-control": 0.03,
}
MOTION_MODEL = "kling-motion-control"
# "429", "500" and "policy" refuse the submit; "lost", "duplicate" and "early" shape the
# callbacks; the rest shape how the task progresses.
MARKERS = (
    "fail", "slow", "unknown", "never", "429", "500", "policy", "lost", "duplicate", "early",
)  # fmt: skip
# What the [unknown] marker reports before processing: not in the documented states.
UNDOCUMENTED_STATUS = "waiting"
# The first choice is the default.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "aspect_ratio": ("16:9", "1:1", "9:16", "2:3", "3:2"),
    "size": ("720P", "1080P", "4K"),
    "duration": (5, 8, 10),
}
_MOTION_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("720p", "1080p"),
    "character_orientation": ("video", "image"),
}
Handler = Callable[[Request], Awaitable[Response]]
_ID_ALPHABET = string.ascii_lowercase + string.digits


def _task_id() -> str:
    # The docs show ids like "clxxx...": cuid-style, 25 lowercase characters.
    return "cl" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(23))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)


@dataclass
class ApimodelsFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    # The documented schedule; tests scale it down.
    callback_retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    callback_timeout: float = 10.0
    retry_after: int = 1  # the Retry-After of a [429] submit
    fail_message: str = "Content policy violation"
    # "seed" spells fields task_id/status/videos/error as on the seed page, "live"
    # taskId/state/resultUrls/failMsg as the live docs do.
    field_style: str = "seed"
    # Whether errors come as HTTP 200 with the code only in the envelope; the docs do not
    # say which, so both can be played.
    errors_in_envelope: bool = False
    balance: float | None = None  # USD; None never runs out, else 402 when too low


class ApimodelsError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class RecordedCallback(NamedTuple):
    time: float  # time.monotonic() when the attempt finished
    task_id: str
    status: str
    url: str
    body: bytes
    status_code: int | None
    error: str | None


@dataclass
class Task:
    task_id: str
    key: str  # the API key that created it
    model: str
    params: dict[str, Any]
    callback_url: str | None
    scenario: frozenset[str]
    base_url: str
    created_at: int = field(default_factory=_now_ms)
    status: str = "pending"
    completed_at: int | None = None
    error: str | None = None
    status_times: dict[str, float] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _require(ok: bool, name: str, detail: str) -> None:
    if not ok:
        raise ApimodelsError(400, f"Bad Request - {name}: {detail}")


def _validate(body: dict[str, Any]) -> dict[str, Any]:
    """The documented fields of a submit body, with defaults; 400 naming the first bad one."""

    def get(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    model = body.get("model")
    _require(isinstance(model, str) and bool(model), "model", "is required")
    _require(model in MODELS, "model", f"must be one of {', '.join(MODELS)}")
    p: dict[str, Any] = {"model": model, "prompt": get("prompt", "")}
    _require(isinstance(p["prompt"], str), "prompt", "must be a string")
    if model == MOTION_MODEL:
        for name in ("input_urls", "video_urls"):
            p[name] = urls = body.get(name)
            ok = isinstance(urls, list) and bool(urls) and all(_is_url(u) for u in urls)
            _require(ok, name, "is required: a non-empty list of URLs")
        for name, choices in _MOTION_CHOICES.items():
            p[name] = get(name, choices[0])
            _require(p[name] in choices, name, f"must be one of {', '.join(choices)}")
    else:
        _require(bool(p["prompt"].strip()), "prompt", "is required")
        for name, options in _CHOICES.items():
            p[name] = value = get(name, options[0])
            valid = value in options and not isinstance(value, bool)
            _require(valid, name, f"must be one of {', '.join(map(str, options))}")
        p["images"] = images = get("images", [])
        ok = isinstance(images, list) and all(_is_url(i) for i in images)
        _require(ok, "images", "must be a list of image URLs")
        p["generate_audio"] = get("generate_audio", False)
        _require(isinstance(p["generate_audio"], bool), "generate_audio", "must be a boolean")
    p["callback_url"] = url = body.get("callback_url") or None
    _require(url is None or _is_url(url), "callback_url", "must be an http(s) URL")
    return p


class ApimodelsFake(FakeProvider):
    prefix = "apimodels"
    settings: ApimodelsFakeSettings
    tasks: dict[str, Task]

    def __init__(self, settings: ApimodelsFakeSettings | None = None) -> None:
        self.callbacks: list[RecordedCallback] = []
        self._client: httpx.AsyncClient | None = None
        super().__init__(settings or ApimodelsFakeSettings())

    def routes(self) -> list[BaseRoute]:
        return [
            Route(PATH, self._guard(self._submit), methods=["POST"]),
            Route(PATH, self._guard(self._status), methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        body = {"code": status, "msg": message, "data": None}
        http_status = 200 if self.settings.errors_in_envelope else status
        return JSONResponse(body, status_code=http_status, headers=headers)

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _guard(self, handler: Handler) -> Handler:
        """Check the key first, and answer an ApimodelsError in the provider's shape."""

        async def guarded(request: Request) -> Response:
            try:
                if not self.key_allowed(bearer_key(request)):
                    raise ApimodelsError(401, "Unauthorized - Invalid API key")
                return await handler(request)
            except ApimodelsError as exc:
                return self.error_response(exc.status, exc.message, exc.headers)

        return guarded

    # --- HTTP endpoints ---------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise ApimodelsError(400, "Bad Request - the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApimodelsError(400, "Bad Request - the body must be a JSON object")
        scenario = scenario_of(body.get("prompt"), MARKERS)
        if "429" in scenario:
            retry = {"Retry-After": str(self.settings.retry_after)}
            raise ApimodelsError(429, "Too Many Requests - rate limit exceeded", retry)
        if "500" in scenario:
            raise ApimodelsError(500, "Internal Server Error")
        params = _validate(body)
        if "policy" in scenario:
            raise ApimodelsError(400, "Bad Request - Content policy violation")
        price = MODELS[params["model"]]
        if self.settings.balance is not None:
            if self.settings.balance < price:
                raise ApimodelsError(402, "Payment Required - Insufficient credits")
            self.settings.balance -= price
        root = request.scope.get("root_path", "")
        task = Task(
            task_id=_task_id(),
            key=bearer_key(request),
            model=params["model"],
            params=params,
            callback_url=params["callback_url"],
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
        )
        task.status_times["pending"] = time.monotonic()
        self.tasks[task.task_id] = task
        request.state.task_id = task.task_id
        task.runner = self.spawn(self._progress(task))
        return self._ok(self._data(task, brief=True))

    async def _status(self, request: Request) -> Response:
        query = request.query_params
        task_id = query.get("task_id") or query.get("taskId")
        request.state.task_id = task_id
        if not task_id:
            raise ApimodelsError(400, "Bad Request - task_id is required")
        task = self.tasks.get(task_id)
        if task is None:
            raise ApimodelsError(404, "Not Found - Task ID not found")
        return self._ok(self._data(task))

    async def _file(self, request: Request) -> Response:
        stem, _, ext = request.path_params["name"].rpartition(".")
        task = self.tasks.get(stem)
        request.state.task_id = None if task is None else task.task_id
        if task is None or task.status != "completed" or ext != "mp4":
            return Response("Not Found", status_code=404, media_type="text/plain")
        return file_response(ext, self.settings.files) or Response(status_code=404)

    # --- answers ------------------------------------------------------------

    @staticmethod
    def _ok(data: dict[str, Any]) -> JSONResponse:
        return JSONResponse({"code": 200, "msg": "success", "data": data})

    def _data(
        self, task: Task, status: str | None = None, *, brief: bool = False
    ) -> dict[str, Any]:
        """The task as the status endpoint shows it, or as it would be in ``status``."""
        status = status or task.status
        live = self.settings.field_style == "live"
        data: dict[str, Any] = {
            "taskId" if live else "task_id": task.task_id,
            "state" if live else "status": status,
            "model": f"cloud-video/{task.model}",
        }
        if brief:
            return data
        if status == "failed":
            data["failMsg" if live else "error"] = task.error or self.settings.fail_message
            return data
        if status == "completed":
            url = f"{task.base_url}/files/{task.task_id}.mp4"
            data["resultUrls" if live else "videos"] = [url]
        data["created_at"] = task.created_at
        if status == "completed":
            data["completed_at"] = task.completed_at or _now_ms()
        return data

    # --- progression and callbacks ---------------------------------------

    async def _progress(self, task: Task) -> None:
        queue, start, run = self.settings.timing.stages(task.scenario)
        await asyncio.sleep(queue)
        if "unknown" in task.scenario:
            self._set_status(task, UNDOCUMENTED_STATUS)
        await asyncio.sleep(start)
        self._set_status(task, "processing")
        if "early" in task.scenario:
            # A webhook that claims success before the provider's own status says so.
            self._send_callback(task, self._data(task, "completed"))
        if "never" in task.scenario:
            return
        await asyncio.sleep(run)
        if "fail" in task.scenario:
            task.error = self.settings.fail_message
            self._set_status(task, "failed")
        else:
            task.completed_at = _now_ms()
            self._set_status(task, "completed")
        self._send_callback(task, self._data(task))

    def _set_status(self, task: Task, status: str) -> None:
        task.status = status
        task.status_times[status] = time.monotonic()

    def _send_callback(self, task: Task, data: dict[str, Any]) -> None:
        if task.callback_url is None or "lost" in task.scenario:
            return
        # Serialized once, so every retry of a delivery is byte-identical.
        body = json.dumps({"code": 200, "msg": "success", "data": data}).encode()
        status = str(data.get("status", data.get("state")))
        self.spawn(self._deliver(task, status, body))

    async def _deliver(self, task: Task, status: str, body: bytes) -> None:
        # FIFO lock: an [early] callback and the real one leave in the order queued.
        async with task.delivery_lock:
            for delay in (0.0, *self.settings.callback_retry_delays):
                await asyncio.sleep(delay)
                ok = await self._post(task, status, body)
                if "duplicate" in task.scenario:
                    ok = await self._post(task, status, body) or ok
                if ok:
                    return

    async def _post(self, task: Task, status: str, body: bytes) -> bool:
        url = task.callback_url
        assert url is not None
        self._client = self._client or httpx.AsyncClient()
        code: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                url,
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=self.settings.callback_timeout,
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        record = RecordedCallback(time.monotonic(), task.task_id, status, url, body, code, error)
        self.callbacks.append(record)
        return code is not None and 200 <= code < 300
