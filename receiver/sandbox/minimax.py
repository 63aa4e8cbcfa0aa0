"""A fake MiniMax video API (``/v1/video_generation``) for the demo, development and tests.

Shapes follow MiniMax's docs: every answer carries ``base_resp: {status_code,
status_msg}``, errors included, with HTTP 200. A create that names a ``callback_url``
first POSTs ``{"challenge": ...}`` there and goes on only if the same challenge comes
back within 3 s. A task goes Preparing -> Queueing -> Processing -> Success (with a
``file_id``) or Fail; ``/v1/files/retrieve`` turns the file_id into a download URL that
expires after 9 hours (the fake serves the file, and refuses it once expired). Each
status change from Processing on is POSTed to the callback URL, unsigned, as the query
answer with the status in lower case (``processing``, ``success``, ``failed``).

What the docs leave open is a setting: errors with a fitting HTTP status instead of
200 (a rate limit is then a 429 with Retry-After), the status as the query spells it in
callbacks, callback retries, what a failed challenge does, where a failed task's reason
is, whether a backup download URL is given. Prompt markers select misbehaviour:
``[fail]``, ``[slow]``, ``[unknown]``, ``[never]``, ``[429]``, ``[500]``, ``[policy]``,
and for callbacks ``[lost]``, ``[duplicate]`` and ``[early]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, bearer_key, scenario_of
from receiver.sandbox.hooks import CallbackSender, RecordedCallback
from receiver.sandbox.media import file_response, sample_video

__all__ = ["MiniMaxFake", "MiniMaxFakeSettings", "RecordedCallback"]

HAILUO = "MiniMax-Hailuo-02"
SUBJECT_MODEL = "S2V-01"
TEXT_MODELS = ("T2V-01-Director", "T2V-01")
IMAGE_MODELS = ("I2V-01-Director", "I2V-01-live", "I2V-01")
MODELS = (HAILUO, *TEXT_MODELS, *IMAGE_MODELS, SUBJECT_MODEL)
MARKERS = (
    "fail", "slow", "unknown", "never", "429", "500", "policy", "lost", "duplicate", "early",
)  # fmt: skip
# Not in MiniMax's vocabulary; [unknown] tasks report it between Queueing and Processing.
UNDOCUMENTED_STATUS = "Suspended"
# How the documented callbacks word the statuses they report.
CALLBACK_WORDS = {"Processing": "processing", "Success": "success", "Fail": "failed"}
QUEUED = ("Preparing", "Queueing")
DOWNLOAD_TTL = 9 * 3600.0
SIZES = {"512P": (912, 512), "768P": (1366, 768), "1080P": (1920, 1080)}
# base_resp codes, and the HTTP status of each where errors use one (a setting).
OK, UNKNOWN, RATE_LIMIT, LOGIN_FAILED, NO_BALANCE = 0, 1000, 1002, 1004, 1008
INTERNAL, SENSITIVE_PROMPT, INVALID_PARAMS, INVALID_KEY = 1024, 1026, 2013, 2049
HTTP_STATUS = {
    UNKNOWN: 500, RATE_LIMIT: 429, LOGIN_FAILED: 401, NO_BALANCE: 402, INTERNAL: 500,
    SENSITIVE_PROMPT: 400, INVALID_PARAMS: 400, INVALID_KEY: 401, 1027: 400, 1033: 503,
}  # fmt: skip
CODE_FOR_HTTP = {429: RATE_LIMIT, 401: LOGIN_FAILED, 402: NO_BALANCE, 400: INVALID_PARAMS}
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class MiniMaxFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    # False: every error is an HTTP 200 with its code in base_resp, as documented;
    # True: the HTTP status fits the code (a rate limit is a 429 with Retry-After).
    http_errors: bool = False
    retry_after: int = 1  # the Retry-After of a 429 when http_errors
    requests_per_minute: int | None = None  # None: no limit
    challenge_timeout: float = 3.0
    # What a callback URL that fails the challenge does: "refuse" the create (2013), or
    # "ignore" it and send the task's callbacks nowhere.
    failed_challenge: str = "refuse"
    # "lower": processing/success/failed as the docs list; "query": as the query spells
    # them (Processing/Success/Fail).
    callback_words: str = "lower"
    callback_retry_delays: tuple[float, ...] = ()  # undocumented: none by default
    callback_timeout: float = 5.0
    # "base_resp": a failed task's query answer carries the reason as its base_resp;
    # "none": base_resp says success and no reason is given.
    fail_reason_in: str = "base_resp"
    fail_code: int = 1027
    fail_message: str = "output video sensitive"
    download_ttl: float = DOWNLOAD_TTL
    download_url: bool = True
    backup_download_url: bool = True


class MiniMaxError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Challenge(NamedTuple):
    url: str
    passed: bool
    seconds: float
    status_code: int | None


@dataclass
class Task:
    task_id: str
    key: str  # the API key that created it
    params: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    callback_url: str | None
    status: str = "Preparing"
    file_id: str = ""
    finished_at: float | None = None  # time.time()
    status_times: dict[str, float] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _digits(count: int) -> str:
    """An id as MiniMax's: a number of ``count`` digits, as a string."""
    return str(secrets.randbelow(9 * 10 ** (count - 1)) + 10 ** (count - 1))


