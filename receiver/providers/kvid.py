"""kvid (api.kvid.ai): submit, then poll the status and fetch the result; no webhooks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from receiver.config import Secret
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
from receiver.providers.fields import number, text
from receiver.states import Status

TEXT_TO_VIDEO = "text-to-video"
IMAGE_TO_VIDEO = "image-to-video"
# mode -> number of images it takes
ENDPOINTS = {TEXT_TO_VIDEO: 0, IMAGE_TO_VIDEO: 1}
STATUS_PATH = "/ai/generation/status"
RESULT_PATH = "/ai/generation/result"
STATES = {
    "queued": Status.QUEUED,
    "processing": Status.PROCESSING,
    "completed": Status.COMPLETED,
    "failed": Status.FAILED,
}
RESOLUTIONS = ("480p", "720p", "1080p")
BOOLEAN_OPTIONS = ("enable_safety_checker", "enable_prompt_expansion")
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset({"prompt", "model", "image_url", "images", "callback_url"})
# The failure message is not documented; these are the usual places for it.
_ERROR_FIELDS = ("error", "error_message", "message", "fail_reason", "reason")
# A 200 with success:false carries no HTTP status to classify it; its words may.
_TRANSIENT_WORDS = re.compile(
    r"rate.?limit|too many|try again|temporar|timed? ?out|unavailable|overload|busy",
    re.IGNORECASE,
)


def endpoint_for(request: SubmitRequest) -> str:
    if request.mode:
        return request.mode
    return IMAGE_TO_VIDEO if request.images else TEXT_TO_VIDEO


def observation(data: Mapping[str, Any]) -> Observation:
    """An observation from the ``data`` of a submit, status or result response."""
    raw_status = data.get("status")
    provider_status = str(raw_status) if raw_status is not None else None
    status = STATES.get(provider_status or "")
    job_id = data.get("job_id")
    return Observation(
        status=status or Status.QUEUED,
        provider_status=provider_status,
        result_url=text(data.get("result_url")),
        error=_failure(data) if status is Status.FAILED else None,
        credits=number(data.get("used_credit")),
        raw=data,
        provider_job_id=str(job_id) if job_id is not None else None,
        known=status is not None,
    )


def error_fields(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The code and message of an error envelope, whose shape kvid does not document.

    Accepted: ``{success: false, message}``, plus ``error`` as a code string or an object
    ``{code, message}``, ``code`` as a name, and FastAPI-style ``detail``.
    """
    nested = body.get("error")
    inner: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
    texts = (body.get("message"), inner.get("message"), body.get("detail"), body.get("msg"))
    message = next((t for t in texts if isinstance(t, str) and t.strip()), None)
    codes: list[Any] = [body.get("code"), inner.get("code"), body.get("error_code")]
    if isinstance(nested, str) and nested.strip():
        if message is None:
            message = nested
        else:
            codes.insert(0, nested)
    code = next((c for c in codes if isinstance(c, str) and c and not c.isdigit()), None)
    return code, message[:500] if message else None


def _body_status(body: Mapping[str, Any]) -> int | None:
    """An HTTP-like status that an error envelope may carry in its body."""
    for name in ("status_code", "statusCode", "code", "status"):
        value = body.get(name)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    return None


def _failure(data: Mapping[str, Any]) -> str | None:
    for name in _ERROR_FIELDS:
        value = data.get(name)
        if isinstance(value, Mapping):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            return value[:500]
    return None


def _is_https_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return False
    return url.scheme == "https" and bool(url.host)


