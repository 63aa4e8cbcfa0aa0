"""A fake kvid (``/ai/generation``): async jobs that are polled, never called back.

Shapes follow the kvid docs: every answer is ``{success, data}``, a job goes queued ->
processing -> completed | failed, and the video URL and credits come from the result
endpoint. The docs do not show an error body; this fake answers
``{success: false, message, error}`` with the HTTP status, or with HTTP 200 when
``errors_with_200`` is set, to exercise both readings an adapter must accept.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, scenario_of
from receiver.sandbox.media import file_response

MODELS = ("v1", "v2", "v3")
RESOLUTIONS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
VIDEO_TYPES = ("text-to-video", "image-to-video")
# "429", "500" and "policy" refuse the submit itself; the others shape the job's course.
MARKERS = ("fail", "slow", "unknown", "never", "429", "500", "policy")
# Undocumented status word that [unknown] jobs report before processing.
UNKNOWN_STATUS = "waiting"
FAIL_MESSAGE = "Video generation failed: the output was blocked by the safety checker"
POLICY_MESSAGE = "Prompt rejected: the content violates the kvid content policy"
_ERROR_NAMES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDIT",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
}
# Credits are not in the docs beyond one example (v2 at 720p: 54).
_CREDITS = {"480p": 36, "720p": 54, "1080p": 108}
_MODEL_FACTOR = {"v1": 0.5, "v2": 1.0, "v3": 2.0}
Endpoint = Callable[[Request], Awaitable[Response]]


class KvidRefusal(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class KvidJob:
    job_id: str
    key: str  # jobs belong to the key (the account) that created them
    video_type: str
    params: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    created_at: str
    status: str = "queued"
    error: str | None = None


def _job_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    suffix = "".join(secrets.choice(alphabet) for _ in range(6))
    return f"vid_{time.time_ns() // 1_000_000}_{suffix}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise KvidRefusal(400, message)


def _validate(video_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """The documented fields of a submit body, with the documented defaults."""

    def get(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    p: dict[str, Any] = {"prompt": get("prompt", "")}
    _require(isinstance(p["prompt"], str) and bool(p["prompt"].strip()), "prompt is required")
    p["model"] = get("model", "v2")
    _require(p["model"] in MODELS, f"model must be one of {', '.join(MODELS)}")
    p["resolution"] = get("resolution", "720p")
    _require(p["resolution"] in RESOLUTIONS, f"resolution must be one of {', '.join(RESOLUTIONS)}")
    if video_type == "image-to-video":
        p["image_url"] = url = body.get("image_url")
        _require(_is_https_url(url), "image_url is required and must be an https URL")
    p["seed"] = seed = body.get("seed")
    _require(seed is None or type(seed) is int, "seed must be an integer")
    p["num_inference_steps"] = steps = body.get("num_inference_steps")
    steps_ok = steps is None or (type(steps) is int and steps >= 1)
    _require(steps_ok, "num_inference_steps must be a positive integer")
    for name, default in (("enable_safety_checker", True), ("enable_prompt_expansion", False)):
        p[name] = get(name, default)
        _require(isinstance(p[name], bool), f"{name} must be a boolean")
    return p


def _is_https_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme == "https" and bool(url.host)


class KvidFake(FakeProvider):
    prefix = "kvid"
    tasks: dict[str, KvidJob]

    def __init__(
        self, settings: FakeSettings | None = None, *, errors_with_200: bool = False
    ) -> None:
        self.errors_with_200 = errors_with_200
        super().__init__(settings)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(
                "/ai/generation/{video_type}/generate-async",
                self._guarded(self._submit),
                methods=["POST"],
            ),
            Route("/ai/generation/status", self._guarded(self._status), methods=["GET"]),
            Route("/ai/generation/result", self._guarded(self._result), methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        body = {"success": False, "message": message, "error": _ERROR_NAMES.get(status, "ERROR")}
        return JSONResponse(body, status_code=status, headers=headers)

    def _guarded(self, handler: Endpoint) -> Endpoint:
        """The handler, with its refusals answered in kvid's error shape."""

        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except KvidRefusal as refusal:
                if self.errors_with_200:
                    name = _ERROR_NAMES.get(refusal.status, "ERROR")
                    body = {"success": False, "message": refusal.message, "error": name}
                    return JSONResponse(body | {"code": refusal.status})
                return self.error_response(refusal.status, refusal.message, refusal.headers)
            return response

        return endpoint

    # --- HTTP endpoints ---------------------------------------------------

    def _authenticate(self, request: Request) -> str:
        key = request.headers.get("api-key", "").strip()
        if not self.key_allowed(key):
            raise KvidRefusal(401, "Invalid or missing API key")
        return key

    async def _submit(self, request: Request) -> Response:
        video_type: str = request.path_params["video_type"]
        if video_type not in VIDEO_TYPES:
            raise KvidRefusal(404, "Not found")
        key = self._authenticate(request)
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise KvidRefusal(400, "Request body must be JSON") from None
        if not isinstance(body, dict):
            raise KvidRefusal(400, "Request body must be a JSON object")
        scenario = scenario_of(body.get("prompt"), MARKERS)
        if "429" in scenario:
            retry = {"Retry-After": f"{self.settings.faults.retry_after:g}"}
            raise KvidRefusal(429, "Too many requests", retry)
        if "500" in scenario:
            raise KvidRefusal(500, "Internal server error")
        params = _validate(video_type, body)
        if "policy" in scenario:
            raise KvidRefusal(400, POLICY_MESSAGE)
        job = KvidJob(
            job_id=_job_id(),
            key=key,
            video_type=video_type,
            params=params,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{request.scope['root_path']}",
            created_at=_now(),
        )
        self.tasks[job.job_id] = job
        request.state.task_id = job.job_id
        self.spawn(self._progress(job))
        data = {
            "job_id": job.job_id,
            "status": job.status,
            "message": "Job submitted",
            "estimated_time": "30s",
            "video_type": video_type,
        }
        return JSONResponse({"success": True, "data": data})

    def _find(self, request: Request) -> KvidJob:
        key = self._authenticate(request)
        job_id = request.query_params.get("jobId", "")
        request.state.task_id = job_id or None
        if not job_id:
            raise KvidRefusal(400, "jobId is required")
        job = self.tasks.get(job_id)
        if job is None or job.key != key:
            raise KvidRefusal(404, "Job not found")
        return job

    async def _status(self, request: Request) -> Response:
        job = self._find(request)
        data: dict[str, Any] = {
            "job_id": job.job_id,
            "status": job.status,
            "video_type": job.video_type,
            "prompt": job.params["prompt"],
            "created_at": job.created_at,
        }
        if job.error is not None:
            data["error"] = job.error
        return JSONResponse({"success": True, "data": data})

    async def _result(self, request: Request) -> Response:
        job = self._find(request)
        if job.status == "failed":
            raise KvidRefusal(400, f"Job failed: {job.error}")
        if job.status != "completed":
            raise KvidRefusal(400, "Job is not completed yet")
        width, height = RESOLUTIONS[job.params["resolution"]]
        data = {
            "job_id": job.job_id,
            "status": "completed",
            "result_url": f"{job.base_url}/files/{job.job_id}.mp4",
            "prompt": job.params["prompt"],
            "width": width,
            "height": height,
            "type": "video/mp4",
            "used_credit": self._credits(job),
            "created_at": job.created_at,
        }
        return JSONResponse({"success": True, "data": data})

    async def _file(self, request: Request) -> Response:
        job_id = request.path_params["name"].removesuffix(".mp4")
        job = self.tasks.get(job_id)
        request.state.task_id = None if job is None else job.job_id
        if job is None or job.status != "completed":
            return Response("not found", status_code=404, media_type="text/plain")
        return file_response("mp4", self.settings.files) or Response(status_code=404)

    @staticmethod
    def _credits(job: KvidJob) -> int:
        return round(_CREDITS[job.params["resolution"]] * _MODEL_FACTOR[job.params["model"]])

    # --- progression --------------------------------------------------------

    async def _progress(self, job: KvidJob) -> None:
        queue_delay, start_delay, run_time = self.settings.timing.stages(job.scenario)
        await asyncio.sleep(queue_delay)
        if "unknown" in job.scenario:
            self._set(job, UNKNOWN_STATUS)
        await asyncio.sleep(start_delay)
        self._set(job, "processing")
        if "never" in job.scenario:
            return
        await asyncio.sleep(run_time)
        if "fail" in job.scenario:
            self._set(job, "failed", FAIL_MESSAGE)
        else:
            self._set(job, "completed")

    @staticmethod
    def _set(job: KvidJob, status: str, error: str | None = None) -> None:
        job.status, job.error = status, error
