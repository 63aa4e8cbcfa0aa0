"""Vidu (api.vidu.com, api.vidu.cn, and proxies such as kkiai that serve the same paths).

A canceled task is reported by Vidu's status endpoint as ``failed`` with the err_code
``UserCancelled``; a ``canceled`` (or ``cancelled``) state word is read the same way, in
case a proxy or a later API version says so directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import signing
from receiver.config import Secret
from receiver.providers.base import (
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import number, text
from receiver.states import Status
from signing import vidu as vidu_signing

# endpoint -> (fewest images, most images, prompt required)
ENDPOINTS: dict[str, tuple[int, int, bool]] = {
    "text2video": (0, 0, True),
    "img2video": (1, 1, False),
    "start-end2video": (2, 2, False),
    "reference2video": (1, 7, True),
}
STATES = {
    "created": Status.QUEUED,
    "queueing": Status.QUEUED,
    "processing": Status.PROCESSING,
    "success": Status.COMPLETED,
    "failed": Status.FAILED,
    "canceled": Status.CANCELED,
    "cancelled": Status.CANCELED,
}
# The err_code of a task that failed because it was canceled.
CANCELED_CODES = frozenset({"UserCancelled"})
# A 400 that means "busy, ask again later" rather than "this request is wrong".
TRANSIENT_CODES = frozenset({"OperationInProcess"})
SIGNATURE_HEADERS = ("date", "x-request-nonce", "x-hmac-signed-headers", "x-hmac-signature")
MAX_PROMPT = 2000
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset({"model", "prompt", "images", "callback_url"})
# reference2video's subjects: each a named set of reference images. Vidu refuses a field
# it does not know (FieldUnwanted), so unknown keys are refused here first.
MAX_SUBJECTS = 7
MAX_SUBJECT_IMAGES = 3
SUBJECT_KEYS = frozenset({"name", "images", "voice_id"})


def endpoint_for(request: SubmitRequest) -> str:
    if request.mode:
        return request.mode
    if "subjects" in request.options:
        return "reference2video"
    count = len(request.images)
    if count == 0:
        return "text2video"
    if count == 1:
        return "img2video"
    if count == 2:
        return "start-end2video"
    return "reference2video"


def observation(body: Mapping[str, Any]) -> Observation:
    """An observation from a status body or a callback body (same shape)."""
    raw_state = body.get("state", body.get("status"))
    state = str(raw_state) if raw_state is not None else None
    status = STATES.get(state or "")
    err_code = body.get("err_code") or None
    if status is Status.FAILED and isinstance(err_code, str) and err_code in CANCELED_CODES:
        status = Status.CANCELED
    creations = body.get("creations")
    first = creations[0] if isinstance(creations, list) and creations else {}
    first = first if isinstance(first, Mapping) else {}
    credits = body.get("credits")
    task_id = body.get("id", body.get("task_id"))
    return Observation(
        status=status or Status.QUEUED,
        provider_status=state,
        result_url=text(first.get("url")),
        cover_url=text(first.get("cover_url")),
        error=str(err_code) if status is Status.FAILED and err_code else None,
        credits=number(credits) if isinstance(credits, int | float) else None,
        raw=body,
        provider_job_id=str(task_id) if task_id is not None else None,
        known=status is not None,
    )


def subject_problems(request: SubmitRequest, endpoint: str) -> dict[str, str]:
    """What is wrong with ``options.subjects``: ``[{name, images (1 to 3)}, ...]``."""
    where = "options.subjects"
    if endpoint != "reference2video":
        return {where: "only reference2video takes subjects"}
    if request.images:
        return {"images": "give either images or subjects, not both"}
    subjects = request.options["subjects"]
    if not isinstance(subjects, list) or not 1 <= len(subjects) <= MAX_SUBJECTS:
        return {where: f"must be a list of 1 to {MAX_SUBJECTS} subjects"}
    problems: dict[str, str] = {}
    for index, subject in enumerate(subjects):
        at = f"{where}[{index}]"
        if not isinstance(subject, Mapping):
            problems[at] = 'must be an object: {"name": ..., "images": [...]}'
            continue
        if unknown := sorted(str(k) for k in subject if k not in SUBJECT_KEYS):
            known = ", ".join(sorted(SUBJECT_KEYS))
            problems[at] = f"unknown fields {', '.join(unknown)}; Vidu takes only {known}"
            continue
        name, images = subject.get("name"), subject.get("images")
        if not (isinstance(name, str) and name.strip()):
            problems[f"{at}.name"] = "required: the name the prompt refers to"
        if not (
            isinstance(images, list)
            and 1 <= len(images) <= MAX_SUBJECT_IMAGES
            and all(isinstance(i, str) and i for i in images)
        ):
            problems[f"{at}.images"] = f"1 to {MAX_SUBJECT_IMAGES} image URLs or data: URIs"
        voice = subject.get("voice_id")
        if voice is not None and not (isinstance(voice, str) and voice):
            problems[f"{at}.voice_id"] = "must be a voice id (a string)"
    return problems


class Vidu(HTTPProvider):
    supports_callbacks = True
    supports_cancel = True
    result_lifetime = 24 * 3600.0  # Vidu's result links last 24 hours
    # Vidu reads data:image/...;base64, URIs (the request body may reach 20 MB).
    accepts_image_data = True

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"Authorization": f"{self.config.auth_scheme} {key.reveal()}"}

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        endpoint = endpoint_for(request)
        if endpoint not in ENDPOINTS:
            problems["mode"] = f"must be one of {', '.join(ENDPOINTS)}"
        else:
            fewest, most, needs_prompt = ENDPOINTS[endpoint]
            count = len(request.images)
            if "subjects" in request.options:
                fewest = 0  # the subjects carry the images
            if not fewest <= count <= most:
                wanted = str(fewest) if fewest == most else f"{fewest} to {most}"
                problems["images"] = f"{endpoint} takes {wanted} images, got {count}"
            if needs_prompt and not request.prompt:
                problems["prompt"] = f"required for {endpoint}"
        if request.prompt and len(request.prompt) > MAX_PROMPT:
            problems["prompt"] = f"at most {MAX_PROMPT} characters, got {len(request.prompt)}"
        for name in request.options:
            if name in RESERVED:
                problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
        if "subjects" in request.options:
            problems.update(subject_problems(request, endpoint))
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        self.validate(request)
        body: dict[str, Any] = dict(request.options)
        body["model"] = request.model or self.config.default_model
        if request.prompt:
            body["prompt"] = request.prompt
        if request.images:
            body["images"] = list(request.images)
        if callback_url:
            body["callback_url"] = callback_url
        key = self.config.api_key
        data = await self.request_json(
            "POST", f"/ent/v2/{endpoint_for(request)}", key=key, json=body
        )
        task_id = data.get("task_id") if isinstance(data, Mapping) else None
        if not task_id:
            raise ProviderError(self.name, "the submit response has no task_id", transient=False)
        return Submission(str(task_id), observation(data), key.fingerprint)

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return await super().request_json(method, path, **kwargs)
        except ProviderError as exc:
            if exc.code in TRANSIENT_CODES:
                exc.transient = True
            raise

    async def cancel(self, job: JobRef) -> Observation | None:
        if not job.provider_job_id:
            raise ProviderError(self.name, "the provider task id is not known yet", transient=True)
        task_id = quote(job.provider_job_id, safe="")
        await self.request_json("POST", f"/ent/v2/tasks/{task_id}/cancel", key=self.key_for(job))
        # Vidu answers {} once the task is stopped; its status then reads failed with
        # UserCancelled, which observation() maps onto canceled as well.
        return Observation(status=Status.CANCELED)

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The submit response may still be on its way; ask again later.
            raise ProviderError(self.name, "the provider task id is not known yet", transient=True)
        data = await self.request_json(
            "GET", f"/ent/v2/tasks/{job.provider_job_id}/creations", key=self.key_for(job)
        )
        if not isinstance(data, Mapping):
            raise ProviderError(self.name, "the status response is not an object", transient=True)
        return observation(data)

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        key = self.config.key_for(job.key_fingerprint)
        if key is None or not job.callback_url:
            raise signing.SignatureError(
                "bad_signature",
                "the API key that created this job is no longer configured; "
                "list it in previous_api_key_envs",
            )
        verified = vidu_signing.verify(
            key.reveal(), "POST", job.callback_url, headers, tolerance=tolerance
        )
        return verified.nonce

    def replay_digest(self, headers: Mapping[str, str], body: bytes) -> str:
        # A retry from Vidu repeats the signed headers as well as the body.
        digest = hashlib.sha256(body)
        for name in SIGNATURE_HEADERS:
            digest.update(f"\n{name}:{headers.get(name, '')}".encode("utf-8", "replace"))
        return digest.hexdigest()

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        return observation(payload)
