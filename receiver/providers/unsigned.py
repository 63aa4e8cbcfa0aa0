"""Callbacks that their provider does not sign (Luma, MiniMax): the URL token is the proof.

Such a body is evidence of a status and nothing more (``Observation.evidence``); the
result comes from the status endpoint. Two things are still checked, before anything is
stored:

- the body speaks of the job whose token it came with: a body naming another task is
  refused, so one job's URL cannot be used to talk about another job;
- each (task, status) is heard once: its nonce is derived from them, so the provider's
  retry (the same bytes) is a duplicate, and another body claiming a status already
  heard is a replay. Neither adds anything: the status is already known.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import signing
from receiver.providers.base import JobRef


def payload(body: bytes) -> Mapping[str, Any] | None:
    """The body as a JSON object, or None (the callback endpoint then refuses it)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def body_nonce(job: JobRef, body: bytes) -> str:
    """The nonce of a body that is not a JSON object: the callback endpoint refuses it."""
    return f"{job.id}:body:{hashlib.sha256(body).hexdigest()}"


def nonce(job: JobRef, task_id: str | None, status: str | None) -> str:
    """The nonce of a callback naming ``task_id`` in ``status``; SignatureError if that
    task is not the job's."""
    if task_id is None:
        raise signing.SignatureError(
            "wrong_task", "the callback names no task, so it cannot be matched to this job"
        )
    if job.provider_job_id is not None and task_id != job.provider_job_id:
        raise signing.SignatureError(
            "wrong_task",
            "the callback names another task than the one this callback URL belongs to",
        )
    # Hashed: the body chooses these, and a nonce is a key of its table.
    heard = hashlib.sha256(f"{task_id}\n{status or ''}".encode()).hexdigest()
    return f"{job.id}:{heard}"
