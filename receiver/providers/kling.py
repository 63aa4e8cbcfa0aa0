"""Kling (klingai.com): self-signed JWTs, text2video and image2video, unsigned callbacks.

Kling hands out no bearer key: every request carries a short-lived JWT (HS256) that the
caller signs with its secret key and that names its access key. One token per key pair
is kept and replaced a few minutes before it expires.

Callbacks name the task but nothing signs them: the token in the callback URL is the only
proof, and the body must name that job's task. Such a body is evidence of a status only:
``processing`` is taken as it is, while ``succeed`` or ``failed`` only prompt a poll, and
the poll decides (the video URL and the reason come from it, never from a callback).
Kling's callback page shows the bare task object, while transcriptions of its docs show
it inside the ``{code, message, request_id, data}`` envelope of its answers: both are read.

Kling's ``external_task_id`` is vidhook's job id. Kling refuses a second task with the
same one, so a submission can be sent again safely: when the retry is refused as a
duplicate, the task the first attempt created is looked up by that id and taken over.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

import signing
from receiver.config import KeyPair, ProviderConfig, Secret
from receiver.providers.base import (
    HTTPProvider,
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.fields import is_http_url, number, text
from receiver.states import Status

TEXT2VIDEO = "text2video"
IMAGE2VIDEO = "image2video"
KINDS = (TEXT2VIDEO, IMAGE2VIDEO)
STATES = {
    "submitted": Status.QUEUED,
    "processing": Status.PROCESSING,
    "succeed": Status.COMPLETED,
    "failed": Status.FAILED,
}
TOKEN_LIFETIME = 1800  # seconds, as Kling's own examples sign them
RENEW_BEFORE = 300  # a token this close to its expiry is replaced before use
NOT_BEFORE_SLACK = 5  # nbf a little in the past, for a Kling clock slightly behind ours
MAX_PROMPT = 2500
DURATIONS = ("5", "10")
QUALITY_MODES = ("std", "pro")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
# Fields vidhook itself sets; an option may not override them.
RESERVED = frozenset(
    {"model_name", "prompt", "image", "image_tail", "callback_url", "external_task_id"}
)
# Tokens Kling refused as malformed, not yet valid (nbf) or expired: a fresh one may pass.
RENEWABLE = frozenset({"1002", "1003", "1004"})
# What a refusal's code suggests doing, beyond Kling's own message.
HINTS = {
    "1000": "check access_key_env and secret_key_env",
    "1002": "check access_key_env and secret_key_env",
    "1003": "check this machine's clock",
    "1004": "check this machine's clock",
    "1101": "the Kling account is in arrears",
    "1102": "the resource pack is used up",
}
# A refused submission that may be Kling seeing the same external_task_id again.
_MAYBE_DUPLICATE = frozenset({"1200", "1201"})
_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,(?P<data>.*)", re.IGNORECASE | re.DOTALL)
_KIND_HINTS = 10_000  # task kinds remembered (a lost one costs one extra request)


def is_transient_code(code: int, otherwise: bool) -> bool:
    """Kling's table: rate and concurrency limits and 5xxx ask to retry; its other codes
    do not, even those it sends with HTTP 429 (arrears, exhausted pack, IP whitelist)."""
    if code in (1302, 1303) or 5000 <= code <= 5999:
        return True
    if 1000 <= code <= 1999:
        return False
    return otherwise


def make_token(access_key: str, secret_key: str, now: float) -> str:
    """A JWT (HS256) as Kling wants it: issued by the access key, valid for 30 minutes."""
    header = _b64_json({"alg": "HS256", "typ": "JWT"})
    issued = int(now)
    claims = {"iss": access_key, "exp": issued + TOKEN_LIFETIME, "nbf": issued - NOT_BEFORE_SLACK}
    signing_input = f"{header}.{_b64_json(claims)}"
    digest = hmac.new(secret_key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(digest)}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64_json(value: Mapping[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def kling_image(value: str) -> str | None:
    """The image as Kling takes it: a URL as is, base64 without a ``data:`` prefix; None
    when it is neither."""
    if is_http_url(value):
        return value
    match = _DATA_URI.fullmatch(value)
    data = match["data"] if match else value
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data or None


def kind_for(request: SubmitRequest) -> str:
    if request.mode:
        return request.mode
    return IMAGE2VIDEO if request.images else TEXT2VIDEO


def task_of(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The task object of an answer or a callback, enveloped or bare."""
    data = payload.get("data")
    if isinstance(data, Mapping) and "task_id" not in payload and "task_status" not in payload:
        return data
    return payload