def _option_problems(options: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in options:
        if name in RESERVED:
            problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
    resolution = options.get("resolution")
    if resolution is not None and resolution not in RESOLUTIONS:
        problems["options.resolution"] = f"must be one of {', '.join(RESOLUTIONS)}"
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems["options.seed"] = "must be an integer"
    steps = options.get("num_inference_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        problems["options.num_inference_steps"] = "must be a positive integer"
    for name in BOOLEAN_OPTIONS:
        if options.get(name) is not None and not isinstance(options[name], bool):
            problems[f"options.{name}"] = "must be true or false"
    return problems


class Kvid(HTTPProvider):
    supports_callbacks = False

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"api-key": key.reveal()}

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            code, message = error_fields(body)
            if message:
                return code, message
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        endpoint = endpoint_for(request)
        count = len(request.images)
        if endpoint not in ENDPOINTS:
            problems["mode"] = f"must be one of {', '.join(ENDPOINTS)}"
        elif count != ENDPOINTS[endpoint]:
            wanted = "exactly one image" if ENDPOINTS[endpoint] else "no images"
            problems["images"] = f"{endpoint} takes {wanted}, got {count}"
        elif count == 1 and not _is_https_url(request.images[0]):
            problems["images"] = "the image must be an https URL"
        if not request.prompt or not request.prompt.strip():
            problems["prompt"] = "required"
        problems |= _option_problems(request.options)
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        # callback_url is ignored: kvid has no webhooks, and vidhook passes None anyway.
        self.validate(request)
        endpoint = endpoint_for(request)
        body: dict[str, Any] = {"prompt": request.prompt}
        model = request.model or self.config.default_model
        if model:
            body["model"] = model
        if endpoint == IMAGE_TO_VIDEO:
            body["image_url"] = request.images[0]
        body |= request.options
        key = self.config.api_key
        answer = await self.request_json(
            "POST", f"/ai/generation/{endpoint}/generate-async", key=key, json=body
        )
        data = self.unwrap(answer, "submit")
        seen = observation(data)
        if not seen.provider_job_id:
            raise ProviderError(self.name, "the submit response has no job_id", transient=True)
        return Submission(seen.provider_job_id, seen, key.fingerprint)

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The submit response may still be on its way; ask again later.
            raise ProviderError(self.name, "the provider job id is not known yet", transient=True)
        key = self.key_for(job)
        params = {"jobId": job.provider_job_id}
        status = self.unwrap(await self.request_json("GET", STATUS_PATH, key=key, params=params))
        seen = observation(status)
        if seen.status is not Status.COMPLETED:
            return seen
        # Only the result endpoint has the video URL and the credits used.
        try:
            answer = await self.request_json("GET", RESULT_PATH, key=key, params=params)
            result = self.unwrap(answer, "result")
        except ProviderError as exc:
            if exc.transient or exc.status_code in (401, 402, 403):
                raise
            # The status already says completed: a refused result is most likely the
            # result lagging behind the status, so ask again rather than fail the job.
            raise ProviderError(
                self.name,
                f"the job is completed but its result is not available: {exc.message}",
                transient=True,
                status_code=exc.status_code,
                code=exc.code,
                retry_after=exc.retry_after,
            ) from None
        done = observation({**status, **result})
        if done.status is not Status.COMPLETED or done.result_url is None:
            raise ProviderError(
                self.name, "the job is completed but its result has no result_url", transient=True
            )
        return done

    def unwrap(self, body: Any, what: str = "status") -> Mapping[str, Any]:
        """The ``data`` of a ``{success, data}`` envelope; success:false is an error."""
        if not isinstance(body, Mapping):
            raise ProviderError(self.name, f"the {what} response is not an object", transient=True)
        success = body.get("success")
        if success in (False, "false"):
            code, message = error_fields(body)
            status_code = _body_status(body)
            if status_code is not None:
                transient = is_transient_status(status_code)
            else:
                transient = bool(_TRANSIENT_WORDS.search(f"{code or ''} {message or ''}"))
            raise ProviderError(
                self.name,
                message or f"the provider refused the {what} request",
                transient=transient,
                status_code=status_code,
                code=code,
            )
        data = body.get("data")
        if isinstance(data, Mapping):
            return data
        if success is None and "job_id" in body:
            return body  # tolerate an answer without the envelope
        raise ProviderError(self.name, f"the {what} response has no data object", transient=True)
