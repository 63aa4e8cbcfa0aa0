"""Google Veo through the Gemini API (generativelanguage.googleapis.com): operations, polled.

A job is ``POST /v1beta/models/{model}:predictLongRunning`` with the key in
``x-goog-api-key`` and ``{"instances": [{"prompt", "image", "lastFrame"}], "parameters"}``.
The answer is a long-running operation, whose ``name``
(``models/{model}/operations/{id}``) is the job's provider_job_id and is asked about at
``GET /v1beta/{name}``. The Gemini API has no webhooks for it: Veo is polled.

An operation not ``done`` is running; ``done`` with an ``error`` failed, with Google's
message; ``done`` with ``response.generateVideoResponse.generatedSamples`` completed, the
video at the first sample's ``video.uri``; ``done`` with no sample and
``raiMediaFilteredReasons`` (or a ``raiMediaFilteredCount``) failed, Google's safety
filters having removed the video, their reasons kept. A sample whose video comes inline
(``encodedVideo``) rather than as a URI fails the job saying so: a result is kept by
downloading its URL, and a video of several MB does not belong in a database row or a
notification (the bytes are dropped from what is stored). While an operation runs, a
``state`` in its metadata is shown as it is; an unknown one counts as queued.

Images: the Gemini API takes them as bytes (``bytesBase64Encoded``, ``mimeType``), so an
image is a ``data:image/...;base64,`` URI; the first is the first frame, a second one
the last (``lastFrame``). ``options`` are ``parameters``, by the API's names or the
SDK's (``durationSeconds`` or ``duration_seconds``, ...); those only Vertex AI takes
(``seed``, ``fps``, ``generateAudio``, ...) are refused before anything is sent, as
Google's SDK refuses them.

The video's URI is on the API's own host and opens only with the key: ``download`` adds
``x-goog-api-key`` for that origin and no other (a redirect elsewhere is followed
without it). Google keeps generated videos for two days (``result_lifetime``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import httpx

from receiver.config import Secret
from receiver.providers.base import (
    Download,
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import MAX_MESSAGE, first_message, text
from receiver.states import Status

API_VERSION = "/v1beta"
CREATE_PATH = "/models/{model}:predictLongRunning"
RUNNING, DONE, ERROR, FILTERED = "running", "done", "error", "filtered"
RETENTION = 2 * 86400.0  # seconds Google keeps a generated video
# The SDK's names of the parameters, and what the API calls them.
PARAMETERS = {
    "number_of_videos": "sampleCount",
    "duration_seconds": "durationSeconds",
    "aspect_ratio": "aspectRatio",
    "resolution": "resolution",
    "person_generation": "personGeneration",
    "negative_prompt": "negativePrompt",
    "enhance_prompt": "enhancePrompt",
}
# What only Vertex AI takes; the Gemini API refuses it (Google's SDK raises first).
VERTEX_ONLY = {
    "outputGcsUri": "output_gcs_uri", "fps": "fps", "seed": "seed",
    "pubsubTopic": "pubsub_topic", "generateAudio": "generate_audio", "mask": "mask",
    "compressionQuality": "compression_quality", "labels": "labels",
    "resizeMode": "resize_mode",
}  # fmt: skip
_VERTEX_NAMES = frozenset(VERTEX_ONLY) | frozenset(VERTEX_ONLY.values())
# Fields of the instance vidhook builds; an option may not set them.
RESERVED = frozenset({"prompt", "image", "lastFrame", "last_frame", "instances", "parameters"})
_DATA_URI = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
_RATIO = re.compile(r"[1-9][0-9]*:[1-9][0-9]*")
# An operation's name: segments of the name alphabet, never "." or "..".
_NAME = re.compile(r"(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


def data_image(value: str) -> dict[str, str] | None:
    """A ``data:image/...;base64,`` URI as the Gemini API's image, or None."""
    found = _DATA_URI.fullmatch(value)
    if found is None:
        return None
    try:
        raw = base64.b64decode(found[2], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw:
        return None
    return {"bytesBase64Encoded": base64.b64encode(raw).decode(), "mimeType": found[1]}


def observation(operation: Mapping[str, Any]) -> Observation:
    """An observation from a long-running operation."""
    name = text(operation.get("name"))
    done = operation.get("done")
    if done is not True:
        return _running(operation, name)
    error = operation.get("error")
    if error is not None:
        return Observation(Status.FAILED, ERROR, error=_error_text(error), raw=operation,
                           provider_job_id=name)  # fmt: skip
    answer = _video_response(operation)
    samples = answer.get("generatedSamples")
    samples = [s for s in samples if isinstance(s, Mapping)] if isinstance(samples, list) else []
    videos = [v for v in (s.get("video") for s in samples) if isinstance(v, Mapping)]
    inline = any(v.get("encodedVideo") for v in videos)
    raw = _without_inline_videos(operation) if inline else operation
    uri = next((u for u in (text(v.get("uri")) for v in videos) if u), None)
    if uri is not None:
        return Observation(Status.COMPLETED, DONE, result_url=uri, raw=raw, provider_job_id=name)
    if inline:
        return Observation(
            Status.FAILED, DONE, raw=raw, provider_job_id=name,
            error="Veo returned the video inline (encodedVideo) instead of as a file URI; "
            "vidhook keeps results by URL, so this one cannot be kept",
        )  # fmt: skip
    filtered = _filtered(answer)
    if filtered is not None:
        return Observation(Status.FAILED, FILTERED, error=filtered, raw=operation,
                           provider_job_id=name)  # fmt: skip
    said = ", ".join(sorted(str(k) for k in answer)) or "nothing"
    return Observation(
        Status.FAILED, DONE, raw=operation, provider_job_id=name,
        error=f"the operation ended without a video, an error or a safety filter (its "
        f"response holds {said})"[:MAX_MESSAGE],
    )  # fmt: skip


def _running(operation: Mapping[str, Any], name: str | None) -> Observation:
    metadata = operation.get("metadata")
    state = text(metadata.get("state")) if isinstance(metadata, Mapping) else None
    if state is None:
        return Observation(Status.PROCESSING, RUNNING, raw=operation, provider_job_id=name)
    # A state Google does not document: shown as it is, and not taken for progress.
    return Observation(Status.QUEUED, state, raw=operation, provider_job_id=name, known=False)


def _video_response(operation: Mapping[str, Any]) -> Mapping[str, Any]:
    response = operation.get("response")
    if not isinstance(response, Mapping):
        return {}
    inner = response.get("generateVideoResponse")
    return inner if isinstance(inner, Mapping) else response


def _error_text(error: Any) -> str:
    if not isinstance(error, Mapping):
        return str(error)[:MAX_MESSAGE] or "failed without a reason"
    message = first_message(error, ("message",)) or "failed without a reason"
    code = error.get("status") or error.get("code")
    return f"{message} (code {code})"[:MAX_MESSAGE] if code not in (None, "") else message


def _filtered(answer: Mapping[str, Any]) -> str | None:
    reasons = answer.get("raiMediaFilteredReasons")
    said = [r.strip() for r in reasons if isinstance(r, str) and r.strip()] if isinstance(
        reasons, list
    ) else []  # fmt: skip
    count = answer.get("raiMediaFilteredCount")
    counted = count if isinstance(count, int) and not isinstance(count, bool) else 0
    if said:
        return f"Google's safety filters removed the video: {'; '.join(said)}"[:MAX_MESSAGE]
    if counted > 0:
        return f"Google's safety filters removed {counted} video(s) and gave no reason"
    return None


def _without_inline_videos(operation: Mapping[str, Any]) -> dict[str, Any]:
    """The operation with each inline video replaced by its size: kept, but not its bytes."""
    kept = dict(operation)
    answer = dict(_video_response(operation))
    samples = []
    for sample in answer.get("generatedSamples") or []:
        video = sample.get("video") if isinstance(sample, Mapping) else None
        if isinstance(video, Mapping) and isinstance(video.get("encodedVideo"), str):
            dropped = f"<{len(video['encodedVideo'])} base64 characters, not kept>"
            sample = {**sample, "video": {**video, "encodedVideo": dropped}}
        samples.append(sample)
    answer["generatedSamples"] = samples
    kept["response"] = {"generateVideoResponse": answer}
    return kept


def origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    return parsed.scheme, parsed.host, parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)


