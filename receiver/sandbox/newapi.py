"""A fake new-api gateway (``/v1/video/generations``) for the demo, development and tests.

Shapes follow the gateway's code and docs: a 200 ``{id, task_id, object: "video",
status: "queued", progress: 0, ...}`` on submit (201 with ``status: "processing"``, as the
seed page shows, on a setting), the task envelope ``{code: "success", message, data:
{...}}`` at ``/v1/video/generations/{task_id}``, the OpenAI-style video object at
``/v1/videos/{id}`` for the same tasks, the file itself at ``/v1/videos/{id}/content``
(behind the key), and errors as ``{code, message, param, type}`` (under ``error`` where
the gateway's auth and routing layer answers).

Tasks of a Gemini or Vertex (Veo) model answer as those channels do: ``{task_id, status:
queued|processing|succeeded|failed, url, format, metadata, error}``, enveloped or bare (a
setting), with the video at the gateway's own content route and no ``metadata.url`` in
the video object. Prompt markers select misbehaviours: ``[fail]``, ``[slow]``,
``[unknown]``, ``[never]``, and ``[429]``, ``[500]``, ``[policy]`` which refuse the
submit itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, bearer_key, scenario_of
from receiver.sandbox.media import file_response

# Channels of these models answer in the Gemini/Vertex shape and have no direct link.
GEMINI_MODELS = ("veo-3.0-generate-001", "veo-3.1-generate-preview")
MODELS = (
    "kling-v1", "kling-v2-master", "jimeng_vgfm_t2v_l20", "jimeng_vgfm_i2v_l20", "viduq1",
    *GEMINI_MODELS,
)  # fmt: skip
MARKERS = ("fail", "slow", "unknown", "never", "429", "500", "policy")
# Not in the documented vocabulary; [unknown] tasks report it before IN_PROGRESS.
UNDOCUMENTED_STATUS = "WAITING"
# new-api's own progress figures for each task status.
PROGRESS = {"NOT_START": "0%", "SUBMITTED": "10%", "QUEUED": "20%", "IN_PROGRESS": "30%"}
PROGRESS |= {"SUCCESS": "100%", "FAILURE": "100%"}
# How /v1/videos/{id} renders a task status; other words are passed on lower-cased.
VIDEO_STATUS = {
    "NOT_START": "queued", "SUBMITTED": "queued", "QUEUED": "queued", "UNKNOWN": "unknown",
    "IN_PROGRESS": "in_progress", "SUCCESS": "completed", "FAILURE": "failed",
}  # fmt: skip
# How a Gemini/Vertex channel words a task status.
GEMINI_STATUS = {
    "NOT_START": "queued", "SUBMITTED": "queued", "QUEUED": "queued",
    "IN_PROGRESS": "processing", "SUCCESS": "succeeded", "FAILURE": "failed",
}  # fmt: skip
# The channel type number new-api records as a video task's platform.
_PLATFORMS = {"kling": "50", "jimeng": "51", "vidu": "52", "veo": "24"}
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "fps": (int,), "height": (int,), "width": (int,), "n": (int,), "seed": (int,),
    "size": (str,), "image": (str,), "images": (list,), "metadata": (dict,),
    "response_format": (str,), "user": (str,),
}  # fmt: skip
_POSITIVE = ("fps", "height", "width", "n")
_SIZE = re.compile(r"\d+x\d+")
_ID_ALPHABET = string.ascii_letters + string.digits
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class NewApiFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    models: tuple[str, ...] = MODELS
    # False: /v1/video/generations/{id} answers 404, as on gateways that only serve
    # the OpenAI-style /v1/videos/{id}.
    task_route: bool = True
    # Older gateways put the video URL in fail_reason on success and have no result_url.
    url_in_fail_reason: bool = False
    # True: submits answer 403 insufficient_user_quota.
    quota_exhausted: bool = False
    fail_reason: str = "upstream task failed: the generated video did not pass moderation"
    retry_after: int = 1
    # True: the seed page's 201 with status "processing"; False: the real gateway's 200.
    seed_submit: bool = False
    # False: Gemini/Vertex channels answer the task route without the {code, data} envelope.
    gemini_envelope: bool = True
    # True: /v1/videos/{id} answers 501, as for a platform without a converter to it.
    no_video_converter: bool = False


@dataclass
class GatewayTask:
    task_id: str
    row_id: int
    key: str  # the token that created it
    body: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    quota: int
    duration: int | None
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "SUBMITTED"
    fail_reason: str = ""
    result_url: str = ""
    start_time: int = 0
    finish_time: int = 0
    updated_at: int = field(default_factory=lambda: int(time.time()))
    status_times: dict[str, float] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None

    @property
    def model(self) -> str:
        return str(self.body["model"])

    @property
    def gemini(self) -> bool:
        return self.model in GEMINI_MODELS


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str = "",
        type: str = "new_api_error",
        nested: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type, self.nested, self.headers = type, nested, dict(headers or {})

    def response(self) -> JSONResponse:
        error = {"code": self.code, "message": self.message, "param": self.param}
        error["type"] = self.type
        body = {"error": error} if self.nested else error
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class TaskNotExist(GatewayError):
    """As the gateway answers a task it cannot find: ``{code, message, data: null}``."""

    def __init__(self) -> None:
        super().__init__(400, "task_not_exist", code="task_not_exist")

    def response(self) -> JSONResponse:
        body = {"code": "task_not_exist", "message": "task_not_exist", "data": None}
        return JSONResponse(body, status_code=400)


def _duration(value: Any) -> int | None:
    """How the gateway reads duration: an integer, or a string holding one; anything
    else is dropped without a word (and the model's default length used)."""
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _check(ok: bool, name: str, detail: str) -> None:
    if not ok:
        raise GatewayError(
            400,
            f"invalid field {name}: {detail}",
            code="invalid_request",
            param=name,
            type="invalid_request_error",
        )


class NewApiFake(FakeProvider):
    prefix = "newapi"
    settings: NewApiFakeSettings

    def __init__(self, settings: NewApiFakeSettings | None = None) -> None:
        super().__init__(settings or NewApiFakeSettings())
        self._rows = 0

        async def on_gateway_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, GatewayError)
            return exc.response()

        self.app.add_exception_handler(GatewayError, on_gateway_error)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/video/generations", self._submit, methods=["POST"]),
            Route("/v1/video/generations/{task_id}", self._task_status, methods=["GET"]),
            Route("/v1/videos/{task_id}", self._video_status, methods=["GET"]),
            Route("/v1/videos/{task_id}/content", self._content, methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
            # The gateway answers unknown routes in its OpenAI-style error, not plain text.
            Route("/{path:path}", self._not_found, methods=_ALL_METHODS),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        return GatewayError(status, message, headers=headers).response()

    def task(self, task_id: str) -> GatewayTask | None:
        task = self.tasks.get(task_id)
        return task if isinstance(task, GatewayTask) else None

    # --- HTTP endpoints ---------------------------------------------------

    def _authenticate(self, request: Request) -> str:
        key = bearer_key(request)
        if not self.key_allowed(key):
            # The gateway's auth middleware answers in the OpenAI error shape.
            raise GatewayError(401, "invalid token", nested=True)
        return key

    async def _submit(self, request: Request) -> Response:
        key = self._authenticate(request)
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise GatewayError(
                400, "invalid request body", code="invalid_request", type="invalid_request_error"
            )
        scenario = scenario_of(body.get("prompt"), MARKERS)
        if "429" in scenario:
            retry = {"Retry-After": str(self.settings.retry_after)}
            message = "rate limit reached: too many requests, try again later"
            raise GatewayError(429, message, code="rate_limit_exceeded", headers=retry)
        if "500" in scenario:
            message = "upstream request failed: do_request_failed"
            raise GatewayError(500, message, code="do_request_failed", type="upstream_error")
        if self.settings.quota_exhausted:
            raise GatewayError(403, "user quota is not enough", code="insufficient_user_quota")
        self._validate(body)
        if "policy" in scenario:
            message = "sensitive words detected: the prompt violates the content policy"
            raise GatewayError(400, message, code="sensitive_words_detected")
        self._rows += 1
        task = GatewayTask(
            task_id="task_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(32)),
            row_id=self._rows,
            key=key,
            body=body,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{request.scope['root_path']}",
            quota=50_000 * (_duration(body.get("duration")) or 5),
            duration=_duration(body.get("duration")),
        )
        task.status_times[task.status] = time.monotonic()
        self.tasks[task.task_id] = task
        request.state.task_id = task.task_id
        task.runner = self.spawn(self._progress(task))
        accepted: dict[str, Any] = {"id": task.task_id, "object": "video", "model": task.model}
        accepted |= {"created_at": task.created_at, "task_id": task.task_id}
        if self.settings.seed_submit:
            return JSONResponse(accepted | {"status": "processing"}, status_code=201)
        return JSONResponse(accepted | {"status": "queued", "progress": 0})

    def _validate(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        _check(isinstance(model, str) and bool(model), "model", "required")
        _check(model in self.settings.models, "model", f"no channel serves model {model}")
        prompt = body.get("prompt")
        _check(isinstance(prompt, str) and bool(prompt.strip()), "prompt", "required")
        for name, types in _FIELD_TYPES.items():
            value = body.get(name)
            if value is None:
                continue
            wanted = " or ".join(t.__name__ for t in types)
            _check(isinstance(value, types) and not isinstance(value, bool), name, wanted)
            if name in _POSITIVE:
                _check(value > 0, name, "must be positive")
        size = body.get("size")
        _check(size is None or bool(_SIZE.fullmatch(size)), "size", "must be WIDTHxHEIGHT")
        _check(body.get("image") != "", "image", "must be a URL or base64 data")
        images = body.get("images") or []
        good = all(isinstance(image, str) and image for image in images)
        _check(good, "images", "must be URLs or base64 data")

    def _find(self, request: Request) -> GatewayTask:
        task_id: str = request.path_params["task_id"]
        request.state.task_id = task_id
        task = self.task(task_id)
        if task is None:
            raise TaskNotExist()
        return task

    async def _task_status(self, request: Request) -> Response:
        if not self.settings.task_route:
            request.state.task_id = request.path_params["task_id"]
            return await self._not_found(request)
        self._authenticate(request)
        task = self._find(request)
        if not task.gemini:
            return JSONResponse({"code": "success", "message": "", "data": self._task_dto(task)})
        answer = self._gemini_task(task)
        if self.settings.gemini_envelope:
            return JSONResponse({"code": "success", "message": "", "data": answer})
        return JSONResponse(answer)

    async def _video_status(self, request: Request) -> Response:
        self._authenticate(request)
        task = self._find(request)
        if self.settings.no_video_converter:
            message = f"the platform of model {task.model} has no conversion to a video object"
            raise GatewayError(501, message, code="convert_not_supported", nested=True)
        return JSONResponse(self._video_object(task))

    async def _content(self, request: Request) -> Response:
        key = self._authenticate(request)
        task = self._find(request)
        if key != task.key:
            raise TaskNotExist()  # the gateway finds tasks per user: another's is unknown
        if task.status != "SUCCESS":
            raise GatewayError(400, "the task has not succeeded", code="task_not_completed")
        served = file_response("mp4", self.settings.files)
        assert served is not None
        return served

    async def _file(self, request: Request) -> Response:
        stem, _, ext = str(request.path_params["name"]).rpartition(".")
        task = self.task(stem)
        request.state.task_id = None if task is None else task.task_id
        if task is None or task.status != "SUCCESS" or ext != "mp4":
            return await self._not_found(request)
        return file_response(ext, self.settings.files) or Response(status_code=404)

    async def _not_found(self, request: Request) -> Response:
        message = f"Invalid URL ({request.method} {request.url.path})"
        error = GatewayError(404, message, code="", type="invalid_request_error", nested=True)
        return error.response()

    # --- the two status shapes --------------------------------------------

    def _task_dto(self, task: GatewayTask) -> dict[str, Any]:
        platform = next((n for p, n in _PLATFORMS.items() if task.model.startswith(p)), "0")
        dto: dict[str, Any] = {
            "id": task.row_id,
            "created_at": task.created_at,
            "updated_at": task.updated_at,
            "task_id": task.task_id,
            "platform": platform,
            "user_id": 1,
            "group": "default",
            "channel_id": 1,
            "quota": task.quota,
            "action": "generate" if task.body.get("image") else "textGenerate",
            "status": task.status,
            "fail_reason": task.fail_reason,
            "submit_time": task.created_at,
            "start_time": task.start_time,
            "finish_time": task.finish_time,
            "progress": PROGRESS.get(task.status, "20%"),
            "properties": {
                "input": task.body["prompt"],
                "origin_model_name": task.model,
                "upstream_model_name": task.model,
            },
            "data": {},
        }
        if task.result_url:
            if self.settings.url_in_fail_reason:
                dto["fail_reason"] = task.result_url
            else:
                dto["result_url"] = task.result_url
        return dto

    def _video_object(self, task: GatewayTask) -> dict[str, Any]:
        video: dict[str, Any] = {
            "id": task.task_id,
            "task_id": task.task_id,
            "object": "video",
            "model": task.model,
            "status": VIDEO_STATUS.get(task.status, task.status.lower()),
            "progress": int(PROGRESS.get(task.status, "20%").rstrip("%")),
            "created_at": task.created_at,
        }
        if task.finish_time:
            video["completed_at"] = task.finish_time
        if task.duration is not None:
            video["seconds"] = str(task.duration)
        if task.body.get("size"):
            video["size"] = task.body["size"]
        if task.status == "FAILURE":
            video["error"] = {"message": task.fail_reason, "code": "task_failed"}
        if task.result_url and not task.gemini:
            video["metadata"] = {"url": task.result_url}
        return video

    def _gemini_task(self, task: GatewayTask) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "task_id": task.task_id,
            "status": GEMINI_STATUS.get(task.status, task.status.lower()),
        }
        if task.result_url:
            answer["url"] = task.result_url
            answer["format"] = "mp4"
            answer["metadata"] = {"duration": float(task.duration or 8), "fps": 24,
                                  "width": 1280, "height": 720, "seed": 0}  # fmt: skip
        if task.status == "FAILURE":
            answer["error"] = {"code": 400, "message": task.fail_reason}
        return answer

    # --- progression ------------------------------------------------------

    async def _progress(self, task: GatewayTask) -> None:
        queue_delay, start_delay, run_time = self.settings.timing.stages(task.scenario)
        await asyncio.sleep(queue_delay)
        self._set_status(task, "QUEUED")
        await asyncio.sleep(start_delay)
        if "unknown" in task.scenario:
            self._set_status(task, UNDOCUMENTED_STATUS)
            await asyncio.sleep(start_delay)
        self._set_status(task, "IN_PROGRESS")
        task.start_time = int(time.time())
        if "never" in task.scenario:
            return
        await asyncio.sleep(run_time)
        task.finish_time = int(time.time())
        if "fail" in task.scenario:
            task.fail_reason = self.settings.fail_reason
            self._set_status(task, "FAILURE")
        elif task.gemini:
            task.result_url = f"{task.base_url}/v1/videos/{task.task_id}/content"
            self._set_status(task, "SUCCESS")
        else:
            task.result_url = f"{task.base_url}/files/{task.task_id}.mp4"
            self._set_status(task, "SUCCESS")

    def _set_status(self, task: GatewayTask, status: str) -> None:
        task.status = status
        task.updated_at = int(time.time())
        task.status_times[status] = time.monotonic()
