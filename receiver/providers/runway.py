"""Runway (api.dev.runwayml.com): image_to_video and text_to_video tasks, polled.

Every request names the API version Runway should speak (``X-Runway-Version``); Runway
refuses requests without it. Runway has no webhooks. A task above the account's
concurrency waits as THROTTLED (read as queued), and a task can be cancelled with
DELETE, after which Runway no longer knows it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import (
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    Progress,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import first_message, is_http_url, text
from receiver.states import Status

API_VERSION = "2024-11-06"
IMAGE_TO_VIDEO = "image_to_video"
TEXT_TO_VIDEO = "text_to_video"
MODES = (IMAGE_TO_VIDEO, TEXT_TO_VIDEO)
STATES = {
    "PENDING": Status.QUEUED,
    "THROTTLED": Status.QUEUED,
    "RUNNING": Status.PROCESSING,
    "SUCCEEDED": Status.COMPLETED,
    "FAILED": Status.FAILED,
    "CANCELLED": Status.CANCELED,
}
MAX_PROMPT = 1000  # UTF-16 code units
MAX_DATA_URI = 5_242_880  # characters
MAX_SEED = 4_294_967_295
# How long a 404 for a task this service deleted still reads as that cancel.
DELETED_MEMORY = 600.0
# The ratio and duration a model is sent when the request names neither (Runway requires
# both for most models); other models get only what the request says.
MODEL_DEFAULTS: dict[str, tuple[str, int]] = {
    "gen4.5": ("1280:720", 5),
    "gen4_turbo": ("1280:720", 5),
    "gen3a_turbo": ("1280:768", 5),
    "veo3.1": ("1280:720", 8),
    "veo3.1_fast": ("1280:720", 8),
    "veo3": ("1280:720", 8),
}
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset({"model", "promptText", "promptImage"})


def mode_for(request: SubmitRequest) -> str:
    if request.mode:
        return request.mode
    return IMAGE_TO_VIDEO if request.images else TEXT_TO_VIDEO


def utf16_length(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2


def image_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if value.startswith("data:"):
        if not value.startswith("data:image/"):
            return "a data: URI must hold an image (data:image/...)"
        if len(value) > MAX_DATA_URI:
            return f"a data: URI may be at most {MAX_DATA_URI} characters"
        return None
    if value.startswith("runway://") or (is_http_url(value) and value.startswith("https://")):
        return None
    return "must be an https URL, a runway:// upload URI or a data:image/ URI"


def observation(task: Mapping[str, Any]) -> Observation:
    """An observation from a task object (``GET /v1/tasks/{id}``)."""
    raw_status = task.get("status")
    word = str(raw_status) if raw_status is not None and raw_status != "" else None
    status = STATES.get(word or "")
    output = task.get("output")
    first = output[0] if isinstance(output, list) and output else None
    task_id = task.get("id")
    return Observation(
        status=status or Status.QUEUED,
        provider_status=word,
        result_url=text(first) if status is Status.COMPLETED else None,
        error=failure(task) if status is Status.FAILED else None,
        raw=task,
        provider_job_id=str(task_id) if task_id is not None and task_id != "" else None,
        known=status is not None,
        # A fraction while RUNNING: 0.42 is 42 %.
        progress=Progress.done(task.get("progress"), whole=1.0),
    )


def failure(task: Mapping[str, Any]) -> str:
    """The human reason and the machine code (``SAFETY.INPUT.TEXT``), both kept."""
    reason, code = text(task.get("failure")), text(task.get("failureCode"))
    if reason and code:
        return f"{reason} ({code})"
    return reason or code or "failed without a reason"


class Runway(HTTPProvider):
    supports_callbacks = False
    # Runway reads data:image/ URIs up to about 5 MB.
    accepts_image_data = True
    supports_cancel = True

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        # Task id -> when this service asked Runway to delete it (see fetch).
        self._deleted: dict[str, float] = {}

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.reveal()}", "X-Runway-Version": API_VERSION}

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        """``{"error": "..."}``, with the fields at fault under ``issues`` when a body
        did not validate."""
        fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        try:
            body = response.json()
        except ValueError:
            return None, fallback
        if not isinstance(body, Mapping):
            return None, fallback
        message = first_message(body, ("error", "message")) or fallback
        issues = body.get("issues")
        if isinstance(issues, list):
            said = [i for i in (_issue(x) for x in issues[:5]) if i]
            if said:
                message = f"{message}: {'; '.join(said)}"[:500]
        return None, message

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        mode = mode_for(request)
        count = len(request.images)
        if mode not in MODES:
            problems["mode"] = f"must be one of {', '.join(MODES)}"
        elif mode == TEXT_TO_VIDEO and count:
            problems["images"] = "text_to_video takes no images; leave mode unset"
        elif mode == IMAGE_TO_VIDEO and not 1 <= count <= 2:
            problems["images"] = f"image_to_video takes 1 image or 2 (first, last), got {count}"
        else:
            said = next((p for p in map(image_problem, request.images) if p), None)
            if said:
                problems["images"] = f"each image {said}"
        prompt = request.prompt or ""
        if mode == TEXT_TO_VIDEO and not prompt.strip():
            problems["prompt"] = "required for text_to_video"
        elif utf16_length(prompt) > MAX_PROMPT:
            problems["prompt"] = f"at most {MAX_PROMPT} characters (UTF-16 code units)"
        problems |= _option_problems(request.options)
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        # callback_url is ignored: Runway has no webhooks, and vidhook passes None anyway.
        self.validate(request)
        body: dict[str, Any] = dict(request.options)
        model = request.model or self.config.default_model
        if model:
            body["model"] = model
            ratio, duration = MODEL_DEFAULTS.get(model, (None, None))
            if ratio is not None and "ratio" not in body:
                body["ratio"] = ratio
            if duration is not None and "duration" not in body:
                body["duration"] = duration
        if request.prompt:
            body["promptText"] = request.prompt
        images = list(request.images)
        if len(images) == 1:
            body["promptImage"] = images[0]
        elif images:
            positions = ("first", "last")
            body["promptImage"] = [
                {"uri": uri, "position": at} for uri, at in zip(images, positions, strict=True)
            ]
        key = self.config.api_key
        try:
            answer = await self.request_json("POST", f"/v1/{mode_for(request)}", key=key, json=body)
        except ProviderError as exc:
            # Runway has no per-minute limit: a 429 on create without Retry-After is the
            # daily generation limit, which asking again today cannot lift.
            if exc.status_code == 429 and exc.retry_after is None:
                exc.transient = False
            raise
        task_id = answer.get("id") if isinstance(answer, Mapping) else None
        if not isinstance(task_id, str) or not task_id:
            # Not transient: asking again would create (and bill) a second task.
            raise ProviderError(self.name, "the submit answer has no task id", transient=False)
        # The answer is only the id; a created task starts PENDING or THROTTLED.
        accepted = Observation(status=Status.QUEUED, raw=answer, provider_job_id=task_id)
        return Submission(task_id, accepted, key.fingerprint)

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The submit answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the provider task id is not known yet", transient=True)
        try:
            task = await self.request_json(
                "GET", _task_path(job.provider_job_id), key=self.key_for(job)
            )
        except ProviderError as exc:
            if exc.status_code == 404 and job.provider_job_id in self._deleted:
                # Runway forgets a task as it deletes it: this poll met the cancel.
                return _canceled(job.provider_job_id)
            raise
        if not isinstance(task, Mapping) or task.get("status") in (None, ""):
            raise ProviderError(self.name, "the task answer has no status", transient=True)
        seen = observation(task)
        if seen.status is Status.COMPLETED and seen.result_url is None:
            raise ProviderError(
                self.name, "the task succeeded but its answer has no output", transient=True
            )
        return seen

    async def cancel(self, job: JobRef) -> Observation | None:
        """DELETE the task, unless it has already ended.

        Runway's DELETE cancels a running task but deletes a finished one, output
        included, so the task is looked at first: an ended task is left alone and its
        end is what the job learns.
        """
        now = await self.fetch(job)
        if now.status.terminal:
            return now
        task_id = job.provider_job_id
        assert task_id is not None  # fetch refused a job without one
        # Noted before asking: the task is gone at Runway before its answer is back here.
        self._note_deleted(task_id)
        try:
            await self.request_json("DELETE", _task_path(task_id), key=self.key_for(job))
        except ProviderError as exc:
            # Success is an empty answer (204), which is not JSON: nothing to read.
            if exc.status_code is None or not 200 <= exc.status_code < 300:
                if exc.status_code is not None:  # refused; one never answered may have done it
                    self._deleted.pop(task_id, None)
                raise
        # Runway forgets a deleted task: this answer is the last word on it.
        return _canceled(task_id)

    def _note_deleted(self, task_id: str) -> None:
        now = time.monotonic()
        for old in [t for t, at in self._deleted.items() if now - at > DELETED_MEMORY]:
            del self._deleted[old]
        self._deleted[task_id] = now


def _canceled(task_id: str) -> Observation:
    return Observation(status=Status.CANCELED, provider_status="CANCELLED", provider_job_id=task_id)


def _task_path(task_id: str) -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}"


def _issue(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        return None
    message = text(value.get("message"))
    path = value.get("path")
    if isinstance(path, list) and path:
        where = ".".join(str(p) for p in path)
        return f"{where}: {message}" if message else where
    return message


def _option_problems(options: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in options:
        if name in RESERVED:
            problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
    ratio = options.get("ratio")
    if ratio is not None and not (isinstance(ratio, str) and _is_ratio(ratio)):
        problems["options.ratio"] = "must be WIDTH:HEIGHT in pixels, such as 1280:720"
    duration = options.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0
    ):
        problems["options.duration"] = "must be a whole number of seconds"
    seed = options.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    ):
        problems["options.seed"] = f"must be an integer from 0 to {MAX_SEED}"
    if "audio" in options and not isinstance(options["audio"], bool):
        problems["options.audio"] = "must be true or false"
    moderation = options.get("contentModeration")
    if moderation is not None and not isinstance(moderation, Mapping):
        example = '{"publicFigureThreshold": "low"}'
        problems["options.contentModeration"] = f"must be an object such as {example}"
    return problems


def _is_ratio(value: str) -> bool:
    width, sep, height = value.partition(":")
    return bool(sep) and width.isdigit() and height.isdigit()
