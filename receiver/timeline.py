"""Plain-text renderings of a job (as the admin API returns it) for the terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _seconds(start: str, moment: str) -> float:
    return (datetime.fromisoformat(moment) - datetime.fromisoformat(start)).total_seconds()


def format_timeline(job: dict[str, Any]) -> list[str]:
    transitions = job.get("transitions") or []
    if not transitions:
        return []
    start = transitions[0]["at"]
    lines = []
    for t in transitions:
        detail = t.get("detail") or {}
        notes = [f"{k}={v}" for k, v in detail.items()]
        line = f"  +{_seconds(start, t['at']):6.2f}s  {t['to_status']:<10}  via {t['source']:<8}"
        lines.append(f"{line}  {' '.join(notes)}" if notes else line.rstrip())
    return lines


def format_job(job: dict[str, Any]) -> list[str]:
    lines = [
        f"{job['id']}  {job['provider']}  {job['status']}",
        f"  prompt:   {job.get('prompt') or ''}",
        f"  model:    {job.get('model') or ''}",
        f"  task:     {job.get('provider_job_id') or '-'}",
        f"  created:  {job['created_at']}",
    ]
    if job.get("result_url"):
        lines.append(f"  result:   {job['result_url']}")
    if job.get("error"):
        lines.append(f"  error:    {job['error']}")
    submission = job.get("submission")
    if submission and submission.get("pending"):
        lines.append(
            f"  submission: attempt {submission['attempts']} refused "
            f"({submission['last_error']}); next at {submission['next_attempt_at']}"
        )
    for anomaly in job.get("anomalies") or []:
        lines.append(f"  anomaly:  {anomaly.get('note')}")
    lines.append("  timeline:")
    lines += format_timeline(job)
    return lines
