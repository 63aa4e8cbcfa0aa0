"""Two `vidhook serve` replicas on one PostgreSQL database: what they share."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.test_restart import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RATE = 8


def kvid_table(sandbox_url: str) -> str:
    return (
        f'\n[providers.kvid]\nbase_url = "{sandbox_url}/kvid"\napi_key_env = "VIDU_API_KEY"\n'
        f"requests_per_second = {RATE}\npoll_interval = 0.05\ninitial_delay = 0.05\n"
        'poll_max_interval = 0.3\n\n[archive]\nstore = "off"\n'
    )


def test_two_replicas_together_never_exceed_the_providers_requests_per_second(
    sandbox, tmp_path, pg_url
):
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(
            ServiceProcess(
                tmp_path / name, sandbox.url, extra_config=kvid_table(sandbox.url),
                database_url=pg_url,
            )
        )  # fmt: skip
    try:
        for svc in replicas:
            svc.start()
        ids = []
        for i in range(12):  # submitted through both; either replica polls any of them
            answer = replicas[i % 2].api.post(
                "/api/jobs", json={"provider": "kvid", "prompt": f"Rain {i} [slow]"}
            )
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])

        def finished() -> bool:
            rows = replicas[0].rows("SELECT count(*) FROM jobs WHERE status = 'completed'")
            return rows[0][0] == len(ids)

        wait_for(finished, timeout=60, what="every job completed")
    finally:
        for svc in replicas:
            svc.close()
    # Measured where the limit is the provider's: when each request reached its API.
    times = sorted(r.time for r in sandbox.kvid.requests)
    assert len(times) > 3 * RATE  # enough traffic for the limit to have been tested
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= RATE
