"""GET /metrics: Prometheus text that prometheus-client's own parser reads, moving as jobs move."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from receiver.metrics import Metrics
from receiver.providers.base import Observation, Submission
from receiver.states import Status
from receiver.store import NewJob, Store
from tests.conftest import free_port, running_service, wait_for
from tests.vidu_signer import vidu_headers

Labels = tuple[tuple[str, str], ...]


def parse(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample, keyed by (sample name, sorted labels)."""
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} appears twice"
            samples[key] = sample.value
    return samples


def scrape(svc) -> dict[tuple[str, Labels], float]:
    response = svc.http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def key(name: str, **labels: str) -> tuple[str, Labels]:
    return (name, tuple(sorted(labels.items())))


CHANNELS = {
    # Delivered at once: the console prints to the captured stdout.
    "log": {"type": "console"},
    # Nothing listens there: its delivery stays pending, retried in a minute.
    "app": {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hooks"},
}
EXTRA = {"channels": CHANNELS, "default_channels": ["log", "app"], "notify": {"retry_base": 60}}


def test_metrics_parse_and_move_as_a_job_moves(sandbox, db_path):
    with running_service(sandbox.url, db_path, extra=EXTRA) as svc:
        before = scrape(svc)
        job = svc.submit("A lighthouse in fog")
        svc.wait_status(job["id"], "completed")

        def attempted():
            rows = svc.rows("SELECT channel, status, attempts FROM deliveries")
            return sorted(rows) == [("app", "pending", 1), ("log", "delivered", 1)]

        wait_for(attempted, what="one attempt on each channel")
        [(callback_url,)] = svc.rows("SELECT callback_url FROM jobs")
        forged = httpx.post(
            callback_url,
            content=json.dumps({"id": job["provider_job_id"], "state": "failed"}).encode(),
            headers=vidu_headers("not-the-vidu-key", callback_url),
        )
        assert forged.status_code == 401, forged.text
        # Request paths never become label values.
        assert svc.http.post("/callbacks/nope/x", json={}).status_code == 404
        assert svc.http.post("/callbacks/vidu/not-a-token", json={}).status_code == 404
        after = scrape(svc)

    def moved(name: str, **labels: str) -> float:
        return after[key(name, **labels)] - before.get(key(name, **labels), 0.0)

    # Known series exist before anything happens, at 0.
    for outcome in ("accepted", "bad_signature", "unknown_token"):
        assert before[key("vidhook_callbacks_total", provider="vidu", outcome=outcome)] == 0
    assert before[key("vidhook_deliveries_total", channel="app", outcome="retry")] == 0
    assert before[key("vidhook_outbox_backlog", channel="app")] == 0
    # A processing and a success callback, each accepted; the forged one refused.
    assert moved("vidhook_callbacks_total", provider="vidu", outcome="accepted") == 2
    assert moved("vidhook_callbacks_total", provider="vidu", outcome="bad_signature") == 1
    assert moved("vidhook_callbacks_total", provider="vidu", outcome="unknown_token") == 1
    assert (
        moved("vidhook_callback_signature_failures_total", provider="vidu", reason="bad_signature")
        == 1
    )
    # The confirming fetch of the success callback moved the job to completed.
    assert moved("vidhook_polls_total", provider="vidu", outcome="changed") == 1
    for status in ("queued", "processing", "completed"):
        assert moved("vidhook_transitions_total", status=status) == 1
    assert moved("vidhook_transitions_total", status="failed") == 0
    assert moved("vidhook_deliveries_total", channel="log", outcome="delivered") == 1
    assert moved("vidhook_deliveries_total", channel="app", outcome="retry") == 1
    assert moved("vidhook_delivery_delay_seconds_count", channel="log") == 1
    assert 0 < moved("vidhook_delivery_delay_seconds_sum", channel="log") < 5
    assert moved("vidhook_delivery_delay_seconds_bucket", channel="log", le="+Inf") == 1
    assert moved("vidhook_delivery_delay_seconds_count", channel="app") == 0
    # Backlogs, read from the database at scrape time.
    assert after[key("vidhook_outbox_backlog", channel="app")] == 1
    assert after[key("vidhook_outbox_backlog", channel="log")] == 0
    assert after[key("vidhook_outbox_oldest_pending_age_seconds", channel="app")] > 0
    assert after[key("vidhook_jobs_active", provider="vidu", status="processing")] == 0
    assert after[key("vidhook_poll_backlog", provider="vidu")] == 0
    assert not any(dict(labels).get("provider") == "nope" for _, labels in after)


def test_transitions_are_read_from_the_database_and_survive_a_restart(sandbox, db_path):
    with running_service(sandbox.url, db_path) as svc:
        job = svc.submit("A paper boat")
        svc.wait_status(job["id"], "completed")
        first = scrape(svc)
    with running_service(sandbox.url, db_path) as svc:
        again = scrape(svc)
    completed = key("vidhook_transitions_total", status="completed")
    accepted = key("vidhook_callbacks_total", provider="vidu", outcome="accepted")
    assert first[completed] == again[completed] == 1
    # Request counters are the process's own: they start again from 0.
    assert first[accepted] == 2 and again[accepted] == 0


def test_backlogs_and_incremental_transition_counts(tmp_path):
    """The database numbers straight from a store: polls due but not sent, counts that
    add up across scrapes (each scrape reads only the transitions it has not seen)."""
    now = 1_000_000.0

    async def run() -> list[dict[tuple[str, Labels], float]]:
        store = Store(tmp_path / "m.db", route=lambda status, notify: [], clock=lambda: now)
        await asyncio.to_thread(store.open)
        metrics = Metrics(store, providers=["kvid"], callback_providers=[], channels=[])
        try:
            scrapes = [parse((await metrics.render()).decode())]
            for i, due_in in enumerate((-30.0, 30.0)):
                job_id = f"job_{i}"
                await store.insert_job(
                    NewJob(job_id, "kvid", "v2", "p", {}, None, None, None, None)
                )
                submission = Submission(f"kv-{i}", Observation(Status.QUEUED), "sha256:x")
                await store.record_submission(job_id, submission, next_poll_at=now + due_in)
                scrapes.append(parse((await metrics.render()).decode()))
            # Concurrent scrapes share one read and agree.
            both = await asyncio.gather(metrics.render(), metrics.render())
            scrapes += [parse(text.decode()) for text in both]
        finally:
            await asyncio.to_thread(store.close)
        return scrapes

    empty, one, two, *together = asyncio.run(run())
    queued = key("vidhook_transitions_total", status="queued")
    assert (empty[queued], one[queued], two[queued]) == (0, 1, 2)
    scheduled = key("vidhook_polls_scheduled", provider="kvid")
    backlog = key("vidhook_poll_backlog", provider="kvid")
    assert (one[scheduled], one[backlog]) == (1, 1)
    assert (two[scheduled], two[backlog]) == (2, 1)
    assert two[key("vidhook_jobs_active", provider="kvid", status="queued")] == 2
    assert together[0] == together[1] and together[0][queued] == 2


def test_each_service_has_its_own_registry(tmp_path):
    store = Store(tmp_path / "unused.db", route=lambda status, notify: [])
    one = Metrics(store, providers=["vidu"], callback_providers=["vidu"], channels=["team"])
    two = Metrics(store, providers=["vidu"], callback_providers=["vidu"], channels=["team"])
    one.count_callback("vidu", "bad_signature", "stale_date")
    one.count_attempt("team", "delivered", 0.3)
    assert (
        one.registry.get_sample_value(
            "vidhook_callback_signature_failures_total",
            {"provider": "vidu", "reason": "stale_date"},
        )
        == 1
    )
    assert (
        two.registry.get_sample_value(
            "vidhook_callbacks_total", {"provider": "vidu", "outcome": "bad_signature"}
        )
        == 0
    )
    assert (
        two.registry.get_sample_value("vidhook_delivery_delay_seconds_count", {"channel": "team"})
        == 0
    )
    # Nothing lands in the process-wide default registry.
    assert prometheus_client.REGISTRY.get_sample_value("vidhook_callbacks_total") is None
    assert not any(m.name.startswith("vidhook") for m in prometheus_client.REGISTRY.collect())


@pytest.mark.postgres
def test_each_replica_names_itself_and_both_count_the_shared_database(
    sandbox, tmp_path, pg_url, monkeypatch
):
    names = ("replica-a", "replica-b")
    with contextlib.ExitStack() as stack:
        services = []
        for name in names:
            monkeypatch.setenv("VIDHOOK_INSTANCE", name)
            folder = tmp_path / name
            folder.mkdir()
            services.append(
                stack.enter_context(
                    running_service(sandbox.url, folder / "v.db", database_url=pg_url)
                )
            )
        job = services[0].submit("A lighthouse in fog")
        services[0].wait_status(job["id"], "completed")
        scraped = [scrape(svc) for svc in services]
    for name, samples in zip(names, scraped, strict=True):
        replicas = {k: v for k, v in samples.items() if k[0] == "vidhook_replica"}
        assert replicas == {key("vidhook_replica", replica=name, engine="postgres"): 1}
    # What is counted from the database is the same at every replica.
    completed = key("vidhook_transitions_total", status="completed")
    assert scraped[0][completed] == scraped[1][completed] == 1
