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

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED)


# completed and failed share a rank: neither may replace the other.
_RANK = {Status.QUEUED: 0, Status.PROCESSING: 1, Status.COMPLETED: 2, Status.FAILED: 2}


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
    if _RANK[observed] < _RANK[current]:
        return Decision(new=None, anomaly=f"job is {current}; ignored earlier state {observed}")
    return Decision(new=observed)
