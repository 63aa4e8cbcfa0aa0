"""apimodels (apimodels.app): one JSON endpoint, enveloped answers, an unsigned webhook.

Every answer is ``{code, msg, data}``. The seed docs spell the task fields ``task_id``,
``status``, ``videos`` and ``error``; the live docs ``taskId``, ``state``, ``resultUrls``
and ``failMsg``. Both are accepted everywhere, since either may be what is deployed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import httpx

from receiver.providers.base import (
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    Submission,
    SubmitRequest,
    is_transient_status,
)
from receiver.providers.fields import first_message, is_http_url, number
from receiver.states import Status

_MESSAGE_FIELDS = ("msg", "message", "error", "failMsg")

PATH = "/api/v1/video/generations"
STATES = {
    "pending": Status.QUEUED,
    "processing": Status.PROCESSING,
    "completed": Status.COMPLETED,
    "failed": Status.FAILED,
}
# The motion-control model takes character images and motion videos instead of a prompt.
MOTION_MODEL = "kling-motion-control"
MOTION_MODES = ("720p", "1080p")
ORIENTATIONS = ("image", "video")
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "2:3", "3:2")
SIZES = ("720P", "1080P", "4K")
# Fields vidhook itself sets (images become input_urls for motion control, and the
# top-level mode becomes its mode); an option may not override them.
RESERVED = frozenset({"model", "prompt", "images", "input_urls", "mode", "callback_url"})
_SPELLINGS = {
    "task_id": ("task_id", "taskId"),
    "status": ("status", "state"),
    "videos": ("videos", "resultUrls"),
    "error": ("error", "failMsg"),
}


def _field(data: Mapping[str, Any], name: str) -> Any:
    return next((data[k] for k in _SPELLINGS[name] if data.get(k) is not None), None)


def observation(data: Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> Observation:
    """An observation from the ``data`` object of a status answer or a callback."""
    word = _field(data, "status")
    state = str(word) if word is not None else None
    status = STATES.get(state or "")
    videos = _field(data, "videos")
    if isinstance(videos, str):
        videos = [videos]
    first = videos[0] if isinstance(videos, list) and videos else None
    error = _field(data, "error")
    if isinstance(error, Mapping):
        error = error.get("message") or error.get("msg")
    # Numbers only, not numeric strings; an int past a float's range counts as absent.
    amounts = (v for v in (data.get("credits"), data.get("cost")) if not isinstance(v, str))
    credits = next((n for v in amounts if (n := number(v)) is not None), None)
    task_id = _field(data, "task_id")
    return Observation(
        status=status or Status.QUEUED,
        provider_status=state,
        result_url=first if isinstance(first, str) and first else None,
        error=str(error) if status is Status.FAILED and error else None,
        credits=credits,
        raw=data if raw is None else raw,
        provider_job_id=str(task_id) if task_id is not None else None,
        # No status word at all says nothing new (a task starts pending); an unknown one
        # must stay visible.
        known=state is None or status is not None,
    )


def envelope_code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _url_list_problem(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of http(s) URLs"
    if not all(is_http_url(v) for v in value):
        return "every item must be an http(s) URL"
    return None


class Apimodels(HTTPProvider):
    supports_callbacks = True
    result_lifetime = 7 * 86400.0  # apimodels keeps results for 7 days

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        model = request.model or self.config.default_model
        if not model:
            problems["model"] = "required: name a model or set the provider's default_model"
        motion = model == MOTION_MODEL
        options = request.options
        for name in options:
            if name in RESERVED:
                problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
        if motion:
            if not request.images:
                problems["images"] = f"{MOTION_MODEL} needs at least one character image URL"
            if "video_urls" not in options:
                problems["options.video_urls"] = f"required for {MOTION_MODEL}"
            if request.mode is not None and request.mode not in MOTION_MODES:
                problems["mode"] = f"must be one of {', '.join(MOTION_MODES)}"
        else:
            if not (request.prompt and request.prompt.strip()):
                problems["prompt"] = "required"
            if request.mode is not None:
                problems["mode"] = f"only {MOTION_MODEL} takes a mode (720p or 1080p)"
        if request.images and not all(is_http_url(i) for i in request.images):
            problems["images"] = "every image must be an http(s) URL"
        problems.update(self._option_problems(options))
        if problems:
            raise InvalidRequest(problems)

    @staticmethod
    def _option_problems(options: Mapping[str, Any]) -> dict[str, str]:
        problems: dict[str, str] = {}
        choices = {
            "aspect_ratio": ASPECT_RATIOS,
            "size": SIZES,
            "character_orientation": ORIENTATIONS,
        }
        for name, allowed in choices.items():
            if name in options and options[name] not in allowed:
                problems[f"options.{name}"] = f"must be one of {', '.join(allowed)}"
        if "duration" in options:
            duration = options["duration"]
            # The docs list 5, 8 and 10 s, yet sell a 15 s model: only the type is checked.
            if isinstance(duration, bool) or not isinstance(duration, int | float):
                problems["options.duration"] = "must be a number of seconds (5, 8 or 10)"
            elif duration <= 0:
                problems["options.duration"] = "must be positive"
        if "generate_audio" in options and not isinstance(options["generate_audio"], bool):
            problems["options.generate_audio"] = "must be true or false"
        if "video_urls" in options and (problem := _url_list_problem(options["video_urls"])):
            problems["options.video_urls"] = problem
        return problems

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        self.validate(request)
        body: dict[str, Any] = dict(request.options)
        body["model"] = model = request.model or self.config.default_model
        if request.prompt:
            body["prompt"] = request.prompt
        if model == MOTION_MODEL:
            body["input_urls"] = list(request.images)
            if request.mode:
                body["mode"] = request.mode
        elif request.images:
            body["images"] = list(request.images)
        if callback_url:
            body["callback_url"] = callback_url
        key = self.config.api_key
        answer = await self.request_json("POST", PATH, key=key, json=body)
        data = self._data(answer)
        task_id = _field(data, "task_id")
        if task_id is None or not str(task_id):
            raise ProviderError(self.name, "the submit answer has no task_id", transient=True)
        return Submission(str(task_id), observation(data, answer), key.fingerprint)

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The submit answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the provider task id is not known yet", transient=True)
        answer = await self.request_json(
            "GET", PATH, key=self.key_for(job), params={"task_id": job.provider_job_id}
        )
        data = self._data(answer)
        if _field(data, "status") is None:
            raise ProviderError(self.name, "the status answer has no status", transient=True)
        return observation(data, answer)

    def _data(self, answer: Any) -> Mapping[str, Any]:
        """The ``data`` of a successful envelope; an error envelope becomes ProviderError."""
        if not isinstance(answer, Mapping):
            raise ProviderError(self.name, "the answer is not a JSON object", transient=True)
        code = envelope_code(answer.get("code"))
        if code is not None and code != 200:
            # The docs list the same codes for HTTP and for the envelope, so an error
            # inside a 200 answer is classified as if it were the HTTP status.
            http_like = 100 <= code <= 599
            raise ProviderError(
                self.name,
                first_message(answer, _MESSAGE_FIELDS) or f"the provider answered code {code}",
                transient=is_transient_status(code) or not 400 <= code < 500,
                status_code=code if http_like else None,
                code=None if http_like else str(code),
            )
        data = answer.get("data")
        if not isinstance(data, Mapping):
            raise ProviderError(self.name, "the answer has no data object", transient=True)
        return data

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        try:
            body = response.json()
        except ValueError:
            body = None
        fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if not isinstance(body, Mapping):
            return None, fallback
        raw_code = body.get("code")
        code = None if raw_code is None or isinstance(raw_code, bool) else str(raw_code)
        # A code that only repeats the HTTP status adds nothing to the message.
        if code is not None and code == str(response.status_code):
            code = None
        return code, first_message(body, _MESSAGE_FIELDS) or fallback

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        # apimodels signs nothing: finding the job by the secret token in the callback
        # URL was the whole check. The body digest makes a byte-identical retry a
        # duplicate while a different body (a later status) counts as a new delivery;
        # the job id keeps two jobs' identical bodies apart.
        return f"sha256:{job.id}:{hashlib.sha256(body).hexdigest()}"

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        data = payload.get("data")
        if isinstance(data, Mapping):
            return observation(data, payload)
        if _field(payload, "status") is not None or _field(payload, "task_id") is not None:
            return observation(payload)  # sent without the envelope
        return Observation(status=Status.QUEUED, raw=payload, known=False)

    def needs_confirmation(self, observation: Observation) -> bool:
        # Unsigned, so any callback only prompts an immediate poll; the poll decides.
        return True
