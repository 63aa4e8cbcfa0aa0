"""A fake revid (ai.revidapi.com) for the demo, local development and tests.

Shapes follow the revid docs: a multipart ``POST /v1/video/generate`` answered with
``{job_id, status: "pending", cost, balance_remaining}``, then ``GET /v1/jobs/{job_id}``
answered with ``{status, result, progress}``. The docs show no error body and no failed
job; this fake answers errors as ``{code, error, message}`` (the columns of the docs'
error table) and a failed job as ``{status: "failed", result: null, error: ...}``.
"""

from __future__ import annotations

import asyncio
import email.policy
import re
import secrets
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from http import HTTPStatus
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, bearer_key, scenario_of
from receiver.sandbox.media import file_response

MODELS = (
    "kling-2.5-turbo", "kling-01-video", "kling-3.0", "kling-2.6",
    "veo-3.1", "veo-3.1-fast", "veo-3.1-high",
)  # fmt: skip
# "429", "500" and "policy" refuse the submit; the others shape the job's progress.
MARKERS = ("fail", "slow", "unknown", "429", "500", "policy", "never")
# The "Error" column of the docs' error table.
ERRORS = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Insufficient Funds",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# The first choice is the default.
_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("t2v", "i2v"),
    "aspect_ratio": ("16:9", "9:16", "1:1", "4:3", "3:4"),
    "resolution": ("720p", "480p", "1080p"),
}
_DURATION = re.compile(r"([1-9][0-9]?)s")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
UNKNOWN_STATUS = "waiting"
FAIL_MESSAGE = "Video generation failed: the model provider rejected the request"
POLICY_MESSAGE = "Prompt violates the content policy of the model provider"
STARTING_BALANCE = 1500


class RevidError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Part(NamedTuple):
    filename: str | None  # None for a plain text field
    content_type: str
    content: bytes


@dataclass
class Task:
    job_id: str
    key: str
    params: dict[str, Any]
    image: Part | None
    scenario: frozenset[str]
    base_url: str
    cost: int
    status: str = "pending"
    error: str | None = None
    state_times: dict[str, float] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None


