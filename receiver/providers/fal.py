"""fal (queue.fal.run): requests in fal's queue, and webhooks signed with Ed25519.

A job is a request submitted to ``{base_url}/{model_id}``, with the job's callback URL as
``fal_webhook``. Status, result and cancel live under the model's app, without the
model's subpath (``fal-ai/kling-video/v2.5-turbo/pro/text-to-video`` is asked about under
``fal-ai/kling-video``), as the URLs fal returns say. So a job's provider_job_id is the
request's path under the queue base, ``{app}/requests/{request_id}``, read from those URLs
(or, when fal returns none, made from the model id): nothing else is needed to ask about
it, after a restart too. The key only ever goes to the configured base_url.

``COMPLETED`` says only that the request ended: the result decides. A result with a video
is completed; an error answer (fal's ``detail``) is failed, with fal's own words.

fal sends one webhook, when the request ends, with the result or the error. It signs it
with Ed25519 keys it publishes as a JWKS (``jwks_url``). verify_callback runs where it
must not wait on the network, so the keys are fetched before, on the event loop
(prepare_callback), kept for a day at most, and fetched again when no key verifies a
webhook (fal rotated them), at most once a minute.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

import signing
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
from receiver.providers.jwks import WebhookKeys
from receiver.states import Status
from signing import fal as fal_signing

STATES = {"IN_QUEUE": Status.QUEUED, "IN_PROGRESS": Status.PROCESSING}
COMPLETED = "COMPLETED"
# What a cancel is answered with (in the body's status), beyond CANCELLATION_REQUESTED.
ALREADY_COMPLETED, NOT_FOUND = "ALREADY_COMPLETED", "NOT_FOUND"
# Model ids under these are one segment longer before the subpath (workflows/owner/app).
NAMESPACES = frozenset({"workflows", "comfy"})
RESERVED = frozenset({"prompt", "image_url"})
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})+")
_REQUEST_PATH = re.compile(rf"(?P<app>{_SEGMENT}(?:/{_SEGMENT})*)/requests/(?P<id>{_SEGMENT})")
_RETURNED = re.compile(rf"(?P<path>.+/requests/{_SEGMENT})(?:/status|/cancel)?")


def app_of(model_id: str) -> str:
    """The app a model id belongs to: its owner and name, without the subpath."""
    parts = model_id.split("/")
    return "/".join(parts[: 3 if parts[0] in NAMESPACES else 2])


def queue_place(status: Mapping[str, Any]) -> Progress | None:
    """A waiting request's place in fal's queue; nothing once it has started."""
    if status.get("status") != "IN_QUEUE":
        return None
    return Progress.queued(status.get("queue_position"))


def request_path(answer: Mapping[str, Any], base_url: str, model_id: str) -> str | None:
    """``{app}/requests/{id}`` for a submit answer: from the URLs fal returned, where one
    lies under ``base_url`` and names this request, else from the model id."""
    request_id = text(answer.get("request_id"))
    if request_id is None or not re.fullmatch(_SEGMENT, request_id):
        return None
    base_path = urlsplit(base_url).path.rstrip("/") + "/"
    for name in ("response_url", "status_url", "cancel_url"):
        url = text(answer.get(name))
        path = urlsplit(url).path if url else ""
        returned = _RETURNED.fullmatch(path.removeprefix(base_path)) if path else None
        if not path.startswith(base_path) or returned is None:
            continue
        named = _REQUEST_PATH.fullmatch(returned["path"])
        if named is not None and named["id"] == request_id:
            return returned["path"]
    return f"{app_of(model_id)}/requests/{request_id}"


def video_url(result: Any) -> str | None:
    """The video of a model's output: ``video.url`` (or ``video`` as a URL, or the first
    of ``videos``), as fal's video models return it."""
    if not isinstance(result, Mapping):
        return None
    video = result.get("video")
    videos = result.get("videos")
    if video is None and isinstance(videos, list) and videos:
        video = videos[0]
    url = video.get("url") if isinstance(video, Mapping) else video
    return url if isinstance(url, str) and is_http_url(url) else None


def detail_text(detail: Any) -> str | None:
    """fal's ``detail``: a message, or a list of ``{loc, msg, type}`` errors."""
    if isinstance(detail, str):
        return detail.strip()[:500] or None
    if isinstance(detail, Mapping):
        detail = [detail]
    if not isinstance(detail, list):
        return None
    said = []
    for item in detail[:5]:
        if not isinstance(item, Mapping) or not text(item.get("msg")):
            continue
        loc = item.get("loc")
        where = [str(p) for p in loc if p != "body"] if isinstance(loc, list) else []
        said.append(f"{'.'.join(where)}: {item['msg']}" if where else str(item["msg"]))
    return "; ".join(said)[:500] or None


