"""A fake fal queue (``queue.fal.run``): requests, their status, result and cancel, and
webhooks signed with Ed25519.

Shapes follow fal's queue and webhook docs and its JS client: ``Authorization: Key``; a
submit goes to ``/{model_id}`` (subpath included) and answers the request's id and URLs,
which lie under the model's app, subpath dropped: the only place the request is found.
A request goes IN_QUEUE (``queue_position``) -> IN_PROGRESS (``logs``) -> COMPLETED, and
only its result says how it ended: the model's output, or an error answer (``detail``,
``X-Fal-Error-Type``). A cancel takes a queued request out and stops a running one. At
the end, the ``fal_webhook`` URL hears once (retried on failure) of the output
(``payload``) or the error, signed as fal signs: Ed25519 over the request id, user id,
timestamp and the SHA-256 of the body, in ``X-Fal-Webhook-*`` headers. The public key is
served as a JWKS at ``/.well-known/jwks.json``; :meth:`FalFake.rotate_key` replaces it.

What the docs leave open is a setting: which keys the submit answer carries, the HTTP
status and shape of a failed request's result, whether the status of a failed request
carries its error, the status codes of the cancel answers, whether the JWKS keeps a key
rotated out.

Markers in the prompt: ``[fail]`` (a content policy violation), ``[slow]``,
``[unknown]`` (an undocumented status before IN_PROGRESS), ``[never]``, ``[lost]`` (no
webhook), ``[duplicate]`` (the webhook twice), ``[badjson]`` (the output could not be
sent as JSON: ``payload`` null with ``payload_error``), and refusals of the submit:
``[429]`` (with Retry-After) and ``[500]``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, scenario_of
from receiver.sandbox.media import file_response, sample_video

MARKERS = ("fail", "slow", "unknown", "never", "lost", "duplicate", "badjson", "429", "500")
# What [unknown] requests report between the queue and the run: not a documented status.
UNDOCUMENTED_STATUS = "IN_BUFFER"
NAMESPACES = ("workflows", "comfy")
# The durations an app's models take, where the fake checks them (as their schemas do).
DURATIONS = {"fal-ai/kling-video": ("5", "10")}
POLICY_MESSAGE = (
    "The content could not be processed because it contained material flagged by a content checker."
)
POLICY_TYPE = "content_policy_violation"
PAYLOAD_ERROR = (
    "Response payload is not JSON serializable. Either return a JSON serializable object "
    "or use the queue endpoint to retrieve the response."
)
Handler = Callable[[Request], Awaitable[Response]]


def app_of(model_id: str) -> str:
    parts = model_id.split("/")
    return "/".join(parts[: 3 if parts[0] in NAMESPACES else 2])


@dataclass
class FalFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    user_id: str = "github|4242"  # the account, as X-Fal-Webhook-User-Id names it
    # Unconfirmed: the docs show subsets of the submit answer. "full": ids, URLs, status
    # and position; "urls": request_id and the three URLs; "ids": request_id and
    # gateway_request_id only.
    submit_keys: str = "full"
    # Unconfirmed: how a failed request's result answers: this status, with "detail" as
    # a list of {loc, msg, type} errors, or as one message.
    failed_result_status: int = 422
    detail_as_list: bool = True
    status_carries_error: bool = False  # unconfirmed: COMPLETED with error and error_type
    # Unconfirmed: the HTTP status of each cancel answer.
    cancel_codes: dict[str, int] = field(
        default_factory=lambda: {
            "CANCELLATION_REQUESTED": 202,
            "ALREADY_COMPLETED": 400,
            "NOT_FOUND": 404,
        }
    )
    keep_rotated_keys: bool = False  # whether the JWKS still lists a key rotated out
    webhook_retry_delays: tuple[float, ...] = (1.0, 5.0)  # fal: 10 tries over 2 hours
    webhook_timeout: float = 15.0
    retry_after: int = 1  # the Retry-After of a [429] submit


class FalRefusal(Exception):
    def __init__(
        self,
        status: int,
        detail: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.headers = status, detail, headers


class RecordedWebhook(NamedTuple):
    time: float  # time.monotonic() when the attempt finished
    request_id: str
    headers: dict[str, str]
    body: bytes
    status_code: int | None
    error: str | None


@dataclass
class QueuedRequest:
    id: str
    key: str
    model_id: str
    input: dict[str, Any]
    webhook: str | None
    scenario: frozenset[str]
    base_url: str
    status: str = "IN_QUEUE"
    logs: list[dict[str, Any]] = field(default_factory=list)
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {"detail", "type"} of a failed request
    inference_time: float | None = None
    runner: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def app(self) -> str:
        return app_of(self.model_id)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey

    def jwk(self) -> dict[str, str]:
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "use": "sig"}


class FalFake(FakeProvider):
    prefix = "fal"
    settings: FalFakeSettings
    tasks: dict[str, QueuedRequest]

    def __init__(self, settings: FalFakeSettings | None = None) -> None:
        self.webhooks: list[RecordedWebhook] = []
        self.keys = [SigningKey("fal-webhook-1", Ed25519PrivateKey.generate())]
        self._client: httpx.AsyncClient | None = None
        super().__init__(settings or FalFakeSettings())

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate_key(self) -> SigningKey:
        """Sign with a new key from now on, and publish it (dropping the old one, unless
        ``keep_rotated_keys``)."""
        fresh = SigningKey(f"fal-webhook-{len(self.keys) + 1}", Ed25519PrivateKey.generate())
        self.keys.append(fresh)
        return fresh

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/.well-known/jwks.json", self._jwks, methods=["GET"]),
            Route("/files/{request_id}/{name}", self._file, methods=["GET"]),
            Route("/{app:path}/requests/{request_id}/status", self._guarded(self._status),
                  methods=["GET"]),
            Route("/{app:path}/requests/{request_id}/cancel", self._guarded(self._cancel),
                  methods=["PUT"]),
            Route("/{app:path}/requests/{request_id}", self._guarded(self._result),
                  methods=["GET"]),
            Route("/{model_id:path}", self._guarded(self._submit), methods=["POST"]),
        ]  # fmt: skip

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                scheme, _, key = request.headers.get("authorization", "").partition(" ")
                if not key.strip():
                    raise FalRefusal(401, "Missing authorization header")
                if scheme != "Key" or not self.key_allowed(key.strip()):
                    raise FalRefusal(401, "Invalid authorization header: expected 'Key <key>'")
                return await handler(request)
            except FalRefusal as refusal:
                return JSONResponse(
                    {"detail": refusal.detail},
                    status_code=refusal.status,
                    headers=refusal.headers,
                )

        return endpoint

    # --- HTTP endpoints -----------------------------------------------------

    async def _jwks(self, request: Request) -> Response:
        listed = self.keys if self.settings.keep_rotated_keys else self.keys[-1:]
        return JSONResponse({"keys": [k.jwk() for k in listed]})

    async def _submit(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if len(model_id.split("/")) < 2 or "" in model_id.split("/"):
            raise FalRefusal(404, f"Application '{model_id}' not found")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise FalRefusal(422, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise FalRefusal(
                422, [_error(["body"], "Input should be a valid dictionary", "dict_type")]
            )
        prompt = body.get("prompt")
        if not isinstance(prompt, str) and not isinstance(body.get("image_url"), str):
            raise FalRefusal(422, [_error(["body", "prompt"], "Field required", "missing")])
        durations = DURATIONS.get(app_of(model_id))
        if durations and "duration" in body and body["duration"] not in durations:
            allowed = " or ".join(f"'{d}'" for d in durations)
            said = f"Input should be {allowed}"
            raise FalRefusal(422, [_error(["body", "duration"], said, "literal_error")])
        webhook = request.query_params.get("fal_webhook")
        if webhook is not None and not webhook.startswith(("http://", "https://")):
            raise FalRefusal(422, [_error(["query", "fal_webhook"], "Invalid URL", "url_parsing")])
        scenario = scenario_of(prompt, MARKERS)
        if "429" in scenario:
            retry = {"Retry-After": str(self.settings.retry_after)}
            raise FalRefusal(429, "Too many requests", retry)
        if "500" in scenario:
            raise FalRefusal(
                500, [_error(["body"], "Internal server error", "internal_server_error")]
            )
        root = request.scope.get("root_path", "")
        queued = QueuedRequest(
            id=str(uuid.uuid4()),
            key=request.headers["authorization"].partition(" ")[2].strip(),
            model_id=model_id,
            input=body,
            webhook=webhook,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
        )
        self.tasks[queued.id] = queued
        request.state.task_id = queued.id
        queued.runner = self.spawn(self._progress(queued))
        return JSONResponse(self._submitted(queued))

    def _submitted(self, queued: QueuedRequest) -> dict[str, Any]:
        at = f"{queued.base_url}/{queued.app}/requests/{queued.id}"
        urls = {"response_url": at, "status_url": f"{at}/status", "cancel_url": f"{at}/cancel"}
        ids = {"request_id": queued.id, "gateway_request_id": queued.id}
        if self.settings.submit_keys == "ids":
            return ids
        if self.settings.submit_keys == "urls":
            return {"request_id": queued.id, **urls}
        return {**ids, **urls, "status": "IN_QUEUE", "queue_position": self._place(queued)}

    def _place(self, queued: QueuedRequest) -> int:
        """How many requests wait ahead of this one (0: it is next)."""
        waiting = [q for q in self.tasks.values() if q.status == "IN_QUEUE"]
        return waiting.index(queued)

    def _find(self, request: Request) -> QueuedRequest:
        request_id = request.path_params["request_id"]
        request.state.task_id = request_id
        queued = self.tasks.get(request_id)
        key = request.headers["authorization"].partition(" ")[2].strip()
        # Found under its app only: a subpath (or another app) is another path.
        if queued is None or queued.key != key or queued.app != request.path_params["app"]:
            raise FalRefusal(404, "Request not found")
        return queued

    async def _status(self, request: Request) -> Response:
        queued = self._find(request)
        at = f"{queued.base_url}/{queued.app}/requests/{queued.id}"
        body: dict[str, Any] = {
            "status": queued.status,
            "request_id": queued.id,
            "response_url": at,
            "status_url": f"{at}/status",
            "cancel_url": f"{at}/cancel",
        }
        if queued.status == "IN_QUEUE":
            body["queue_position"] = self._place(queued)
        elif queued.status in ("IN_PROGRESS", "COMPLETED"):
            body["logs"] = queued.logs if request.query_params.get("logs") == "1" else None
        if queued.status == "COMPLETED":
            body["metrics"] = {"inference_time": queued.inference_time}
            if queued.error is not None and self.settings.status_carries_error:
                body["error"], body["error_type"] = queued.error["msg"], queued.error["type"]
        return JSONResponse(body)

    async def _result(self, request: Request) -> Response:
        queued = self._find(request)
        if queued.status != "COMPLETED":
            raise FalRefusal(400, "Request is still in progress")
        if queued.error is not None:
            error = queued.error
            detail = [error] if self.settings.detail_as_list else error["msg"]
            headers = {"X-Fal-Error-Type": error["type"]}
            raise FalRefusal(self.settings.failed_result_status, detail, headers)
        return JSONResponse(queued.output)

    async def _cancel(self, request: Request) -> Response:
        codes = self.settings.cancel_codes
        try:
            queued = self._find(request)
        except FalRefusal:
            return JSONResponse({"status": "NOT_FOUND"}, status_code=codes["NOT_FOUND"])
        if queued.status == "COMPLETED":
            word = "ALREADY_COMPLETED"
        else:
            word = "CANCELLATION_REQUESTED"
            if queued.runner is not None:
                queued.runner.cancel()
            queued.error = _error(
                ["body"], "Request was cancelled by the user", "request_cancelled"
            )
            queued.status = "COMPLETED"
        return JSONResponse({"status": word}, status_code=codes[word])

    async def _file(self, request: Request) -> Response:
        queued = self.tasks.get(request.path_params["request_id"])
        request.state.task_id = None if queued is None else queued.id
        if queued is None or queued.output is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return file_response("mp4", self.settings.files) or Response(status_code=404)

    # --- progression and webhooks -------------------------------------------

    async def _progress(self, queued: QueuedRequest) -> None:
        queue, start, run = self.settings.timing.stages(queued.scenario)
        await asyncio.sleep(queue)
        if "unknown" in queued.scenario:
            queued.status = UNDOCUMENTED_STATUS
        await asyncio.sleep(start)
        queued.status = "IN_PROGRESS"
        began = time.monotonic()
        queued.logs.append(_log("Starting generation"))
        if "never" in queued.scenario:
            return
        await asyncio.sleep(run)
        queued.inference_time = round(time.monotonic() - began, 3)
        queued.logs.append(_log("Generation finished"))
        if "fail" in queued.scenario:
            queued.error = _error(["body", "prompt"], POLICY_MESSAGE, POLICY_TYPE)
        else:
            url = f"{queued.base_url}/files/{queued.id}/output.mp4"
            video = {"url": url, "content_type": "video/mp4", "file_name": "output.mp4",
                     "file_size": len(sample_video(self.settings.files.video_bytes))}  # fmt: skip
            queued.output = {"video": video, "seed": 1234}
        queued.status = "COMPLETED"
        self._send(queued)

    def webhook_body(self, queued: QueuedRequest) -> dict[str, Any]:
        ids = {"request_id": queued.id, "gateway_request_id": queued.id}
        if queued.error is not None:
            code = self.settings.failed_result_status
            return ids | {
                "status": "ERROR",
                "error": f"Invalid status code: {code}",
                "payload": {"detail": [queued.error]},
            }
        if "badjson" in queued.scenario:
            return ids | {"status": "OK", "payload": None, "payload_error": PAYLOAD_ERROR}
        return ids | {"status": "OK", "payload": queued.output, "error": None}

    def _send(self, queued: QueuedRequest) -> None:
        if not queued.webhook or "lost" in queued.scenario:
            return
        # Serialized once, so that every retry sends the same bytes.
        body = json.dumps(self.webhook_body(queued)).encode()
        self.spawn(self._deliver(queued, body))

    async def _deliver(self, queued: QueuedRequest, body: bytes) -> None:
        for delay in (0.0, *self.settings.webhook_retry_delays):
            await asyncio.sleep(delay)
            ok = await self._post(queued, body)
            if "duplicate" in queued.scenario:
                ok = await self._post(queued, body) or ok
            if ok:
                return

    def sign(self, request_id: str, timestamp: int, body: bytes) -> str:
        """X-Fal-Webhook-Signature as fal makes it, with the current key."""
        digest = hashlib.sha256(body).hexdigest()
        text = f"{request_id}\n{self.settings.user_id}\n{timestamp}\n{digest}".encode()
        return self.signing_key.private.sign(text).hex()

    async def _post(self, queued: QueuedRequest, body: bytes) -> bool:
        assert queued.webhook is not None
        self._client = self._client or httpx.AsyncClient()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": queued.id,
            "X-Fal-Webhook-User-Id": self.settings.user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": self.sign(queued.id, timestamp, body),
        }
        code: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                queued.webhook, content=body, headers=headers, timeout=self.settings.webhook_timeout
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.webhooks.append(
            RecordedWebhook(time.monotonic(), queued.id, headers, body, code, error)
        )
        return code is not None and 200 <= code < 300


def _error(loc: list[str], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind, "url": f"https://docs.fal.ai/errors/#{kind}"}


def _log(message: str) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return {"message": message, "level": "INFO", "source": "user", "timestamp": stamp}
