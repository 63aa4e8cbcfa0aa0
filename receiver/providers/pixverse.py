"""PixVerse (app-api.pixverse.ai): text and image to video, and webhooks the account signs.

Every request carries the key (``API-KEY``) and a fresh ``Ai-trace-id``. Every answer is
an envelope ``{ErrCode, ErrMsg, Resp}``: a non-zero ErrCode is a refusal, inside an HTTP
200 or with an error status (both are read). PixVerse publishes no list of its codes to
rely on, so a refusal inside a 200 whose words speak of a limit, of being busy or of a
timeout is one to ask again later; any other is final.

A job with an image uploads it first (``/openapi/v2/image/upload``: an http(s) URL as
``image_url``, a ``data:`` URI as the file itself), then generates from the ``img_id``;
a job without one generates from its text. The video's id is the job's provider_job_id.
``/openapi/v2/video/result/{id}`` reports 5 (generating; PixVerse has no queued state),
1 (done, with ``url``), 7 (refused by content moderation) or 8 (failed); another number
is kept raw.

PixVerse sends every job's webhooks to the one URL set in its console,
``{public_url}/callbacks/{name}``, signed with the account's webhook secret
(``webhook_secret_env``, see :mod:`signing.pixverse`), and sends one again unless it is
answered 200 with the body ``ok``. The body names the video, and so the job; being
signed, what it says (the URL, the credits) is applied as it is. PixVerse has no way to
cancel a video.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

import signing
from receiver.config import ConfigError, ProviderConfig, Secret
from receiver.providers.base import (
    AccountCallback,
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import MAX_MESSAGE, first_message, is_http_url, number, text
from receiver.states import Status
from signing import pixverse as pixverse_signing

TEXT_PATH = "/openapi/v2/video/text/generate"
IMAGE_PATH = "/openapi/v2/video/img/generate"
UPLOAD_PATH = "/openapi/v2/image/upload"
RESULT_PATH = "/openapi/v2/video/result/{id}"
STATES = {1: Status.COMPLETED, 5: Status.PROCESSING, 7: Status.FAILED, 8: Status.FAILED}
FAILURES = {
    7: "PixVerse's content moderation refused the video (status 7)",
    8: "PixVerse could not generate the video (status 8)",
}
MAX_PROMPT = 2048
MAX_SEED = 2_147_483_647
QUALITIES = ("360p", "540p", "720p", "1080p")
MOTION_MODES = ("normal", "fast")
# What a video is made with when the job says nothing: PixVerse asks for all of them.
DEFAULTS: dict[str, Any] = {"duration": 5, "quality": "540p"}
TEXT_DEFAULTS: dict[str, Any] = {"aspect_ratio": "16:9"}
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset({"model", "prompt", "img_id"})
_DATA_URI = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
# A refusal inside a 200 carries no HTTP status to classify it; its words may.
_TRANSIENT_WORDS = re.compile(
    r"concurren|rate.?limit|too many|too frequent|try again|temporar|timed? ?out|"
    r"unavailable|overload|busy|system error",
    re.IGNORECASE,
)


def status_code_of(value: Any) -> int | None:
    """PixVerse's status number, from a JSON number or a numeric string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def video_id_of(body: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def observation(video: Mapping[str, Any]) -> Observation:
    """An observation from a video: the result's ``Resp``, or a webhook's body."""
    raw = video.get("status")
    code = status_code_of(raw)
    word = str(raw) if raw is not None and raw != "" else None
    status = STATES.get(code) if code is not None else None
    error = None
    if status is Status.FAILED:
        said = first_message(video, ("fail_reason", "error", "ErrMsg", "message"))
        error = FAILURES.get(code or 0, "PixVerse failed the video")
        if said:
            error = f"{error}: {said}"[:MAX_MESSAGE]
    return Observation(
        status=status or Status.QUEUED,
        provider_status=word,
        result_url=text(video.get("url")) if status is Status.COMPLETED else None,
        error=error,
        credits=number(video.get("credits")),
        raw=video,
        provider_job_id=video_id_of(video, "id", "video_id"),
        known=status is not None,
    )


def data_image(value: str) -> tuple[str, bytes] | None:
    """The media type and bytes of a ``data:image/...;base64,`` URI, or None."""
    found = _DATA_URI.fullmatch(value)
    if found is None:
        return None
    try:
        return found[1], base64.b64decode(found[2], validate=True)
    except (binascii.Error, ValueError):
        return None