class Veo(HTTPProvider):
    supports_callbacks = False
    # Veo reads an image as inline bytes only: a data: URI is sent as bytesBase64Encoded.
    accepts_image_data = True
    result_lifetime = RETENTION

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"x-goog-api-key": key.reveal()}

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        """Google's ``{"error": {"code", "message", "status"}}``: the status is the code."""
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, Mapping) else None
        if isinstance(error, Mapping):
            message = first_message(error, ("message",))
            if message:
                return text(error.get("status")), message
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()

    def _path(self, suffix: str) -> str:
        # base_url is the host; tolerate one that already ends in /v1beta.
        if self.config.base_url.rstrip("/").endswith(API_VERSION):
            return suffix
        return f"{API_VERSION}{suffix}"

    # -- submitting --

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        model = _model(request.model or self.config.default_model)
        if not model:
            problems["model"] = "required: a Veo model such as veo-3.1-generate-preview"
        elif not re.fullmatch(r"[A-Za-z0-9._-]+", model):
            problems["model"] = "a model id such as veo-3.1-generate-preview"
        if request.mode is not None:
            problems["mode"] = "Veo has no modes: images are the first and last frames"
        if len(request.images) > 2:
            problems["images"] = f"at most 2 (first and last frame), got {len(request.images)}"
        elif any(not isinstance(i, str) or data_image(i) is None for i in request.images):
            problems["images"] = (
                "each image must be a data:image/...;base64, URI: the Gemini API takes images "
                "as bytes (Cloud Storage URIs are Vertex AI's)"
            )
        if not (request.prompt or "").strip() and not request.images:
            problems["prompt"] = "required unless an image is given"
        problems.update(_option_problems(request.options))
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        # callback_url is ignored: the Gemini API does not call back; Veo is polled.
        self.validate(request)
        model = _model(request.model or self.config.default_model)
        instance: dict[str, Any] = {}
        if request.prompt:
            instance["prompt"] = request.prompt
        frames = [data_image(i) for i in request.images]
        for field, frame in zip(("image", "lastFrame"), frames, strict=False):
            instance[field] = frame
        parameters = {PARAMETERS.get(k, k): v for k, v in request.options.items()}
        body: dict[str, Any] = {"instances": [instance]}
        if parameters:
            body["parameters"] = parameters
        key = self.config.api_key
        path = self._path(CREATE_PATH.format(model=model))
        operation = await self.request_json("POST", path, key=key, json=body)
        name = text(operation.get("name")) if isinstance(operation, Mapping) else None
        if name is None or not _NAME.fullmatch(name):
            # Not transient: asking again would start (and bill) a second video.
            raise ProviderError(
                self.name, "the answer names no operation vidhook can ask about", transient=False
            )
        seen = observation(operation)
        if seen.status is Status.PROCESSING:
            # Just created: queued until a poll sees it run.
            seen = Observation(Status.QUEUED, raw=operation, provider_job_id=name)
        return Submission(name, seen, key.fingerprint)

    # -- status --

    async def fetch(self, job: JobRef) -> Observation:
        name = job.provider_job_id
        if not name:
            # The submit answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the operation is not known yet", transient=True)
        if not _NAME.fullmatch(name):
            raise ProviderError(
                self.name, "the stored operation name is malformed", transient=False
            )
        operation = await self.request_json("GET", self._path(f"/{name}"), key=self.key_for(job))
        if not isinstance(operation, Mapping):
            raise ProviderError(self.name, "the operation is not a JSON object", transient=True)
        return observation(operation)

    def download(self, job: JobRef, url: str) -> Download:
        # The video opens only with the key, on the API's own host; nowhere else gets it.
        api, target = origin(self.config.base_url), origin(url)
        if api is not None and target == api:
            return Download(url, self.auth_headers(self.key_for(job)))
        return Download(url)


