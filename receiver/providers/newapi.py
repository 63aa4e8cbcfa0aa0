"""new-api style gateways (new-api, one-api forks) relaying Kling, Jimeng, Vidu and others.

Poll only: the gateway polls its upstream itself (about every 15 s) and has no webhooks.
Two status endpoints exist for the same task: the task envelope at
``/v1/video/generations/{task_id}`` and, on newer gateways, an OpenAI-style video object
at ``/v1/videos/{id}``. Gateways differ in which one they serve, so ``fetch`` tries the
one that last worked and falls back to the other on 404 (the route is missing) or 501
(this task's platform has no converter to the video object).

What a task endpoint answers depends on the channel behind it: most give new-api's task
(``NOT_START`` ... ``SUCCESS``, the video in ``result_url``), Gemini and Vertex (Veo)
channels give ``{task_id, status: queued|processing|succeeded|failed, url, format,
metadata, error}``, with or without the ``{code, data}`` envelope. One reader takes all
of them. Where the upstream gives no link of its own (Gemini, Sora), the result lives at
the gateway's ``/v1/videos/{task_id}/content``, which only the gateway's key opens:
``download`` adds it for that origin and no other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeGuard
from urllib.parse import quote

import httpx

from receiver.config import ProviderConfig
from receiver.providers.base import (
    Download,
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    Progress,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import number, text
from receiver.states import Status

# The task envelope's words (upper case in new-api's TaskStatus).
TASK_STATES = {
    "NOT_START": Status.QUEUED,
    "SUBMITTED": Status.QUEUED,
    "QUEUED": Status.QUEUED,
    "IN_PROGRESS": Status.PROCESSING,
    "SUCCESS": Status.COMPLETED,
    "FAILURE": Status.FAILED,
    "UNKNOWN": Status.QUEUED,
}
# The words of the OpenAI-style video object and of the Gemini/Vertex task answer.
# "unknown" is how new-api renders its UNKNOWN task status in the video object.
VIDEO_STATES = {
    "queued": Status.QUEUED,
    "in_progress": Status.PROCESSING,
    "processing": Status.PROCESSING,
    "completed": Status.COMPLETED,
    "succeeded": Status.COMPLETED,
    "failed": Status.FAILED,
    "unknown": Status.QUEUED,
}
TASK_PATH = "/video/generations/{id}"
VIDEO_PATH = "/videos/{id}"
CONTENT_PATH = "/videos/{id}/content"
MODEL_REQUIRED = "required for new-api gateways; set default_model or pass model"
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset({"model", "prompt", "image", "images", "callback_url"})
# The gateway reads duration as an integer, or a string holding one; anything else it
# silently drops (its default length is then used).
_WHOLE_SECONDS = re.compile(r"[0-9]+")
# Documented submit fields whose type the gateway checks; a wrong one is refused here
# instead of costing a round trip (or, on lenient forks, being silently dropped).
_WHOLE, _INTEGER, _TEXT, _OBJECT = "whole seconds", "an integer", "a string", "an object"
OPTION_TYPES = {
    "duration": _WHOLE,
    "fps": _INTEGER,
    "height": _INTEGER,
    "width": _INTEGER,
    "seed": _INTEGER,
    "n": _INTEGER,
    "size": _TEXT,
    "response_format": _TEXT,
    "user": _TEXT,
    "metadata": _OBJECT,
}
_SIZE = re.compile(r"\d+x\d+")
# The task envelope's "code" when the lookup worked.
_SUCCESS = "success"
# Error codes that mean the task will never be found, whatever HTTP status carries them.
_GONE = frozenset({"task_not_exist"})


def observation(body: Mapping[str, Any]) -> Observation:
    """An observation from a status answer, enveloped (``{code, data}``) or bare."""
    data = body.get("data")
    return task_observation(data if isinstance(data, Mapping) else body)


def task_observation(task: Mapping[str, Any]) -> Observation:
    """From any of the task shapes: new-api's task, the OpenAI-style video object, or the
    Gemini/Vertex answer. Their fields do not collide, so one reading serves all."""
    word = _word(task.get("status"))
    status = _status(word)
    reason = text(task.get("fail_reason"))
    metadata = task.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    result_url = text(task.get("result_url")) or text(task.get("url")) or text(metadata.get("url"))
    if status is Status.COMPLETED and result_url is None and _is_url(reason):
        # Older gateways store the video URL in fail_reason and have no result_url.
        result_url = reason
    quota = task.get("quota")
    # new-api's own task row has an integer "id"; the task id is always a string.
    task_id = text(task.get("task_id")) or text(task.get("id"))
    return Observation(
        status=status or Status.QUEUED,
        provider_status=word,
        result_url=result_url if status is Status.COMPLETED else None,
        error=(_failure(task, reason) or "failed without a reason")
        if status is Status.FAILED
        else None,
        # The gateway's own billing units for the task, not upstream credits.
        credits=number(quota) if _is_number(quota) else None,
        raw=task,
        provider_job_id=task_id,
        known=status is not None,
        # "30%" in new-api's task, 30 in the OpenAI-style video object.
        progress=Progress.done(task.get("progress")),
    )


video_observation = task_observation


def _status(word: str | None) -> Status | None:
    if word is None:
        return None
    return TASK_STATES.get(word.upper()) or VIDEO_STATES.get(word.lower())


def _failure(task: Mapping[str, Any], reason: str | None) -> str | None:
    if reason and not _is_url(reason):
        return reason
    error = task.get("error")
    if isinstance(error, Mapping):
        return text(error.get("message")) or text(error.get("code"))
    return text(error)


def _word(value: Any) -> str | None:
    return str(value) if value is not None and value != "" else None


def _is_url(value: str | None) -> bool:
    return value is not None and value.startswith(("https://", "http://"))


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _option_problem(name: str, value: Any) -> str | None:
    wanted = OPTION_TYPES.get(name)
    if wanted == _WHOLE and whole_seconds(value) is None:
        return "must be a whole number of seconds (or a string holding one), more than 0"
    if wanted == _INTEGER and not (isinstance(value, int) and not isinstance(value, bool)):
        return "must be an integer"
    if wanted == _TEXT and not isinstance(value, str):
        return "must be a string"
    if wanted == _OBJECT and not isinstance(value, Mapping):
        return "must be an object of vendor-specific parameters"
    if name == "size" and isinstance(value, str) and not _SIZE.fullmatch(value):
        return "must be WIDTHxHEIGHT, e.g. 1920x1080"
    if name == "n" and value != 1 and isinstance(value, int):
        return "vidhook tracks one video per job; leave n unset or 1"
    return None


def whole_seconds(value: Any) -> int | None:
    """``duration`` as the gateway wants it: 5, 5.0 and "5" are 5; 5.5 is refused."""
    if isinstance(value, str) and _WHOLE_SECONDS.fullmatch(value.strip()):
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def origin(url: str) -> tuple[str, str, int | None] | None:
    """Scheme, host and port (default ports made explicit), or None for a bad URL."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    default = {"http": 80, "https": 443}.get(parsed.scheme)
    return parsed.scheme, parsed.host, parsed.port or default


