"""What an admin does to jobs and deliveries, for the admin API and the dashboard alike.

Each action either does its work and returns what the caller shows, or raises Refused
saying why, with nothing written: the API answers it as an error with ``status``, the
dashboard shows its message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from receiver.providers.base import ProviderError
from receiver.runtime import CannotCancel
from receiver.states import Status
from receiver.store.outbox import DEAD, HELD, Requeued

if TYPE_CHECKING:
    from receiver.runtime import Runtime

ARCHIVE_OFF = 'the archive is off; set [archive] store = "local" or "s3"'


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def unknown_job() -> Refused:
    return Refused(404, "unknown_job", "no job has this id")


async def job_detail(runtime: Runtime, job_id: str) -> dict[str, Any]:
    detail = await runtime.store.job_detail(job_id)
    if detail is None:
        raise unknown_job()
    return detail


async def refresh(runtime: Runtime, job_id: str) -> dict[str, Any]:
    """Poll the job now, unless it has ended or its provider has not answered yet."""
    job = await runtime.store.get_job(job_id)
    if job is None:
        raise unknown_job()
    if job["provider_job_id"] is not None and not Status(job["status"]).terminal:
        try:
            await runtime.poller.poll(job, raise_errors=True)
        except ProviderError as exc:
            raise Refused(502, "provider_error", str(exc), transient=exc.transient) from None
    return await job_detail(runtime, job_id)


async def cancel(
    runtime: Runtime, job_id: str
) -> tuple[Literal["canceled", "requested"], dict[str, Any]]:
    try:
        outcome = await runtime.cancel(job_id)
    except CannotCancel as exc:
        raise Refused(404 if exc.code == "unknown_job" else 409, exc.code, exc.message) from None
    except ProviderError as exc:
        message = f"the provider refused to cancel the job: {exc}"
        raise Refused(502, "provider_refused", message, transient=exc.transient) from None
    return outcome, await job_detail(runtime, job_id)


async def keep_again(runtime: Runtime, job_id: str) -> dict[str, Any]:
    """Queue the download of a completed job's result again."""
    job = await runtime.store.get_job(job_id)
    if job is None:
        raise unknown_job()
    if not runtime.archive.enabled:
        raise Refused(409, "archive_off", ARCHIVE_OFF)
    if job["status"] != Status.COMPLETED or not job["result_url"]:
        raise Refused(
            409, "no_result", f"only a completed job's result is kept; this one is {job['status']}"
        )
    await runtime.store.requeue_download(job_id)
    return await job_detail(runtime, job_id)


async def retry_delivery(runtime: Runtime, delivery_id: int | None) -> dict[str, Any]:
    """Send a dead or held delivery again, its channel enabled again."""
    source = None if delivery_id is None else await runtime.store.delivery_source(delivery_id)
    if delivery_id is None or source is None:
        raise Refused(404, "unknown_delivery", "no delivery has this id")
    if source["status"] not in (DEAD, HELD):
        raise Refused(
            409,
            "not_dead",
            f"only dead or held deliveries are retried; this one is {source['status']}",
        )
    channel = source["channel"]
    if channel not in runtime.channels:
        raise Refused(
            409,
            "channel_not_configured",
            f"channel {channel} is not in the configuration; add it back to send this delivery",
        )
    delivery = await runtime.store.requeue_delivery(delivery_id)
    assert delivery is not None
    runtime.outbox.enabled([channel])
    return delivery


async def retry_channel(runtime: Runtime, channel: str | None) -> Requeued:
    """Every dead delivery queued again, and the channels enabled again with their held
    deliveries released: of one channel, or of every configured one (None)."""
    if channel is not None and channel not in runtime.channels:
        known = ", ".join(sorted(runtime.channels)) or "none"
        raise Refused(
            422,
            "invalid_fields",
            "some query parameters are invalid",
            fields={"channel": f"not a configured channel; configured: {known}"},
        )
    channels = [channel] if channel is not None else list(runtime.channels)
    requeued = await runtime.store.requeue_deliveries(channels)
    runtime.outbox.enabled(channels)
    return requeued