def _model(model: str | None) -> str | None:
    return model.removeprefix("models/") if model else model


def _option_problems(options: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in options:
        where = f"options.{name}"
        if name in RESERVED:
            problems[where] = "is set by vidhook; use the top-level prompt and images"
        elif name in _VERTEX_NAMES:
            problems[where] = "only Vertex AI takes it; the Gemini API refuses it"
        wire = PARAMETERS.get(name, name)
        if wire in seen:
            problems[where] = f"given twice, as {seen[wire]} too"
        seen[wire] = name
    values = {PARAMETERS.get(k, k): (k, v) for k, v in options.items()}
    for wire in ("sampleCount", "durationSeconds"):
        if wire in values:
            name, value = values[wire]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems[f"options.{name}"] = "a whole number above 0"
    if "aspectRatio" in values:
        name, value = values["aspectRatio"]
        if not (isinstance(value, str) and _RATIO.fullmatch(value)):
            problems[f"options.{name}"] = "a ratio such as 16:9 or 9:16"
    for wire in ("resolution", "personGeneration", "negativePrompt"):
        if wire in values and not isinstance(values[wire][1], str):
            problems[f"options.{values[wire][0]}"] = "must be text"
    if "enhancePrompt" in values and not isinstance(values["enhancePrompt"][1], bool):
        problems[f"options.{values['enhancePrompt'][0]}"] = "must be true or false"
    return problems