def _is_http_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)


def _is_image(value: object) -> bool:
    return _is_http_url(value) or (isinstance(value, str) and value.startswith("data:image/"))


def _require(ok: bool, detail: str) -> None:
    if not ok:
        raise MiniMaxError(INVALID_PARAMS, f"invalid params, {detail}")


def _validate(body: dict[str, Any]) -> dict[str, Any]:
    """The documented create fields; 2013 naming the first bad one."""
    model = body.get("model")
    _require(model in MODELS, f"model must be one of {', '.join(MODELS)}")
    prompt = body.get("prompt", "")
    _require(isinstance(prompt, str) and len(prompt) <= 2000, "prompt: at most 2000 characters")
    first, last = body.get("first_frame_image"), body.get("last_frame_image")
    subjects = body.get("subject_reference")
    for name, image in (("first_frame_image", first), ("last_frame_image", last)):
        _require(image is None or _is_image(image), f"{name} must be a URL or a data URI")
    if model in TEXT_MODELS:
        _require(bool(prompt), f"{model} needs a prompt")
    if model in IMAGE_MODELS:
        _require(first is not None, f"{model} needs first_frame_image")
    if model == SUBJECT_MODEL:
        subject = subjects[0] if isinstance(subjects, list) and len(subjects) == 1 else None
        images = subject.get("image") if isinstance(subject, dict) else None
        ok = isinstance(images, list) and len(images) == 1 and _is_image(images[0])
        _require(ok, 'subject_reference: one {"type": "character", "image": [url]}')
    else:
        _require(subjects is None, f"{model} takes no subject_reference")
    _require(last is None or model == HAILUO, f"last_frame_image needs {HAILUO}")
    _require(bool(prompt) or first is not None, "a prompt or first_frame_image is required")
    resolution = body.get("resolution", "768P" if model == HAILUO else "720P")
    allowed = ("512P", "768P", "1080P") if model == HAILUO else ("720P",)
    _require(resolution in allowed, f"resolution must be one of {', '.join(allowed)}")
    duration = body.get("duration", 6)
    lengths = (6, 10) if model == HAILUO and resolution != "1080P" else (6,)
    _require(duration in lengths and not isinstance(duration, bool), "duration")
    for name in ("prompt_optimizer", "fast_pretreatment", "aigc_watermark"):
        _require(isinstance(body.get(name, False), bool), f"{name} must be a boolean")
    url = body.get("callback_url")
    _require(url is None or _is_http_url(url), "callback_url must be an http(s) URL")
    return {**body, "resolution": resolution, "duration": duration}


