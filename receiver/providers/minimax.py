"""MiniMax video generation (Hailuo): api.minimax.io, or api.minimaxi.com in mainland China.

Every answer carries ``base_resp: {status_code, status_msg}``; 0 is success, anything
else an error, usually inside an HTTP 200 (a deployment may also use the HTTP status;
both are read). A task is polled at ``/v1/query/video_generation``: Preparing and
Queueing (queued), Processing, Success, Fail. Success names a ``file_id``, which
``/v1/files/retrieve`` turns into a download URL valid for 9 hours; it is resolved by
the poll that sees Success, so the stored result_url is a fresh one.

Callbacks: given a ``callback_url``, MiniMax first POSTs ``{"challenge": ...}`` and
wants it echoed within 3 s (``handshake``); then it POSTs the query answer's fields on
status changes, unsigned, with the status in lower case (``processing``, ``success``,
``failed``) or spelled as the query spells it: words are compared without case. A
callback's state is applied as it is, except a final one, which waits for the poll that
resolves the file. MiniMax has no way to cancel a task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx

from receiver.config import Secret
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

CREATE_PATH = "/video_generation"
QUERY_PATH = "/query/video_generation"
FILE_PATH = "/files/retrieve"
# Lower case: the query says "Success", callbacks "success"; callbacks say "failed".
STATES = {
    "preparing": Status.QUEUED,
    "queueing": Status.QUEUED,
    "processing": Status.PROCESSING,
    "success": Status.COMPLETED,
    "fail": Status.FAILED,
    "failed": Status.FAILED,
}
# base_resp.status_code: asking again later may help (unknown, timeout, rate limit,
# internal error, downstream error)...
TRANSIENT_CODES = frozenset({1000, 1001, 1002, 1024, 1033})
# ...or it never will (not authorized, no balance, sensitive prompt or video, illegal
# characters, invalid parameters, invalid key). A code in neither list is taken as
# transient: the deadline still ends a job that never gets an answer.
PERMANENT_CODES = frozenset({1004, 1008, 1026, 1027, 1042, 2013, 2049})
RATE_LIMITED = 1002
# Seconds to leave MiniMax alone after a rate-limit answer that names no Retry-After.
RATE_LIMIT_PAUSE = 10.0
SUBJECT_MODEL = "S2V-01"
MAX_PROMPT = 2000
RESOLUTIONS = ("512P", "720P", "768P", "1080P")
BOOLEAN_OPTIONS = ("prompt_optimizer", "fast_pretreatment", "aigc_watermark")
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset(
    {
        "model", "prompt", "first_frame_image", "last_frame_image", "subject_reference",
        "callback_url",
    }
)  # fmt: skip
FAILED_WITHOUT_REASON = "MiniMax reported the task failed without a reason"


def status_word(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def base_resp(body: Mapping[str, Any]) -> tuple[int, str | None]:
    """``base_resp``'s code (0 when absent) and message."""
    resp = body.get("base_resp")
    if not isinstance(resp, Mapping):
        return 0, None
    code = resp.get("status_code")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    message = text(resp.get("status_msg"))
    if not isinstance(code, int) or isinstance(code, bool):
        return 0, message
    return code, message[:MAX_MESSAGE] if message else None


