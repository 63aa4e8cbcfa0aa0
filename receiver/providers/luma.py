"""Luma Dream Machine (api.lumalabs.ai/dream-machine/v1): video generations with keyframes.

A generation is ``queued``, ``dreaming`` (processing), ``completed`` or ``failed`` (with
its ``failure_reason``). Luma POSTs the generation to the callback URL on its state
changes, unsigned, and sends one that was not answered 200 again, three times 100 ms
apart; each (generation, state) is taken once (see ``unsigned``). A callback's state is
applied as it is, except a final one, which waits for the status endpoint: the video
and its cover (``assets.video``, ``assets.image``) are read only from there.

Luma's SDK creates at ``POST /generations``, its docs' examples at
``/generations/video``; whichever one the deployment lacks (404, or 405 where only the
list answers) is left for the other, and the one that worked is used from then on.

Luma's ``DELETE /generations/{id}`` deletes the generation, its video with it, and says
nothing of stopping the work or refunding it; its status then answers 404. That is not
a cancel: vidhook does not offer one for Luma, and the job runs to its end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from receiver.config import ProviderConfig, Secret
from receiver.providers import unsigned
from receiver.providers.base import (
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import MAX_MESSAGE, is_http_url, text
from receiver.states import Status

STATES = {
    "queued": Status.QUEUED,
    "dreaming": Status.PROCESSING,
    "completed": Status.COMPLETED,
    "failed": Status.FAILED,
}
CREATE_PATHS = ("/generations", "/generations/video")
GENERATION_PATH = "/generations/{id}"
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21")
RESOLUTIONS = ("540p", "720p", "1080p", "4k")
# Luma's SDK lists "5s" and "9s" but types the field as any string: the form is checked,
# the length left to Luma.
_DURATION = re.compile(r"[1-9][0-9]*s")
MAX_KEYFRAMES = 2
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset({"model", "prompt", "keyframes", "callback_url", "generation_type"})
FAILED_WITHOUT_REASON = "Luma reported the generation failed without a reason"


def observation(generation: Mapping[str, Any]) -> Observation:
    """An observation from a generation object: a create or status answer, a callback."""
    raw_state = generation.get("state")
    state = str(raw_state) if raw_state is not None else None
    status = STATES.get(state or "")
    assets = generation.get("assets")
    assets = assets if isinstance(assets, Mapping) else {}
    done = status is Status.COMPLETED
    return Observation(
        status=status or Status.QUEUED,
        provider_status=state,
        result_url=text(assets.get("video")) if done else None,
        cover_url=text(assets.get("image")) if done else None,
        error=(_reason(generation) or FAILED_WITHOUT_REASON) if status is Status.FAILED else None,
        raw=generation,
        provider_job_id=_generation_id(generation),
        # No state at all says nothing new; an unknown one must stay visible.
        known=state is None or status is not None,
    )


def _reason(generation: Mapping[str, Any]) -> str | None:
    reason = text(generation.get("failure_reason"))
    return reason.strip()[:MAX_MESSAGE] if reason and reason.strip() else None


def _generation_id(body: Mapping[str, Any]) -> str | None:
    value = body.get("id")
    return value if isinstance(value, str) and value else None


def keyframes(images: list[str]) -> dict[str, Any]:
    """The first image opens the video (frame0), a second one ends it (frame1)."""
    frames = ("frame0", "frame1")
    return {
        frame: {"type": "image", "url": url} for frame, url in zip(frames, images, strict=False)
    }


def duration(value: Any) -> str | None:
    """Luma's spelling of a length: "5s" as given, or whole seconds as a number."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return f"{value}s"
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return value
    return None


def detail_message(body: Any) -> str | None:
    """The message of an error body: ``{"detail": "..."}``, a validation list
    ``{"detail": [{"loc", "msg"}, ...]}``, or ``{"error"|"message": ...}``."""
    if not isinstance(body, Mapping):
        return None
    detail = body.get("detail")
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping) and text(item.get("msg")):
                where = item.get("loc")
                path = (
                    ".".join(str(p) for p in where if p != "body")
                    if isinstance(where, list)
                    else ""
                )
                parts.append(f"{path}: {item['msg']}" if path else str(item["msg"]))
        detail = "; ".join(parts) or None
    for value in (detail, body.get("message"), body.get("error")):
        if isinstance(value, Mapping):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_MESSAGE]
    return None


