"""A fake Runway (``/v1``): tasks polled by id, throttled past the account's concurrency.

Shapes follow Runway's API reference and its Python SDK: every request must carry
``X-Runway-Version: 2024-11-06``; a create answers ``{"id"}``; a task goes THROTTLED (while
the account's concurrency is taken) -> PENDING -> RUNNING (with ``progress``) ->
SUCCEEDED (``output``) | FAILED (``failure``, ``failureCode``); DELETE cancels a running
task or deletes a finished one, and either way the task is not found again. Errors are
``{"error": "..."}``. What the docs leave open is a setting (the status code of a DELETE).

Markers in the prompt: ``[fail]`` (FAILED at the output's moderation), ``[policy]``
(FAILED at once on the input's), ``[slow]``, ``[unknown]``, ``[never]``, and refusals of
the creation: ``[429]`` (the daily limit) and ``[500]``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
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
from receiver.sandbox.media import file_response

API_VERSION = "2024-11-06"
# model -> (ratios, durations or None for "an integer from 2 to 10", prompt required)
_GEN4 = ("1280:720", "720:1280", "1104:832", "960:960", "832:1104", "1584:672")
_VEO = ("1280:720", "720:1280", "1080:1920", "1920:1080")
IMAGE_MODELS: dict[str, tuple[tuple[str, ...], tuple[int, ...] | None, bool]] = {
    "gen4.5": (_GEN4, None, True),
    "gen4_turbo": (_GEN4, (5, 10), False),
    "gen3a_turbo": (("1280:768", "768:1280"), (5, 10), False),
    "veo3.1": (_VEO, (4, 6, 8), False),
    "veo3.1_fast": (_VEO, (4, 6, 8), False),
    "veo3": (_VEO, (8,), False),
}
TEXT_MODELS = {
    name: (*IMAGE_MODELS[name][:2], True) for name in ("gen4.5", "veo3.1", "veo3.1_fast", "veo3")
}
MARKERS = ("fail", "policy", "slow", "unknown", "never", "429", "500")
# What [unknown] tasks report while they wait: not one of the documented statuses.
UNDOCUMENTED_STATUS = "ASSIGNED"
FAIL_MESSAGE = "The output did not pass our content moderation."
FAIL_CODE = "SAFETY.OUTPUT.VIDEO"
POLICY_MESSAGE = "The input text did not pass our content moderation."
POLICY_CODE = "SAFETY.INPUT.TEXT"
DAILY_LIMIT_MESSAGE = "You have exceeded the daily generation limit for this model."
MAX_PROMPT = 1000  # UTF-16 code units
MAX_DATA_URI = 5_242_880
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class RunwayFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    concurrency: int = 2  # tasks of one key PENDING or RUNNING at once; others THROTTLED
    daily_limit: int | None = None  # creations per key before 429; None: no limit
    # Unconfirmed: the docs show no status for a DELETE, and the SDK reads no body.
    delete_status: int = 204


class RunwayRefusal(Exception):
    def __init__(self, status: int, message: str, issues: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.issues = status, message, issues


@dataclass
class Task:
    id: str
    key: str
    params: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    created_at: str
    status: str = "THROTTLED"
    running_since: float | None = None
    run_time: float = 0.0
    failure: str | None = None
    failure_code: str | None = None
    runner: asyncio.Task[None] | None = field(default=None, repr=False)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _issue(path: str, message: str) -> RunwayRefusal:
    return RunwayRefusal(
        400, "Validation of body failed", [{"path": path.split("."), "message": message}]
    )


def _is_image(value: object) -> bool:
    if not isinstance(value, str):
        return False
    if value.startswith("data:image/"):
        return len(value) <= MAX_DATA_URI
    if value.startswith("runway://"):
        return True
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return False
    return url.scheme == "https" and bool(url.host) and len(value) <= 2048


def _validate(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    models = IMAGE_MODELS if endpoint == "image_to_video" else TEXT_MODELS
    model = body.get("model")
    if model not in models:
        raise _issue("model", f"must be one of {', '.join(models)}")
    ratios, durations, prompt_required = models[model]
    p: dict[str, Any] = {"model": model}
    prompt = body.get("promptText")
    if prompt is not None or prompt_required:
        units = len(prompt.encode("utf-16-le")) // 2 if isinstance(prompt, str) else 0
        if not isinstance(prompt, str) or not prompt or units > MAX_PROMPT:
            raise _issue("promptText", f"must be a non-empty string of at most {MAX_PROMPT}")
        p["promptText"] = prompt
    if endpoint == "image_to_video":
        p["promptImage"] = image = body.get("promptImage")
        if isinstance(image, list):
            positions = [i.get("position") if isinstance(i, dict) else None for i in image]
            ok = 1 <= len(image) <= 2 and set(positions) <= {"first", "last"}
            ok = ok and len(set(positions)) == len(positions)
            ok = ok and all(_is_image(i.get("uri")) for i in image if isinstance(i, dict))
        else:
            ok = _is_image(image)
        if not ok:
            raise _issue("promptImage", "must be an HTTPS URL, a runway:// or data:image/ URI")
    p["ratio"] = ratio = body.get("ratio")
    if ratio not in ratios:
        raise _issue("ratio", f"must be one of {', '.join(ratios)}")
    p["duration"] = duration = body.get("duration", 10 if durations is None else durations[0])
    if isinstance(duration, bool) or not isinstance(duration, int):
        raise _issue("duration", "must be an integer")
    if (durations is None and not 2 <= duration <= 10) or (durations and duration not in durations):
        allowed = "2 to 10" if durations is None else ", ".join(map(str, durations))
        raise _issue("duration", f"must be {allowed}")
    seed = body.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 4_294_967_295
    ):
        raise _issue("seed", "must be an integer from 0 to 4294967295")
    p["seed"] = seed if seed is not None else secrets.randbelow(4_294_967_296)
    return p


class RunwayFake(FakeProvider):
    prefix = "runway"
    settings: RunwayFakeSettings
    tasks: dict[str, Task]

    def __init__(self, settings: RunwayFakeSettings | None = None) -> None:
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}  # (key, concurrency)
        self._created: dict[tuple[str, str], int] = {}  # (key, day) -> creations
        super().__init__(settings or RunwayFakeSettings())

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/{endpoint}", self._guarded(self._create), methods=["POST"]),
            Route("/v1/tasks/{task_id}", self._guarded(self._get), methods=["GET"]),
            Route("/v1/tasks/{task_id}", self._guarded(self._delete), methods=["DELETE"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def _guarded(self, handler: Handler) -> Handler:
        """Check the key and the API version first; answer refusals in Runway's shape."""

        async def endpoint(request: Request) -> Response:
            try:
                if not self.key_allowed(bearer_key(request)):
                    raise RunwayRefusal(401, "Invalid API key.")
                version = request.headers.get("x-runway-version")
                if version is None:
                    raise RunwayRefusal(400, "The X-Runway-Version header is required.")
                if version != API_VERSION:
                    raise RunwayRefusal(400, f"Unsupported X-Runway-Version: {version!r}.")
                return await handler(request)
            except RunwayRefusal as refusal:
                body: dict[str, Any] = {"error": refusal.message}
                if refusal.issues:
                    body["issues"] = refusal.issues
                return JSONResponse(body, status_code=refusal.status)

        return endpoint

    # --- HTTP endpoints -----------------------------------------------------

    async def _create(self, request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        if endpoint not in ("image_to_video", "text_to_video"):
            raise RunwayRefusal(404, "Not found.")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise RunwayRefusal(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise RunwayRefusal(400, "The request body must be a JSON object.")
        scenario = scenario_of(body.get("promptText"), MARKERS)
        key = bearer_key(request)
        if "500" in scenario:
            raise RunwayRefusal(500, "An unexpected error occurred.")
        params = _validate(endpoint, body)
        day = (key, datetime.now(UTC).date().isoformat())
        limit = self.settings.daily_limit
        if "429" in scenario or (limit is not None and self._created.get(day, 0) >= limit):
            raise RunwayRefusal(429, DAILY_LIMIT_MESSAGE)
        self._created[day] = self._created.get(day, 0) + 1
        root = request.scope.get("root_path", "")
        task = Task(
            id=str(uuid.uuid4()),
            key=key,
            params=params,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
            created_at=_now(),
        )
        self.tasks[task.id] = task
        request.state.task_id = task.id
        task.runner = self.spawn(self._progress(task))
        return JSONResponse({"id": task.id})

    def _find(self, request: Request) -> Task:
        task_id = request.path_params["task_id"]
        request.state.task_id = task_id
        task = self.tasks.get(task_id)
        if task is None or task.key != bearer_key(request):
            raise RunwayRefusal(404, "Task not found.")
        return task

    async def _get(self, request: Request) -> Response:
        return JSONResponse(self.task_body(self._find(request)))

    async def _delete(self, request: Request) -> Response:
        task = self._find(request)
        # A running task is cancelled, an ended one deleted: either way it is gone.
        if task.status not in ENDED:
            task.status = "CANCELLED"
            if task.runner is not None:
                task.runner.cancel()
        del self.tasks[task.id]
        return Response(status_code=self.settings.delete_status)

    async def _file(self, request: Request) -> Response:
        task = self.tasks.get(request.path_params["name"].removesuffix(".mp4"))
        request.state.task_id = None if task is None else task.id
        if task is None or task.status != "SUCCEEDED":
            return Response("not found", status_code=404, media_type="text/plain")
        served = file_response("mp4", self.settings.files)
        assert served is not None
        return served

    # --- bodies -------------------------------------------------------------

    def task_body(self, task: Task) -> dict[str, Any]:
        body: dict[str, Any] = {"id": task.id, "status": task.status, "createdAt": task.created_at}
        if task.status == "RUNNING" and task.running_since is not None:
            done = (time.monotonic() - task.running_since) / max(task.run_time, 1e-6)
            body["progress"] = round(min(0.99, done), 2)
        elif task.status == "SUCCEEDED":
            # Output links are signed and short-lived, as Runway's CDN links are.
            token = secrets.token_urlsafe(16)
            body["output"] = [f"{task.base_url}/files/{task.id}.mp4?_jwt={token}"]
        elif task.status == "FAILED":
            body["failure"] = task.failure
            body["failureCode"] = task.failure_code
        return body

    # --- progression --------------------------------------------------------

    async def _progress(self, task: Task) -> None:
        queue, start, run = self.settings.timing.stages(task.scenario)
        if "policy" in task.scenario:
            await asyncio.sleep(queue)
            self._fail(task, POLICY_MESSAGE, POLICY_CODE)
            return
        limit = self.settings.concurrency
        slots = self._slots.setdefault((task.key, limit), asyncio.Semaphore(limit))
        async with slots:
            task.status = "PENDING"
            await asyncio.sleep(queue)
            if "unknown" in task.scenario:
                task.status = UNDOCUMENTED_STATUS
            await asyncio.sleep(start)
            task.status, task.running_since, task.run_time = "RUNNING", time.monotonic(), run
            if "never" in task.scenario:
                await asyncio.Event().wait()  # holds its slot until cancelled
            await asyncio.sleep(run)
            if "fail" in task.scenario:
                self._fail(task, FAIL_MESSAGE, FAIL_CODE)
            else:
                task.status = "SUCCEEDED"

    @staticmethod
    def _fail(task: Task, message: str, code: str) -> None:
        task.status, task.failure, task.failure_code = "FAILED", message, code
