"""Replicate (api.replicate.com): predictions, and webhooks the account signs.

The model a job names (or ``default_model``) says what runs and where it is sent:

- ``owner/name``: the model's current version, ``POST /v1/models/{owner}/{name}/predictions``
  (the only way to run Replicate's official models);
- ``owner/name:version`` or a bare version id (64 hex digits): that exact version,
  ``POST /v1/predictions`` with ``version``.

The job's callback URL is the prediction's ``webhook``, with ``webhook_events_filter``
``["start", "completed"]``: the start says the model runs, the end carries the output or
the error. ``output`` and ``logs`` events, up to two a second while a model runs, would
only cost writes. Replicate signs every webhook's body (Standard Webhooks, with the
account's secret), so a webhook is applied as it says, output URL included, with no
confirming fetch. ``Prefer: wait`` is not used: vidhook never holds a request open.

Replicate deletes an API prediction's output an hour after it ends (``data_removed``), so
its result must be downloaded within the hour (``result_lifetime``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

import signing
from receiver.config import ConfigError, ProviderConfig
from receiver.providers.base import (
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import first_message, is_http_url, text
from receiver.states import Status
from signing import standard

STATES = {
    "starting": Status.QUEUED,
    "processing": Status.PROCESSING,
    "succeeded": Status.COMPLETED,
    "failed": Status.FAILED,
    "canceled": Status.CANCELED,
}
WEBHOOK_EVENTS = ("start", "completed")
OUTPUT_LIFETIME = 3600.0  # seconds from the end of a prediction to its data's removal
# The input names most Replicate video models give their first and last frames.
IMAGE_INPUTS = ("image", "last_frame")
RESERVED = frozenset({"prompt", *IMAGE_INPUTS})
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v", ".mkv")
REMOVED = "Replicate removed the output (data_removed) before vidhook could keep it"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_VERSION = r"[0-9a-f]{64}"
_MODEL = re.compile(rf"(?P<owner>{_NAME})/(?P<name>{_NAME})(?::(?P<version>{_VERSION}))?")
_BARE_VERSION = re.compile(_VERSION)


def route(model: str) -> tuple[str, dict[str, str]] | None:
    """The create path for ``model``, and what the body adds (the version); None when the
    model is none of the three forms."""
    if _BARE_VERSION.fullmatch(model):
        return "/v1/predictions", {"version": model}
    named = _MODEL.fullmatch(model)
    if named is None:
        return None
    if named["version"]:
        return "/v1/predictions", {"version": named["version"]}
    return f"/v1/models/{named['owner']}/{named['name']}/predictions", {}


def output_url(output: Any) -> str | None:
    """The video of a prediction's output: a URL, or the first video among a list of them."""
    if isinstance(output, str):
        return output if is_http_url(output) else None
    if not isinstance(output, list):
        return None
    urls = [item for item in output if isinstance(item, str) and is_http_url(item)]
    videos = [u for u in urls if urlsplit(u).path.lower().endswith(VIDEO_SUFFIXES)]
    return next(iter(videos or urls), None)


def observation(prediction: Mapping[str, Any]) -> Observation:
    """An observation from a prediction (an answer, or a webhook's body)."""
    word = text(prediction.get("status"))
    status = STATES.get(word or "")
    url = output_url(prediction.get("output")) if status is Status.COMPLETED else None
    error = None
    if status is Status.COMPLETED and url is None and prediction.get("data_removed") is True:
        # Succeeded, but the video is gone for good: nothing will ever be kept of it.
        status, error = Status.FAILED, REMOVED
    elif status is Status.FAILED:
        error = first_message(prediction, ("error",)) or "failed without a reason"
    prediction_id = text(prediction.get("id"))
    return Observation(
        status=status or Status.QUEUED,
        provider_status=word,
        result_url=url,
        error=error,
        raw=prediction,
        provider_job_id=prediction_id,
        known=status is not None,
    )


