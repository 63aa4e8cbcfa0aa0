"""A fake Gemini API for Veo (``/v1beta``): long-running operations and keyed downloads.

Shapes follow the Gemini API's REST surface as Google's SDK (python-genai) speaks it: the
key in ``x-goog-api-key`` (or ``?key=``); ``POST /v1beta/models/{model}:predictLongRunning``
with ``{"instances": [{"prompt", "image", "lastFrame"}], "parameters"}`` answers an
operation ``{"name": "models/{model}/operations/{id}"}``; ``GET /v1beta/{name}`` shows it,
``done`` once ended, with ``response.generateVideoResponse.generatedSamples[].video.uri``
or an ``error``. The video's URI is ``/v1beta/files/{id}:download?alt=media`` on the same
host and answers only to the key; ``downloads`` records whether each request carried it.
Errors are Google's envelope ``{"error": {"code", "message", "status"}}``. Fields only
Vertex AI takes (``seed``, ``generateAudio``, ``outputGcsUri``, ...) are refused with 400.

What Google leaves open is a setting: whether a download is answered directly or by a
redirect to a storage URL that needs no key, whether a safety filter gives its reasons
or only a count, whether a 429 says Retry-After, and how long a video is kept (two
days). Prompt markers: ``[fail]`` (an operation error), ``[filtered]`` (removed by the
safety filters), ``[inline]`` (the video inline, ``encodedVideo``), ``[slow]``,
``[unknown]`` (an undocumented ``metadata.state`` while it waits), ``[never]``, and
refusals of the create: ``[429]`` and ``[500]``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.sandbox.base import FakeProvider, FakeSettings, scenario_of
from receiver.sandbox.media import file_response, sample_video

# model -> the durations it takes
MODELS: dict[str, tuple[int, ...]] = {
    "veo-3.1-generate-preview": (4, 6, 8),
    "veo-3.1-fast-generate-preview": (4, 6, 8),
    "veo-3.0-generate-001": (4, 6, 8),
    "veo-3.0-fast-generate-001": (4, 6, 8),
    "veo-2.0-generate-001": (5, 6, 7, 8),
}
PARAMETERS = frozenset(
    {"sampleCount", "durationSeconds", "aspectRatio", "resolution", "personGeneration",
     "negativePrompt", "enhancePrompt"}
)  # fmt: skip
VERTEX_ONLY = frozenset(
    {"outputGcsUri", "fps", "seed", "pubsubTopic", "generateAudio", "mask",
     "compressionQuality", "labels", "resizeMode"}
)  # fmt: skip
MARKERS = ("fail", "filtered", "inline", "slow", "unknown", "never", "429", "500")
# Not a state Google documents; [unknown] operations show it while they wait.
UNDOCUMENTED_STATE = "WAITING_FOR_CAPACITY"
FAIL_MESSAGE = "Video generation failed due to an internal error. Please try again."
FILTER_REASON = (
    "Your current safety settings for person generation blocked one or more videos. "
    "Adjust the prompt and try again."
)
RESPONSE_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
_ID_CHARS = string.ascii_lowercase + string.digits
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class VeoFakeSettings(FakeSettings):
    """Mutable on purpose: tests change fields while the server runs."""

    # Unconfirmed: a download is answered with the file (False), or redirected to a
    # storage URL that carries its own signature and needs no key (True).
    download_redirect: bool = False
    # Unconfirmed: a filtered video's reasons are given, or only their count.
    filter_reasons: bool = True
    # Unconfirmed: Google's 429s rarely say Retry-After; None: this one does not.
    retry_after: int | None = 1
    retention: float = 2 * 86400.0  # seconds a generated video is kept
    # The fake's own secret for its storage URLs.
    storage_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))


class GoogleError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


class RecordedDownload(NamedTuple):
    time: float  # time.monotonic() when it arrived
    file_id: str
    with_key: bool  # the right key came with it, as a header or ?key=
    status_code: int  # 200: the file was given (or redirected to its storage), else refused


@dataclass
class Operation:
    name: str
    key: str
    model: str
    instance: dict[str, Any]
    parameters: dict[str, Any]
    scenario: frozenset[str]
    base_url: str
    done: bool = False
    state: str | None = None
    file_ids: list[str] = field(default_factory=list)
    done_at: float | None = None  # time.monotonic()
    runner: asyncio.Task[None] | None = field(default=None, repr=False)


def _new_id(length: int = 12) -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(length))


def _invalid(message: str) -> GoogleError:
    return GoogleError(400, "INVALID_ARGUMENT", message)


def _image(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _invalid(f"Invalid value at '{where}': an object is expected.")
    if "gcsUri" in value:
        raise _invalid(f"`{where}.gcsUri` isn't supported by this model.")
    data, kind = value.get("bytesBase64Encoded"), value.get("mimeType")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise _invalid(f"Invalid value at '{where}.bytesBase64Encoded': not base64 bytes.")
    if not (isinstance(kind, str) and kind.startswith("image/")):
        raise _invalid(f"Invalid value at '{where}.mimeType': an image type is expected.")


def _validate(model: str, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received.")
    instances = body.get("instances")
    if not (isinstance(instances, list) and len(instances) == 1):
        raise _invalid("`instances` must hold exactly one instance.")
    instance = instances[0]
    if not isinstance(instance, dict):
        raise _invalid("Invalid value at 'instances[0]': an object is expected.")
    prompt = instance.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise _invalid("Invalid value at 'instances[0].prompt': a string is expected.")
    if not prompt and "image" not in instance:
        raise _invalid("A prompt or an image is required.")
    for name in ("image", "lastFrame"):
        if name in instance:
            _image(instance[name], f"instances[0].{name}")
    if "lastFrame" in instance and "image" not in instance:
        raise _invalid("`lastFrame` needs `image` as the first frame.")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _invalid("Invalid value at 'parameters': an object is expected.")
    for name in parameters:
        if name in VERTEX_ONLY or name not in PARAMETERS:
            raise _invalid(
                f"`{name}` isn't supported by this model. Please remove it or refer to the "
                "Gemini API documentation for supported usage."
            )
    duration = parameters.get("durationSeconds", 8)
    if duration not in MODELS[model] or isinstance(duration, bool):
        allowed = ", ".join(map(str, MODELS[model]))
        raise _invalid(f"The number value for `durationSeconds` is out of bound. ({allowed})")
    if parameters.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
        raise _invalid("`aspectRatio` must be 16:9 or 9:16.")
    if parameters.get("resolution", "720p") not in ("720p", "1080p"):
        raise _invalid("`resolution` must be 720p or 1080p.")
    count = parameters.get("sampleCount", 1)
    if count not in (1, 2, 3, 4) or isinstance(count, bool):
        raise _invalid("The number value for `sampleCount` is out of bound. (1 to 4)")
    return instance, parameters


class VeoFake(FakeProvider):
    prefix = "veo"
    settings: VeoFakeSettings
    tasks: dict[str, Operation]

    def __init__(self, settings: VeoFakeSettings | None = None) -> None:
        self.downloads: list[RecordedDownload] = []
        self.files: dict[str, Operation] = {}
        super().__init__(settings or VeoFakeSettings())

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1beta/models/{model}:predictLongRunning", self._guard(self._create),
                  methods=["POST"]),
            Route("/v1beta/models/{model}/operations/{op}", self._guard(self._get),
                  methods=["GET"]),
            Route("/v1beta/files/{file}:download", self._download, methods=["GET"]),
            Route("/storage/{file}.mp4", self._storage, methods=["GET"]),
        ]  # fmt: skip

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        names = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED", 400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}  # fmt: skip
        return self._error(GoogleError(status, names.get(status, "UNKNOWN"), message), headers)

    @staticmethod
    def _error(error: GoogleError, headers: dict[str, str] | None = None) -> Response:
        body = {"error": {"code": error.code, "message": error.message, "status": error.status}}
        return JSONResponse(body, status_code=error.code, headers=headers)

    def _key(self, request: Request) -> str:
        return (
            request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
        ).strip()

    def _guard(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            key = self._key(request)
            if not key:
                return self._error(GoogleError(
                    403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers "
                    "(callers without established identity). Please use API Key or other "
                    "form of API consumer identity to call this API.",
                ))  # fmt: skip
            if not self.key_allowed(key):
                return self._error(_invalid("API key not valid. Please pass a valid API key."))
            try:
                return await handler(request)
            except GoogleError as error:
                headers = None
                if error.code == 429 and self.settings.retry_after is not None:
                    headers = {"Retry-After": str(self.settings.retry_after)}
                return self._error(error, headers)

        return endpoint

    # --- HTTP endpoints ---------------------------------------------------

    async def _create(self, request: Request) -> Response:
        model = request.path_params["model"]
        if model not in MODELS:
            raise GoogleError(
                404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is "
                "not supported for predictLongRunning.",
            )  # fmt: skip
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise _invalid("Invalid JSON payload received.") from None
        instance, parameters = _validate(model, body)
        scenario = scenario_of(instance.get("prompt"), MARKERS)
        if "429" in scenario:
            raise GoogleError(
                429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your "
                "plan and billing details.",
            )  # fmt: skip
        if "500" in scenario:
            raise GoogleError(500, "INTERNAL", "An internal error has occurred.")
        root = request.scope.get("root_path", "")
        operation = Operation(
            name=f"models/{model}/operations/{_new_id()}",
            key=self._key(request),
            model=model,
            instance=instance,
            parameters=parameters,
            scenario=scenario,
            base_url=f"{request.url.scheme}://{request.url.netloc}{root}",
        )
        self.tasks[operation.name] = operation
        request.state.task_id = operation.name
        operation.runner = self.spawn(self._progress(operation))
        return JSONResponse({"name": operation.name})

    async def _get(self, request: Request) -> Response:
        name = f"models/{request.path_params['model']}/operations/{request.path_params['op']}"
        request.state.task_id = name
        operation = self.tasks.get(name)
        if operation is None or operation.key != self._key(request):
            raise GoogleError(404, "NOT_FOUND", "Operation not found.")
        return JSONResponse(self.body(operation))

    async def _download(self, request: Request) -> Response:
        file_id = request.path_params["file"]
        operation = self.files.get(file_id)
        request.state.task_id = None if operation is None else operation.name
        with_key = operation is not None and self._key(request) == operation.key
        status = self._download_status(operation, with_key, request)
        self.downloads.append(RecordedDownload(time.monotonic(), file_id, with_key, status))
        if status == 403:
            return self._error(GoogleError(403, "PERMISSION_DENIED", "The caller does not have "
                                           "permission."))  # fmt: skip
        if status != 200:
            return self._error(GoogleError(404, "NOT_FOUND", f"File {file_id} not found."))
        if self.settings.download_redirect:
            return RedirectResponse(self._storage_url(file_id, operation), status_code=302)
        return file_response("mp4", self.settings.files) or Response(status_code=404)

    def _download_status(
        self, operation: Operation | None, with_key: bool, request: Request
    ) -> int:
        if operation is None or request.query_params.get("alt") != "media":
            return 404
        if not with_key:
            return 403
        return 404 if self.expired(operation) else 200

    def _storage_url(self, file_id: str, operation: Operation | None) -> str:
        base = operation.base_url if operation is not None else ""
        return f"{base}/storage/{file_id}.mp4?sig={self._signature(file_id)}"

    def _signature(self, file_id: str) -> str:
        mac = hmac.new(self.settings.storage_secret.encode(), file_id.encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    async def _storage(self, request: Request) -> Response:
        file_id = request.path_params["file"]
        operation = self.files.get(file_id)
        request.state.task_id = None if operation is None else operation.name
        signature = request.query_params.get("sig", "")
        if operation is None or not hmac.compare_digest(signature, self._signature(file_id)):
            return Response("AccessDenied", status_code=403, media_type="text/plain")
        return file_response("mp4", self.settings.files) or Response(status_code=404)

    def expired(self, operation: Operation) -> bool:
        done = operation.done_at
        return done is not None and time.monotonic() - done >= self.settings.retention

    # --- bodies -------------------------------------------------------------

    def body(self, operation: Operation) -> dict[str, Any]:
        """The operation as ``GET /v1beta/{name}`` shows it."""
        body: dict[str, Any] = {"name": operation.name}
        if operation.state is not None:
            body["metadata"] = {"state": operation.state}
        if not operation.done:
            return body
        body["done"] = True
        scenario = operation.scenario
        if "fail" in scenario:
            body["error"] = {"code": 13, "message": FAIL_MESSAGE}
            return body
        answer: dict[str, Any]
        if "filtered" in scenario:
            answer = {"raiMediaFilteredCount": 1}
            if self.settings.filter_reasons:
                answer["raiMediaFilteredReasons"] = [FILTER_REASON]
        elif "inline" in scenario:
            encoded = base64.b64encode(sample_video(self.settings.files.video_bytes)).decode()
            video = {"encodedVideo": encoded, "encoding": "video/mp4"}
            answer = {"generatedSamples": [{"video": video}]}
        else:
            api = f"{operation.base_url}/v1beta/files"
            answer = {
                "generatedSamples": [
                    {"video": {"uri": f"{api}/{file_id}:download?alt=media"}}
                    for file_id in operation.file_ids
                ]
            }
        body["response"] = {"@type": RESPONSE_TYPE, "generateVideoResponse": answer}
        return body

    # --- progression --------------------------------------------------------

    async def _progress(self, operation: Operation) -> None:
        queue, start, run = self.settings.timing.stages(operation.scenario)
        if "unknown" in operation.scenario:
            operation.state = UNDOCUMENTED_STATE
        await asyncio.sleep(queue + start)
        operation.state = None
        if "never" in operation.scenario:
            return
        await asyncio.sleep(run)
        count = int(operation.parameters.get("sampleCount", 1))
        operation.file_ids = [_new_id(16) for _ in range(count)]
        for file_id in operation.file_ids:
            self.files[file_id] = operation
        operation.done_at = time.monotonic()
        operation.done = True

    def downloads_of(self, operation_name: str) -> list[RecordedDownload]:
        operation = self.tasks.get(operation_name)
        files = set(operation.file_ids) if operation is not None else set()
        return [d for d in list(self.downloads) if d.file_id in files]
