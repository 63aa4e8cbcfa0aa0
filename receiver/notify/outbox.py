"""The outbox worker: sends due deliveries, retries them, and records every attempt.

Every delivery is a row, queued in the same transaction as the transition it announces,
so nothing is notified without being stored and nothing stored goes unnotified, even
across a crash. The writer tells its listeners what each commit marked: a commit that
queued deliveries names their channels, and an idle channel's drain starts at once
(a busy one reads again before it ends); other commits are ignored. The worker looks
in the database itself for due deliveries when a drain ends, when the next retry falls
due, and when asked to (a dead delivery was retried).

Each channel is drained by its own task, so a slow channel delays only itself. A drain
reads a batch of due deliveries together with their jobs and transitions (one trip to a
reader), then sends them in order, one at a time and spaced by the channel's
``min_interval`` (Slack asks for at most one a second). A delivered message's attempt is
committed while the channel's next message is sent: at most one such record is in flight
per channel, and it is awaited before the next batch is read (so nothing is read as due
again and sent twice), before any other record of the channel (a failure, a dead
message), and when the drain ends or the worker stops. Sends in flight across all
channels are bounded (``send_limit``), so that hundreds of channels do not make the
HTTP client's connection pool thrash.

A channel whose destination is gone (HTTP 403, 404, 410, an archived Slack channel) is
disabled: its deliveries are held, neither sent nor given up on, until its configuration
changes or a retry enables it again, and are then sent in their original order. The
deliveries of a channel that is no longer in the configuration are held too.

A delivery is marked delivered only after its channel accepted it: a crash in between
sends it again on restart, the one case where a receiver may see a message twice. As a
record may still be committing while the next message is sent, a crash can leave up to
two messages per channel sent but not recorded; both are sent again after the restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Any

from receiver.config import ChannelConfig, NotifyConfig
from receiver.notify.base import Channel, DeliveryError, Event
from receiver.store import DatabaseUnavailable, Store
from receiver.store.outbox import DEAD, DELIVERED, PENDING
from receiver.views import render_job
from receiver.worker import IDLE_WAIT, Worker

log = logging.getLogger("vidhook.notify")

BATCH = 20
# How a commit names the channels it queued deliveries for (receiver.store.writer.mark).
QUEUED_FOR = "deliveries:"
# Sends in flight across all channels: httpcore's pool does work for every request
# waiting times every connection, so hundreds at once cost more than they gain; with
# 400 channels, 8 kept the event loop well clear of saturation and 16 did not.
SEND_LIMIT = 8


def channel_fingerprint(config: ChannelConfig) -> str:
    """Changes whenever the channel's configuration does (a disabled channel is then retried)."""
    parts = {
        "type": config.type,
        "options": config.options,
        "secrets": {k: v.fingerprint for k, v in config.secrets.items()},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def retry_delay(
    config: NotifyConfig,
    attempts: int,
    retry_after: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with jitter, never sooner than the destination asked."""
    backoff = min(config.retry_max, config.retry_base * 2.0 ** max(0, attempts - 1))
    return max(retry_after or 0.0, backoff * (0.5 + 0.5 * rng()))


class Outbox(Worker):
    name = "outbox"

    def __init__(
        self,
        store: Store,
        config: NotifyConfig,
        channels: Mapping[str, Channel],
        *,
        on_attempt: Callable[[str, str, float | None], None] | None = None,
        send_limit: int = SEND_LIMIT,
        render: Callable[[dict[str, Any]], dict[str, Any]] = render_job,
        hold: Callable[[Mapping[str, Any]], float | None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.channels = channels
        # (channel, outcome, seconds from the state change to delivery when delivered)
        self.on_attempt = on_attempt
        # How a job is shown in an event, and until when a delivery waits (for the
        # job's kept copy: receiver.media.view.held_until), None to send it now.
        self.render = render
        self.hold = hold
        self.disabled: dict[str, str] = {}
        super().__init__()
        self._busy: set[str] = set()
        self._last_sent: dict[str, float] = {}
        self._listener: Callable[[Set[str]], None] | None = None
        self._sending = asyncio.Semaphore(send_limit)
        # Per channel: the delivered attempt whose record is still being committed.
        self._recording: dict[str, asyncio.Future[None]] = {}
        # Channels a commit queued deliveries for since their drain last read.
        self._queued: set[str] = set()
        self._prepared = False
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def committed(touched: Set[str]) -> None:
            # Only a commit that queued or re-queued deliveries concerns the outbox.
            if "deliveries" in touched:
                names = {t.removeprefix(QUEUED_FOR) for t in touched if t.startswith(QUEUED_FOR)}
                loop.call_soon_threadsafe(self._deliveries_queued, names)

        self._listener = committed
        self.store.listeners.append(committed)
        super().start()

    async def stop(self) -> None:
        self._stopping = True
        if self._listener in self.store.listeners:
            self.store.listeners.remove(self._listener)
        await super().stop()

    def _deliveries_queued(self, names: Set[str]) -> None:
        """A commit queued deliveries for these channels: start their drains right away."""
        if self._stopping:
            return
        if not names:  # marked without saying for whom: look in the database
            self.wake()
            return
        self._queued.update(names)
        if not self._prepared:
            self.wake()  # the first round starts them, once disabled channels are known
            return
        for name in names:
            self._start_drain(name)

    def _start_drain(self, name: str) -> None:
        if name in self.channels and name not in self._busy:
            self._busy.add(name)
            self.spawn(self._drain(name))

    async def round(self) -> float:
        if not await self.store.writable():
            return IDLE_WAIT  # a message sent now could not be recorded, and would go twice
        for name in list(self._queued):
            if name not in self.channels:
                self._queued.discard(name)
            self._start_drain(name)
        wait = IDLE_WAIT
        if self.channels and self._busy.issuperset(self.channels):
            # Each channel is being drained; the end of a drain wakes this loop again.
            return wait
        due = await self.store.next_delivery_due()
        now = self.store.clock()
        for name, at in due.items():
            if name not in self.channels or name in self._busy:
                continue
            if at > now:
                wait = min(wait, at - now)
                continue
            self._start_drain(name)
        return wait

    async def prepare(self) -> None:
        configured = {name: channel_fingerprint(c.config) for name, c in self.channels.items()}
        found = await self.store.settle_channels(configured)
        self.disabled.update(found.disabled)
        for name, reason in found.disabled.items():
            log.error(
                "channel %s is disabled: %s; its deliveries are held until its configuration"
                " changes or one of them is retried", name, reason,
            )  # fmt: skip
        for name in found.changed:
            log.info("channel %s changed since it was disabled; trying it again", name)
        for name, count in found.released.items():
            log.info("channel %s: %d held deliveries queued again, in order", name, count)
        for name, count in found.orphaned.items():
            log.warning(
                "channel %s is not in the configuration: its %d pending deliveries are held"
                " (add it back to send them)", name, count,
            )  # fmt: skip
        self._prepared = True

    def enabled(self, names: Iterable[str]) -> None:
        """These channels were enabled again (a retry, whose write released their held
        deliveries): send to them."""
        for name in names:
            self.disabled.pop(name, None)
        self.wake()

    async def _drain(self, name: str) -> None:
        try:
            while True:
                self._queued.discard(name)
                if name in self.disabled:
                    # Queued since the channel was disabled: held with the others.
                    await self._recorded(name)
                    await self.store.hold_deliveries(name)
                    break
                batch = await self.store.due_deliveries_with_sources(name, BATCH)
                if not batch:
                    break
                claimed = [delivery["id"] for delivery in batch]
                self.store.hold("deliveries", "id", claimed)
                try:
                    for delivery in batch:
                        if name in self.disabled:
                            break  # disabling it held the rest of the batch
                        await self._deliver(self.channels[name], delivery)
                    # Before the next read: a delivery whose record is still on its way
                    # would be read as due and sent again.
                    await self._recorded(name)
                finally:
                    self.store.let_go("deliveries", "id", claimed)
                if len(batch) < BATCH and name not in self._queued:
                    # All that was due is sent, and no commit queued more since the read:
                    # no need to read again (the main loop looks once the drain is over).
                    break
        except DatabaseUnavailable:
            pass  # the store logs the outage; the next round waits for its end
        except Exception:
            log.exception("channel %s: sending failed; trying again shortly", name)
            await asyncio.sleep(IDLE_WAIT)
        finally:
            try:
                await self._recorded(name)
            except Exception:
                log.exception("channel %s: recording a delivered attempt failed", name)
            finally:
                self._busy.discard(name)
                # The main loop left this channel out while it was busy, and the drain may
                # have left retries for later: count it in again.
                self.wake()

    async def _recorded(self, name: str) -> None:
        """Wait until the channel's record in flight, if any, is committed."""
        recording = self._recording.get(name)
        if recording is None:
            return
        try:
            # Shielded: a stop that cancels the drain here does not cancel the record,
            # which the drain then waits for once more on its way out.
            await asyncio.shield(recording)
        finally:
            if recording.done():
                del self._recording[name]

    async def _deliver(self, channel: Channel, delivery: Mapping[str, Any]) -> None:
        name, delivery_id = channel.name, int(delivery["id"])
        now = self.store.clock()
        started_at = delivery.get("requeued_at") or delivery["created_at"]
        if now - started_at > self.config.max_age:
            await self._recorded(name)
            await self._finish(delivery, DEAD, "dead", "gave up: older than notify.max_age")
            return
        job, transition = delivery.get("job"), delivery.get("transition")
        if job is None or transition is None:
            await self._recorded(name)
            await self._finish(delivery, DEAD, "dead", "its job or transition no longer exists")
            return
        until = self.hold(delivery) if self.hold is not None else None
        if until is not None:
            # Deferred, or (the copy settled meanwhile) left due: the next read sends it
            # with the job as it is now.
            await self._recorded(name)
            await self.store.defer_delivery(delivery_id, until)
            return
        event = Event(
            id=delivery.get("event_id") or f"dlv_{delivery_id}",
            type=f"job.{delivery['event']}",
            created_at=transition["at"],
            job=self.render(job),
        )
        await self._pace(channel)
        async with self._sending:
            started = time.perf_counter()
            try:
                await channel.send(event)
            except DeliveryError as exc:
                failure: DeliveryError | None = exc
            except Exception as exc:  # a channel bug must not stop the outbox
                log.exception("channel %s failed unexpectedly", name)
                failure = DeliveryError(f"unexpected {exc.__class__.__name__}", kind="transient")
            else:
                failure = None
            finally:
                self._last_sent[name] = time.monotonic()
        duration = (time.perf_counter() - started) * 1000
        # The previous message's record first: one record in flight, in the order sent.
        await self._recorded(name)
        if failure is None:
            self._recording[name] = self._delivered(delivery, duration, event.created_at)
            return
        await self._failed(channel, delivery, failure, duration)

    def _delivered(
        self, delivery: Mapping[str, Any], duration: float, changed_at: float
    ) -> asyncio.Future[None]:
        """The delivered attempt's record, on its way to the writer already."""
        name, latency = delivery["channel"], self.store.clock() - changed_at
        recording = self.store.queue_attempt(
            int(delivery["id"]), outcome="delivered", status=DELIVERED, next_attempt_at=None,
            error=None, status_code=None, duration_ms=duration,
        )  # fmt: skip
        on_attempt = self.on_attempt
        if on_attempt is not None:

            def counted(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    on_attempt(name, "delivered", latency)

            recording.add_done_callback(counted)
        return recording

    async def _failed(
        self, channel: Channel, delivery: Mapping[str, Any], failure: DeliveryError, duration: float
    ) -> None:
        name = channel.name
        attempts = int(delivery["attempts"]) + 1
        if failure.kind == "gone":
            reason = failure.message
            log.error(
                "channel %s disabled: %s; its deliveries are held until its configuration"
                " changes or one of them is retried", name, reason,
            )  # fmt: skip
            self.disabled[name] = reason
            # This delivery is held, and the channel's others: sent in order once it is
            # enabled again.
            await self.store.disable_channel(
                int(delivery["id"]), reason, channel_fingerprint(channel.config),
                status_code=failure.status_code, duration_ms=duration,
            )  # fmt: skip
            if self.on_attempt:
                self.on_attempt(name, "disabled", None)
        elif failure.kind == "permanent" or attempts >= self.config.max_attempts:
            log.warning("delivery %s to %s is dead: %s", delivery["id"], name, failure.message)
            await self._finish(delivery, DEAD, "dead", failure.message, failure, duration)
        else:
            delay = retry_delay(self.config, attempts, failure.retry_after)
            log.info(
                "delivery %s to %s will be retried in %.1f s: %s",
                delivery["id"], name, delay, failure.message,
            )  # fmt: skip
            await self._finish(
                delivery, PENDING, "retry", failure.message, failure, duration,
                next_attempt_at=self.store.clock() + delay,
            )  # fmt: skip

    async def _finish(
        self,
        delivery: Mapping[str, Any],
        status: str,
        outcome: str,
        error: str | None,
        failure: DeliveryError | None = None,
        duration: float = 0.0,
        next_attempt_at: float | None = None,
    ) -> None:
        await self.store.record_attempt(
            int(delivery["id"]),
            outcome=outcome,
            status=status,
            next_attempt_at=next_attempt_at,
            error=error,
            status_code=failure.status_code if failure else None,
            duration_ms=duration,
        )
        if self.on_attempt and outcome != "delivered":
            self.on_attempt(delivery["channel"], outcome, None)

    async def _pace(self, channel: Channel) -> None:
        last = self._last_sent.get(channel.name)
        if last is not None and channel.min_interval > 0:
            wait = last + channel.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
