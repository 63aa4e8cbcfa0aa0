"""A fake Kling (``/v1/videos``): JWT-authenticated tasks, called back on every change.

Shapes follow Kling's docs: requests carry ``Authorization: Bearer <JWT>`` signed with
the account's secret key (refused with 1000 to 1004 as Kling does), answers are
``{code, message, request_id, data}``, a task goes submitted -> processing -> succeed |
failed, and the callback_url hears of every change. What the docs leave open is a
setting: whether callbacks come bare or enveloped, how they are retried, and whether a
task is found under the other kind's query path.

Markers in the prompt select misbehaviour: ``[fail]``, ``[slow]``, ``[unknown]``,
``[never]``, ``[early]`` (a callback claiming success while the task still runs),
``[lost]`` (no callbacks), ``[duplicate]`` (each callback twice), and refusals of the
submission: ``[429]`` (1302, with Retry-After), ``[busy]`` (1303), ``[arrears]`` (1101),
``[policy]`` (1301) and ``[500]`` (5000).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, scenario_of
from receiver.sandbox.media import file_response

KINDS = ("text2video", "image2video")
MODELS = (
    "kling-v1", "kling-v1-5", "kling-v1-6", "kling-v2-master", "kling-v2-1",
    "kling-v2-1-master", "kling-v2-5-turbo", "kling-v2-6",
)  # fmt: skip
MARKERS = (
    "fail", "slow", "unknown", "never", "early", "lost", "duplicate",
    "429", "busy", "arrears", "policy", "500",
)  # fmt: skip
# What [unknown] tasks report between submitted and processing: not a documented status.
UNDOCUMENTED_STATUS = "queueing"
FAIL_MESSAGE = "Failure to pass the risk control system"
POLICY_MESSAGE = "The content you entered did not pass the content security review"
MAX_PROMPT = 2500
# HTTP status -> Kling's code, for refusals made by failure injection.
_CODES = {400: 1200, 401: 1000, 403: 1103, 404: 1203, 429: 1302, 500: 5000, 503: 5001, 504: 5002}
_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("std", "pro"),
    "aspect_ratio": ("16:9", "9:16", "1:1"),
    "duration": ("5", "10"),
    "sound": ("off", "on"),
}
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class KlingFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    # Access key -> secret key. Empty: any well-formed, unexpired token, whatever its
    # issuer (with no secret to check the signature against).
    key_pairs: dict[str, str] = field(default_factory=dict)
    # Unconfirmed: the callback page shows the bare task; transcriptions wrap it in the
    # {code, message, request_id, data} envelope of the answers.
    callback_envelope: bool = False
    # Unconfirmed: the docs say nothing about retries; these are tried after a non-2xx.
    callback_retry_delays: tuple[float, ...] = (1.0, 5.0)
    callback_timeout: float = 10.0
    # Unconfirmed: whether a task is found under the other kind's path as well.
    strict_kinds: bool = True
    retry_after: int = 1  # the Retry-After of a [429] submission
    fail_message: str = FAIL_MESSAGE


class KlingRefusal(Exception):
    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class RecordedCallback(NamedTuple):
    time: float  # time.monotonic() when the attempt finished
    task_id: str
    status: str
    body: bytes
    status_code: int | None
    error: str | None


@dataclass
class Task:
    task_id: str
    account: str  # the access key that created it; only it can see the task
    kind: str
    params: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    created_at: int = field(default_factory=lambda: _now_ms())
    updated_at: int = field(default_factory=lambda: _now_ms())
    status: str = "submitted"
    message: str = ""
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def external_task_id(self) -> str:
        return str(self.params.get("external_task_id") or "")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _task_id() -> str:
    # Kling's task ids are long decimal numbers.
    return str(secrets.randbelow(9 * 10**17) + 10**17)


def _unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _time(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _is_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)


def _is_image(value: object) -> bool:
    """A URL, or base64 without any data: prefix, as Kling's docs ask."""
    if _is_url(value):
        return True
    if not isinstance(value, str) or not value:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise KlingRefusal(400, 1201, message)


