"""GET /metrics: Prometheus metrics, one registry per running service.

Two kinds of numbers. What happens to requests (callbacks, polls, delivery attempts) is
counted in memory as it happens; a restart resets those counters, which Prometheus's
rate() expects. What the database holds (transitions by status, backlogs) is read from
it at scrape time, so those survive restarts and cannot drift from the truth. The
database read runs on a reader thread, and concurrent scrapes share one read.

Every label value comes from the config or from a fixed list in the code, never from a
request: a caller cannot grow the number of series. ``vidhook_replica`` names the replica
(VIDHOOK_INSTANCE, or its host and pid), for telling replicas apart behind one address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from starlette.requests import Request
from starlette.responses import Response

from receiver.states import Status

if TYPE_CHECKING:
    from receiver.store import Store
from receiver.store.stats import Snapshot, read_snapshot

__all__ = [
    "CALLBACK_OUTCOMES",
    "CANCEL_OUTCOMES",
    "DELAY_BUCKETS",
    "DELIVERY_OUTCOMES",
    "DOWNLOAD_OUTCOMES",
    "POLL_OUTCOMES",
    "Metrics",
    "Snapshot",
    "endpoint",
    "read_snapshot",
]

CALLBACK_OUTCOMES = (
    "accepted", "duplicate", "replayed", "bad_signature", "unknown_token", "too_large",
    "wrong_content_type", "invalid_json",
)  # fmt: skip
# changed: the poll moved the job; unchanged: it did not; transient_error: retried
# later; permanent_error: the job failed; error: a bug, logged with its traceback.
POLL_OUTCOMES = ("changed", "unchanged", "transient_error", "permanent_error", "error")
DELIVERY_OUTCOMES = ("delivered", "retry", "dead", "disabled")
# canceled: stopped and stored; requested: the provider took it, a poll tells the end;
# refused: the provider said no or could not be reached; unsupported: it has no cancel.
CANCEL_OUTCOMES = ("canceled", "requested", "refused", "unsupported")
# What became of each download attempt (receiver.media.archiver).
DOWNLOAD_OUTCOMES = ("kept", "retry", "failed", "expired")
# A download's attempt: a fraction of a second for a small file nearby, minutes for
# gigabytes from a slow CDN.
DOWNLOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# From a state change to its delivery: tens of milliseconds when all is well, then
# minutes to a day while a destination is down and the outbox retries.
DELAY_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    4 * 3600.0, 86400.0,
)  # fmt: skip
_ACTIVE = (Status.QUEUED.value, Status.PROCESSING.value)


class _DatabaseCollector:
    """Yields the latest snapshot as metric families; Metrics.render refreshes it."""

    def __init__(self, providers: Iterable[str], channels: Iterable[str]) -> None:
        self.providers = tuple(providers)
        self.channels = tuple(channels)
        self.snapshot = Snapshot()

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration: the names are fixed here

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        transitions = CounterMetricFamily(
            "vidhook_transitions",
            "State changes stored, by the status reached (read from the database).",
            labels=["status"],
        )
        for value in (s.value for s in Status):
            transitions.add_metric([value], snap.transitions.get(value, 0))
        yield transitions
        active = GaugeMetricFamily(
            "vidhook_jobs_active", "Jobs not yet finished, by provider and status.",
            labels=["provider", "status"],
        )  # fmt: skip
        for provider in self.providers:
            for status in _ACTIVE:
                active.add_metric([provider, status], snap.active_jobs.get((provider, status), 0))
        yield active
        yield self._per(
            "vidhook_polls_scheduled", "Unfinished jobs with a poll scheduled.", "provider",
            self.providers, snap.polls_scheduled,
        )  # fmt: skip
        yield self._per(
            "vidhook_poll_backlog", "Polls whose time has come but which were not sent yet.",
            "provider", self.providers, snap.polls_due,
        )  # fmt: skip
        yield self._per(
            "vidhook_submissions_waiting",
            "Jobs whose provider refused the submission for now, waiting to be sent again.",
            "provider", self.providers, snap.submissions_waiting,
        )  # fmt: skip
        yield self._per(
            "vidhook_outbox_backlog", "Deliveries waiting to be sent (pending).", "channel",
            self.channels, snap.pending,
        )  # fmt: skip
        yield self._per(
            "vidhook_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending delivery; 0 when none is pending.", "channel",
            self.channels, snap.oldest_pending_age,
        )  # fmt: skip
        yield self._per(
            "vidhook_outbox_dead", "Deliveries given up on (dead), until retried.", "channel",
            self.channels, snap.dead,
        )  # fmt: skip
        yield self._per(
            "vidhook_outbox_held",
            "Deliveries held while their channel is disabled, sent once it is enabled again.",
            "channel", self.channels, snap.held,
        )  # fmt: skip
        backlog = GaugeMetricFamily(
            "vidhook_archive_backlog", "Downloads of results waiting to be kept (pending)."
        )
        backlog.add_metric([], snap.downloads_pending)
        yield backlog
        used = GaugeMetricFamily(
            "vidhook_archive_stored_bytes", "Bytes of kept files (videos and covers) in storage."
        )
        used.add_metric([], snap.media_bytes)
        yield used
        files = GaugeMetricFamily("vidhook_archive_stored_files", "Kept files in storage.")
        files.add_metric([], snap.media_files)
        yield files
        disabled = {name: 1 for name in snap.disabled}
        yield self._per(
            "vidhook_channel_disabled", "1 if the channel was disabled: its destination is gone.",
            "channel", self.channels, disabled,
        )  # fmt: skip

    @staticmethod
    def _per(
        name: str, doc: str, label: str, keys: Iterable[str], values: Mapping[str, float]
    ) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(name, doc, labels=[label])
        # Every configured name, with 0 when it has nothing: a missing series cannot alert.
        for key in keys:
            gauge.add_metric([key], values.get(key, 0))
        return gauge


class Metrics:
    """The service's metrics: counters fed by hooks, gauges read from the store."""

    def __init__(
        self,
        store: Store,
        *,
        providers: Iterable[str],
        callback_providers: Iterable[str],
        channels: Iterable[str],
    ) -> None:
        self.store = store
        providers, channels = tuple(providers), tuple(channels)
        # Per service: tests run many services in one process, and each counts its own.
        self.registry = CollectorRegistry(auto_describe=True)
        self.callbacks = Counter(
            "vidhook_callbacks", "Provider callbacks received, by provider and outcome.",
            ["provider", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.signature_failures = Counter(
            "vidhook_callback_signature_failures",
            "Callbacks refused because their signature did not verify, by reason.",
            ["provider", "reason"], registry=self.registry,
        )  # fmt: skip
        self.polls = Counter(
            "vidhook_polls", "Status fetches from providers, by provider and outcome.",
            ["provider", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.cancels = Counter(
            "vidhook_cancels", "Cancel requests, by provider and outcome.",
            ["provider", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.deliveries = Counter(
            "vidhook_deliveries", "Notification delivery attempts, by channel and outcome.",
            ["channel", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.delivery_delay = Histogram(
            "vidhook_delivery_delay_seconds",
            "Seconds from a job's state change to its delivery on a channel.",
            ["channel"], buckets=DELAY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.downloads = Counter(
            "vidhook_archive_downloads", "Attempts to download a result, by outcome.",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.download_bytes = Counter(
            "vidhook_archive_downloaded_bytes", "Bytes of results downloaded and kept.",
            registry=self.registry,
        )  # fmt: skip
        self.download_duration = Histogram(
            "vidhook_archive_download_seconds", "Seconds one attempt to download a result took.",
            buckets=DOWNLOAD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        for outcome in DOWNLOAD_OUTCOMES:
            self.downloads.labels(outcome)
        # Known series start at 0, so that the first event shows as an increase.
        for name in callback_providers:
            for outcome in CALLBACK_OUTCOMES:
                self.callbacks.labels(name, outcome)
        for name in providers:
            for outcome in POLL_OUTCOMES:
                self.polls.labels(name, outcome)
            for outcome in CANCEL_OUTCOMES:
                self.cancels.labels(name, outcome)
        for name in channels:
            self.delivery_delay.labels(name)
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(name, outcome)
        # Which replica answers: with several behind a load balancer, each scrape target
        # says who it is and what its counters are counting for.
        replica = Gauge(
            "vidhook_replica", "This replica (1): its name and the database engine it uses.",
            ["replica", "engine"], registry=self.registry,
        )  # fmt: skip
        replica.labels(store.instance, store.engine.name).set(1)
        self.database = _DatabaseCollector(providers, channels)
        self.registry.register(self.database)
        self._reading: asyncio.Task[Snapshot] | None = None
        self._callback_counters: dict[tuple[str, str], Counter] = {}

    # -- hooks --

    def count_callback(self, provider: str, outcome: str, reason: str | None = None) -> None:
        counter = self._callback_counters.get((provider, outcome))
        if counter is None:  # labels() takes a lock and builds a key: once a series is enough
            counter = self._callback_counters[provider, outcome] = self.callbacks.labels(
                provider, outcome
            )
        counter.inc()
        if outcome == "bad_signature":
            self.signature_failures.labels(provider, reason or "unknown").inc()

    def count_poll(self, provider: str, outcome: str) -> None:
        self.polls.labels(provider, outcome).inc()

    def count_cancel(self, provider: str, outcome: str) -> None:
        self.cancels.labels(provider, outcome).inc()

    def count_attempt(self, channel: str, outcome: str, seconds: float | None) -> None:
        self.deliveries.labels(channel, outcome).inc()
        if seconds is not None:
            self.delivery_delay.labels(channel).observe(max(0.0, seconds))

    def count_download(self, outcome: str, seconds: float) -> None:
        self.downloads.labels(outcome).inc()
        self.download_duration.observe(max(0.0, seconds))

    def count_stored(self, size: int) -> None:
        self.download_bytes.inc(size)

    # -- exposition --

    async def refresh(self) -> None:
        """Read the database's numbers; a scrape that arrives meanwhile shares the read."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read())
        # Shielded: one client hanging up must not cancel the read the others wait on.
        await asyncio.shield(self._reading)

    async def _read(self) -> Snapshot:
        # One read at a time (refresh shares it), so no other read can replace the
        # snapshot this one started from.
        snap = await self.store.read(read_snapshot, self.store.clock(), self.database.snapshot)
        self.database.snapshot = snap
        return snap

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


async def endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.runtime.metrics
    return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)
