"""POST /callbacks/{provider}/{token}: provider callbacks, verified before they count.

A callback is answered 2xx only after it is on disk. A callback that would end a job is
not trusted on its own (Vidu signs the headers, not the body): it is stored and the job
is scheduled for a confirming status fetch, which the poller performs.

POST /callbacks/{provider} takes the webhooks of a provider that sends every job's to
one URL set in its console (PixVerse): there is no token, so the signature is checked
first and the job is the one whose task the verified body names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

import signing
from receiver.bodies import BodyTooLarge, HeldBody, OverBudget, closing, hold_body, over_budget
from receiver.logs import access_note
from receiver.providers.base import AccountCallback, JobRef, Provider, ProviderError
from receiver.responses import JSON, dumps, error
from receiver.store import AdmittedCallback, CallbackTarget, UnknownTask, UnknownToken

if TYPE_CHECKING:
    from receiver.runtime import Runtime

log = logging.getLogger("vidhook.callbacks")

# Never stored: they prove nothing once verified, and some are credentials.
_UNSTORED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-hmac-signature", "x-api-key"}
)


# Seconds a sender is asked to wait when what verifying needs (fal's keys) is unreachable.
VERIFY_RETRY_AFTER = 60

# The two answers to a stored callback, made once.
_ACCEPTED = dumps({"ok": True, "duplicate": False})
_DUPLICATE = dumps({"ok": True, "duplicate": True})


def received_url(scope: Mapping[str, Any]) -> str:
    """The URL the request was sent to, as its Host header and path say (after the proxy
    headers were applied); for the record, as the place to look when a proxy rewrites."""
    scheme = scope.get("scheme", "http")
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        server_host, port = scope.get("server") or ("", None)
        host = f"[{server_host}]" if ":" in server_host else server_host
        if port is not None and port != {"http": 80, "https": 443}.get(scheme):
            host += f":{port}"
    url = f"{scheme}://{host}{scope['path']}"  # the path includes root_path
    query = scope.get("query_string", b"")
    return f"{url}?{query.decode('latin-1')}" if query else url


class InvalidBody(ValueError):
    """The body of an authenticated callback is not a JSON object; the message says why."""


def is_json_media(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Handshake(Exception):
    """The provider is checking a job's callback URL; ``answer`` is the reply. Raised
    inside the writer's transaction, so that nothing of the request is kept."""

    def __init__(self, answer: Mapping[str, Any]) -> None:
        super().__init__("callback URL check")
        self.answer = answer


