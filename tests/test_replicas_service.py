"""Two services on one PostgreSQL database, in this process: what they share."""

from __future__ import annotations

import pytest

from tests.conftest import running_service

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_two_replicas_together_never_exceed_the_providers_requests_per_second(
    sandbox, tmp_path, pg_url
):
    rate = 8
    overrides = {"kvid": {"requests_per_second": rate, "poll_interval": 0.05}}
    with (
        running_service(sandbox.url, tmp_path / "a.db", overrides, database_url=pg_url) as a,
        running_service(sandbox.url, tmp_path / "b.db", overrides, database_url=pg_url) as b,
    ):
        # Submitted through both; either replica polls any of them.
        jobs = [(a, b)[i % 2].submit(f"Rain {i} [slow]", provider="kvid") for i in range(10)]
        for job in jobs:
            a.wait_status(job["id"], "completed", timeout=40)
    # Measured where the limit is the provider's: at its API (result files are elsewhere).
    times = sorted(r.time for r in sandbox.kvid.requests if "/files/" not in r.path)
    assert len(times) > 3 * rate  # enough traffic for the limit to have been tested
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= rate