def detail_type(detail: Any) -> str | None:
    first = detail[0] if isinstance(detail, list) and detail else detail
    return text(first.get("type")) if isinstance(first, Mapping) else None


def failure_text(message: str | None, kind: str | None) -> str | None:
    """fal's message with its error type, as in "prompt: flagged (content_policy_violation)"."""
    if message and kind and kind not in message:
        return f"{message} ({kind})"[:500]
    return message


def is_request_failure(exc: ProviderError) -> bool:
    """Whether a refused result fetch is the request's own failure rather than ours or a
    passing one: an input or policy error (4xx), or a 5xx that fal typed."""
    code = exc.status_code
    if code is None or code in (401, 403, 408, 429):
        return False
    return code < 500 or exc.code is not None


class Fal(HTTPProvider):
    supports_callbacks = True
    # fal reads a file input given as a data: URI.
    accepts_image_data = True
    signs_callback_body = True
    supports_cancel = True

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        self.keys = WebhookKeys(config.jwks_url or "", client)

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"Authorization": f"Key {key.reveal()}"}

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        """fal's error type (X-Fal-Error-Type, ``error_type`` or the detail's ``type``, or a
        cancel's status word) and its ``detail`` message."""
        code = text(response.headers.get("x-fal-error-type"))
        message = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            detail = body.get("detail")
            message = detail_text(detail) or first_message(body, ("error", "message"))
            code = code or text(body.get("error_type")) or detail_type(detail)
            word = text(body.get("status"))
            if word in (ALREADY_COMPLETED, NOT_FOUND):
                code = word
                message = (
                    message
                    or {
                        ALREADY_COMPLETED: "the request has already ended",
                        NOT_FOUND: "fal does not know this request",
                    }[word]
                )
        fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        return code, message or fallback

    # -- submitting --

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        model = request.model or self.config.default_model
        if not model or not _MODEL.fullmatch(model):
            problems["model"] = "must be a fal model id such as fal-ai/kling-video/v2.5-turbo/pro"
        if request.mode:
            problems["mode"] = "fal has no modes; the model id decides what runs"
        if len(request.images) > 1:
            problems["images"] = (
                "fal's models take one image_url; give others as options named as the "
                "model's inputs are (tail_image_url, end_image_url, ...)"
            )
        elif request.images and not _is_image(request.images[0]):
            problems["images"] = "the image must be an http(s) URL or a data: URI"
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
        body: dict[str, Any] = dict(request.options)
        if request.prompt:
            body["prompt"] = request.prompt
        if request.images:
            body["image_url"] = request.images[0]
        params = {"fal_webhook": callback_url} if callback_url else None
        key = self.config.api_key
        answer = await self.request_json("POST", f"/{model}", key=key, json=body, params=params)
        path = None
        if isinstance(answer, Mapping):
            path = request_path(answer, self.config.base_url, model)
        if path is None:
            # Not transient: asking again would queue (and bill) a second request.
            raise ProviderError(self.name, "the submit answer has no request_id", transient=False)
        word = text(answer.get("status"))
        state = STATES.get(word or "")
        seen = Observation(
            status=state or Status.QUEUED,
            provider_status=word,
            raw=answer,
            provider_job_id=path,
            known=state is not None or word is None,
            progress=queue_place(answer),
        )
        return Submission(path, seen, key.fingerprint)

    # -- status, result, cancel --

    async def fetch(self, job: JobRef) -> Observation:
        path = self._path(job)
        key = self.key_for(job)
        status = await self.request_json("GET", f"/{path}/status", key=key)
        if not isinstance(status, Mapping) or (word := text(status.get("status"))) is None:
            raise ProviderError(self.name, "the status answer has no status", transient=True)
        if word == COMPLETED:
            return await self._outcome(path, key, status)
        state = STATES.get(word)
        return Observation(status=state or Status.QUEUED, provider_status=word, raw=status,
                           known=state is not None,
                           progress=queue_place(status))  # fmt: skip

    async def _outcome(self, path: str, key: Secret, status: Mapping[str, Any]) -> Observation:
        """A completed request's end, as its result says."""
        try:
            result = await self.request_json("GET", f"/{path}", key=key)
        except ProviderError as exc:
            if not is_request_failure(exc):
                raise
            said = failure_text(exc.message, exc.code)
            return Observation(Status.FAILED, COMPLETED, error=said, raw=status)
        url = video_url(result)
        if url is None:
            error = "the result names no video (video.url); is the model a video model?"
            return Observation(Status.FAILED, COMPLETED, error=error, raw=result)
        return Observation(Status.COMPLETED, COMPLETED, result_url=url, raw=result)

    async def cancel(self, job: JobRef) -> Observation | None:
        """Ask fal to cancel; the job is canceled once fal takes the request.

        fal drops a queued request and signals a running one to stop: its result is no
        longer wanted either way. Should a running one end regardless, what fal says of
        it later is kept on the job as an anomaly. A request that has already ended is
        fetched, and its end is what the job learns.
        """
        path = self._path(job)
        try:
            answer = await self.request_json("PUT", f"/{path}/cancel", key=self.key_for(job))
        except ProviderError as exc:
            if exc.code != ALREADY_COMPLETED:
                raise
            return await self.fetch(job)
        word = text(answer.get("status")) if isinstance(answer, Mapping) else None
        if word == ALREADY_COMPLETED:  # said with a 2xx
            return await self.fetch(job)
        if word == NOT_FOUND:
            raise ProviderError(self.name, "fal does not know this request", transient=False)
        return Observation(status=Status.CANCELED, provider_status=word or "CANCELLATION_REQUESTED")

    def _path(self, job: JobRef) -> str:
        if not job.provider_job_id:
            # The submit answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the request id is not known yet", transient=True)
        if not _REQUEST_PATH.fullmatch(job.provider_job_id):
            raise ProviderError(
                self.name, "the stored request is not an {app}/requests/{id} path", transient=False
            )
        return job.provider_job_id

    # -- webhooks --

    async def prepare_callback(self, headers: Mapping[str, str], body: bytes) -> None:
        if self.keys.expired or not self._any_key_verifies(headers, body):
            await self.keys.refresh()
        if not self.keys.usable:
            raise ProviderError(
                self.name, f"fal's webhook keys could not be fetched from {self.keys.url}",
                transient=True,
            )  # fmt: skip

    def _any_key_verifies(self, headers: Mapping[str, str], body: bytes) -> bool:
        """False only when the keys at hand fail a well-formed signature: a key fal has
        published since may verify it. Anything else a refresh would not change."""
        try:
            fal_signing.verify(self.keys.usable, headers, body, tolerance=math.inf)
        except signing.SignatureError as exc:
            return exc.reason != "bad_signature"
        except ValueError:  # no keys yet
            return False
        return True

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        keys = self.keys.usable
        if not keys:  # prepare_callback saw some; a day has passed since
            raise signing.SignatureError("bad_signature", "fal's webhook keys have expired")
        verified = fal_signing.verify(keys, headers, body, tolerance=tolerance)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        if isinstance(payload, dict):  # anything else is refused as invalid JSON
            _check_request(job, verified.request_id, payload)
        # The request id: fal retries one webhook per request, the same body each time.
        return verified.request_id

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        word = text(payload.get("status"))
        if word == "OK":
            url = video_url(payload.get("payload"))
            return Observation(Status.COMPLETED, word, result_url=url, raw=payload)
        if word == "ERROR":
            # The model's own error, as the result would give it; else fal's summary
            # ("Invalid status code: 422").
            inner = payload.get("payload")
            detail = inner.get("detail") if isinstance(inner, Mapping) else None
            error = (
                failure_text(detail_text(detail), detail_type(detail))
                or text(payload.get("error"))
                or text(payload.get("payload_error"))
                or "failed without a reason"
            )
            return Observation(Status.FAILED, word, error=error, raw=payload)
        return Observation(Status.QUEUED, word, raw=payload, known=False)

    def needs_confirmation(self, observation: Observation) -> bool:
        # The body is signed: what it says is applied, an end included. Only a success
        # whose payload names no video (fal could not send it as JSON) is left for the
        # result to settle.
        return observation.status is Status.COMPLETED and observation.result_url is None


def _check_request(job: JobRef, signed_id: str, payload: Mapping[str, Any]) -> None:
    """The webhook must be about this job's request: the URL token found the job, and a
    webhook fal signed for another request may have been sent to it."""
    named = {text(payload.get("request_id")), text(payload.get("gateway_request_id"))} - {None}
    if signed_id not in named:
        raise signing.SignatureError("wrong_task", "the signed request id is not the body's")
    mine = _REQUEST_PATH.fullmatch(job.provider_job_id or "")
    if mine is None:
        raise signing.SignatureError(
            "wrong_task", "the job's request id is not known yet; fal retries its webhooks"
        )
    if mine["id"] not in named:
        raise signing.SignatureError("wrong_task", "the webhook names another request")


def _is_image(value: Any) -> bool:
    return isinstance(value, str) and (is_http_url(value) or value.startswith("data:"))
