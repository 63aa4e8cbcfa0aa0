"""What every provider adapter does, and the values it exchanges with the rest of vidhook."""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import httpx

from receiver.config import ProviderConfig, Secret
from receiver.providers.fields import number
from receiver.providers.limits import Gate, GateClosed
from receiver.states import Status

# Longer than any provider's status word: the most of an unauthenticated one that is kept,
# since the job, its API JSON and every notification show it.
MAX_STATUS_WORD = 64


@dataclass(frozen=True)
class Progress:
    """How far along a job is, where its provider says: a share of the work done (0 to
    100), or, for a request still waiting its turn, its place in the provider's queue
    (fal's ``queue_position``, 0 for the next to start)."""

    percent: float | None = None
    queue_position: int | None = None

    @classmethod
    def done(cls, value: Any, *, whole: float = 100.0) -> Progress | None:
        """From a figure of work done out of ``whole``: 100 for a percentage (a string may
        end in "%", as new-api's "30%"), 1 for a fraction (Runway's 0.42)."""
        if isinstance(value, str):
            value = value.strip().removesuffix("%").strip()
        figure = number(value)
        if figure is None or figure < 0:
            return None
        percent = round(min(100.0, 100.0 * figure / whole), 1)
        return cls(percent=percent)

    @classmethod
    def queued(cls, position: Any) -> Progress | None:
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            return None
        return cls(queue_position=position)

    def to_json(self) -> dict[str, float | int]:
        """``{"percent": 42}`` or ``{"queue_position": 3}``: the job's ``progress``."""
        if self.queue_position is not None:
            return {"queue_position": self.queue_position}
        percent = float(self.percent or 0)
        return {"percent": int(percent) if percent.is_integer() else percent}


@dataclass(frozen=True)
class Observation:
    """One thing a provider told us about a job, in normalized form.

    ``known`` is False when the provider's status word was not recognized: the raw word
    is kept in ``provider_status`` and the job is treated as queued. ``progress`` is kept
    on the job as it comes (it is no state: a new figure alone makes no transition).
    """

    status: Status
    provider_status: str | None = None
    result_url: str | None = None
    cover_url: str | None = None
    error: str | None = None
    credits: float | None = None
    raw: Mapping[str, Any] | None = None
    provider_job_id: str | None = None
    known: bool = True
    progress: Progress | None = None

    def evidence(self) -> Observation:
        """What an unauthenticated body may say: the status, and the raw status word.

        A callback whose body its provider does not sign cannot be trusted with data
        (result and cover URLs, credits, error text, task id, progress): those come from
        the status endpoint, or from a body the provider signed.
        """
        word = self.provider_status
        if word is not None and len(word) > MAX_STATUS_WORD:
            word = word[:MAX_STATUS_WORD] + "…"
        return Observation(status=self.status, provider_status=word, known=self.known)


