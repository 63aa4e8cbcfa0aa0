"""The running service's parts, wired together: store, provider adapters, poller."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx

from receiver import notify
from receiver import providers as adapters
from receiver.config import Config
from receiver.events import EventHub
from receiver.http import service_client
from receiver.media import Archive
from receiver.metrics import Metrics
from receiver.notify.base import Channel
from receiver.notify.outbox import Outbox
from receiver.poller import Poller
from receiver.providers.base import (
    CancelUnsupported,
    JobRef,
    Provider,
    ProviderError,
    SubmitRequest,
)
from receiver.states import Status
from receiver.store import NewJob, Store
from receiver.submitter import Outcome, Pending, Submitter
from receiver.views import render_job

log = logging.getLogger("vidhook")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_job_id() -> str:
    """Time-ordered ids (48-bit milliseconds + 80 random bits): newest first is id order."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "job_" + "".join(reversed(chars))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    # 1e999 reads as inf: stored, it would come back out as Infinity (not JSON), and httpx
    # refuses to send it to a provider at all.
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


# Made once: json.loads builds a new decoder for every call that passes options.
_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def strict_json(text: str | bytes) -> Any:
    """json.loads without NaN and Infinity, spelled out or as an out-of-range number."""
    if isinstance(text, str) and not text.startswith("\ufeff"):
        return _STRICT.decode(text)
    # Bytes in any of JSON's encodings, and the BOM refusal: json.loads's own handling.
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def new_callback_token() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