def _validate(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The documented fields of a submission, with the documented defaults."""

    def get(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    p: dict[str, Any] = {"model_name": get("model_name", "kling-v1")}
    _require(p["model_name"] in MODELS, f"model_name is invalid: {p['model_name']!r}")
    p["prompt"] = prompt = get("prompt", "")
    _require(isinstance(prompt, str), "prompt must be a string")
    if kind == "text2video":
        _require(bool(prompt.strip()), "prompt is required")
    _require(len(prompt) <= MAX_PROMPT, f"prompt must not exceed {MAX_PROMPT} characters")
    p["negative_prompt"] = negative = get("negative_prompt", "")
    ok = isinstance(negative, str) and len(negative) <= MAX_PROMPT
    _require(ok, f"negative_prompt must be a string of at most {MAX_PROMPT} characters")
    p["cfg_scale"] = cfg = get("cfg_scale", 0.5)
    ok = isinstance(cfg, int | float) and not isinstance(cfg, bool) and 0 <= cfg <= 1
    _require(ok, "cfg_scale must be between 0 and 1")
    for name, choices in _CHOICES.items():
        if name == "aspect_ratio" and kind == "image2video":
            continue  # image2video follows the image
        p[name] = value = get(name, choices[0])
        _require(value in choices, f"{name} must be one of {', '.join(choices)}")
    if kind == "image2video":
        image, tail = body.get("image"), body.get("image_tail")
        _require(bool(image or tail), "at least one of image and image_tail is required")
        for name, value in (("image", image), ("image_tail", tail)):
            if value:
                prefixed = isinstance(value, str) and value.startswith("data:")
                _require(not prefixed, f"{name} must be base64 without the data: prefix")
                _require(_is_image(value), f"{name} must be a URL or base64 data")
                p[name] = value
    p["callback_url"] = url = body.get("callback_url") or None
    _require(url is None or _is_url(url), "callback_url must be an http(s) URL")
    p["external_task_id"] = external = body.get("external_task_id") or None
    _require(external is None or isinstance(external, str), "external_task_id must be a string")
    return p


class KlingFake(FakeProvider):
    prefix = "kling"
    settings: KlingFakeSettings
    tasks: dict[str, Task]

    def __init__(self, settings: KlingFakeSettings | None = None) -> None:
        self.callbacks: list[RecordedCallback] = []
        self._client: httpx.AsyncClient | None = None
        super().__init__(settings or KlingFakeSettings())

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/videos/{kind}", self._guarded(self._submit), methods=["POST"]),
            Route("/v1/videos/{kind}", self._guarded(self._list), methods=["GET"]),
            Route("/v1/videos/{kind}/{task_id}", self._guarded(self._query), methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        return self._refusal(KlingRefusal(status, _CODES.get(status, 5000), message, headers))

    @staticmethod
    def _refusal(refusal: KlingRefusal) -> Response:
        body = {"code": refusal.code, "message": refusal.message, "request_id": str(uuid.uuid4())}
        return JSONResponse(body, status_code=refusal.status, headers=refusal.headers)

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                if request.path_params["kind"] not in KINDS:
                    raise KlingRefusal(404, 1202, "invalid request method or path")
                return await handler(request)
            except KlingRefusal as refusal:
                return self._refusal(refusal)

        return endpoint

    # --- auth ----------------------------------------------------------------

    def authenticate(self, request: Request) -> str:
        """The access key of a valid token, or the refusal Kling answers."""
        header = request.headers.get("authorization", "")
        if not header.strip():
            raise KlingRefusal(401, 1001, "Authorization is empty")
        scheme, _, token = header.partition(" ")
        parts = token.strip().split(".")
        if scheme.lower() != "bearer" or len(parts) != 3:
            raise KlingRefusal(401, 1002, "Authorization is invalid")
        try:
            head = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (ValueError, binascii.Error):
            raise KlingRefusal(401, 1002, "Authorization is invalid") from None
        if not isinstance(head, dict) or not isinstance(claims, dict):
            raise KlingRefusal(401, 1002, "Authorization is invalid")
        issuer, expires, not_before = claims.get("iss"), _time(claims, "exp"), _time(claims, "nbf")
        if head.get("alg") != "HS256" or not isinstance(issuer, str) or expires is None:
            raise KlingRefusal(401, 1002, "Authorization is invalid")
        pairs = self.settings.key_pairs
        if pairs:
            secret = pairs.get(issuer)
            signed = f"{parts[0]}.{parts[1]}".encode()
            expected = hmac.new((secret or "").encode(), signed, hashlib.sha256).digest()
            if secret is None or not hmac.compare_digest(expected, signature):
                raise KlingRefusal(401, 1000, "Authentication failed")
        now = time.time()
        if not_before is not None and now < not_before:
            raise KlingRefusal(401, 1003, "Authorization is not yet valid")
        if now >= expires:
            raise KlingRefusal(401, 1004, "Authorization has expired")
        return issuer

    # --- HTTP endpoints -----------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        account = self.authenticate(request)
        kind = request.path_params["kind"]
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise KlingRefusal(400, 1200, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise KlingRefusal(400, 1200, "the request body must be a JSON object")
        scenario = scenario_of(body.get("prompt"), MARKERS)
        if "429" in scenario:
            retry = {"Retry-After": str(self.settings.retry_after)}
            raise KlingRefusal(429, 1302, "API request frequency exceeds the limit", retry)
        if "busy" in scenario:
            raise KlingRefusal(429, 1303, "parallel task over resource pack limit")
        if "arrears" in scenario:
            raise KlingRefusal(429, 1101, "Account arrears: please top up")
        if "500" in scenario:
            raise KlingRefusal(500, 5000, "Internal server error")
        params = _validate(kind, body)
        if "policy" in scenario:
            raise KlingRefusal(400, 1301, POLICY_MESSAGE)
        external = params["external_task_id"]
        if external and any(
            t.account == account and t.external_task_id == external for t in self.tasks.values()
        ):
            raise KlingRefusal(400, 1201, "external_task_id already exists")
        root = request.scope.get("root_path", "")
        task = Task(
            task_id=_task_id(),
            account=account,
            kind=kind,
            params=params,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
        )
        self.tasks[task.task_id] = task
        request.state.task_id = task.task_id
        self.spawn(self._progress(task))
        data = {
            "task_id": task.task_id,
            "task_status": task.status,
            "task_info": self._info(task),
            "created_at": task.created_at,
            "updated_at": task.updated_at,
        }
        return self._ok(data)

    async def _query(self, request: Request) -> Response:
        account = self.authenticate(request)
        wanted = request.path_params["task_id"]
        request.state.task_id = wanted
        # Either id names the task: Kling's own, or the caller's external_task_id.
        task = self.tasks.get(wanted) or next(
            (t for t in self.tasks.values() if t.external_task_id == wanted), None
        )
        kind = request.path_params["kind"]
        if (
            task is None
            or task.account != account
            or (self.settings.strict_kinds and task.kind != kind)
        ):
            raise KlingRefusal(404, 1203, "task not found")
        request.state.task_id = task.task_id
        return self._ok(self.task_data(task))

    async def _list(self, request: Request) -> Response:
        account = self.authenticate(request)
        kind = request.path_params["kind"]
        try:
            page = int(request.query_params.get("pageNum", "1"))
            size = int(request.query_params.get("pageSize", "30"))
        except ValueError:
            raise KlingRefusal(400, 1201, "pageNum and pageSize must be integers") from None
        if not (page >= 1 and 1 <= size <= 500):
            raise KlingRefusal(400, 1201, "pageNum must be at least 1, pageSize 1 to 500")
        mine = [t for t in self.tasks.values() if t.account == account and t.kind == kind]
        mine.sort(key=lambda t: t.created_at, reverse=True)
        chosen = mine[(page - 1) * size : page * size]
        return JSONResponse(
            {
                "code": 0,
                "message": "SUCCEED",
                "request_id": str(uuid.uuid4()),
                "data": [self.task_data(t) for t in chosen],
            }
        )

    async def _file(self, request: Request) -> Response:
        task = self.tasks.get(request.path_params["name"].removesuffix(".mp4"))
        request.state.task_id = None if task is None else task.task_id
        if task is None or task.status != "succeed":
            return Response("not found", status_code=404, media_type="text/plain")
        served = file_response("mp4", self.settings.files)
        assert served is not None
        return served

    # --- bodies -------------------------------------------------------------

    @staticmethod
    def _ok(data: dict[str, Any]) -> JSONResponse:
        request_id = str(uuid.uuid4())
        return JSONResponse(
            {"code": 0, "message": "SUCCEED", "request_id": request_id, "data": data}
        )

    @staticmethod
    def _info(task: Task) -> dict[str, Any]:
        return {"external_task_id": task.external_task_id} if task.external_task_id else {}

    def task_data(self, task: Task, status: str | None = None) -> dict[str, Any]:
        """The task as the query answer's data shows it (or as it would in ``status``)."""
        status = status or task.status
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": status,
            "task_status_msg": task.message if status == "failed" else "",
            "task_info": self._info(task),
            "created_at": task.created_at,
            "updated_at": task.updated_at,
        }
        if status == "succeed":
            duration = task.params.get("duration", "5")
            data["final_unit_deduction"] = "2" if duration == "10" else "1"
            video = {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, task.task_id)),
                "url": f"{task.base_url}/files/{task.task_id}.mp4",
                "duration": duration,
            }
            data["task_result"] = {"videos": [video]}
        return data

    # --- progression and callbacks ------------------------------------------

    async def _progress(self, task: Task) -> None:
        queue, start, run = self.settings.timing.stages(task.scenario)
        await asyncio.sleep(queue)
        if "unknown" in task.scenario:
            self._set(task, UNDOCUMENTED_STATUS)
        await asyncio.sleep(start)
        self._set(task, "processing")
        if "early" in task.scenario:
            self._send_callback(task, self.task_data(task, "succeed"))
        if "never" in task.scenario:
            return
        await asyncio.sleep(run)
        if "fail" in task.scenario:
            task.message = self.settings.fail_message
            self._set(task, "failed")
        else:
            self._set(task, "succeed")

    def _set(self, task: Task, status: str) -> None:
        task.status = status
        task.updated_at = max(_now_ms(), task.updated_at + 1)
        self._send_callback(task, self.task_data(task))

    def _send_callback(self, task: Task, data: dict[str, Any]) -> None:
        url = task.params.get("callback_url")
        if not url or "lost" in task.scenario:
            return
        if self.settings.callback_envelope:
            request_id = str(uuid.uuid4())
            payload: dict[str, Any] = {"code": 0, "message": "SUCCEED", "request_id": request_id}
            payload["data"] = data
        else:
            payload = data
        # Serialized once, so that every retry of a delivery is byte-identical.
        body = json.dumps(payload).encode()
        self.spawn(self._deliver(task, url, str(data["task_status"]), body))

    async def _deliver(self, task: Task, url: str, status: str, body: bytes) -> None:
        # One at a time per task, in the order of the changes.
        async with task.delivery_lock:
            for delay in (0.0, *self.settings.callback_retry_delays):
                await asyncio.sleep(delay)
                ok = await self._post(task, url, status, body)
                if "duplicate" in task.scenario:
                    ok = await self._post(task, url, status, body) or ok
                if ok:
                    return

    async def _post(self, task: Task, url: str, status: str, body: bytes) -> bool:
        self._client = self._client or httpx.AsyncClient()
        code: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                url,
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=self.settings.callback_timeout,
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.callbacks.append(
            RecordedCallback(time.monotonic(), task.task_id, status, body, code, error)
        )
        return code is not None and 200 <= code < 300