class Replicate(HTTPProvider):
    supports_callbacks = True
    # Replicate reads a file input given as a data: URI.
    accepts_image_data = True
    signs_callback_body = True
    supports_cancel = True
    result_lifetime = OUTPUT_LIFETIME

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        where = f"providers.{config.name}.webhook_secret_env"
        if config.webhook_secret is None:
            raise ConfigError([f"{where}: missing; name the variable holding the webhook secret"])
        try:
            standard.sign(config.webhook_secret.reveal(), "probe", 0, b"")
        except ValueError:
            raise ConfigError(
                [
                    f"{where}: not a webhook signing secret (whsec_ followed by base64); "
                    "Replicate gives it at GET /v1/webhooks/default/secret"
                ]
            ) from None
        self.webhook_secret = config.webhook_secret

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        """``{"detail": ...}``, with ``title`` and ``status`` in the problem-JSON form."""
        fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        try:
            body = response.json()
        except ValueError:
            return None, fallback
        if not isinstance(body, Mapping):
            return None, fallback
        return None, first_message(body, ("detail", "title", "error")) or fallback

    # -- submitting --

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        model = request.model or self.config.default_model
        if not model:
            problems["model"] = "required: owner/name, owner/name:version or a version id"
        elif route(model) is None:
            problems["model"] = (
                "must be owner/name, owner/name:version or a version id (64 hex digits)"
            )
        if request.mode:
            problems["mode"] = "Replicate has no modes; the model decides what runs"
        if len(request.images) > len(IMAGE_INPUTS):
            problems["images"] = (
                f"at most {len(IMAGE_INPUTS)} (first and last frame); give others as options "
                "named as the model's inputs are"
            )
        elif any(not _is_image(i) for i in request.images):
            problems["images"] = "each image must be an http(s) URL or a data: URI"
        if not (request.prompt or "").strip() and not request.images:
            problems["prompt"] = "required unless an image is given"
        for name in request.options:
            if name in RESERVED:
                problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        self.validate(request)
        model = request.model or self.config.default_model
        assert model is not None  # validate refused a request without one
        path, extra = route(model) or ("", {})
        model_input: dict[str, Any] = dict(request.options)
        if request.prompt:
            model_input["prompt"] = request.prompt
        model_input.update(zip(IMAGE_INPUTS, request.images, strict=False))
        body: dict[str, Any] = {**extra, "input": model_input}
        if callback_url:
            body["webhook"] = callback_url
            body["webhook_events_filter"] = list(WEBHOOK_EVENTS)
        key = self.config.api_key
        answer = await self.request_json("POST", path, key=key, json=body)
        seen = observation(answer) if isinstance(answer, Mapping) else None
        if seen is None or seen.provider_job_id is None:
            # Not transient: asking again would create (and bill) a second prediction.
            raise ProviderError(
                self.name, "the create answer has no prediction id", transient=False
            )
        return Submission(seen.provider_job_id, seen, key.fingerprint)

    # -- status and cancel --

    async def fetch(self, job: JobRef) -> Observation:
        prediction = await self.request_json("GET", self._path(job), key=self.key_for(job))
        if not isinstance(prediction, Mapping) or not text(prediction.get("status")):
            raise ProviderError(self.name, "the prediction answer has no status", transient=True)
        seen = observation(prediction)
        if seen.status is Status.COMPLETED and seen.result_url is None:
            raise ProviderError(
                self.name, "the prediction succeeded but names no output URL", transient=True
            )
        return seen

    async def cancel(self, job: JobRef) -> Observation | None:
        """Cancel the prediction; Replicate answers with it, canceled or as it ended."""
        path = self._path(job) + "/cancel"
        prediction = await self.request_json("POST", path, key=self.key_for(job))
        if not isinstance(prediction, Mapping) or not text(prediction.get("status")):
            return None  # taken, but not shown: a poll tells how it ended
        seen = observation(prediction)
        return seen if seen.status.terminal else None

    def _path(self, job: JobRef) -> str:
        if not job.provider_job_id:
            # The create answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the prediction id is not known yet", transient=True)
        return f"/v1/predictions/{quote(job.provider_job_id, safe='')}"

    # -- webhooks --

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        verified = standard.verify(self.webhook_secret.reveal(), headers, body, tolerance=tolerance)
        # Signed by Replicate, but for which prediction? The URL token found the job; the
        # body must be that job's prediction, or it is another job's webhook sent here.
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        if isinstance(payload, dict):  # anything else is refused as invalid JSON
            named = text(payload.get("id"))
            if named is None:
                raise signing.SignatureError("wrong_task", "the webhook names no prediction")
            if job.provider_job_id is None:
                raise signing.SignatureError(
                    "wrong_task",
                    "the job's prediction id is not known yet; Replicate retries a final webhook",
                )
            if named != job.provider_job_id:
                raise signing.SignatureError("wrong_task", "the webhook names another prediction")
        # webhook-id: the same on every retry of one event, another for each event.
        return verified.id

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        return observation(payload)

    def needs_confirmation(self, observation: Observation) -> bool:
        # The body is signed: what it says is applied, an end included. Only a success
        # whose output names no URL is left for a fetch to settle.
        return observation.status is Status.COMPLETED and observation.result_url is None


def _is_image(value: Any) -> bool:
    return isinstance(value, str) and (is_http_url(value) or value.startswith("data:"))
