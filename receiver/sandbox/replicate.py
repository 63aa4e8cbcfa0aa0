"""A fake Replicate (``/v1``): predictions by model or by version, Standard Webhooks.

Shapes follow Replicate's API reference and SDKs: ``Authorization: Bearer``; a create
answers the prediction; a prediction goes starting -> processing -> succeeded
(``output``) | failed (``error``) | canceled; its ``webhook`` hears the events its
``webhook_events_filter`` names (by default new output and the end), each signed with
the account's ``whsec_`` secret as Standard Webhooks sign (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``); only the end is
retried, with the same webhook-id. ``retention`` seconds (an hour) after a prediction
ends, its input, logs and output are removed: ``data_removed`` turns true and the
files answer 404.

What the docs leave open is a setting: the create's status code, the error shape
(``{"detail"}`` or problem JSON with ``title`` and ``status``), whether the output is one
URL or a list of them.

Markers in the prompt: ``[fail]``, ``[slow]``, ``[unknown]`` (an undocumented status
before processing), ``[never]``, ``[lost]`` (no webhooks), ``[duplicate]`` (each webhook
twice), ``[list]`` (the output as a list), and refusals of the create: ``[429]``
(throttled, with Retry-After) and ``[500]``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, bearer_key, scenario_of
from receiver.sandbox.media import file_response

MODELS = (
    "google/veo-3.1-fast", "google/veo-3", "wan-video/wan-2.2-t2v-fast",
    "minimax/video-01", "kwaivgi/kling-v2.1",
)  # fmt: skip
MARKERS = ("fail", "slow", "unknown", "never", "lost", "duplicate", "list", "429", "500")
EVENTS = ("start", "output", "logs", "completed")
DEFAULT_EVENTS = ("output", "completed")  # what a prediction without a filter hears
# What [unknown] predictions report while they boot: not one of the documented statuses.
UNDOCUMENTED_STATUS = "booting"
FAIL_MESSAGE = "The input or output was flagged as sensitive. Try other inputs. (E005)"
THROTTLED = "Request was throttled. Your rate limit resets in ~30s."
NO_VERSION = (
    "The specified version does not exist (or perhaps you don't have permission to use it?)"
)
ENDED = ("succeeded", "failed", "canceled")
_ID_CHARS = string.ascii_lowercase + string.digits
Handler = Callable[[Request], Awaitable[Response]]


def version_of(model: str) -> str:
    """The fake's current version id of a model: 64 hex digits, stable across runs."""
    return hashlib.sha256(f"replicate-fake:{model}".encode()).hexdigest()


@dataclass
class ReplicateFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    # The account's webhook signing secret, as GET /v1/webhooks/default/secret gives it.
    webhook_secret: str = "whsec_" + base64.b64encode(b"replicate-fake-webhook-secret!!!").decode()
    retention: float = 3600.0  # seconds from a prediction's end to its data's removal
    # Unconfirmed: the docs show 201 for a create; some clients read 200 as well.
    create_status: int = 201
    # Unconfirmed: errors are {"detail"}, or problem JSON (title, detail, status).
    problem_json: bool = True
    # Unconfirmed per model: a single URL, or a list of them. [list] forces a list.
    output_list: bool = False
    webhook_retry_delays: tuple[float, ...] = (1.0, 5.0, 20.0)
    webhook_timeout: float = 10.0
    retry_after: int = 1  # the Retry-After of a [429] create


class ReplicateRefusal(Exception):
    def __init__(self, status: int, title: str, detail: str | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail or title


class RecordedWebhook(NamedTuple):
    time: float  # time.monotonic() when the attempt finished
    prediction_id: str
    event: str
    status: str  # the prediction's status in the body
    headers: dict[str, str]
    body: bytes
    status_code: int | None
    error: str | None


@dataclass
class Prediction:
    id: str
    key: str
    model: str
    version: str
    input: dict[str, Any]
    webhook: str | None
    events: frozenset[str]
    scenario: frozenset[str]
    base_url: str
    created_at: str
    status: str = "starting"
    started_at: str | None = None
    completed_at: str | None = None
    ended_at: float | None = None  # time.monotonic() of the end, for the retention
    logs: str = ""
    output: Any = None
    error: str | None = None
    predict_time: float | None = None
    runner: asyncio.Task[None] | None = field(default=None, repr=False)
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _prediction_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(26))


def _is_url(value: object) -> bool:
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        return False
    return url is not None and url.scheme in ("http", "https") and bool(url.host)


