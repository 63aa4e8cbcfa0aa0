"""The outbox worker: sends due deliveries, retries them, and records every attempt.

Every delivery is a row, queued in the same transaction as the transition it announces,
so nothing is notified without being stored and nothing stored goes unnotified, even
across a crash. Each channel is drained by its own task, in order, one message at a
time (Slack asks for at most one a second), so a slow channel delays only itself.
A delivery is marked delivered only after its channel accepted it: a crash between the
two sends it again on restart, the one case where a receiver may see a message twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from receiver.config import ChannelConfig, NotifyConfig
from receiver.notify.base import Channel, DeliveryError, Event
from receiver.store import Store
from receiver.store.outbox import DEAD, DELIVERED, PENDING
from receiver.views import render_job
from receiver.worker import IDLE_WAIT, Worker

log = logging.getLogger("vidhook.notify")

BATCH = 20


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
    ) -> None:
        self.store = store
        self.config = config
        self.channels = channels
        # (channel, outcome, seconds from the state change to delivery when delivered)
        self.on_attempt = on_attempt
        self.disabled: dict[str, str] = {}
        super().__init__()
        self._busy: set[str] = set()
        self._last_sent: dict[str, float] = {}
        self._listener: Callable[[], None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def wake_soon() -> None:
            loop.call_soon_threadsafe(self.wake)

        # Any commit may have queued deliveries: look again as soon as one lands.
        self._listener = wake_soon
        self.store.writer.listeners.append(wake_soon)
        super().start()

    async def stop(self) -> None:
        if self._listener in self.store.writer.listeners:
            self.store.writer.listeners.remove(self._listener)
        await super().stop()

    async def round(self) -> float:
        wait = IDLE_WAIT
        due = await self.store.next_delivery_due()
        now = self.store.clock()
        for name, at in due.items():
            if name not in self.channels or name in self._busy:
                continue
            if at > now:
                wait = min(wait, at - now)
                continue
            self._busy.add(name)
            self.spawn(self._drain(name))
        return wait

    async def prepare(self) -> None:
        for state in await self.store.channel_states():
            name = state["name"]
            channel = self.channels.get(name)
            if channel is None:
                continue
            if state["config_fingerprint"] == channel_fingerprint(channel.config):
                self.disabled[name] = state["reason"]
                log.error("channel %s is disabled: %s", name, state["reason"])
            else:
                await self.store.enable_channel(name)
                log.info("channel %s changed since it was disabled; trying it again", name)

    async def _drain(self, name: str) -> None:
        try:
            while True:
                batch = await self.store.due_deliveries(name, BATCH)
                if not batch:
                    break
                for delivery in batch:
                    await self._deliver(self.channels[name], delivery)
        except Exception:
            log.exception("channel %s: sending failed; trying again shortly", name)
            await asyncio.sleep(IDLE_WAIT)
        finally:
            self._busy.discard(name)
            # The main loop left this channel out while it was busy: count it in again.
            self.wake()

    async def _deliver(self, channel: Channel, delivery: Mapping[str, Any]) -> None:
        name, delivery_id = channel.name, int(delivery["id"])
        now = self.store.clock()
        if name in self.disabled:
            await self._finish(
                delivery, DEAD, "disabled", f"channel disabled: {self.disabled[name]}"
            )
            return
        started_at = delivery.get("requeued_at") or delivery["created_at"]
        if now - started_at > self.config.max_age:
            await self._finish(delivery, DEAD, "dead", "gave up: older than notify.max_age")
            return
        source = await self.store.delivery_source(delivery_id)
        if source is None or source["job"] is None or source["transition"] is None:
            await self._finish(delivery, DEAD, "dead", "its job or transition no longer exists")
            return
        event = Event(
            id=delivery.get("event_id") or f"dlv_{delivery_id}",
            type=f"job.{delivery['event']}",
            created_at=source["transition"]["at"],
            job=render_job(source["job"]),
        )
        await self._pace(channel)
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
        if failure is None:
            await self._finish(delivery, DELIVERED, "delivered", None, duration=duration)
            if self.on_attempt:
                self.on_attempt(name, "delivered", self.store.clock() - event.created_at)
            return
        await self._failed(channel, delivery, failure, duration)

    async def _failed(
        self, channel: Channel, delivery: Mapping[str, Any], failure: DeliveryError, duration: float
    ) -> None:
        name = channel.name
        attempts = int(delivery["attempts"]) + 1
        if failure.kind == "gone":
            reason = failure.message
            log.error("channel %s disabled: %s", name, reason)
            self.disabled[name] = reason
            await self.store.disable_channel(name, reason, channel_fingerprint(channel.config))
            await self._finish(delivery, DEAD, "disabled", reason, failure, duration)
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
