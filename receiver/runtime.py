"""The running service's parts, wired together: store, provider adapters, poller."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx

from receiver import notify
from receiver import providers as adapters
from receiver.config import Config
from receiver.media import Archive
from receiver.metrics import Metrics
from receiver.notify.base import Channel
from receiver.notify.outbox import Outbox
from receiver.poller import Poller, first_poll_delay
from receiver.providers.base import Observation, Provider, ProviderError, SubmitRequest
from receiver.states import Status
from receiver.store import NewJob, Store
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


class Runtime:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.store = Store(config.database, route=config.channels_for, clock=clock)
        self.client = httpx.AsyncClient(transport=transport, follow_redirects=False)
        self.providers: dict[str, Provider] = {
            name: adapters.build(p, self.client) for name, p in config.providers.items()
        }
        self.channels: dict[str, Channel] = notify.build_all(config, self.client)
        self.metrics = Metrics(
            self.store,
            providers=self.providers,
            callback_providers=[n for n, p in self.providers.items() if p.supports_callbacks],
            channels=self.channels,
        )
        self.poller = Poller(self.store, self.providers, on_poll=self.metrics.count_poll)
        self.archive = Archive(
            config, self.store, self.providers,
            on_download=self.metrics.count_download, on_stored=self.metrics.count_stored,
        )  # fmt: skip
        self.outbox = Outbox(
            self.store, config.notify, self.channels, on_attempt=self.metrics.count_attempt,
            render=self.render_job, hold=self.archive.hold,
        )  # fmt: skip
        self.json_loads: Callable[[str | bytes], Any] = strict_json

    async def start(self) -> None:
        await asyncio.to_thread(self.store.open)
        self.poller.start()
        self.outbox.start()
        self.archive.start()
        log.info(
            "vidhook ready: database %s, providers %s",
            self.config.database,
            ", ".join(self.providers),
        )

    async def stop(self) -> None:
        await self.poller.stop()
        await self.outbox.stop()
        await self.archive.stop()
        await self.client.aclose()
        await asyncio.to_thread(self.store.close)

    @property
    def ready(self) -> bool:
        workers = (self.poller, self.outbox, self.archive.worker)
        return self.store.writer.running and all(worker.running for worker in workers)

    def render_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job as the API and notifications show it, with its ``media``."""
        return render_job(job, self.archive.view)

    def count_callback(self, provider: str, outcome: str, reason: str | None = None) -> None:
        self.metrics.count_callback(provider, outcome, reason)

    async def submit(
        self, provider_name: str, request: SubmitRequest, notify: list[str] | None
    ) -> str:
        """Record the job, then submit it; the job is stored whatever the provider says."""
        provider = self.providers[provider_name]
        job_id = new_job_id()
        token = new_callback_token() if provider.supports_callbacks else None
        callback_url = self.config.callback_url(provider_name, token) if token else None
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
                deadline_at=self.store.clock() + provider.config.deadline,
            )
        )
        try:
            submission = await provider.submit(request, callback_url)
        except ProviderError as exc:
            log.warning("job %s: %s refused the submission: %s", job_id, provider_name, exc)
            failed = Observation(status=Status.FAILED, error=str(exc))
            await self.store.apply(job_id, failed, "submit", {"error": str(exc)})
            return job_id
        # Webhook providers are still polled if their callback is late (reconciliation).
        delay = first_poll_delay(provider.config, provider.supports_callbacks)
        await self.store.record_submission(
            job_id, submission, next_poll_at=self.store.clock() + delay
        )
        self.poller.wake()
        log.info("job %s submitted to %s as %s", job_id, provider_name, submission.provider_job_id)
        return job_id
