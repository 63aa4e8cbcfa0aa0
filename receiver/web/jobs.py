"""/ui/: the jobs, newest first, as a table or a gallery, with filters and counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from receiver.states import Status
from receiver.store import pages as queries
from receiver.store.pages import JobFilter, by_status
from receiver.web import guard

if TYPE_CHECKING:
    from receiver.runtime import Runtime

PAGE_SIZE = 50
VIEWS = ("table", "gallery")
MAX_SEARCH = 200
STATUSES = [s.value for s in Status]


class Listing:
    """The list's query string: filters, view and cursor; makes the links that change one."""

    def __init__(self, request: Request) -> None:
        params = request.query_params
        self.problems: list[str] = []
        self.status = params.get("status") or None
        if self.status is not None and self.status not in STATUSES:
            self.problems.append(f"There is no status “{self.status}”; showing every status.")
            self.status = None
        self.provider = params.get("provider") or None
        search = (params.get("q") or "").strip()
        self.search = search[:MAX_SEARCH] or None
        self.view = params.get("view") if params.get("view") in VIEWS else "table"
        self.before = params.get("before") or None

    def link(self, root: str, **changes: str | None) -> str:
        fields = {
            "status": self.status,
            "provider": self.provider,
            "q": self.search,
            "view": None if self.view == "table" else self.view,
            "before": self.before,
        }
        if "before" not in changes:
            fields["before"] = None  # a new filter or view starts at the newest
        fields.update(changes)
        query = urlencode({k: v for k, v in fields.items() if v})
        return f"{root}/ui/" + (f"?{query}" if query else "")

    @property
    def filter(self) -> JobFilter:
        return JobFilter(self.status, self.provider, self.search)


@guard.page
async def page(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    board = guard.dashboard(request)
    listing = Listing(request)
    counts = await board.job_counts()
    found = await runtime.store.read(
        queries.jobs_page, listing.filter, before=listing.before, limit=PAGE_SIZE, counts=counts
    )
    known = sorted(set(runtime.providers) | {name for name, _ in counts})
    totals = by_status(counts, listing.provider)
    context: dict[str, Any] = {
        "listing": listing,
        "jobs": [runtime.render_job(job) for job in found.jobs],
        "older": found.older,
        "searched_to": found.searched_to,
        "search_window": queries.SEARCH_WINDOW,
        "providers": known,
        "statuses": STATUSES,
        "totals": totals,
        "total": sum(totals.values()),
    }
    return board.pages.render(request, "jobs.html", context)
