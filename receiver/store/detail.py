"""A job in full, as ``GET /api/jobs/{id}`` and the event stream show it before rendering."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from receiver.store import media, queries
from receiver.store.db import Db


async def details(db: Db, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each job as ``GET /api/jobs/{id}`` shows it before rendering: with its transitions,
    deliveries, callbacks and kept files. Jobs that do not exist are left out."""
    found: dict[str, dict[str, Any]] = {}
    for job_id in dict.fromkeys(job_ids):
        job = await queries.get_job(db, job_id)
        if job is not None:
            job["transitions"] = await queries.transitions(db, job_id)
            job["deliveries"] = await queries.deliveries(db, job_id)
            job["callbacks"] = await queries.callbacks(db, job_id)
            found[job_id] = job
    await media.attach(db, found.values())
    return found
