"""A fake Vidu (``/ent/v2``) for the demo, local development and tests.

Request and response shapes follow the public Vidu API docs. Markers in the prompt
(``[fail]``, ``[slow]``, ``[duplicate]``, ...) select misbehaviours that a real
provider shows only occasionally, so the receiver's handling of them can be tested.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.sandbox.media import FileSettings, file_response
from signing import vidu as vidu_signing

MODELS = ("viduq3-turbo", "viduq3-pro", "viduq2", "viduq1")
# "429", "500" and "policy" reject the submit itself; the others shape how the task
# progresses and how its callbacks are delivered.
MARKERS = (
    "fail", "slow", "duplicate", "out-of-order", "lost", "429", "unknown", "500", "policy",
)  # fmt: skip
# endpoint -> (min images, max images, prompt required)
ENDPOINTS: dict[str, tuple[int, int, bool]] = {
    "text2video": (0, 0, True),
    "img2video": (1, 1, False),
    "start-end2video": (2, 2, False),
    "reference2video": (1, 7, True),
}
TERMINAL_STATES = ("success", "failed", "canceled")
CALLBACK_STATES = ("scheduled", "processing", *TERMINAL_STATES)
# The first choice is the default.
_CHOICES: dict[str, tuple[str, ...]] = {
    "aspect_ratio": ("16:9", "9:16", "1:1", "4:3", "3:4"),
    "resolution": ("720p", "360p", "540p", "1080p"),
    "movement_amplitude": ("auto", "small", "medium", "large"),
    "style": ("general", "anime"),
}
_FLAGS = ("bgm", "watermark", "off_peak")
_ECHOED = (
    "model", "style", "prompt", "images", "duration", "seed", "aspect_ratio", "resolution",
    "movement_amplitude", "payload", "off_peak", "watermark",
)  # fmt: skip
_SUBMIT_FIXED: dict[str, Any] = {"cus_priority": 0, "is_rec": False, "wm_position": "unspecified"}
_SUBMIT_FIXED |= {"wm_url": "", "meta_data": "", "client_request_id": ""}
# Every field a submit may carry; Vidu refuses any other with FieldUnwanted.
_KNOWN_FIELDS = frozenset({*_ECHOED, "bgm", "callback_url", "subjects", *_SUBMIT_FIXED})
_SUBJECT_FIELDS = frozenset({"name", "images", "voice_id"})
_MAX_SUBJECT_IMAGES = 3
_MAX_PROMPT, _MAX_PAYLOAD = 2000, 1_048_576


def _numeric_id() -> str:
    return str(secrets.randbelow(9 * 10**17) + 10**17)


def _is_http_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)


@dataclass
class ViduSandboxSettings:
    """Mutable on purpose: tests change fields while the server runs."""

    api_keys: list[str] = field(default_factory=list)  # empty: any non-empty key
    queue_delay: float = 0.2
    start_delay: float = 0.3
    run_time: float = 0.5
    slow_factor: float = 10.0
    callback_state_field: str = "state"
    callback_retries: int = 3
    callback_retry_delay: float = 0.5
    callback_timeout: float = 5.0
    status_outage: bool = False
    rate_limit_submits: int = 0
    retry_after: int = 1
    fail_err_code: str = "AuditSubmitIllegal"
    # How a canceled task reads afterwards. Unconfirmed: Vidu's error names include
    # UserCancelled, so "failed" with that err_code is the default reading; "canceled"
    # plays a Vidu (or proxy) that reports the state directly.
    cancel_state: str = "failed"
    cancel_err_code: str = "UserCancelled"
    # States in which a cancel is accepted (Vidu refuses one for a scheduled task).
    cancellable_states: tuple[str, ...] = ("created", "queueing")
    # The next N requests to /ent/v2 answer 400 OperationInProcess ("try again later").
    operation_in_process: int = 0
    file_ttl: float = 86_400.0
    files: FileSettings = field(default_factory=FileSettings)


class RecordedRequest(NamedTuple):
    time: float
    method: str
    path: str
    status_code: int
    task_id: str | None


class RecordedCallback(NamedTuple):
    time: float
    task_id: str
    state: str
    url: str
    status_code: int | None
    error: str | None


@dataclass
class Task:
    task_id: str
    type: str
    key: str  # the API key that created it; it also signs the task's callbacks
    body: dict[str, Any]
    params: dict[str, Any]
    callback_url: str | None
    scenario: frozenset[str]
    base_url: str
    created_at: str
    credits: int
    creation_id: str = field(default_factory=_numeric_id)
    state: str = "created"
    err_code: str = ""
    state_times: dict[str, float] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None
    held_callback: tuple[str, bytes] | None = None
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ViduError(Exception):
    def __init__(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        # As in the Vidu docs' failed responses: "code" is the HTTP status as an
        # integer, "reason" the error code name.
        body = {"code": self.status, "reason": self.reason, "message": self.message}
        body["metadata"] = {"trace_id": secrets.token_hex(16)}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _require(ok: bool, name: str, detail: str) -> None:
    if not ok:
        raise ViduError(400, "FieldInvalid", f"invalid field: {name} ({detail})")


def _refuse_unwanted(fields: Any, known: frozenset[str], where: str = "") -> None:
    unwanted = sorted(str(name) for name in fields if name not in known)
    if unwanted:
        raise ViduError(400, "FieldUnwanted", f"unwanted field: {where}{unwanted[0]}")


def _validate_subjects(subjects: Any) -> None:
    _require(isinstance(subjects, list) and bool(subjects), "subjects", "must be a list")
    for index, subject in enumerate(subjects):
        where = f"subjects[{index}]"
        _require(isinstance(subject, dict), where, "must be an object")
        _refuse_unwanted(subject, _SUBJECT_FIELDS, f"{where}.")
        name = subject.get("name")
        _require(isinstance(name, str) and bool(name.strip()), f"{where}.name", "required")
        images = subject.get("images")
        fine = isinstance(images, list) and all(isinstance(i, str) and i for i in images)
        count = len(images) if isinstance(images, list) else 0
        in_range = 1 <= count <= _MAX_SUBJECT_IMAGES
        _require(fine and in_range, f"{where}.images", f"1 to {_MAX_SUBJECT_IMAGES} images")


def _validate(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Check a submit body against the documented fields; return them with defaults."""
    min_images, max_images, prompt_required = ENDPOINTS[kind]
    _refuse_unwanted(body, _KNOWN_FIELDS)
    subjects = body.get("subjects")
    if subjects is not None:
        _require(kind == "reference2video", "subjects", "only reference2video takes subjects")
        _validate_subjects(subjects)
        min_images = 0  # the subjects carry the images

    def get(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value  # JSON null counts as absent

    p: dict[str, Any] = {"model": body.get("model")}
    _require(p["model"] in MODELS, "model", f"must be one of {', '.join(MODELS)}")
    p["prompt"] = prompt = get("prompt", "")
    _require(isinstance(prompt, str), "prompt", "must be a string")
    _require(bool(prompt.strip()) or not prompt_required, "prompt", "required")
    _require(len(prompt) <= _MAX_PROMPT, "prompt", f"at most {_MAX_PROMPT} characters")
    p["images"] = images = get("images", [])
    well_formed = isinstance(images, list) and all(isinstance(i, str) and i for i in images)
    _require(well_formed, "images", "must be a list of image URLs or data URIs")
    wanted = str(min_images) if min_images == max_images else f"{min_images} to {max_images}"
    in_range = min_images <= len(images) <= max_images
    _require(in_range, "images", f"{kind} takes {wanted} image(s), got {len(images)}")
    for name, choices in _CHOICES.items():
        p[name] = get(name, choices[0])
        _require(p[name] in choices, name, f"must be one of {', '.join(choices)}")
    if kind != "text2video":
        p["style"] = "general"  # only text2video has styles
    p["duration"] = duration = get("duration", 5)
    _require(type(duration) is int and 1 <= duration <= 16, "duration", "must be 1 to 16")
    seed = get("seed", 0)
    _require(type(seed) is int and seed >= 0, "seed", "must be a non-negative integer")
    p["seed"] = seed or random.randint(1, 2**31 - 1)  # 0 means random, as documented
    for name in _FLAGS:
        p[name] = get(name, False)
        _require(isinstance(p[name], bool), name, "must be a boolean")
    p["payload"] = payload = get("payload", "")
    text_ok = isinstance(payload, str) and len(payload) <= _MAX_PAYLOAD
    _require(text_ok, "payload", f"must be a string of at most {_MAX_PAYLOAD} characters")
    p["callback_url"] = url = body.get("callback_url") or None
    _require(url is None or _is_http_url(url), "callback_url", "must be an http(s) URL")
    return p


def _credits(p: dict[str, Any]) -> int:
    per_second = {"360p": 1, "540p": 1, "720p": 2, "1080p": 4}[p["resolution"]]
    return per_second * int(p["duration"]) * (2 if p["model"] == "viduq3-pro" else 1)


class ViduSandbox:
    """The fake's state and behaviour; ``app`` is the ASGI app to mount (e.g. at /vidu)."""

    def __init__(self, settings: ViduSandboxSettings | None = None) -> None:
        self.settings = settings or ViduSandboxSettings()
        self.tasks: dict[str, Task] = {}
        self.requests: list[RecordedRequest] = []
        self.callbacks: list[RecordedCallback] = []
        self._background: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self.app = self._build_app()

    def _build_app(self) -> Starlette:
        routes = [
            Route("/ent/v2/tasks/{task_id}/creations", self._status, methods=["GET"]),
            Route("/ent/v2/tasks/{task_id}/cancel", self._cancel, methods=["POST"]),
            Route("/ent/v2/{kind}", self._submit, methods=["POST"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.aclose()

        async def on_vidu_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, ViduError)
            return exc.response()

        handlers = {ViduError: on_vidu_error}
        app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
        app.add_middleware(_RecordRequests, sandbox=self)
        app.state.sandbox = self
        return app

    async def aclose(self) -> None:
        """Stop all progressions and callback deliveries (run on app shutdown)."""
        jobs = list(self._background)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- HTTP endpoints ---------------------------------------------------

    def _authenticate(self, request: Request) -> str:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key, allowed = key.strip(), self.settings.api_keys
        if scheme.lower() not in ("token", "bearer") or not key or (allowed and key not in allowed):
            raise ViduError(401, "Unauthorized", "unauthorized")
        return key

    async def _submit(self, request: Request) -> Response:
        kind: str = request.path_params["kind"]
        if kind not in ENDPOINTS:
            raise ViduError(404, "NotFound", "not found")
        key = self._authenticate(request)
        self._busy()
        if self.settings.rate_limit_submits > 0:
            self.settings.rate_limit_submits -= 1
            raise self._too_many_requests()
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise ViduError(400, "BadRequest", "bad request") from None
        if not isinstance(body, dict):
            raise ViduError(400, "BadRequest", "bad request")
        text = body["prompt"] if isinstance(body.get("prompt"), str) else ""
        scenario = frozenset(m for m in MARKERS if f"[{m}]" in text)
        if "429" in scenario:
            raise self._too_many_requests()
        if "500" in scenario:
            raise ViduError(500, "InternalServiceFailure", "internal service failure")
        params = _validate(kind, body)
        if "policy" in scenario:
            raise ViduError(400, "TaskPromptPolicyViolation", "prompt policy violation")
        created_at = datetime.now(UTC).isoformat(timespec="microseconds")
        task = Task(
            task_id=_numeric_id(),
            type=kind,
            key=key,
            body=body,
            params=params,
            callback_url=params["callback_url"],
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{request.scope['root_path']}",
            created_at=created_at.replace("+00:00", "Z"),
            credits=_credits(params),
        )
        task.state_times["created"] = time.monotonic()
        self.tasks[task.task_id] = task
        request.state.vidu_task_id = task.task_id
        task.runner = self._spawn(self._progress(task))
        echoed = {name: params[name] for name in _ECHOED}
        head = {"task_id": task.task_id, "type": kind, "state": task.state}
        tail = {"created_at": task.created_at, "credits": task.credits}
        return JSONResponse(head | echoed | tail | _SUBMIT_FIXED)

    def _too_many_requests(self) -> ViduError:
        headers = {"Retry-After": str(self.settings.retry_after)}
        return ViduError(429, "TooManyRequests", "too many requests", headers)

    def _find(self, request: Request) -> Task:
        task_id: str = request.path_params["task_id"]
        request.state.vidu_task_id = task_id
        task = self.tasks.get(task_id)
        if task is None:
            raise ViduError(404, "TaskNotFound", "task not found")
        return task

    async def _status(self, request: Request) -> Response:
        if self.settings.status_outage:
            raise ViduError(503, "ServiceUnavailable", "service unavailable")
        self._authenticate(request)
        task = self._find(request)
        self._busy()
        return JSONResponse(self._status_body(task))

    async def _cancel(self, request: Request) -> Response:
        self._authenticate(request)
        task = self._find(request)
        self._busy()
        if task.state not in self.settings.cancellable_states:
            # Wording from the Vidu docs' example of a refused cancel.
            raise ViduError(400, "BadRequest", f"task state is {task.state}, can not cancel")
        if task.runner is not None:
            task.runner.cancel()
        s = self.settings
        self._set_state(
            task, s.cancel_state, s.cancel_err_code if s.cancel_state == "failed" else ""
        )
        return JSONResponse({})

    def _busy(self) -> None:
        if self.settings.operation_in_process > 0:
            self.settings.operation_in_process -= 1
            raise ViduError(400, "OperationInProcess", "operation in process, try again later")

    async def _file(self, request: Request) -> Response:
        stem, _, ext = request.path_params["name"].rpartition(".")
        task = self.tasks.get(stem.removesuffix("-wm"))
        request.state.vidu_task_id = None if task is None else task.task_id
        served = file_response(ext, self.settings.files)
        if task is None or task.state != "success" or served is None:
            return Response("not found", status_code=404, media_type="text/plain")
        expires = request.query_params.get("expires", "")
        if not expires.isdigit() or int(expires) < time.time():
            return Response("link expired", status_code=403, media_type="text/plain")
        return served

    def _status_body(self, task: Task, state_field: str = "state") -> dict[str, Any]:
        creations: list[dict[str, str]] = []
        if task.state == "success":
            finished = task.state_times["success"] - time.monotonic() + time.time()
            expires = int(finished + self.settings.file_ttl)
            link = f"{task.base_url}/files/{task.task_id}{{}}?expires={expires}"
            urls = {"url": ".mp4", "cover_url": ".png", "watermarked_url": "-wm.mp4"}
            creations.append(
                {"id": task.creation_id} | {k: link.format(v) for k, v in urls.items()}
            )
        return {
            "id": task.task_id,
            state_field: task.state,
            "err_code": task.err_code,
            # Failed and canceled tasks are refunded.
            "credits": 0 if task.state in ("failed", "canceled") else task.credits,
            "payload": task.params["payload"],
            "bgm": task.params["bgm"],
            "off_peak": task.params["off_peak"],
            "creations": creations,
        }

    # --- progression and callbacks ---------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        job = asyncio.get_running_loop().create_task(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)
        return job

    async def _progress(self, task: Task) -> None:
        s = self.settings
        factor = s.slow_factor if "slow" in task.scenario else 1.0
        await asyncio.sleep(s.queue_delay * factor)
        self._set_state(task, "queueing")
        await asyncio.sleep(s.start_delay * factor)
        if "unknown" in task.scenario:
            # Undocumented, but real Vidu has it (the cancel docs' example quotes it).
            self._set_state(task, "scheduled")
            await asyncio.sleep(s.start_delay * factor)
        self._set_state(task, "processing")
        await asyncio.sleep(s.run_time * factor)
        if "fail" in task.scenario:
            self._set_state(task, "failed", s.fail_err_code)
        else:
            self._set_state(task, "success")

    def _set_state(self, task: Task, state: str, err_code: str = "") -> None:
        task.state, task.err_code = state, err_code
        task.state_times[state] = time.monotonic()
        if state not in CALLBACK_STATES or task.callback_url is None or "lost" in task.scenario:
            return
        # Serialized now: a callback describes the task as it was when the state changed.
        status = self._status_body(task, self.settings.callback_state_field)
        body = json.dumps(status, separators=(",", ":")).encode()
        if "out-of-order" in task.scenario and state == "processing":
            task.held_callback = (state, body)
            return
        terminal = state in TERMINAL_STATES
        self._spawn(self._deliver(task, state, body, retry=terminal))
        if terminal and task.held_callback is not None:
            held_state, held_body = task.held_callback
            task.held_callback = None
            self._spawn(self._deliver(task, held_state, held_body, retry=False))

    async def _deliver(self, task: Task, state: str, body: bytes, *, retry: bool) -> None:
        assert task.callback_url is not None
        # The lock is FIFO, so a task's callbacks leave in the order they were queued
        # even when an earlier one is slow or being retried.
        async with task.delivery_lock:
            attempts = 1 + (self.settings.callback_retries if retry else 0)
            for attempt in range(attempts):
                # Each attempt is signed afresh; a [duplicate] copy reuses the exact
                # headers, so receivers see a true replay they must dedupe.
                headers = vidu_signing.sign(task.key, "POST", task.callback_url)
                headers["Content-Type"] = "application/json"
                ok = await self._post(task, state, body, headers)
                if "duplicate" in task.scenario:
                    ok = await self._post(task, state, body, headers) or ok
                if ok:
                    return
                if attempt + 1 < attempts:
                    await asyncio.sleep(self.settings.callback_retry_delay)

    async def _post(self, task: Task, state: str, body: bytes, headers: dict[str, str]) -> bool:
        url = task.callback_url
        assert url is not None
        self._client = self._client or httpx.AsyncClient()
        status: int | None = None
        error: str | None = None
        try:
            timeout = self.settings.callback_timeout
            response = await self._client.post(url, content=body, headers=headers, timeout=timeout)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        record = (time.monotonic(), task.task_id, state, url, status, error)
        self.callbacks.append(RecordedCallback(*record))
        return status is not None and 200 <= status < 300


class _RecordRequests:
    """Record every request, including those refused before reaching a handler."""

    def __init__(self, app: ASGIApp, sandbox: ViduSandbox) -> None:
        self.app, self.sandbox = app, sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before answering
        # Handlers put the task id in request.state, i.e. this same dict.
        state = scope.setdefault("state", {})

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            record = (time.monotonic(), scope["method"], scope["path"], status)
            self.sandbox.requests.append(RecordedRequest(*record, state.get("vidu_task_id")))