class CannotCancel(Exception):
    """A cancel that was not sent to the provider; ``code`` says why, the message how."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Runtime:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        url = config.database_url
        self.store = Store(
            config.database,
            route=config.channels_for,
            clock=clock,
            database_url=None if url is None else url.reveal(),
        )
        self.client = service_client(transport)
        self.providers: dict[str, Provider] = {
            name: adapters.build(p, self.client) for name, p in config.providers.items()
        }
        if self.store.shared:
            # The replicas keep to each provider's requests_per_second together.
            for name, provider in self.providers.items():
                provider.gate.share(self.store.budget(name))
        self.channels: dict[str, Channel] = notify.build_all(config, self.client)
        self.metrics = Metrics(
            self.store,
            providers=self.providers,
            callback_providers=[n for n, p in self.providers.items() if p.supports_callbacks],
            channels=self.channels,
        )
        self.poller = Poller(self.store, self.providers, on_poll=self.metrics.count_poll)
        self.submitter = Submitter(self.store, self.providers, on_submitted=self.poller.wake)
        self.archive = Archive(
            config, self.store, self.providers,
            on_download=self.metrics.count_download, on_stored=self.metrics.count_stored,
        )  # fmt: skip
        self.outbox = Outbox(
            self.store, config.notify, self.channels, on_attempt=self.metrics.count_attempt,
            render=self.render_job, hold=self.archive.hold,
        )  # fmt: skip
        self.json_loads: Callable[[str | bytes], Any] = strict_json
        # Streams hold their connections: half of them stay for callbacks and the API.
        streams = max(1, config.server.max_connections // 2)
        self.events = EventHub(self.store, self.render_job, max_streams=streams)

    def open_database(self) -> None:
        """Lock, check and upgrade the database; DatabaseUnusable says what is wrong.

        `vidhook serve` calls it before the server starts, so that a database it cannot
        serve ends the start with one line; ``start`` calls it otherwise.
        """
        self.store.open()

    async def start(self) -> None:
        await asyncio.to_thread(self.open_database)
        await self.store.start()
        self.poller.start()
        self.submitter.start()
        self.outbox.start()
        self.archive.start()
        await self.events.open()
        log.info(
            "vidhook ready: database %s, providers %s",
            self.store.engine.where,
            ", ".join(self.providers),
        )

    async def stop(self) -> None:
        await self.events.stop()
        await self.submitter.stop()
        await self.poller.stop()
        await self.outbox.stop()
        await self.archive.stop()
        await self.client.aclose()
        await self.store.stop()

    @property
    def ready(self) -> bool:
        workers = (self.poller, self.submitter, self.outbox, self.archive.worker, self.events)
        return self.store.running and all(worker.running for worker in workers)

    def render_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job as the API and notifications show it, with its ``media``."""
        return render_job(job, self.archive.view)

    def count_callback(self, provider: str, outcome: str, reason: str | None = None) -> None:
        self.metrics.count_callback(provider, outcome, reason)

    async def submit(
        self, provider_name: str, request: SubmitRequest, notify: list[str] | None
    ) -> tuple[str, Outcome]:
        """Record the job, then make the first attempt to submit it.

        The job is stored whatever the provider says; the outcome says what it said:
        accepted, refused, pending (refused for now: the submitter sends it again) or
        unknown (sent, and no answer came: the job failed, saying so).
        """
        provider = self.providers[provider_name]
        job_id = new_job_id()
        token = callback_url = None
        if provider.account_webhook:
            # Not sent with the job: the URL the provider's console is set to, for the record.
            callback_url = self.config.callback_url(provider_name, None)
        elif provider.supports_callbacks:
            token = new_callback_token()
            callback_url = self.config.callback_url(provider_name, token)
        created_at = self.store.clock()
        deadline_at = created_at + provider.config.deadline
        await self.store.insert_job(
            NewJob(
                id=job_id,
                provider=provider_name,
                model=request.model or provider.config.default_model,
                prompt=request.prompt,
                request={
                    "images": list(request.images),
                    "mode": request.mode,
                    "options": dict(request.options),
                },
                callback_token=token,
                callback_url=callback_url,
                # Known before the submission, so a callback that overtakes the submit
                # response can already be verified.
                key_fingerprint=provider.config.api_key.fingerprint,
                notify=notify,
                deadline_at=deadline_at,
            )
        )
        job = Pending(job_id, provider_name, request, callback_url, created_at, deadline_at)
        self.store.hold("jobs", "id", [job_id])
        try:
            return job_id, await self.submitter.attempt(job, 1)
        finally:
            self.store.let_go("jobs", "id", [job_id])

    async def cancel(self, job_id: str) -> Literal["canceled", "requested"]:
        """Ask the job's provider to stop it.

        "canceled": the provider stopped it and the job is stored as canceled;
        "requested": the provider took the request and a poll, due now, will tell.
        Raises CannotCancel before asking (nothing is written), ProviderError when the
        provider refused or could not be reached (nothing is written either).
        """
        job = await self.store.get_job(job_id)
        if job is None:
            raise CannotCancel("unknown_job", "no job has this id")
        status = Status(job["status"])
        if status.terminal:
            raise CannotCancel(
                "job_ended", f"the job has already ended ({status}); nothing to cancel"
            )
        provider = self.providers.get(job["provider"])
        if provider is None:
            raise CannotCancel(
                "unknown_provider", f"provider {job['provider']} is no longer configured"
            )
        why = f"{provider.name} ({provider.config.type}) offers no way to cancel a job"
        if not provider.supports_cancel:
            self.metrics.count_cancel(provider.name, "unsupported")
            raise CannotCancel("cancel_unsupported", f"{why}; it will run to its end")
        if job["provider_job_id"] is None:
            raise CannotCancel(
                "not_submitted",
                "the provider has not answered the submission yet; try again in a moment",
            )
        ref = JobRef(job["id"], job["provider_job_id"], job["key_fingerprint"], job["callback_url"])
        try:
            observed = await provider.cancel(ref)
        except CancelUnsupported as exc:
            # The adapter's own words: some providers cancel only in some states.
            self.metrics.count_cancel(provider.name, "unsupported")
            raise CannotCancel("cancel_unsupported", str(exc) or why) from None
        except ProviderError:
            self.metrics.count_cancel(provider.name, "refused")
            raise
        if observed is None:
            await self.store.schedule_poll(job_id, self.store.clock())
            self.poller.wake()
            self.metrics.count_cancel(provider.name, "requested")
            log.info("job %s: %s took the cancel request; polling it now", job_id, provider.name)
            return "requested"
        applied = await self.store.apply(job_id, observed, "cancel", {"requested_by": "api"})
        if applied.status is not Status.CANCELED:
            # The job ended another way while the provider was being asked.
            raise CannotCancel(
                "job_ended", f"the job has already ended ({applied.status}); nothing to cancel"
            )
        self.metrics.count_cancel(provider.name, "canceled")
        log.info("job %s canceled at %s", job_id, provider.name)
        return "canceled"