class ReplicateFake(FakeProvider):
    prefix = "replicate"
    settings: ReplicateFakeSettings
    tasks: dict[str, Prediction]

    def __init__(self, settings: ReplicateFakeSettings | None = None) -> None:
        self.webhooks: list[RecordedWebhook] = []
        self._client: httpx.AsyncClient | None = None
        self._versions = {version_of(m): m for m in MODELS}
        super().__init__(settings or ReplicateFakeSettings())

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/models/{owner}/{name}/predictions", self._guarded(self._create_by_model),
                  methods=["POST"]),
            Route("/v1/predictions", self._guarded(self._create_by_version), methods=["POST"]),
            Route("/v1/predictions/{prediction_id}", self._guarded(self._get), methods=["GET"]),
            Route("/v1/predictions/{prediction_id}/cancel", self._guarded(self._cancel),
                  methods=["POST"]),
            Route("/v1/webhooks/default/secret", self._guarded(self._secret), methods=["GET"]),
            Route("/files/{prediction_id}/{name}", self._file, methods=["GET"]),
        ]  # fmt: skip

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        return self._refusal(ReplicateRefusal(status, message), headers)

    def _refusal(
        self, refusal: ReplicateRefusal, headers: dict[str, str] | None = None
    ) -> Response:
        body: dict[str, Any] = {"detail": refusal.detail}
        if self.settings.problem_json:
            body |= {"title": refusal.title, "status": refusal.status}
        return JSONResponse(body, status_code=refusal.status, headers=headers)

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                if not self.key_allowed(bearer_key(request)):
                    raise ReplicateRefusal(
                        401, "Unauthenticated", "You did not pass a valid authentication token"
                    )
                return await handler(request)
            except ReplicateRefusal as refusal:
                return self._refusal(refusal)

        return endpoint

    # --- HTTP endpoints -----------------------------------------------------

    async def _create_by_model(self, request: Request) -> Response:
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        if model not in MODELS:
            raise ReplicateRefusal(404, "Not found", "The requested resource could not be found.")
        return await self._create(request, model, version_of(model), await self._body(request))

    async def _create_by_version(self, request: Request) -> Response:
        body = await self._body(request)
        wanted = body.get("version")
        # The version alone, or owner/name:version, as newer clients send it.
        named, _, version = wanted.rpartition(":") if isinstance(wanted, str) else ("", "", "")
        model = self._versions.get(version)
        if model is None or named not in ("", model):
            raise ReplicateRefusal(422, "Invalid version or not permitted", NO_VERSION)
        return await self._create(request, model, version, body)

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise ReplicateRefusal(400, "Bad request", "The body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ReplicateRefusal(400, "Bad request", "The request body must be a JSON object")
        return body

    async def _create(
        self, request: Request, model: str, version: str, body: dict[str, Any]
    ) -> Response:
        model_input = body.get("input")
        invalid = "Input validation failed"
        if not isinstance(model_input, dict):
            raise ReplicateRefusal(422, invalid, "- input: Invalid type. Expected: object")
        prompt, image = model_input.get("prompt"), model_input.get("image")
        if not (isinstance(prompt, str) and prompt.strip()) and not isinstance(image, str):
            raise ReplicateRefusal(422, invalid, "- input: prompt is required")
        webhook = body.get("webhook")
        if webhook is not None and not _is_url(webhook):
            raise ReplicateRefusal(422, invalid, "- webhook: Does not match format 'uri'")
        events = body.get("webhook_events_filter", list(DEFAULT_EVENTS))
        if not isinstance(events, list) or not set(events) <= set(EVENTS):
            said = f"- webhook_events_filter: each must be one of {', '.join(EVENTS)}"
            raise ReplicateRefusal(422, invalid, said)
        scenario = scenario_of(prompt, MARKERS)
        if "429" in scenario:
            retry = {"Retry-After": str(self.settings.retry_after)}
            return self._refusal(ReplicateRefusal(429, "Request was throttled", THROTTLED), retry)
        if "500" in scenario:
            raise ReplicateRefusal(500, "Internal server error", "Internal server error")
        root = request.scope.get("root_path", "")
        prediction = Prediction(
            id=_prediction_id(),
            key=bearer_key(request),
            model=model,
            version=version,
            input=model_input,
            webhook=webhook,
            events=frozenset(events),
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
            created_at=_now(),
        )
        self.tasks[prediction.id] = prediction
        request.state.task_id = prediction.id
        prediction.runner = self.spawn(self._progress(prediction))
        return JSONResponse(self.body(prediction), status_code=self.settings.create_status)

    def _find(self, request: Request) -> Prediction:
        prediction_id = request.path_params["prediction_id"]
        request.state.task_id = prediction_id
        prediction = self.tasks.get(prediction_id)
        if prediction is None or prediction.key != bearer_key(request):
            raise ReplicateRefusal(404, "Not found", "The requested resource could not be found.")
        return prediction

    async def _get(self, request: Request) -> Response:
        return JSONResponse(self.body(self._find(request)))

    async def _cancel(self, request: Request) -> Response:
        prediction = self._find(request)
        if prediction.status not in ENDED:
            if prediction.runner is not None:
                prediction.runner.cancel()
            self._end(prediction, "canceled")
        return JSONResponse(self.body(prediction))

    async def _secret(self, request: Request) -> Response:
        return JSONResponse({"key": self.settings.webhook_secret})

    async def _file(self, request: Request) -> Response:
        prediction = self.tasks.get(request.path_params["prediction_id"])
        request.state.task_id = None if prediction is None else prediction.id
        if prediction is None or prediction.status != "succeeded" or self.removed(prediction):
            return Response("not found", status_code=404, media_type="text/plain")
        return file_response("mp4", self.settings.files) or Response(status_code=404)

    # --- bodies -------------------------------------------------------------

    def removed(self, prediction: Prediction) -> bool:
        ended = prediction.ended_at
        return ended is not None and time.monotonic() - ended >= self.settings.retention

    def body(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction as ``GET /v1/predictions/{id}`` shows it (and webhooks send it)."""
        removed = self.removed(prediction)
        api = f"{prediction.base_url}/v1/predictions/{prediction.id}"
        body: dict[str, Any] = {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": {} if removed else prediction.input,
            "logs": "" if removed else prediction.logs,
            "output": None if removed else prediction.output,
            "data_removed": removed,
            "error": prediction.error,
            "status": prediction.status,
            "source": "api",
            "created_at": prediction.created_at,
            "started_at": prediction.started_at,
            "completed_at": prediction.completed_at,
            "urls": {
                "get": api,
                "cancel": f"{api}/cancel",
                "stream": f"{prediction.base_url}/stream/{prediction.id}",
                "web": f"https://replicate.com/p/{prediction.id}",
            },
        }
        if prediction.predict_time is not None:
            body["metrics"] = {"predict_time": prediction.predict_time}
        return body

    # --- progression and webhooks -------------------------------------------

    async def _progress(self, prediction: Prediction) -> None:
        queue, start, run = self.settings.timing.stages(prediction.scenario)
        await asyncio.sleep(queue)
        if "unknown" in prediction.scenario:
            prediction.status = UNDOCUMENTED_STATUS
        await asyncio.sleep(start)
        prediction.status, prediction.started_at = "processing", _now()
        began = time.monotonic()
        self._send(prediction, "start")
        prediction.logs = "Using seed: 1234\nGenerating video...\n"
        self._send(prediction, "logs")
        if "never" in prediction.scenario:
            return
        await asyncio.sleep(run)
        prediction.predict_time = round(time.monotonic() - began, 3)
        if "fail" in prediction.scenario:
            prediction.error = FAIL_MESSAGE
            self._end(prediction, "failed")
            return
        url = f"{prediction.base_url}/files/{prediction.id}/output.mp4"
        as_list = self.settings.output_list or "list" in prediction.scenario
        prediction.output = [url] if as_list else url
        self._send(prediction, "output")
        self._end(prediction, "succeeded")

    def _end(self, prediction: Prediction, status: str) -> None:
        prediction.status, prediction.completed_at = status, _now()
        prediction.ended_at = time.monotonic()
        self._send(prediction, "completed")

    def _send(self, prediction: Prediction, event: str) -> None:
        if not prediction.webhook or event not in prediction.events:
            return
        if "lost" in prediction.scenario:
            return
        # Serialized once: every retry of the event is the same bytes, and the same id.
        body = json.dumps(self.body(prediction)).encode()
        msg_id = "msg_" + secrets.token_hex(14)
        retries = self.settings.webhook_retry_delays if event == "completed" else ()
        self.spawn(self._deliver(prediction, event, msg_id, body, retries))

    async def _deliver(
        self,
        prediction: Prediction,
        event: str,
        msg_id: str,
        body: bytes,
        retries: tuple[float, ...],
    ) -> None:
        async with prediction.delivery_lock:  # one at a time, in the order of the events
            for delay in (0.0, *retries):
                await asyncio.sleep(delay)
                ok = await self._post(prediction, event, msg_id, body)
                if "duplicate" in prediction.scenario:
                    ok = await self._post(prediction, event, msg_id, body) or ok
                if ok:
                    return

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """``webhook-signature`` as Replicate makes it: HMAC-SHA256 under the secret's
        base64 part, over ``{id}.{timestamp}.{body}``."""
        key = base64.b64decode(self.settings.webhook_secret.split("_", 1)[-1])
        mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
        return "v1," + base64.b64encode(mac.digest()).decode()

    async def _post(self, prediction: Prediction, event: str, msg_id: str, body: bytes) -> bool:
        assert prediction.webhook is not None
        self._client = self._client or httpx.AsyncClient()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Replicate-Webhook/1.0",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.sign(msg_id, timestamp, body),
        }
        code: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                prediction.webhook,
                content=body,
                headers=headers,
                timeout=self.settings.webhook_timeout,
                follow_redirects=False,  # Replicate follows no redirects
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        status = str(json.loads(body)["status"])
        seen = RecordedWebhook(
            time.monotonic(), prediction.id, event, status, headers, body, code, error
        )
        self.webhooks.append(seen)
        return code is not None and 200 <= code < 300