@dataclass(frozen=True)
class Download:
    """How to fetch a result the provider made: its URL, and headers (credentials) where
    the provider's result needs them, sent only to ``url``'s own origin."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmitRequest:
    prompt: str | None
    model: str | None = None
    images: Sequence[str] = ()
    # Forces a provider-specific mode (for Vidu: which endpoint) instead of inferring it.
    mode: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # vidhook's id of the job, for providers that keep a caller's reference to a task
    # (Kling's external_task_id); set by the runtime just before submitting.
    job_id: str | None = None


@dataclass(frozen=True)
class Submission:
    provider_job_id: str
    observation: Observation
    key_fingerprint: str


@dataclass(frozen=True)
class JobRef:
    """The parts of a stored job an adapter needs to ask about it."""

    id: str
    provider_job_id: str | None
    key_fingerprint: str | None
    callback_url: str | None = None


class ProviderError(Exception):
    """A provider refused or could not be reached.

    ``transient`` says whether asking again later may succeed (network, timeout, 429,
    5xx) or not (400, 401, 403, 404). ``retry_after`` is the provider's own hint.
    ``sent`` is False only when the request certainly never reached the provider (the
    connection was refused or never made, or the provider's Gate held it back).
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        transient: bool,
        status_code: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message
        self.transient = transient
        self.status_code = status_code
        self.code = code
        self.retry_after = retry_after
        self.sent = sent

    @property
    def may_have_acted(self) -> bool:
        """Whether the provider may have carried the request out: it was sent, and no
        error came back (a timeout or a dropped connection after sending, or a success
        answer vidhook could not use). An error status is a refusal, and so is an error
        code in the provider's own words inside a 200 (Kling's, MiniMax's, PixVerse's)."""
        if not self.sent or self.code is not None:
            return False
        return self.status_code is None or self.status_code < 400

    def __str__(self) -> str:
        parts = [f"{self.provider}"]
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.code:
            parts.append(self.code)
        return f"{' '.join(parts)}: {self.message}"


class AccountCallback(NamedTuple):
    """A verified webhook sent to the account's one URL: the task it names, its nonce."""

    task_id: str
    nonce: str


@dataclass(frozen=True)
class LastError:
    """The latest error a poll or a submission met at the provider (for the dashboard)."""

    at: float
    message: str


class CancelUnsupported(Exception):
    """The provider has no way to cancel a job (the message says so)."""


class InvalidRequest(ValueError):
    """A submission that the adapter can tell is wrong before sending it."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = dict(fields)


class Provider(ABC):
    name: str
    supports_callbacks: bool = False
    # Whether the provider signs a callback's body (Standard Webhooks, fal's Ed25519,
    # PixVerse's HMAC). A callback whose body is not signed is evidence of a status only:
    # receiver.callbacks keeps nothing else of it (Observation.evidence).
    signs_callback_body: bool = False
    # Whether the provider sends every job's webhooks to one URL set in its console
    # (PixVerse) rather than to a callback URL given with each job: that URL is
    # {public_url}/callbacks/{name}, with no token, and the job is the one whose task the
    # verified body names (verify_account_callback).
    account_webhook: bool = False
    # The body of the answer to a stored callback, where the provider wants a particular
    # one (PixVerse retries anything but "ok"); None: vidhook's JSON.
    callback_reply: bytes | None = None
    supports_cancel: bool = False
    # Whether the provider deduplicates submissions on SubmitRequest.job_id (as Kling does
    # on external_task_id): only then is a submission whose outcome is unknown (sent, and
    # no answer came) sent again, since that cannot start a second generation.
    idempotent_submit: bool = False
    # How long the provider's result links keep working, in seconds; None if unknown.
    # A link that answers 403, 404 or 410 after that has expired (receiver.media).
    result_lifetime: float | None = None
    # Whether images may be sent inline as data: URIs (a local file), besides URLs.
    accepts_image_data: bool = False

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.name = config.name
        self.client = client
        self.gate = Gate(config.requests_per_second, config.max_concurrency)
        self.last_error: LastError | None = None

    def key_for(self, job: JobRef) -> Secret:
        """The key that created the job if it is still configured, else the current one."""
        return self.config.key_for(job.key_fingerprint) or self.config.api_key

    @abstractmethod
    def validate(self, request: SubmitRequest) -> None:
        """Raise InvalidRequest naming each bad field."""

    @abstractmethod
    async def submit(self, request: SubmitRequest, callback_url: str | None) -> Submission: ...

    @abstractmethod
    async def fetch(self, job: JobRef) -> Observation: ...

    async def prepare_callback(self, headers: Mapping[str, str], body: bytes) -> None:
        """Fetch whatever verifying this callback needs, before verify_callback runs.

        verify_callback runs on the store's writer thread, inside a transaction, where it
        must not wait on the network: an adapter whose check needs something fetched
        (fal's public keys) fetches it here, on the event loop. Raises ProviderError when
        that cannot be had now; the callback is then refused with 503 and nothing stored.
        """
        return None

    def verify_callback(
        self, job: JobRef, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> str:
        """Check a callback's authenticity; return its nonce. Raises SignatureError.

        The nonce identifies the delivery for replay detection: a signed nonce where the
        provider sends one, otherwise something derived from the request itself.
        """
        raise NotImplementedError(f"{self.name} does not send callbacks")

    def verify_account_callback(
        self, headers: Mapping[str, str], body: bytes, *, tolerance: float
    ) -> AccountCallback:
        """Check a webhook sent to the account-level URL; return the task it names and its
        nonce. Raises SignatureError. Runs before the job is looked up, so a forgery
        costs no trip to the database."""
        raise NotImplementedError(f"{self.name} has no account-level webhook")

    def replay_digest(self, headers: Mapping[str, str], body: bytes) -> str:
        """What must match for a repeated nonce to count as a retry rather than a replay."""
        return hashlib.sha256(body).hexdigest()

    def parse_callback(self, payload: Mapping[str, Any]) -> Observation:
        raise NotImplementedError(f"{self.name} does not send callbacks")

    def handshake(self, body: bytes) -> Mapping[str, Any] | None:
        """The answer to a request that checks the callback URL rather than reports on the
        job (MiniMax's challenge), or None for a callback. Nothing of it is stored."""
        return None

    def needs_confirmation(self, observation: Observation) -> bool:
        """Whether a callback must be confirmed by fetching the status before it applies."""
        return observation.status.terminal

    async def cancel(self, job: JobRef) -> Observation | None:
        """Ask the provider to stop the job.

        Returns the observation to apply now (the job is canceled), or None when the
        provider only took the request and a status fetch will tell the outcome.
        Raises CancelUnsupported where the provider cannot cancel, ProviderError when it
        refuses or cannot be reached.
        """
        raise CancelUnsupported(f"{self.name} offers no way to cancel a job")

    def download(self, job: JobRef, url: str) -> Download:
        """How to fetch a result URL this provider gave for ``job``: a plain GET, unless
        the provider's results need its credentials."""
        return Download(url)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


# Failures that happen before a single byte of the request is written: the provider
# cannot have seen it. Every other transport failure (a read timeout, a connection
# dropped or reset while writing or reading) may come after the provider got it all.
UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def is_transient_status(status_code: int) -> bool:
    return status_code in (408, 425, 429) or status_code >= 500


class HTTPProvider(Provider):
    """A provider reached over JSON HTTP; maps every failure onto ProviderError."""

    def auth_headers(self, key: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.reveal()}"}

    def error_details(self, response: httpx.Response) -> tuple[str | None, str]:
        """The provider's own error code and message from an error response."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            # Some providers (Vidu) put the HTTP status in "code" and the name in "reason".
            names = (body.get(k) for k in ("code", "reason", "error", "type"))
            code = next((n for n in names if isinstance(n, str) and n and not n.isdigit()), None)
            message = body.get("message") or body.get("msg") or body.get("reason")
            if message:
                return code, str(message)[:500]
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        key: Secret,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        url = f"{self.config.base_url}{path}"
        try:
            async with self.gate.slot(max_wait=self.config.timeout):
                response = await self.client.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=self.auth_headers(key),
                    timeout=timeout or self.config.timeout,
                    **kwargs,
                )
        except GateClosed as closed:
            raise ProviderError(
                self.name,
                f"the provider asked for a pause; {closed.wait:.0f} s to go",
                transient=True,
                retry_after=closed.wait,
                sent=False,
            ) from None
        except UNSENT as exc:
            raise ProviderError(
                self.name,
                f"could not connect to the provider ({exc.__class__.__name__})",
                transient=True,
                sent=False,
            ) from None
        except httpx.TimeoutException:
            raise ProviderError(
                self.name, "timed out waiting for the provider", transient=True
            ) from None
        except httpx.HTTPError as exc:
            raise ProviderError(
                self.name,
                f"could not reach the provider ({exc.__class__.__name__})",
                transient=True,
            ) from None
        if response.status_code >= 400:
            code, message = self.error_details(response)
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if retry_after and response.status_code in (429, 503):
                self.gate.block_for(retry_after)
            raise ProviderError(
                self.name,
                message,
                transient=is_transient_status(response.status_code),
                status_code=response.status_code,
                code=code,
                retry_after=retry_after,
            )
        try:
            return response.json()
        except ValueError:
            raise ProviderError(
                self.name,
                "the provider answered with something that is not JSON",
                transient=True,
                status_code=response.status_code,
            ) from None