class MiniMaxFake(FakeProvider):
    prefix = "minimax"
    settings: MiniMaxFakeSettings
    tasks: dict[str, Task]

    def __init__(self, settings: MiniMaxFakeSettings | None = None) -> None:
        self.hooks = CallbackSender()
        self.challenges: list[Challenge] = []
        self.files: dict[str, Task] = {}
        self._secret = secrets.token_bytes(16)
        self._recent: list[float] = []
        super().__init__(settings or MiniMaxFakeSettings())

    @property
    def callbacks(self) -> list[RecordedCallback]:
        return self.hooks.sent

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/video_generation", self._guard(self._create), methods=["POST"]),
            Route("/v1/query/video_generation", self._guard(self._query), methods=["GET"]),
            Route("/v1/files/retrieve", self._guard(self._retrieve), methods=["GET"]),
            Route("/download/{route}/{name}", self._download, methods=["GET"]),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        code = CODE_FOR_HTTP.get(status, UNKNOWN if status >= 500 else INVALID_PARAMS)
        return self._error(code, message, headers)

    def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        body = {"base_resp": {"status_code": code, "status_msg": message}}
        if not self.settings.http_errors:
            # MiniMax documents no Retry-After: a 200 carries none.
            return JSONResponse(body)
        return JSONResponse(body, status_code=HTTP_STATUS.get(code, 400), headers=headers)

    def _rate_limited(self, message: str) -> Response:
        retry = {"Retry-After": str(self.settings.retry_after)}
        return self._error(RATE_LIMIT, message, retry)

    async def aclose(self) -> None:
        await super().aclose()
        await self.hooks.aclose()

    def _guard(self, handler: Handler) -> Handler:
        """The key and the rate limit first; a MiniMaxError answers in MiniMax's shape."""

        async def guarded(request: Request) -> Response:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                return self._error(LOGIN_FAILED, "login fail: please carry the API secret key")
            if not self.key_allowed(bearer_key(request)):
                return self._error(INVALID_KEY, "invalid api key")
            if self._over_limit():
                return self._rate_limited("rate limit exceeded(RPM)")
            try:
                return await handler(request)
            except MiniMaxError as exc:
                if exc.code == RATE_LIMIT:
                    return self._rate_limited(exc.message)
                return self._error(exc.code, exc.message)

        return guarded

    def _over_limit(self) -> bool:
        limit = self.settings.requests_per_minute
        if limit is None:
            return False
        now = time.monotonic()
        self._recent = [t for t in self._recent if now - t < 60]
        if len(self._recent) >= limit:
            return True
        self._recent.append(now)
        return False

    # --- HTTP endpoints ---------------------------------------------------

    async def _create(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise MiniMaxError(INVALID_PARAMS, "invalid params, the body is not JSON") from None
        if not isinstance(body, dict):
            raise MiniMaxError(INVALID_PARAMS, "invalid params, the body must be an object")
        scenario = scenario_of(body.get("prompt"), MARKERS)
        if "429" in scenario:
            raise MiniMaxError(RATE_LIMIT, "rate limit exceeded(RPM)")
        if "500" in scenario:
            raise MiniMaxError(INTERNAL, "internal error")
        params = _validate(body)
        if "policy" in scenario:
            raise MiniMaxError(SENSITIVE_PROMPT, "input new_sensitive")
        callback_url = params.get("callback_url")
        if callback_url is not None and not await self._challenge(callback_url):
            if self.settings.failed_challenge == "refuse":
                raise MiniMaxError(INVALID_PARAMS, "invalid params, callback_url check failed")
            callback_url = None
        root = request.scope.get("root_path", "")
        task = Task(
            task_id=_digits(15),
            key=bearer_key(request),
            params=params,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
            callback_url=callback_url,
        )
        task.status_times[task.status] = time.monotonic()
        self.tasks[task.task_id] = task
        request.state.task_id = task.task_id
        task.runner = self.spawn(self._progress(task))
        return JSONResponse({"task_id": task.task_id, "base_resp": _success()})

    async def _challenge(self, url: str) -> bool:
        """Whether the callback URL echoes a fresh challenge in time."""
        challenge = secrets.token_urlsafe(24)
        body = json.dumps({"challenge": challenge}).encode()
        started = time.monotonic()
        sent = await self.hooks.post(
            url, body, task_id="", status="challenge", timeout=self.settings.challenge_timeout
        )
        try:
            echoed = json.loads(sent.answer).get("challenge") == challenge
        except (ValueError, AttributeError):
            echoed = False
        passed = sent.status_code == 200 and echoed
        self.challenges.append(Challenge(url, passed, time.monotonic() - started, sent.status_code))
        return passed

    async def _query(self, request: Request) -> Response:
        task_id = request.query_params.get("task_id", "")
        request.state.task_id = task_id or None
        task = self.tasks.get(task_id)
        if task is None or task.key != bearer_key(request):
            raise MiniMaxError(INVALID_PARAMS, "invalid params, task not found")
        return JSONResponse(self._report(task))

    async def _retrieve(self, request: Request) -> Response:
        file_id = request.query_params.get("file_id", "")
        task = self.files.get(file_id)
        request.state.task_id = None if task is None else task.task_id
        if task is None or task.key != bearer_key(request):
            raise MiniMaxError(INVALID_PARAMS, "invalid params, file not found")
        # Whole seconds, as in a signed URL; rounded up, so that it lives the whole ttl.
        expires = math.ceil(time.time() + self.settings.download_ttl)
        file: dict[str, Any] = {
            "file_id": int(file_id),
            "bytes": len(sample_video(self.settings.files.video_bytes)),
            "created_at": int(task.finished_at or time.time()),
            "filename": "output.mp4",
            "purpose": "video_generation",
        }
        if self.settings.download_url:
            file["download_url"] = self._signed(task, "main", expires)
        if self.settings.backup_download_url:
            file["backup_download_url"] = self._signed(task, "backup", expires)
        return JSONResponse({"file": file, "base_resp": _success()})

    def _signed(self, task: Task, route: str, expires: int) -> str:
        query = f"Expires={expires}&Signature={self._signature(task.file_id, expires)}"
        return f"{task.base_url}/download/{route}/{task.file_id}.mp4?{query}"

    def _signature(self, file_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{file_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    async def _download(self, request: Request) -> Response:
        file_id, _, ext = request.path_params["name"].partition(".")
        task = self.files.get(file_id)
        request.state.task_id = None if task is None else task.task_id
        try:
            expires = int(request.query_params.get("Expires", ""))
        except ValueError:
            expires = 0
        signature = request.query_params.get("Signature", "")
        if task is None or ext != "mp4" or request.path_params["route"] not in ("main", "backup"):
            return Response("NoSuchKey", status_code=404, media_type="text/plain")
        if not hmac.compare_digest(signature, self._signature(file_id, expires)):
            return Response("AccessDenied", status_code=403, media_type="text/plain")
        if time.time() > expires:
            return Response("AccessDenied: Request has expired", status_code=403,
                            media_type="text/plain")  # fmt: skip
        served = file_response("mp4", self.settings.files)
        assert served is not None
        return served

    # --- answers ------------------------------------------------------------

    def _report(self, task: Task, status: str | None = None) -> dict[str, Any]:
        """The task as the query shows it, or as it would be in ``status``."""
        status = status or task.status
        report: dict[str, Any] = {"task_id": task.task_id, "status": status, "file_id": ""}
        base = _success()
        if status == "Success":
            report["file_id"] = task.file_id or _digits(15)
            width, height = SIZES.get(task.params["resolution"], (1280, 720))
            report |= {"video_width": width, "video_height": height}
        elif status == "Fail" and self.settings.fail_reason_in == "base_resp":
            base = {
                "status_code": self.settings.fail_code,
                "status_msg": self.settings.fail_message,
            }
        report["base_resp"] = base
        return report

    # --- progression and callbacks ---------------------------------------

    async def _progress(self, task: Task) -> None:
        queue, start, run = self.settings.timing.stages(task.scenario)
        await asyncio.sleep(queue / 2)
        self._set_status(task, "Queueing")
        await asyncio.sleep(queue / 2)
        if "unknown" in task.scenario:
            self._set_status(task, UNDOCUMENTED_STATUS)
        await asyncio.sleep(start)
        self._set_status(task, "Processing")
        if "early" in task.scenario:
            self._call_back(task, self._report(task, "Success"))
        if "never" in task.scenario:
            return
        await asyncio.sleep(run)
        task.finished_at = time.time()
        if "fail" in task.scenario:
            self._set_status(task, "Fail")
        else:
            task.file_id = _digits(15)
            self.files[task.file_id] = task
            self._set_status(task, "Success")

    def _set_status(self, task: Task, status: str) -> None:
        task.status = status
        task.status_times[status] = time.monotonic()
        if status not in QUEUED:
            self._call_back(task, self._report(task))

    def _call_back(self, task: Task, report: dict[str, Any]) -> None:
        if task.callback_url is None or "lost" in task.scenario:
            return
        word = str(report["status"])
        if self.settings.callback_words == "lower":
            word = CALLBACK_WORDS.get(word, word.lower())
        # Serialized once: every retry of a delivery is the same bytes.
        payload = json.dumps({**report, "status": word}).encode()
        self.spawn(self._deliver(task, word, payload))

    async def _deliver(self, task: Task, status: str, payload: bytes) -> None:
        url = task.callback_url
        assert url is not None
        async with task.delivery_lock:
            for delay in (0.0, *self.settings.callback_retry_delays):
                await asyncio.sleep(delay)
                timeout = self.settings.callback_timeout
                sent = await self.hooks.post(
                    url, payload, task_id=task.task_id, status=status, timeout=timeout
                )
                if "duplicate" in task.scenario:
                    await self.hooks.post(
                        url, payload, task_id=task.task_id, status=status, timeout=timeout
                    )
                if sent.status_code == 200:
                    return


def _success() -> dict[str, Any]:
    return {"status_code": OK, "status_msg": "success"}