def _option_problems(options: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in options:
        if name in RESERVED:
            problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
    for name, allowed in (("aspect_ratio", ASPECT_RATIOS), ("resolution", RESOLUTIONS)):
        if name in options and options[name] not in allowed:
            problems[f"options.{name}"] = f"must be one of {', '.join(allowed)}"
    if "duration" in options and duration(options["duration"]) is None:
        problems["options.duration"] = 'a length such as "5s" or "9s" (or 5, 9 as seconds)'
    if "loop" in options and not isinstance(options["loop"], bool):
        problems["options.loop"] = "must be true or false"
    if "concepts" in options:
        concepts = options["concepts"]
        if not isinstance(concepts, list) or not all(
            isinstance(c, Mapping) and text(c.get("key")) for c in concepts
        ):
            problems["options.concepts"] = 'a list of {"key": "..."} objects'
    return problems


class Luma(HTTPProvider):
    supports_callbacks = True

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        self._create_path: str | None = None

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        try:
            body = response.json()
        except ValueError:
            body = None
        message = detail_message(body)
        return None, message or f"HTTP {response.status_code} {response.reason_phrase}".strip()

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        if not (request.model or self.config.default_model):
            problems["model"] = (
                "required: name a model (ray-2, ray-flash-2, ...) or set default_model"
            )
        if len(request.images) > MAX_KEYFRAMES:
            problems["images"] = (
                f"at most {MAX_KEYFRAMES}: the first and the last frame, got {len(request.images)}"
            )
        elif not all(is_http_url(image) for image in request.images):
            problems["images"] = "every image must be an http(s) URL Luma can fetch"
        prompt = request.prompt
        if not (prompt and prompt.strip()) and not request.images:
            problems["prompt"] = "required unless an image gives the first or last frame"
        if request.mode is not None:
            problems["mode"] = "Luma has no modes: the images are the first and last frames"
        problems.update(_option_problems(request.options))
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        self.validate(request)
        body: dict[str, Any] = dict(request.options)
        if "duration" in body:
            body["duration"] = duration(body["duration"])
        body["model"] = request.model or self.config.default_model
        body["generation_type"] = "video"
        if request.prompt:
            body["prompt"] = request.prompt
        if request.images:
            body["keyframes"] = keyframes(list(request.images))
        if callback_url:
            body["callback_url"] = callback_url
        key = self.config.api_key
        answer = await self._create(body, key)
        if not isinstance(answer, Mapping) or _generation_id(answer) is None:
            # Not transient: asking again could create (and bill) a second generation.
            raise ProviderError(
                self.name, "the create answer has no generation id", transient=False
            )
        seen = observation(answer)
        return Submission(seen.provider_job_id or "", seen, key.fingerprint)

    async def _create(self, body: Mapping[str, Any], key: Secret) -> Any:
        if self._create_path:
            return await self.request_json("POST", self._create_path, key=key, json=body)
        first, second = CREATE_PATHS
        try:
            answer = await self.request_json("POST", first, key=key, json=body)
            self._create_path = first
        except ProviderError as exc:
            # 404 or 405: this deployment does not create there, so nothing was made.
            if exc.status_code not in (404, 405):
                raise
            answer = await self.request_json("POST", second, key=key, json=body)
            self._create_path = second
        return answer

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The create answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the generation id is not known yet", transient=True)
        path = GENERATION_PATH.format(id=quote(job.provider_job_id, safe=""))
        answer = await self.request_json("GET", path, key=self.key_for(job))
        if not isinstance(answer, Mapping) or answer.get("state") is None:
            raise ProviderError(self.name, "the status answer has no state", transient=True)
        seen = observation(answer)
        if seen.status is Status.COMPLETED and seen.result_url is None:
            raise ProviderError(
                self.name, "the generation is completed but has no video yet", transient=True
            )
        return seen

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        # Luma signs nothing: finding the job by its URL token was the proof.
        generation = unsigned.payload(body)
        if generation is None:
            return unsigned.body_nonce(job, body)
        state = generation.get("state")
        return unsigned.nonce(job, _generation_id(generation), str(state) if state else None)

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        return observation(payload)
