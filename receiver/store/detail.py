"""A job in full, as ``GET /api/jobs/{id}`` and the event stream show it before rendering."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from receiver.store import media, queries


def details(conn: sqlite3.Connection, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each job as ``GET /api/jobs/{id}`` shows it before rendering: with its transitions,
    deliveries, callbacks and kept files. Jobs that do not exist are left out."""
    found: dict[str, dict[str, Any]] = {}
    for job_id in dict.fromkeys(job_ids):
        job = queries.get_job(conn, job_id)
        if job is not None:
            job["transitions"] = queries.transitions(conn, job_id)
            job["deliveries"] = queries.deliveries(conn, job_id)
            job["callbacks"] = queries.callbacks(conn, job_id)
            found[job_id] = job
    media.attach(conn, found.values())
    return found