def _bad(message: str) -> RevidError:
    return RevidError(400, message)


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The parts of a multipart/form-data body by field name."""
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise _bad("Invalid payload: Content-Type must be multipart/form-data")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(EmailMessage, policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise _bad("Invalid payload: malformed multipart body")
    parts: dict[str, Part] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(content, bytes):
            parts[name] = Part(part.get_filename(), part.get_content_type(), content)
    return parts


def _text(parts: dict[str, Part], name: str) -> str | None:
    part = parts.get(name)
    if part is None:
        return None
    if part.filename is not None:
        raise _bad(f"Invalid parameter: {name} must be a text field")
    try:
        return part.content.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _bad(f"Invalid parameter: {name} is not UTF-8 text") from None


def validate(parts: dict[str, Part]) -> tuple[dict[str, Any], Part | None]:
    """The documented fields with their defaults, and the uploaded image if any."""
    p: dict[str, Any] = {}
    for name in ("prompt", "model"):
        p[name] = _text(parts, name)
        if not p[name]:
            raise _bad(f"Missing required parameter: {name}")
    if p["model"] not in MODELS:
        raise _bad(f"Invalid model '{p['model']}'; supported: {', '.join(MODELS)}")
    image = parts.get("input_image")
    if image is not None and image.filename is None:
        raise _bad("Invalid file format: input_image must be a file upload")
    if image is not None and not (image.content_type.startswith("image/") and image.content):
        raise _bad("Invalid file format: input_image must be a non-empty image")
    p["img_url"] = img_url = _text(parts, "img_url") or None
    if img_url is not None and not re.match(r"https?://[^/\s]+", img_url):
        raise _bad("Invalid parameter: img_url must be an http(s) URL")
    if image is not None and img_url is not None:
        raise _bad("Provide either input_image or img_url, not both")
    has_image = image is not None or img_url is not None
    p["mode"] = _text(parts, "mode") or ("i2v" if has_image else "t2v")
    for name, choices in _CHOICES.items():
        p[name] = p.get(name) or _text(parts, name) or choices[0]
        if p[name] not in choices:
            raise _bad(f"Invalid parameter: {name} must be one of {', '.join(choices)}")
    if p["mode"] == "i2v" and not has_image:
        raise _bad("Missing required parameter: input_image or img_url for mode i2v")
    if p["mode"] == "t2v" and has_image:
        raise _bad("Invalid parameter: mode t2v takes no image; use i2v")
    p["duration"] = _text(parts, "duration") or "5s"
    if not _DURATION.fullmatch(p["duration"]):
        raise _bad("Invalid parameter: duration must be like 5s or 10s")
    audio = _text(parts, "audio")
    p["audio"] = _BOOLEANS.get((audio or "false").lower())
    if p["audio"] is None:
        raise _bad("Invalid parameter: audio must be true or false")
    p["speed"] = _text(parts, "speed") or None
    p["server_id"] = _text(parts, "server_id") or None
    return p, image


def cost_of(params: dict[str, Any]) -> int:
    # 2 credits a second at 720p: the docs' example charges 10 for a job.
    seconds = int(params["duration"].removesuffix("s"))
    return 2 * seconds * (2 if params["resolution"] == "1080p" else 1)


class RevidFake(FakeProvider):
    """``failure_status`` is the word a failed job reports (the docs do not say which)."""

    prefix = "revid"

    def __init__(
        self,
        settings: FakeSettings | None = None,
        *,
        balance: int = STARTING_BALANCE,
        failure_status: str = "failed",
    ) -> None:
        self.starting_balance = balance
        self.balances: dict[str, int] = {}  # by API key, charged on submit
        self.failure_status = failure_status
        super().__init__(settings)
        self.tasks: dict[str, Task] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/video/generate", self._submit, methods=["POST"]),
            Route("/v1/jobs/{job_id}", self._status, methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        name = ERRORS.get(status) or HTTPStatus(status).phrase
        body = {"code": status, "error": name, "message": message}
        return JSONResponse(body, status_code=status, headers=headers)

    # -- endpoints --

    async def _submit(self, request: Request) -> Response:
        try:
            key = self._authenticate(request)
            parts = parse_multipart(request.headers.get("content-type", ""), await request.body())
            prompt = parts["prompt"].content.decode("utf-8", "replace") if "prompt" in parts else ""
            scenario = scenario_of(prompt, MARKERS)
            if "429" in scenario:
                retry = {"Retry-After": f"{self.settings.faults.retry_after:g}"}
                raise RevidError(429, "Rate limit exceeded (1000 req/min)", retry)
            if "500" in scenario:
                raise RevidError(500, "Internal server error")
            params, image = validate(parts)
            if "policy" in scenario:
                raise _bad(POLICY_MESSAGE)
            cost = cost_of(params)
            balance = self.balances.setdefault(key, self.starting_balance)
            if cost > balance:
                raise RevidError(402, "Not enough credits in your account")
        except RevidError as exc:
            return self.error_response(exc.status, exc.message, exc.headers)
        self.balances[key] = balance - cost
        root = request.scope.get("root_path", "")
        task = Task(
            job_id=f"job_{secrets.randbelow(9 * 10**11) + 10**11}",
            key=key,
            params=params,
            image=image,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
            cost=cost,
        )
        task.state_times[task.status] = time.monotonic()
        self.tasks[task.job_id] = task
        request.state.task_id = task.job_id
        task.runner = self.spawn(self._progress(task))
        body = {"job_id": task.job_id, "status": task.status, "cost": cost}
        return JSONResponse(body | {"balance_remaining": self.balances[key]})

    async def _status(self, request: Request) -> Response:
        job_id: str = request.path_params["job_id"]
        request.state.task_id = job_id
        try:
            self._authenticate(request)
            task = self.tasks.get(job_id)
            if task is None:
                raise RevidError(404, "Job not found")
        except RevidError as exc:
            return self.error_response(exc.status, exc.message, exc.headers)
        return JSONResponse(self.status_body(task))

    async def _file(self, request: Request) -> Response:
        stem, _, ext = request.path_params["name"].rpartition(".")
        task = self.tasks.get(stem)
        request.state.task_id = None if task is None else task.job_id
        if task is None or task.status != "completed" or ext != "mp4":
            return self.error_response(404, "File not found")
        return file_response(ext, self.settings.files) or Response(status_code=404)

    # -- behaviour --

    def _authenticate(self, request: Request) -> str:
        key = bearer_key(request)
        if not self.key_allowed(key):
            raise RevidError(401, "Missing or invalid API key")
        return key

    def status_body(self, task: Task) -> dict[str, Any]:
        result = f"{task.base_url}/files/{task.job_id}.mp4" if task.status == "completed" else None
        body: dict[str, Any] = {"status": task.status, "result": result}
        body["progress"] = self._progress_of(task)
        if task.error is not None:
            body["error"] = task.error
        return body

    def _progress_of(self, task: Task) -> int:
        if task.status == "completed":
            return 100
        started = task.state_times.get("processing")
        if started is None:
            return 0
        running = task.status == "processing"
        ended = time.monotonic() if running else task.state_times[task.status]
        run_time = self.settings.timing.stages(task.scenario)[2]
        # Never 100 before completion: a [never] job sits at 99 for good.
        return min(99, int(100 * (ended - started) / run_time)) if run_time > 0 else 99

    def _set(self, task: Task, status: str, error: str | None = None) -> None:
        task.status, task.error = status, error
        task.state_times[status] = time.monotonic()

    async def _progress(self, task: Task) -> None:
        queue_delay, start_delay, run_time = self.settings.timing.stages(task.scenario)
        await asyncio.sleep(queue_delay)
        if "unknown" in task.scenario:
            self._set(task, UNKNOWN_STATUS)
        await asyncio.sleep(start_delay)
        self._set(task, "processing")
        if "never" in task.scenario:
            return
        await asyncio.sleep(run_time)
        if "fail" in task.scenario:
            self._set(task, self.failure_status, FAIL_MESSAGE)
        else:
            self._set(task, "completed")
