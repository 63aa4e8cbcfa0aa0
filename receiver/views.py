"""How a stored job is shown outside the database: the admin API and notifications."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from receiver.responses import iso
from receiver.states import TERMINAL


class MediaRenderer(Protocol):
    def render(self, job: Mapping[str, Any]) -> dict[str, Any]: ...


# A job rendered without the archive at hand (a test event): nothing is kept for it.
NO_MEDIA = {"status": "off", "video": None, "cover": None, "error": None}


def redact_callback_url(url: str | None, token: str | None) -> str | None:
    if not url or not token:
        return url
    return url.replace(token, token[:4] + "…")


def render_job(job: Mapping[str, Any], media: MediaRenderer | None = None) -> dict[str, Any]:
    out = {
        key: job.get(key)
        for key in (
            "id", "provider", "provider_job_id", "status", "provider_status", "model",
            "prompt", "request", "result_url", "cover_url", "error", "credits", "notify",
            "anomalies", "key_fingerprint",
        )
    }  # fmt: skip
    for key in ("created_at", "updated_at", "finished_at", "last_callback_at", "next_poll_at"):
        out[key] = iso(job.get(key))
    out["callback_url"] = redact_callback_url(job.get("callback_url"), job.get("callback_token"))
    # What the provider last said while the job ran; nothing once it has ended.
    progress = job.get("progress")
    running = job.get("status") not in TERMINAL
    out["progress"] = progress if isinstance(progress, dict) and running else None
    out["submission"] = render_submission(job)
    out["media"] = media.render(job) if media is not None else dict(NO_MEDIA)
    if "transitions" in job:
        out["transitions"] = [{**t, "at": iso(t["at"])} for t in job["transitions"]]
        out["deliveries"] = [render_delivery(d) for d in job["deliveries"]]
        out["callbacks"] = [
            {"id": c["id"], "received_at": iso(c["received_at"]),
             "provider_status": c["provider_status"], "outcome": c["outcome"],
             "received_url": c.get("received_url")}
            for c in job["callbacks"]
        ]  # fmt: skip
    return out


def render_submission(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """Where handing the job to its provider stands; None when it went through at once."""
    attempts = int(job.get("submit_attempts") or 0)
    under_way = job.get("next_submit_at") is not None or job.get("submitting_at") is not None
    pending = under_way and job.get("status") not in TERMINAL
    if not pending and attempts <= 1:
        return None
    return {
        "pending": pending,
        "attempts": attempts,
        "next_attempt_at": iso(job.get("next_submit_at")) if pending else None,
        "last_error": job.get("submit_error"),
    }


_DELIVERY_TIMES = ("next_attempt_at", "created_at", "updated_at", "delivered_at", "requeued_at")


def render_delivery(delivery: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(delivery)
    for key in _DELIVERY_TIMES:
        if key in out:
            out[key] = iso(out[key])
    return out
