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
    if job.get("finished_at"):
        took = _seconds(job["created_at"], job["finished_at"])
        lines.append(f"  finished: {job['finished_at']} ({took:.1f}s)")
    for label, key in (("result", "result_url"), ("cover", "cover_url"), ("error", "error")):
        if job.get(key):
            lines.append(f"  {label + ':':<9} {job[key]}")
    if job.get("credits") is not None:
        lines.append(f"  credits:  {job['credits']:g}")
    lines += _media(job.get("media"))
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
    deliveries = job.get("deliveries") or []
    if deliveries:
        lines.append("  deliveries:")
        lines += [format_delivery(d, indent="    ") for d in deliveries]
    return lines


def format_delivery(delivery: dict[str, Any], indent: str = "", with_job: bool = False) -> str:
    d = delivery
    line = (
        f"{indent}{d['id']:>6}  {d['channel']:<12} {d['event']:<10} {d['status']:<9} "
        f"attempts={d['attempts']}"
    )
    if with_job:
        line += f"  {d['job_id']}"
    return f"{line}  {d['last_error']}" if d.get("last_error") else line


def _media(media: Any) -> list[str]:
    """The kept copy of the result, where the service keeps one."""
    if not isinstance(media, dict) or media.get("status") in (None, "off"):
        return []
    status = media["status"]
    lines = [f"  kept:     {status}" + (f": {media['error']}" if media.get("error") else "")]
    for part in ("video", "cover"):
        item = media.get(part)
        if isinstance(item, dict) and item.get("url"):
            about = [f"{item['bytes'] / 1_000_000:.1f} MB"] if item.get("bytes") else []
            about += [item["content_type"]] if item.get("content_type") else []
            detail = f" ({', '.join(about)})" if about else ""
            lines.append(f"    {part + ':':<7} {item['url']}{detail}")
    return lines