async def receive(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    provider_name = request.path_params["provider"]
    token = request.path_params["token"]
    provider = runtime.providers.get(provider_name)
    if provider is None or not provider.supports_callbacks:
        return error(
            404, "unknown_provider", f"no provider named {provider_name!r} takes callbacks"
        )
    if (refused := wrong_content_type(request, runtime, provider_name)) is not None:
        return refused
    # Before a byte of the body is read: a flood of bodies to made-up tokens costs one
    # indexed read each, and never holds their bytes.
    if not await runtime.store.has_callback_token(provider_name, token):
        runtime.count_callback(provider_name, "unknown_token")
        return closing(error(404, "unknown_token", "no job has this callback URL"))
    body = await read_body(request, runtime, provider_name)
    if isinstance(body, Response):
        return body
    try:
        return await record(request, runtime, provider, body.content, token=token)
    finally:
        body.release()


async def receive_account(request: Request) -> Response:
    """POST /callbacks/{provider}: a webhook sent to the provider's account-level URL."""
    runtime: Runtime = request.app.state.runtime
    provider_name = request.path_params["provider"]
    provider = runtime.providers.get(provider_name)
    if provider is None or not provider.account_webhook:
        return error(
            404,
            "unknown_provider",
            f"no provider named {provider_name!r} sends webhooks to one account-level URL; "
            "callback URLs end in the job's token",
        )
    if (refused := wrong_content_type(request, runtime, provider_name)) is not None:
        return refused
    body = await read_body(request, runtime, provider_name)
    if isinstance(body, Response):
        return body
    try:
        return await record(request, runtime, provider, body.content, token=None)
    finally:
        body.release()


def wrong_content_type(request: Request, runtime: Runtime, provider_name: str) -> Response | None:
    if is_json_media(request.headers.get("content-type")):
        return None
    runtime.count_callback(provider_name, "wrong_content_type")
    return closing(error(415, "unsupported_media_type", "send the callback as application/json"))


async def read_body(request: Request, runtime: Runtime, provider_name: str) -> HeldBody | Response:
    """The whole body within the callback limit and the memory budget, or the refusal."""
    limit = runtime.config.callbacks.max_body_bytes
    try:
        return await hold_body(request, limit, request.app.state.bodies)
    except BodyTooLarge:
        runtime.count_callback(provider_name, "too_large")
        return closing(
            error(413, "body_too_large", f"callback bodies are limited to {limit} bytes")
        )
    except OverBudget:
        runtime.count_callback(provider_name, "busy")
        return over_budget()
    except ClientDisconnect:
        return Response(status_code=400)


async def record(
    request: Request, runtime: Runtime, provider: Provider, body: bytes, *, token: str | None
) -> Response:
    """Check the callback and store it, in one trip to the writer. ``token`` is None for a
    webhook to the account-level URL, whose job its verified body names."""
    provider_name = request.path_params["provider"]
    try:
        await provider.prepare_callback(request.headers, body)
    except ProviderError as exc:
        runtime.count_callback(provider_name, "unverifiable")
        log.warning("callback for %s cannot be verified now: %s", provider_name, exc)
        refused = error(503, "cannot_verify", f"cannot verify the callback now: {exc.message}")
        refused.headers["Retry-After"] = str(VERIFY_RETRY_AFTER)
        return refused

    tolerance = runtime.config.callbacks.date_tolerance
    account: AccountCallback | None = None
    if token is None:
        # No token found the job: the signature comes first, and the body then says
        # which job it is about. A forgery costs no trip to the writer.
        try:
            account = provider.verify_account_callback(request.headers, body, tolerance=tolerance)
        except signing.SignatureError as exc:
            runtime.count_callback(provider_name, "bad_signature", reason=exc.reason)
            log.warning("webhook to %s refused: %s (%s)", provider_name, exc.reason, exc.message)
            return error(401, "invalid_signature", exc.message, reason=exc.reason)
    checked: list[str] = []  # the job's id once found, for the refusal's log line

    def admit(job: CallbackTarget) -> AdmittedCallback:
        # Runs on the writer thread inside the transaction (one trip for the lookup, the
        # checks and the writes); raising refuses the callback with nothing written.
        checked.append(job.id)
        if account is not None:
            nonce = account.nonce
        else:
            # Answered for a known token only, and rolled back: a URL check is not news.
            if (answer := provider.handshake(body)) is not None:
                raise Handshake(answer)
            ref = JobRef(job.id, job.provider_job_id, job.key_fingerprint, job.callback_url)
            nonce = provider.verify_callback(ref, request.headers, body, tolerance=tolerance)
        try:
            text = body.decode("utf-8")
            payload = runtime.json_loads(text)
            # Escaped lone surrogates ("\ud800") parse but cannot be stored as UTF-8 text;
            # text decoded from UTF-8 holds none, so only an escape can bring one in.
            if "\\u" in text:
                dumps(payload)
        except (ValueError, RecursionError):  # UnicodeError is a ValueError; nesting recurses
            raise InvalidBody("the callback body is not valid UTF-8 JSON") from None
        if not isinstance(payload, dict):
            raise InvalidBody("the callback body must be a JSON object")
        obs = provider.parse_callback(payload)
        if not provider.signs_callback_body:
            obs = obs.evidence()
        return AdmittedCallback(
            nonce=nonce,
            digest=provider.replay_digest(request.headers, body),
            nonce_expires_at=runtime.store.clock() + 2 * tolerance + 60,
            headers={k: v for k, v in request.headers.items() if k not in _UNSTORED_HEADERS},
            body=text,
            obs=obs,
            confirm=provider.needs_confirmation(obs),
            received_url=received_url(request.scope).replace(token, "***")
            if token
            else received_url(request.scope),
        )

    try:
        if account is not None:
            job_id, outcome, admitted = await runtime.store.record_task_callback(
                provider_name, account.task_id, admit
            )
        else:
            assert token is not None
            job_id, outcome, admitted = await runtime.store.record_token_callback(
                provider_name, token, admit
            )
    except UnknownToken:
        runtime.count_callback(provider_name, "unknown_token")
        return error(404, "unknown_token", "no job has this callback URL")
    except UnknownTask:
        runtime.count_callback(provider_name, "unknown_task")
        log.warning("webhook to %s refused: no job has the task it names", provider_name)
        return error(
            404,
            "unknown_task",
            "no job has the task this webhook names; one that overtook the answer to its "
            "submission is taken when the provider sends it again",
        )
    except signing.SignatureError as exc:
        runtime.count_callback(provider_name, "bad_signature", reason=exc.reason)
        log.warning("callback for job %s refused: %s (%s)", checked[0], exc.reason, exc.message)
        return error(401, "invalid_signature", exc.message, reason=exc.reason)
    except InvalidBody as exc:
        runtime.count_callback(provider_name, "invalid_json")
        return error(400, "invalid_json", str(exc))
    except Handshake as shake:
        runtime.count_callback(provider_name, "handshake")
        log.info("callback URL of job %s checked by %s", checked[0], provider_name)
        return Response(dumps(shake.answer), media_type=JSON.media_type)
    obs, confirm = admitted.obs, admitted.confirm

    runtime.count_callback(provider_name, outcome)
    if outcome == "replayed":
        log.warning("callback for job %s refused: nonce replayed with another request", job_id)
        return error(409, "replayed_nonce", "this nonce was already used by a different request")
    if outcome == "accepted" and confirm:
        runtime.poller.wake()
    # Said on the request's access line where there is one: two lines a callback was a
    # good part of a callback's cost under a burst.
    said = f"{job_id}: {obs.provider_status} ({outcome})"
    if confirm and outcome == "accepted":
        said += ", confirming"
    if not access_note(request.scope, said):
        log.info("callback for job %s", said)
    if provider.callback_reply is not None:
        return Response(provider.callback_reply, media_type="text/plain")
    return Response(_DUPLICATE if outcome == "duplicate" else _ACCEPTED, media_type=JSON.media_type)
