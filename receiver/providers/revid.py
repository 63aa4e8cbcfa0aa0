"""revid (ai.revidapi.com): multipart submit, then polling; it sends no callbacks."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from receiver.config import Secret
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
from receiver.providers.fields import first_message, number
from receiver.states import Status

# The docs name "pending", "processing" and "completed"; the failure word is not
# documented, so both plausible spellings count as failed.
STATES = {
    "pending": Status.QUEUED,
    "processing": Status.PROCESSING,
    "completed": Status.COMPLETED,
    "failed": Status.FAILED,
    "error": Status.FAILED,
}
MODES = ("t2v", "i2v")
# Fields vidhook itself sets (the image travels as img_url or input_image).
RESERVED = frozenset(
    {"prompt", "model", "mode", "images", "input_image", "img_url", "callback_url"}
)
# Where a failed job's reason may sit; the docs show no failed body at all.
_MESSAGE_FIELDS = ("error", "message", "error_message", "detail", "reason", "msg")
_EXTENSIONS = {"jpeg": "jpg", "svg+xml": "svg"}


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    content: bytes


def observation(body: Mapping[str, Any]) -> Observation:
    """An observation from a submit or status body."""
    raw_status = body.get("status")
    provider_status = str(raw_status) if raw_status is not None else None
    # Case is not documented either; "Completed" would otherwise stall a job forever.
    status = STATES.get((provider_status or "").strip().lower())
    job_id = body.get("job_id", body.get("id"))
    return Observation(
        status=status or Status.QUEUED,
        provider_status=provider_status,
        result_url=_result_url(body.get("result")),
        error=first_message(body, _MESSAGE_FIELDS) if status is Status.FAILED else None,
        credits=number(body.get("cost")),
        raw=body,
        provider_job_id=str(job_id) if job_id is not None else None,
        known=status is not None,
        progress=Progress.done(body.get("progress")),
    )


def _result_url(result: Any) -> str | None:
    # Documented as a bare URL string; an object or list of URLs is tolerated too.
    if isinstance(result, str):
        return result or None
    if isinstance(result, Mapping):
        for name in ("url", "video_url", "video"):
            if isinstance(result.get(name), str) and result[name]:
                return str(result[name])
    if isinstance(result, list) and result:
        return _result_url(result[0])
    return None


def mode_for(request: SubmitRequest) -> str:
    return request.mode or ("i2v" if request.images else "t2v")


def image_problem(image: str) -> str | None:
    """Why an image cannot be sent, or None."""
    if image.startswith("data:"):
        try:
            decode_data_uri(image)
        except ValueError as exc:
            return str(exc)
        return None
    parts = urlsplit(image)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http(s) URL or a data:image/...;base64, URI"
    return None


def decode_data_uri(uri: str) -> Upload:
    """The file inside a ``data:image/...;base64,`` URI; ValueError if it is not one."""
    header, comma, payload = uri.partition(",")
    params = header.removeprefix("data:").split(";")
    content_type = params[0].strip().lower()
    typed = re.fullmatch(r"image/[a-z0-9.+-]+", content_type)
    if not comma or not typed or params[-1].strip().lower() != "base64":
        raise ValueError("a data URI must look like data:image/<type>;base64,<data>")
    try:
        content = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data URI is not valid base64") from None
    if not content:
        raise ValueError("the data URI holds no data")
    subtype = content_type.removeprefix("image/")
    extension = _EXTENSIONS.get(subtype, subtype)
    return Upload(f"input.{extension}", content_type, content)


def form_value(value: Any) -> str:
    # multipart carries text only; the docs spell booleans as true/false.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Revid(HTTPProvider):
    supports_callbacks = False
    # A data: URI is uploaded as the multipart input_image file.
    accepts_image_data = True

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            nested = body.get("error")
            if isinstance(nested, Mapping):
                body = nested
            names = (body.get(k) for k in ("error", "code", "type", "reason"))
            code = next((n for n in names if isinstance(n, str) and n and not n.isdigit()), None)
            message = first_message(
                {k: v for k, v in body.items() if k != "error"}, _MESSAGE_FIELDS
            )
            detail = body.get("detail")
            if isinstance(detail, list):
                # FastAPI's validation shape: [{"loc": [...], "msg": "..."}, ...]
                message = message or "; ".join(_loc_msg(item) for item in detail)
            if message or code:
                return code, message or code or ""
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()

    def validate(self, request: SubmitRequest) -> None:
        problems: dict[str, str] = {}
        if not (request.prompt or "").strip():
            problems["prompt"] = "required"
        if not (request.model or self.config.default_model):
            problems["model"] = "required (no default_model is configured)"
        mode = mode_for(request)
        count = len(request.images)
        if mode not in MODES:
            problems["mode"] = f"must be one of {', '.join(MODES)}"
        if count > 1:
            problems["images"] = f"at most one image, got {count}"
        elif mode == "i2v" and count == 0:
            problems["images"] = "i2v needs one image"
        elif mode == "t2v" and count:
            problems["images"] = "t2v takes no image; use mode i2v"
        elif count and (why := image_problem(request.images[0])):
            problems["images"] = why
        for name, value in request.options.items():
            if name in RESERVED:
                problems[f"options.{name}"] = "is set by vidhook; use the top-level field"
            elif not isinstance(value, str | int | float | bool):
                problems[f"options.{name}"] = "must be a string, number or boolean"
        duration = request.options.get("duration")
        if isinstance(duration, bool) or (isinstance(duration, int | float) and duration <= 0):
            problems["options.duration"] = 'must be a positive number of seconds or like "5s"'
        if problems:
            raise InvalidRequest(problems)

    def form(self, request: SubmitRequest) -> list[tuple[str, tuple[str | None, Any, str | None]]]:
        """The multipart parts of a submit, text fields first and the file last."""
        fields: dict[str, str] = {
            "prompt": request.prompt or "",
            "model": request.model or self.config.default_model or "",
            "mode": mode_for(request),
        }
        for name, value in request.options.items():
            fields[name] = form_value(value)
        duration = request.options.get("duration")
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            fields["duration"] = f"{duration:g}s"  # the docs' unit: "5s", "10s"
        upload: Upload | None = None
        if request.images:
            image = request.images[0]
            if image.startswith("data:"):
                upload = decode_data_uri(image)
            else:
                fields["img_url"] = image
        parts: list[tuple[str, tuple[str | None, Any, str | None]]] = [
            (name, (None, value, None)) for name, value in fields.items()
        ]
        if upload is not None:
            parts.append(("input_image", (upload.filename, upload.content, upload.content_type)))
        return parts

    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission:
        # callback_url is ignored: revid has no webhooks, the poller fetches instead.
        self.validate(request)
        key = self.config.api_key
        data = await self._call("POST", "/v1/video/generate", key, files=self.form(request))
        job_id = data.get("job_id") if isinstance(data, Mapping) else None
        if not isinstance(job_id, str | int) or isinstance(job_id, bool) or not str(job_id):
            raise ProviderError(self.name, "the submit response has no job_id", transient=True)
        return Submission(str(job_id), observation(data), key.fingerprint)

    async def fetch(self, job: JobRef) -> Observation:
        if not job.provider_job_id:
            # The submit response may still be on its way; ask again later.
            raise ProviderError(self.name, "the provider job id is not known yet", transient=True)
        path = f"/v1/jobs/{quote(job.provider_job_id, safe='')}"
        data = await self._call("GET", path, self.key_for(job))
        if not isinstance(data, Mapping):
            raise ProviderError(self.name, "the status response is not an object", transient=True)
        return observation(data)

    async def _call(self, method: str, path: str, key: Secret, **kwargs: Any) -> Any:
        try:
            return await self.request_json(method, path, key=key, **kwargs)
        except ProviderError as exc:
            # A 401 body may echo the key it refused; it must not reach logs or the store.
            secret = key.reveal()
            if secret and secret in f"{exc.message} {exc.code}":
                exc.message = exc.message.replace(secret, "***")
                exc.code = exc.code.replace(secret, "***") if exc.code else None
                exc.args = (exc.message,)
            raise


def _loc_msg(item: Any) -> str:
    if not isinstance(item, Mapping):
        return str(item)
    loc = item.get("loc")
    where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
    msg = str(item.get("msg", ""))
    return f"{where}: {msg}" if where else msg