class NewApi(HTTPProvider):
    supports_callbacks = False
    # Gateways pass an image string (URL or base64) through to the upstream.
    accepts_image_data = True
    # Status endpoints in the order first tried; a subclass (or an instance, before its
    # first fetch) may put VIDEO_PATH first for gateways known to serve only that one.
    status_paths: tuple[str, ...] = (TASK_PATH, VIDEO_PATH)

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        self._working_path: str | None = None

    def _url_path(self, suffix: str) -> str:
        # base_url is the gateway root; tolerate the ".../v1" that OpenAI clients want.
        root = self.config.base_url.rstrip("/")
        return suffix if root.endswith("/v1") else f"/v1{suffix}"

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        """``{code, message, param, type}``, at the top level or under ``error``."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            inner = body.get("error")
            if isinstance(inner, Mapping):
                body = inner
            elif isinstance(inner, str) and inner and not body.get("message"):
                body = {"message": inner}
            names = (body.get(k) for k in ("code", "type"))
            code = next((n for n in names if isinstance(n, str) and n and not n.isdigit()), None)
            message = body.get("message")
            if isinstance(message, str) and message:
                return code, message[:500]
            if code:
                return code, code
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        if not (request.model or self.config.default_model):
            problems["model"] = MODEL_REQUIRED
        if not request.prompt or not request.prompt.strip():
            problems["prompt"] = "required by new-api gateways"
        if not all(isinstance(image, str) and image for image in request.images):
            problems["images"] = "each image must be a URL or base64 data"
        if request.mode:
            problems["mode"] = "new-api gateways have no modes; leave it unset"
        for name, value in request.options.items():
            if name in RESERVED:
                problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
            elif (problem := _option_problem(name, value)) is not None:
                problems[f"options.{name}"] = problem
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        # callback_url is ignored: the gateway cannot call back, so vidhook polls.
        self.validate(request)
        body: dict[str, Any] = dict(request.options)
        body["model"] = request.model or self.config.default_model
        body["prompt"] = request.prompt
        if "duration" in body:
            body["duration"] = whole_seconds(body["duration"])
        if len(request.images) == 1:
            body["image"] = request.images[0]
        elif request.images:
            body["images"] = list(request.images)
        key = self.config.api_key
        data = await self.request_json(
            "POST", self._url_path("/video/generations"), key=key, json=body
        )
        if not isinstance(data, Mapping):
            raise ProviderError(self.name, "the submit response is not an object", transient=False)
        task_id = data.get("task_id") or data.get("id")
        if not task_id:
            # Not transient: asking again would create (and bill) a second task.
            raise ProviderError(self.name, "the submit response has no task_id", transient=False)
        # Every accepted task is reported "processing" here, while the status endpoint
        # then says NOT_START/SUBMITTED/QUEUED; reading it as queued keeps the first poll
        # from looking like a step backwards.
        accepted = Observation(
            status=Status.QUEUED,
            provider_status=_word(data.get("status")),
            raw=data,
            provider_job_id=str(task_id),
            progress=Progress.done(data.get("progress")),
        )
        return Submission(str(task_id), accepted, key.fingerprint)

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The submit response may still be on its way; ask again later.
            raise ProviderError(self.name, "the provider task id is not known yet", transient=True)
        key = self.key_for(job)
        task_id = quote(job.provider_job_id, safe="")
        paths = list(self.status_paths)
        if self._working_path in paths:
            paths.remove(self._working_path)
            paths.insert(0, self._working_path)
        unconverted: ProviderError | None = None
        last = ProviderError(self.name, "no status endpoint to ask", transient=False)
        for path in paths:
            try:
                data = await self.request_json(
                    "GET", self._url_path(path.format(id=task_id)), key=key
                )
            except ProviderError as exc:
                # 404: this gateway lacks the route (an unknown task is 400). 501: the
                # task's platform has no converter to this shape; the other may serve it.
                if exc.status_code == 404:
                    last = exc
                    continue
                if exc.status_code == 501:
                    unconverted = last = exc
                    continue
                raise
            self._working_path = path
            observed = self._read_status(data)
            if observed.status is Status.COMPLETED and observed.result_url is None:
                # No link of the upstream's own: the gateway serves the file itself.
                content = self._url_path(CONTENT_PATH.format(id=task_id))
                observed = replace(observed, result_url=f"{self.config.base_url}{content}")
            return observed
        if unconverted is not None:
            raise ProviderError(
                self.name,
                "the gateway cannot report this task: /v1/videos answers 501 for its "
                "platform and /v1/video/generations is not served",
                transient=False,
                status_code=501,
                code=unconverted.code,
            )
        raise last

    def download(self, job: JobRef, url: str) -> Download:
        # The content route needs the gateway's key; a link elsewhere (an upstream CDN)
        # must never receive it.
        gateway, target = origin(self.config.base_url), origin(url)
        if target is None or gateway is None:
            return Download(url)
        if target == gateway:
            return Download(url, self.auth_headers(self.key_for(job)))
        task_id = job.provider_job_id
        if task_id and httpx.URL(url).path.endswith(f"/v1{CONTENT_PATH.format(id=task_id)}"):
            # The gateway names its content route under its own public address, which
            # may not be the one vidhook reaches it by: fetch it from the latter.
            content = self._url_path(CONTENT_PATH.format(id=quote(task_id, safe="")))
            return Download(
                f"{self.config.base_url}{content}", self.auth_headers(self.key_for(job))
            )
        return Download(url)

    def _read_status(self, data: Any) -> Observation:
        if not isinstance(data, Mapping):
            raise ProviderError(self.name, "the status response is not an object", transient=True)
        if isinstance(data.get("data"), Mapping):
            return task_observation(data["data"])
        code = data.get("code")
        if isinstance(code, str) and code and code != _SUCCESS:
            # An error envelope with HTTP 200, as some forks send.
            message = data.get("message")
            raise ProviderError(
                self.name,
                str(message)[:500] if message else code,
                transient=code not in _GONE,
                code=code,
            )
        if "status" in data:
            return task_observation(data)
        raise ProviderError(self.name, "the status response has no task status", transient=True)
