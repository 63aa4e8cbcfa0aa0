"""A job's ``media``, as its JSON shows it: the status of its copy and signed links to it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from receiver.config import ArchiveConfig
from receiver.media.content import KINDS
from receiver.media.links import Links
from receiver.states import Status
from receiver.store.media import OFF, PENDING

NO_RESULT = "the job ended without a result to keep"
NOT_QUEUED = "completed before the archive was on; `vidhook archive --backfill` keeps it"


def off() -> dict[str, Any]:
    return {"status": OFF, "video": None, "cover": None, "error": None}


class MediaView:
    def __init__(
        self, config: ArchiveConfig, links: Links, storage: str, clock: Callable[[], float]
    ) -> None:
        self.enabled = config.enabled
        self.links = links
        self.storage = storage  # files kept in another storage than today's are not shown
        self.clock = clock

    def render(self, job: Mapping[str, Any]) -> dict[str, Any]:
        if not self.enabled:
            return off()
        download = job.get("download")
        files: Mapping[str, Mapping[str, Any]] = job.get("files") or {}
        now = self.clock()
        shown: dict[str, Any] = {kind: None for kind in KINDS}
        for kind in KINDS:
            row = files.get(kind)
            if row is not None and row.get("pruned_at") is None and row["store"] == self.storage:
                shown[kind] = {
                    "url": self.links.url(job["id"], kind, now),
                    "bytes": row["bytes"],
                    "sha256": row["sha256"],
                    "content_type": row["content_type"],
                }
        if download is not None:
            status, error = download["status"], download.get("error")
        elif job.get("status") == Status.COMPLETED.value:
            status, error = OFF, NOT_QUEUED
        elif Status(job["status"]).terminal:
            status, error = OFF, NO_RESULT
        else:
            status, error = PENDING, None
        return {"status": status, **shown, "error": error}


def held_until(delivery: Mapping[str, Any], now: float, wait: float) -> float | None:
    """Until when a ``completed`` notification waits for the job's copy, or None to send now.

    Measured from when the delivery was queued, which is stored: a restart neither
    starts the wait again nor forgets it.
    """
    if delivery.get("event") != Status.COMPLETED.value or wait <= 0 or delivery.get("attempts"):
        return None
    download = (delivery.get("job") or {}).get("download")
    if download is None or download["status"] != PENDING:
        return None
    until = float(delivery["created_at"]) + wait
    return until if until > now else None