class PixVerse(HTTPProvider):
    supports_callbacks = True
    # PixVerse takes an image by URL, or uploaded: a data: URI is sent as a file.
    accepts_image_data = True
    signs_callback_body = True
    account_webhook = True
    callback_reply = b"ok"

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        if config.webhook_secret is None or not config.webhook_secret.reveal():
            raise ConfigError(
                [
                    f"providers.{config.name}.webhook_secret_env: missing; name the variable "
                    "holding the webhook secret shown in PixVerse's console"
                ]
            )
        self.webhook_secret = config.webhook_secret

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"API-KEY": key.reveal(), "Ai-trace-id": str(uuid.uuid4())}

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            code = body.get("ErrCode")
            message = first_message(body, ("ErrMsg", "message", "error"))
            if message or code not in (None, 0):
                return (str(code) if code not in (None, 0) else None), message or "refused"
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``Resp`` of a successful envelope; a non-zero ErrCode raises ProviderError."""
        answer = await super().request_json(method, path, **kwargs)
        if not isinstance(answer, Mapping):
            raise ProviderError(self.name, "the answer is not a JSON object", transient=True)
        code = answer.get("ErrCode")
        if code not in (None, 0, "0"):
            message = first_message(answer, ("ErrMsg",)) or f"PixVerse answered ErrCode {code}"
            raise ProviderError(
                self.name,
                message,
                transient=bool(_TRANSIENT_WORDS.search(message)),
                code=str(code),
            )
        resp = answer.get("Resp")
        if not isinstance(resp, Mapping):
            raise ProviderError(self.name, "the answer has no Resp object", transient=True)
        return resp

    # -- submitting --

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        if not (request.model or self.config.default_model):
            problems["model"] = "required: name a model (v5, v4.5, ...) or set default_model"
        if request.mode is not None:
            problems["mode"] = "PixVerse has no modes: an image makes it image-to-video"
        if len(request.images) > 1:
            problems["images"] = f"at most 1 (the video's first frame), got {len(request.images)}"
        elif request.images and not _is_image(request.images[0]):
            problems["images"] = "the image must be an http(s) URL or a data:image/...;base64, URI"
        prompt = request.prompt or ""
        if not prompt.strip():
            problems["prompt"] = "required"
        elif len(prompt) > MAX_PROMPT:
            problems["prompt"] = f"at most {MAX_PROMPT} characters, got {len(prompt)}"
        problems.update(_option_problems(request.options, with_image=bool(request.images)))
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        # callback_url is not sent: PixVerse's webhook URL is set in its console.
        self.validate(request)
        key = self.config.api_key
        body: dict[str, Any] = {**DEFAULTS, **request.options}
        body["model"] = request.model or self.config.default_model
        body["prompt"] = request.prompt
        if request.images:
            body["img_id"] = await self._upload(request.images[0], key)
            path = IMAGE_PATH
        else:
            body = {**TEXT_DEFAULTS, **body}
            path = TEXT_PATH
        answer = await self.request_json("POST", path, key=key, json=body)
        video_id = video_id_of(answer, "video_id", "id")
        if video_id is None:
            # Not transient: asking again would start (and bill) a second video.
            raise ProviderError(self.name, "the generate answer has no video_id", transient=False)
        accepted = Observation(status=Status.QUEUED, raw=answer, provider_job_id=video_id)
        return Submission(video_id, accepted, key.fingerprint)

    async def _upload(self, image: str, key: Secret) -> Any:
        decoded = data_image(image)
        if decoded is None:
            files: dict[str, Any] = {"image_url": (None, image)}
        else:
            media_type, content = decoded
            extension = media_type.split("/", 1)[1].split("+", 1)[0]
            files = {"image": (f"image.{extension}", content, media_type)}
        answer = await self.request_json("POST", UPLOAD_PATH, key=key, files=files)
        img_id = answer.get("img_id")
        if isinstance(img_id, bool) or not isinstance(img_id, int | str) or img_id == "":
            raise ProviderError(self.name, "the image upload answer has no img_id", transient=True)
        return img_id

    # -- status --

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The generate answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the video id is not known yet", transient=True)
        path = RESULT_PATH.format(id=quote(job.provider_job_id, safe=""))
        video = await self.request_json("GET", path, key=self.key_for(job))
        if status_code_of(video.get("status")) is None:
            raise ProviderError(self.name, "the result answer has no status", transient=True)
        seen = observation(video)
        if seen.status is Status.COMPLETED and seen.result_url is None:
            raise ProviderError(self.name, "the video is done but has no url yet", transient=True)
        return seen

    # -- webhooks --

    def verify_account_callback(
        self, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> AccountCallback:
        secret = self.webhook_secret.reveal()
        verified = pixverse_signing.verify(secret, headers, body, tolerance=tolerance)
        # The signature check parsed the body as a JSON object already.
        video_id = video_id_of(json.loads(body), "id", "video_id")
        if video_id is None:
            raise signing.SignatureError("wrong_task", "the webhook names no video (id)")
        # Webhook-Nonce names the delivery: a retry may bring the same one.
        return AccountCallback(video_id, verified.nonce)

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        return observation(payload)

    def needs_confirmation(self, observation: Observation) -> bool:
        # The body is signed: what it says is applied, an end included. Only a success
        # that names no URL is left for the result endpoint to settle.
        return observation.status is Status.COMPLETED and observation.result_url is None


def _is_image(value: Any) -> bool:
    return is_http_url(value) or (isinstance(value, str) and data_image(value) is not None)


def _option_problems(options: Mapping[str, Any], *, with_image: bool) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in options:
        if name in RESERVED:
            problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
    duration = options.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0
    ):
        problems["options.duration"] = "whole seconds, such as 5 or 8"
    if "quality" in options and options["quality"] not in QUALITIES:
        problems["options.quality"] = f"must be one of {', '.join(QUALITIES)}"
    if "motion_mode" in options and options["motion_mode"] not in MOTION_MODES:
        problems["options.motion_mode"] = f"must be one of {', '.join(MOTION_MODES)}"
    seed = options.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    ):
        problems["options.seed"] = f"must be an integer from 0 to {MAX_SEED}"
    negative = options.get("negative_prompt")
    if negative is not None and not (isinstance(negative, str) and len(negative) <= MAX_PROMPT):
        problems["options.negative_prompt"] = f"text of at most {MAX_PROMPT} characters"
    if "aspect_ratio" in options:
        if with_image:
            problems["options.aspect_ratio"] = "the image decides the ratio; leave it out"
        elif not isinstance(options["aspect_ratio"], str):
            problems["options.aspect_ratio"] = "a ratio such as 16:9"
    if "water_mark" in options and not isinstance(options["water_mark"], bool):
        problems["options.water_mark"] = "must be true or false"
    return problems