def observation(task: Mapping[str, Any]) -> Observation:
    """An observation from a task object (a submit or query answer's data, a callback)."""
    raw_status = task.get("task_status")
    word = str(raw_status) if raw_status is not None and raw_status != "" else None
    status = STATES.get(word or "")
    result = task.get("task_result")
    videos = result.get("videos") if isinstance(result, Mapping) else None
    first = videos[0] if isinstance(videos, list) and videos else None
    url = text(first.get("url")) if isinstance(first, Mapping) else None
    task_id = task.get("task_id")
    reason = text(task.get("task_status_msg"))
    return Observation(
        status=status or Status.QUEUED,
        provider_status=word,
        result_url=url if status is Status.COMPLETED else None,
        error=(reason or "failed without a reason") if status is Status.FAILED else None,
        credits=number(task.get("final_unit_deduction")),
        raw=task,
        provider_job_id=str(task_id) if task_id is not None and task_id != "" else None,
        known=status is not None,
    )


def external_id(task: Mapping[str, Any]) -> str | None:
    info = task.get("task_info")
    value = info.get("external_task_id") if isinstance(info, Mapping) else None
    return str(value) if value is not None and value != "" else None


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float


class Kling(HTTPProvider):
    supports_callbacks = True
    # Kling reads an image as a URL or as bare base64 (a data: URI's prefix is cut off).
    accepts_image_data = True
    # The job id goes to Kling as external_task_id, which Kling keeps unique: sending a
    # submission again cannot make a second task (see submit).
    idempotent_submit: bool = True

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        self.clock: Callable[[], float] = time.time
        self._tokens: dict[str, _Token] = {}
        self._kinds: dict[str, str] = {}

    # -- auth --

    def token(self, key: KeyPair) -> str:
        """The pair's current token, made anew when it is close to expiring."""
        now = self.clock()
        kept = self._tokens.get(key.fingerprint)
        if kept is not None and now < kept.renew_at:
            return kept.value
        value = make_token(key.access.reveal(), key.secret.reveal(), now)
        self._tokens[key.fingerprint] = _Token(value, int(now) + TOKEN_LIFETIME - RENEW_BEFORE)
        return value

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(self._pair(key))}"}

    def _pair(self, key: Secret) -> KeyPair:
        if not isinstance(key, KeyPair):  # the config makes pairs for kling; never a lone key
            raise ProviderError(self.name, "needs an access key and a secret key", transient=False)
        return key

    # -- requests --

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        try:
            body = response.json()
        except ValueError:
            return None, fallback
        if not isinstance(body, Mapping):
            return None, fallback
        return _code(body.get("code")), text(body.get("message")) or fallback

    async def _call(
        self, method: str, path: str, key: KeyPair, body: Any = None
    ) -> Mapping[str, Any]:
        try:
            answer = await self.request_json(method, path, key=key, json=body)
        except ProviderError as exc:
            if exc.status_code != 401 or exc.code not in RENEWABLE:
                raise self._classified(exc) from None
            # A token refused as malformed, early or expired: the clocks may disagree, or
            # the kept token may be stale. One fresh token; then the refusal stands.
            self._tokens.pop(key.fingerprint, None)
            try:
                answer = await self.request_json(method, path, key=key, json=body)
            except ProviderError as again:
                raise self._classified(again) from None
        return self._data(answer)

    def _classified(self, exc: ProviderError) -> ProviderError:
        if exc.code is None or not exc.code.isdigit():
            return exc
        hint = HINTS.get(exc.code)
        return ProviderError(
            self.name,
            f"{exc.message} ({hint})" if hint else exc.message,
            transient=is_transient_code(int(exc.code), exc.transient),
            status_code=exc.status_code,
            code=exc.code,
            retry_after=exc.retry_after,
        )

    def _data(self, answer: Any) -> Mapping[str, Any]:
        """The ``data`` of a successful answer; a non-zero ``code`` is a refusal."""
        if not isinstance(answer, Mapping):
            raise ProviderError(self.name, "the answer is not a JSON object", transient=True)
        code = _code(answer.get("code"))
        if code is not None and code != "0":
            message = text(answer.get("message")) or f"the provider answered code {code}"
            transient = is_transient_code(int(code), True) if code.isdigit() else True
            raise ProviderError(self.name, message, transient=transient, code=code)
        data = answer.get("data")
        if not isinstance(data, Mapping):
            raise ProviderError(self.name, "the answer has no data object", transient=True)
        return data

    # -- submitting --

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        kind = kind_for(request)
        count = len(request.images)
        if kind not in KINDS:
            problems["mode"] = f"must be one of {', '.join(KINDS)}"
        elif kind == TEXT2VIDEO and count:
            problems["images"] = "text2video takes no images; leave mode unset for image2video"
        elif kind == IMAGE2VIDEO and not 1 <= count <= 2:
            problems["images"] = f"image2video takes 1 image or 2 (first, last frame), got {count}"
        elif any(not isinstance(i, str) or kling_image(i) is None for i in request.images):
            problems["images"] = (
                "each image must be an http(s) URL, a data:image/...;base64, URI or raw base64"
            )
        prompt = request.prompt or ""
        if kind == TEXT2VIDEO and not prompt.strip():
            problems["prompt"] = "required for text2video"
        elif len(prompt) > MAX_PROMPT:
            problems["prompt"] = f"at most {MAX_PROMPT} characters, got {len(prompt)}"
        problems |= _option_problems(request.options, kind)
        if problems:
            raise InvalidRequest(problems)

    def _body(self, request: SubmitRequest, kind: str, callback_url: str | None) -> dict[str, Any]:
        body: dict[str, Any] = dict(request.options)
        model = request.model or self.config.default_model
        if model:
            body["model_name"] = model
        if request.prompt:
            body["prompt"] = request.prompt
        if "duration" in body:
            body["duration"] = str(body["duration"])  # Kling wants "5" or "10", as text
        images = [kling_image(i) for i in request.images]
        if images:
            body["image"] = images[0]
        if len(images) > 1:
            body["image_tail"] = images[1]
        if callback_url:
            body["callback_url"] = callback_url
        if request.job_id:
            body["external_task_id"] = request.job_id
        return body

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        self.validate(request)
        kind = kind_for(request)
        key = self._pair(self.config.api_key)
        path = f"/v1/videos/{kind}"
        try:
            task = await self._call("POST", path, key, self._body(request, kind, callback_url))
        except ProviderError as exc:
            if request.job_id is None or exc.transient or exc.code not in _MAYBE_DUPLICATE:
                raise
            task = await self._submitted_before(kind, key, request.job_id, exc)
        seen = observation(task)
        if seen.provider_job_id is None:
            # Not transient: asking again would be refused as a duplicate anyway.
            raise ProviderError(self.name, "the submit answer has no task_id", transient=False)
        self._remember(seen.provider_job_id, kind)
        return Submission(seen.provider_job_id, seen, key.fingerprint)

    async def _submitted_before(
        self, kind: str, key: KeyPair, job_id: str, refusal: ProviderError
    ) -> Mapping[str, Any]:
        """The task an earlier attempt of this submission created, found by its
        external_task_id; the refusal stands when there is none."""
        try:
            task = await self._call("GET", f"/v1/videos/{kind}/{quote(job_id, safe='')}", key)
        except ProviderError:
            raise refusal from None
        if external_id(task) != job_id:
            raise refusal
        return task

    # -- status --

    def _remember(self, task_id: str, kind: str) -> None:
        self._kinds.pop(task_id, None)
        self._kinds[task_id] = kind
        if len(self._kinds) > _KIND_HINTS:
            del self._kinds[next(iter(self._kinds))]

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The submit answer may still be on its way; ask again later.
            raise ProviderError(self.name, "the provider task id is not known yet", transient=True)
        key = self._pair(self.key_for(job))
        task_id = job.provider_job_id
        # Each kind has its own query path, and a task is found only under its own: the
        # kind used at submission is remembered, and after a restart both are tried.
        known = self._kinds.get(task_id)
        kinds = [known] if known else list(KINDS)
        kinds += [k for k in KINDS if k not in kinds]
        for index, kind in enumerate(kinds):
            try:
                task = await self._call("GET", f"/v1/videos/{kind}/{quote(task_id, safe='')}", key)
            except ProviderError as exc:
                if exc.status_code in (400, 404) and index + 1 < len(kinds):
                    continue
                raise
            return self._observed(task_id, kind, task)
        raise ProviderError(self.name, "no query path to ask", transient=False)

    def _observed(self, task_id: str, kind: str, task: Mapping[str, Any]) -> Observation:
        seen = observation(task)
        if seen.provider_status is None:
            raise ProviderError(self.name, "the task answer has no task_status", transient=True)
        if seen.status is Status.COMPLETED and seen.result_url is None:
            raise ProviderError(
                self.name, "the task succeeded but its answer names no video", transient=True
            )
        if seen.status.terminal:
            self._kinds.pop(task_id, None)
        else:
            self._remember(task_id, kind)
        return seen

    # -- callbacks --

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        # Nothing is signed: the job was found by the secret token in its callback URL,
        # and the body must at least name that job's task. It cannot change data anyway
        # (only a poll does), but a body naming another task is someone else's.
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            # Refused as invalid JSON by the caller, with nothing stored.
            return f"sha256:{job.id}:{hashlib.sha256(body).hexdigest()}"
        task = task_of(payload)
        task_id, external = task.get("task_id"), external_id(task)
        if task_id is None and external is None:
            raise signing.SignatureError("wrong_task", "the callback names no Kling task")
        if external is not None and external != job.id:
            raise signing.SignatureError("wrong_task", "the callback names another job")
        if task_id is not None and job.provider_job_id and str(task_id) != job.provider_job_id:
            raise signing.SignatureError("wrong_task", "the callback names another task")
        # One delivery per status change: a resend of it with other bytes is a replay.
        status, updated = task.get("task_status"), task.get("updated_at")
        if isinstance(status, str) and isinstance(updated, int) and not isinstance(updated, bool):
            return f"kling:{job.id}:{status}:{updated}"
        return f"sha256:{job.id}:{hashlib.sha256(body).hexdigest()}"

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        return observation(task_of(payload))

    def needs_confirmation(self, observation: Observation) -> bool:
        # Unsigned: the body is evidence of a status only (receiver.callbacks keeps
        # nothing else). A status that ends the job waits for a poll to confirm it; an
        # earlier one is applied as it is, since it can neither end the job nor carry
        # data. Confirming those too would keep the job in confirmation polling from its
        # first callback (Kling calls back on every change) to its end.
        return observation.status.terminal


def _code(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _option_problems(options: Mapping[str, Any], kind: str) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in options:
        if name in RESERVED:
            problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
    choices = {"mode": QUALITY_MODES, "aspect_ratio": ASPECT_RATIOS}
    for name, allowed in choices.items():
        if name in options and options[name] not in allowed:
            problems[f"options.{name}"] = f"must be one of {', '.join(allowed)}"
    if "aspect_ratio" in options and kind == IMAGE2VIDEO:
        problems["options.aspect_ratio"] = "image2video follows the image's aspect ratio"
    duration = options.get("duration")
    if duration is not None and (isinstance(duration, bool) or str(duration) not in DURATIONS):
        problems["options.duration"] = "must be 5 or 10 (seconds)"
    cfg = options.get("cfg_scale")
    if cfg is not None and (
        isinstance(cfg, bool) or not isinstance(cfg, int | float) or not 0 <= cfg <= 1
    ):
        problems["options.cfg_scale"] = "must be a number from 0 to 1"
    negative = options.get("negative_prompt")
    if negative is not None and (not isinstance(negative, str) or len(negative) > MAX_PROMPT):
        problems["options.negative_prompt"] = f"must be text of at most {MAX_PROMPT} characters"
    return problems