def task_id_of(body: Mapping[str, Any]) -> str | None:
    value = body.get("task_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def observation(body: Mapping[str, Any]) -> Observation:
    """An observation from a query answer or a callback (the same fields)."""
    word = status_word(body.get("status"))
    status = STATES.get(word.lower()) if word else None
    return Observation(
        status=status or Status.QUEUED,
        provider_status=word,
        error=_failure(body) if status is Status.FAILED else None,
        raw=body,
        provider_job_id=task_id_of(body),
        # No status at all says nothing new; an unknown one must stay visible.
        known=word is None or status is not None,
    )


def _failure(body: Mapping[str, Any]) -> str:
    code, message = base_resp(body)
    if code:
        return f"{message or 'failed'} ({code})"
    reason = text(body.get("error_message")) or text(body.get("message"))
    return reason[:MAX_MESSAGE] if reason else FAILED_WITHOUT_REASON


def _is_image(value: Any) -> bool:
    return is_http_url(value) or (isinstance(value, str) and value.startswith("data:image/"))


def _option_problems(options: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in options:
        if name in RESERVED:
            problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
    for name in BOOLEAN_OPTIONS:
        if name in options and not isinstance(options[name], bool):
            problems[f"options.{name}"] = "must be true or false"
    if "duration" in options:
        value = options["duration"]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems["options.duration"] = "whole seconds (6, or 10 on Hailuo-02 below 1080P)"
    if "resolution" in options and options["resolution"] not in RESOLUTIONS:
        problems["options.resolution"] = f"must be one of {', '.join(RESOLUTIONS)}"
    return problems


class MiniMax(HTTPProvider):
    supports_callbacks = True
    # MiniMax reads first_frame_image as a URL or a data:image/...;base64, URI.
    accepts_image_data = True
    rate_limit_pause = RATE_LIMIT_PAUSE

    def _path(self, suffix: str) -> str:
        # base_url is the host; tolerate one that already ends in /v1.
        return suffix if self.config.base_url.rstrip("/").endswith("/v1") else f"/v1{suffix}"

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            code, message = base_resp(body)
            if code:
                return str(code), message or f"MiniMax error {code}"
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = await super().request_json(method, path, **kwargs)
        except ProviderError as exc:
            # An HTTP error that carries MiniMax's code: the code says what it means.
            code = int(exc.code) if exc.code and exc.code.isdigit() else None
            if code in TRANSIENT_CODES:
                exc.transient = True
            elif code in PERMANENT_CODES:
                exc.transient = False
            raise
        if not isinstance(answer, Mapping):
            raise ProviderError(self.name, "the answer is not a JSON object", transient=True)
        return answer

    def raise_for_code(self, answer: Mapping[str, Any], *, task_failed: bool = False) -> None:
        """Raise the error that ``base_resp`` reports in a 200 answer, if any.

        ``task_failed``: the answer reports a failed task, whose code is the task's
        reason rather than an error of the request.
        """
        code, message = base_resp(answer)
        if code == 0 or task_failed:
            return
        retry_after = None
        if code == RATE_LIMITED:
            retry_after = self.rate_limit_pause
            self.gate.block_for(retry_after)
        raise ProviderError(
            self.name,
            message or f"MiniMax answered status_code {code}",
            transient=code not in PERMANENT_CODES,
            code=str(code),
            retry_after=retry_after,
        )

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        model = request.model or self.config.default_model
        if not model:
            problems["model"] = "required: name a model or set the provider's default_model"
        images = request.images
        most = 1 if model == SUBJECT_MODEL else 2
        if len(images) > most:
            what = "one subject image" if most == 1 else "a first and a last frame"
            problems["images"] = f"at most {most} ({what}), got {len(images)}"
        elif model == SUBJECT_MODEL and not images:
            problems["images"] = f"{SUBJECT_MODEL} needs the subject's image"
        elif not all(_is_image(image) for image in images):
            problems["images"] = "each image must be an http(s) URL or a data:image/... URI"
        prompt = request.prompt or ""
        if not prompt.strip() and not images:
            problems["prompt"] = "required unless an image is given"
        elif len(prompt) > MAX_PROMPT:
            problems["prompt"] = f"at most {MAX_PROMPT} characters, got {len(prompt)}"
        if request.mode is not None:
            problems["mode"] = "MiniMax has no modes: the model and the images decide"
        problems.update(_option_problems(request.options))
        if problems:
            raise InvalidRequest(problems)

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        self.validate(request)
        body: dict[str, Any] = dict(request.options)
        body["model"] = model = request.model or self.config.default_model
        if request.prompt:
            body["prompt"] = request.prompt
        images = list(request.images)
        if model == SUBJECT_MODEL:
            body["subject_reference"] = [{"type": "character", "image": images}]
        elif images:
            body["first_frame_image"] = images[0]
            if len(images) > 1:
                body["last_frame_image"] = images[1]
        if callback_url:
            body["callback_url"] = callback_url
        key = self.config.api_key
        answer = await self.request_json("POST", self._path(CREATE_PATH), key=key, json=body)
        self.raise_for_code(answer)
        task_id = task_id_of(answer)
        if task_id is None:
            # Not transient: asking again could create (and bill) a second task.
            raise ProviderError(self.name, "the create answer has no task_id", transient=False)
        accepted = Observation(status=Status.QUEUED, raw=answer, provider_job_id=task_id)
        return Submission(task_id, accepted, key.fingerprint)

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The create answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the task id is not known yet", transient=True)
        key = self.key_for(job)
        answer = await self.request_json(
            "GET", self._path(QUERY_PATH), key=key, params={"task_id": job.provider_job_id}
        )
        seen = observation(answer)
        self.raise_for_code(answer, task_failed=seen.status is Status.FAILED)
        if status_word(answer.get("status")) is None:
            raise ProviderError(self.name, "the query answer has no status", transient=True)
        if seen.status is not Status.COMPLETED:
            return seen
        file_id = answer.get("file_id")
        if isinstance(file_id, int) and not isinstance(file_id, bool):
            file_id = str(file_id)
        if not (isinstance(file_id, str) and file_id):
            raise ProviderError(
                self.name, "the task succeeded but names no file_id yet", transient=True
            )
        return replace(seen, result_url=await self._download_url(file_id, key))

    async def _download_url(self, file_id: str, key: Secret) -> str:
        try:
            answer = await self.request_json(
                "GET", self._path(FILE_PATH), key=key, params={"file_id": file_id}
            )
            self.raise_for_code(answer)
        except ProviderError as exc:
            if exc.transient or exc.code in ("1004", "2049") or exc.status_code in (401, 403):
                raise
            # The task already says Success: a refused file is most likely the file
            # lagging behind the task, so ask again rather than fail the job.
            raise ProviderError(
                self.name,
                f"the task succeeded but its file is not available: {exc.message}",
                transient=True,
                status_code=exc.status_code,
                code=exc.code,
            ) from None
        file = answer.get("file")
        file = file if isinstance(file, Mapping) else {}
        url = text(file.get("download_url")) or text(file.get("backup_download_url"))
        if url is None:
            raise ProviderError(self.name, "the file answer has no download_url", transient=True)
        return url

    def handshake(self, body: bytes) -> Mapping[str, Any] | None:
        check = unsigned.payload(body)
        if check is None or "task_id" in check:
            return None
        challenge = check.get("challenge")
        return {"challenge": challenge} if isinstance(challenge, str) else None

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        # MiniMax signs nothing: finding the job by its URL token was the proof.
        report = unsigned.payload(body)
        if report is None:
            return unsigned.body_nonce(job, body)
        # Without case, and the query's "Fail" is the callbacks' "failed".
        word = (status_word(report.get("status")) or "").lower()
        return unsigned.nonce(job, task_id_of(report), "failed" if word == "fail" else word)

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        return observation(payload)
