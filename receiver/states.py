"""Normalized job statuses and the rule that decides a transition.

Pure functions: no I/O, so every pair of (current, observed) is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
# For queries: "status NOT IN {TERMINAL_SQL}" selects the jobs still running.
TERMINAL_SQL = "('completed', 'failed', 'canceled')"
# The statuses a running job has left behind: a provider that reports one again lags.
_EARLIER = {Status.PROCESSING: frozenset({Status.QUEUED})}


@dataclass(frozen=True)
class Decision:
    """What an observation does to a job: move it to ``new``, or nothing.

    ``anomaly`` explains an observation that contradicts what is already known; it is
    kept on the job's record and never changes the status.
    """

    new: Status | None
    anomaly: str | None = None


def decide(current: Status | None, observed: Status) -> Decision:
    if current is None:
        return Decision(new=observed)
    if observed == current:
        return Decision(new=None)
    if current.terminal:
        return Decision(new=None, anomaly=f"job is {current}; ignored observed {observed}")
    if observed in _EARLIER.get(current, ()):
        return Decision(new=None, anomaly=f"job is {current}; ignored earlier state {observed}")
    return Decision(new=observed)
