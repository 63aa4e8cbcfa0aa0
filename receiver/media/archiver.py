"""The archiver: downloads each completed job's result and cover, and keeps them.

Its queue is the ``downloads`` table, filled by the transaction that completes a job, so a
restart (or a kill) loses nothing: a download that was under way starts again from the
first byte, its half-written temporary file removed. A file's record is written only once
the file is whole in its storage, and the download's outcome after its files:

- kept: the video is in place (the cover too, when the provider gave one and it could be
  fetched; a cover that could not is noted in ``error``);
- retried later, with exponential backoff and never sooner than a Retry-After, after a
  network error, a timeout, 429 or 5xx, or a link the provider does not serve yet;
- expired: the link answered 403, 404 or 410 after the provider's known lifetime for
  results had passed (the job itself stays completed);
- failed: anything retrying cannot fix (not a video, larger than ``max_bytes``, a private
  address), or ``MAX_ATTEMPTS`` attempts without success.

Settling the download also releases the job's ``completed`` notifications that were
waiting for the copy (receiver.store.media.finish).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Set
from typing import Any

from receiver.config import ArchiveConfig
from receiver.media.content import COVER, VIDEO
from receiver.media.fetch import Fetcher, FetchError
from receiver.media.storage import Storage, StorageError, clean_staging, file_name
from receiver.providers.base import Download, JobRef, Provider
from receiver.store import Store
from receiver.store.media import EXPIRED, FAILED, KEPT
from receiver.worker import IDLE_WAIT, Worker

log = logging.getLogger("vidhook.archive")

MAX_ATTEMPTS = 10
RETRY_BASE = 10.0  # seconds before the first retry; each further one waits twice as long
RETRY_MAX = 3600.0
PRUNE_EVERY = 3600.0
PRUNE_BATCH = 500
OFF_WAIT = 3600.0
# (outcome, seconds the attempt took) per attempt; (bytes) per file kept.
OnDownload = Callable[[str, float], None]
OnStored = Callable[[int], None]


def retry_delay(
    attempts: int, retry_after: float | None, rng: Callable[[], float] = random.random
) -> float:
    backoff = min(RETRY_MAX, RETRY_BASE * 2.0 ** max(0, attempts - 1)) * (0.5 + 0.5 * rng())
    return max(retry_after or 0.0, backoff)


def _hours(seconds: float) -> str:
    return (
        f"{round(seconds / 86400, 1):g} days" if seconds >= 2 * 86400 else f"{seconds / 3600:.0f} h"
    )


class Archiver(Worker):
    name = "archiver"

    def __init__(
        self,
        store: Store,
        config: ArchiveConfig,
        storage: Storage | None,
        fetcher: Fetcher,
        providers: Mapping[str, Provider],
        *,
        on_download: OnDownload | None = None,
        on_stored: OnStored | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.storage = storage
        self.fetcher = fetcher
        self.providers = providers
        self.on_download = on_download
        self.on_stored = on_stored
        super().__init__()
        self._inflight: set[str] = set()
        self._listener: Callable[[Set[str]], None] | None = None
        self._last_prune = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def committed(touched: Set[str]) -> None:
            if "downloads" in touched:
                loop.call_soon_threadsafe(self.wake)

        self._listener = committed
        self.store.listeners.append(committed)
        super().start()

    async def stop(self) -> None:
        if self._listener in self.store.listeners:
            self.store.listeners.remove(self._listener)
        await super().stop()

    async def prepare(self) -> None:
        if self.storage is None:
            return
        await self.storage.prepare()
        removed = await asyncio.to_thread(clean_staging, self.config.path)
        if removed:
            log.info("removed %d partial downloads left by the last run; they start again", removed)

    async def round(self) -> float:
        if self.storage is None:
            switched = await self.store.switch_off_downloads()
            if switched:
                log.info("archive is off: %d completed jobs' results are not kept", switched)
            return OFF_WAIT  # a completion's commit wakes the loop; nothing else to do
        if self.config.keep_days > 0 and time.monotonic() - self._last_prune >= PRUNE_EVERY:
            self._last_prune = time.monotonic()
            await self.prune()
        room = self.config.concurrency - len(self._inflight)
        if room > 0:
            for row in await self.store.due_downloads(room, sorted(self._inflight)):
                self._inflight.add(row["job_id"])
                self.store.hold("downloads", "job_id", [row["job_id"]])
                self.spawn(self._download(row))
        upcoming = await self.store.next_download_due(sorted(self._inflight))
        if upcoming is None:
            return IDLE_WAIT
        return max(0.0, min(IDLE_WAIT, upcoming - self.store.clock()))

    async def _download(self, row: Mapping[str, Any]) -> None:
        try:
            await self.download(row)
        except Exception as exc:  # a bug must not stop the archiver, nor lose the download
            log.exception("download for job %s failed unexpectedly", row["job_id"])
            failure = FetchError(f"unexpected {exc.__class__.__name__}", kind="transient")
            await self._failed(row, failure, time.perf_counter())
        finally:
            self._inflight.discard(row["job_id"])
            self.store.let_go("downloads", "job_id", [row["job_id"]])
            self.wake()

    async def download(self, row: Mapping[str, Any]) -> None:
        assert self.storage is not None
        started = time.perf_counter()
        job_id = row["job_id"]
        if not row["result_url"]:
            await self._finish(row, FAILED, "the provider gave no result URL", started)
            return
        wanted = [(VIDEO, row["result_url"])]
        if row["cover_url"]:
            wanted.append((COVER, row["cover_url"]))
        cover_error: FetchError | None = None
        for kind, url in wanted:
            if self._kept_already(row, kind):
                continue
            try:
                await self._keep(row, kind, url)
            except FetchError as exc:
                if kind == VIDEO:
                    await self._failed(row, exc, started)
                    return
                cover_error = exc
        if cover_error is not None:
            attempts = int(row["attempts"]) + 1
            if cover_error.kind == "transient" and attempts < MAX_ATTEMPTS:
                await self._retry(row, f"cover: {cover_error.message}", cover_error, started)
                return
            log.info("job %s: video kept, cover not: %s", job_id, cover_error.message)
            await self._finish(row, KEPT, f"cover not kept: {cover_error.message}", started)
            return
        await self._finish(row, KEPT, None, started)

    def _kept_already(self, row: Mapping[str, Any], kind: str) -> bool:
        """Kept by an earlier attempt of this download (a retry after the cover failed)."""
        assert self.storage is not None
        kept = row["files"].get(kind)
        return (
            kept is not None
            and kept["pruned_at"] is None
            and kept["store"] == self.storage.name
            and kept["stored_at"] >= row["queued_at"]
        )

    async def _keep(self, row: Mapping[str, Any], kind: str, url: str) -> None:
        assert self.storage is not None
        job_id = row["job_id"]
        ref = JobRef(job_id, row["provider_job_id"], row["key_fingerprint"], row["callback_url"])
        provider = self.providers.get(row["provider"])
        # A provider no longer configured: its links may still open without its key.
        download = provider.download(ref, url) if provider is not None else Download(url)
        fetched = await self.fetcher.fetch(download, kind, f"{job_id}-{kind}")
        location = file_name(job_id, kind, fetched.content_type)
        try:
            await self.storage.put(fetched, location)
        except StorageError as exc:
            raise FetchError(str(exc), kind="transient") from None
        finally:
            if fetched.path.exists():
                await asyncio.to_thread(fetched.path.unlink, missing_ok=True)
        await self.store.record_file(
            job_id, kind, store=self.storage.name, location=location, size=fetched.size,
            sha256=fetched.sha256, content_type=fetched.content_type,
        )  # fmt: skip
        if self.on_stored is not None:
            self.on_stored(fetched.size)
        log.info("job %s: %s kept, %d bytes, %s", job_id, kind, fetched.size, fetched.content_type)

    async def _failed(self, row: Mapping[str, Any], failure: FetchError, started: float) -> None:
        attempts = int(row["attempts"]) + 1
        if failure.kind == "gone":
            expired = self._expired(row, failure)
            if expired is not None:
                await self._finish(row, EXPIRED, expired, started)
                return
        if failure.kind == "permanent":
            await self._finish(row, FAILED, failure.message, started)
        elif attempts >= MAX_ATTEMPTS:
            message = f"gave up after {attempts} attempts: {failure.message}"
            await self._finish(row, FAILED, message, started)
        else:
            await self._retry(row, failure.message, failure, started)

    def _expired(self, row: Mapping[str, Any], failure: FetchError) -> str | None:
        """Why the link has expired, if the provider's results are known to be gone by now."""
        provider = self.providers.get(row["provider"])
        lifetime = provider.result_lifetime if provider is not None else None
        finished = row["finished_at"]
        if lifetime is None or finished is None:
            return None
        age = self.store.clock() - finished
        if age < lifetime:
            return None
        return (
            f"the provider's link has expired: {failure.message} {_hours(age)} after the job "
            f"finished ({row['provider']} keeps results for {_hours(lifetime)})"
        )

    async def _retry(
        self, row: Mapping[str, Any], error: str, failure: FetchError, started: float
    ) -> None:
        attempts = int(row["attempts"]) + 1
        delay = retry_delay(attempts, failure.retry_after)
        log.info("download for job %s will be retried in %.0f s: %s", row["job_id"], delay, error)
        await self.store.retry_download(row["job_id"], error, self.store.clock() + delay)
        self._count("retry", started)

    async def _finish(
        self, row: Mapping[str, Any], status: str, error: str | None, started: float
    ) -> None:
        if status != KEPT:
            log.warning("download for job %s %s: %s", row["job_id"], status, error)
        await self.store.finish_download(row["job_id"], status, error)
        self._count(status, started)

    def _count(self, outcome: str, started: float) -> None:
        if self.on_download is not None:
            self.on_download(outcome, time.perf_counter() - started)

    async def prune(self) -> int:
        """Remove the files kept longer than keep_days; their rows stay, marked pruned."""
        if self.storage is None or self.config.keep_days <= 0:
            return 0
        before = self.store.clock() - self.config.keep_days * 86400
        pruned = 0
        while batch := await self.store.prunable_files(before, PRUNE_BATCH):
            done: list[tuple[str, str]] = []
            for item in batch:
                if item["store"] != self.storage.name:
                    continue  # in a storage no longer configured; not ours to remove now
                try:
                    await self.storage.delete(item["location"])
                except StorageError as exc:
                    log.error("pruning job %s's %s failed: %s", item["job_id"], item["kind"], exc)
                    continue
                done.append((item["job_id"], item["kind"]))
            await self.store.mark_pruned(done, self.config.keep_days)
            pruned += len(done)
            if len(done) < len(batch):
                break  # what is left failed or belongs elsewhere: the next prune tries again
        if pruned:
            log.info("pruned %d files kept longer than %g days", pruned, self.config.keep_days)
        return pruned
