"""Every provider against its sandbox, and the poller's promises under misbehaviour."""

import itertools
import statistics

import pytest

from receiver.sandbox import kvid as kvid_fake
from receiver.sandbox import newapi as newapi_fake
from receiver.sandbox import revid as revid_fake
from tests.conftest import FAST_POLLING, POLL_ONLY, PROVIDERS, running_service, wait_for

FAILURE_MESSAGES = {
    "vidu": lambda sandbox: sandbox.settings.fail_err_code,
    "kvid": lambda sandbox: kvid_fake.FAIL_MESSAGE,
    "revid": lambda sandbox: revid_fake.FAIL_MESSAGE,
    "apimodels": lambda sandbox: sandbox.apimodels.settings.fail_message,
    "newapi": lambda sandbox: sandbox.newapi.settings.fail_reason,
}
UNKNOWN_WORDS = {
    "vidu": "scheduled",
    "kvid": kvid_fake.UNKNOWN_STATUS,
    "revid": "waiting",
    "apimodels": "waiting",
    "newapi": newapi_fake.UNDOCUMENTED_STATUS,
}


@pytest.fixture
def service(engine_service):
    """Polled on both engines: polls are claimed and recorded by the store."""
    return engine_service


def reached(job):
    return [t["to_status"] for t in job["transitions"]]


def status_polls(fake, task_id):
    # By path: requests refused by failure injection never reach a handler to name the task.
    return [r for r in fake.requests if r.method == "GET" and task_id in r.path + (r.task_id or "")]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_success_stores_the_result_url(service, sandbox, provider):
    job = service.submit("A heron lifts off the river", provider=provider)
    done = service.wait_status(job["id"], "completed")
    assert done["result_url"].startswith(f"{sandbox.url}/{provider}/")
    assert reached(done)[0] == "queued" and reached(done)[-1] == "completed"
    assert len(reached(done)) == len(set(reached(done)))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_failure_stores_the_providers_message(service, sandbox, provider):
    job = service.submit("A glass city at night [fail]", provider=provider)
    failed = service.wait_status(job["id"], "failed")
    assert FAILURE_MESSAGES[provider](sandbox) in failed["error"]
    assert failed["result_url"] is None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unknown_status_is_kept_raw_and_later_resolves(sandbox, tmp_path, provider):
    # apimodels only calls back at the end: let reconciliation polls see the odd status.
    overrides = {"apimodels": {"reconcile_after": 0.05, "reconcile_interval": 0.1}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        job = service.submit("Lanterns on a lake [unknown] [slow]", provider=provider)
        word = UNKNOWN_WORDS[provider]
        seen = service.wait(job["id"], lambda j: j["provider_status"] == word)
        assert seen["status"] == "queued"
        assert seen["anomalies"] == []
        done = service.wait_status(job["id"], "completed")
    assert reached(done) == ["queued", "processing", "completed"]


def test_retry_after_is_respected(sandbox, tmp_path):
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.rate_limit, faults.retry_after = r"/status", 1, 1.0
    overrides = {"kvid": {"max_concurrency": 1}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        jobs = [service.submit(f"Dunes {i} [slow]", provider="kvid") for i in range(3)]
        for job in jobs:
            service.wait_status(job["id"], "completed", timeout=15)
    refused = [r for r in sandbox.kvid.requests if r.status_code == 429]
    assert len(refused) == 1
    window = [r for r in sandbox.kvid.requests if refused[0].time < r.time < refused[0].time + 1.0]
    assert window == []


def test_requests_per_second_is_never_exceeded(sandbox, tmp_path):
    overrides = {"kvid": {"requests_per_second": 8, "poll_interval": 0.05}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        jobs = [service.submit(f"Rain {i} [slow]", provider="kvid") for i in range(8)]
        for job in jobs:
            service.wait_status(job["id"], "completed", timeout=20)
    # The limit is the API's: the result files (kept by the archive) come from elsewhere.
    times = sorted(r.time for r in sandbox.kvid.requests if "/files/" not in r.path)
    assert len(times) > 30  # enough traffic for the limit to have been tested
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 8


def test_a_burst_of_5xx_ends_in_success_once_the_provider_recovers(service, sandbox):
    faults = sandbox.revid.settings.faults
    faults.paths, faults.error_burst, faults.error_status = r"/v1/jobs/", 3, 503
    job = service.submit("A windmill at dusk", provider="revid")
    done = service.wait_status(job["id"], "completed", timeout=15)
    statuses = [r.status_code for r in status_polls(sandbox.revid, done["provider_job_id"])]
    assert statuses[:3] == [503, 503, 503]
    assert statuses[-1] == 200


def test_401_fails_the_job_with_a_clear_message(service, sandbox):
    job = service.submit("Snow on pines [slow]", provider="newapi")
    sandbox.newapi.settings.api_keys = ["someone-else"]
    failed = service.wait_status(job["id"], "failed")
    assert "HTTP 401" in failed["error"]
    assert failed["transitions"][-1]["source"] == "poll"


def test_the_deadline_fails_a_job_that_never_finishes(sandbox, tmp_path):
    overrides = {"kvid": {"deadline": 1.0}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        job = service.submit("An endless corridor [never]", provider="kvid")
        failed = service.wait_status(job["id"], "failed", timeout=10)
    assert failed["error"] == "timed out"
    assert failed["transitions"][-1]["source"] == "deadline"


@pytest.mark.parametrize("trouble", ["500s", "hangs"])
def test_a_failing_provider_does_not_delay_another(sandbox, tmp_path, trouble):
    faults = sandbox.revid.settings.faults
    overrides = {
        "revid": {"timeout": 0.5, "max_concurrency": 2},
        "kvid": {"poll_interval": 0.2, "poll_max_interval": 0.2},
    }
    # Only status polls match: submissions still go through, and no job can complete
    # before its provider turns sick.
    faults.paths = r"/v1/jobs/"
    if trouble == "500s":
        faults.outage, faults.error_status = True, 500
    else:
        faults.hang, faults.slow_delay = True, 5.0
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        sick = [service.submit(f"Storm {i} [slow]", provider="revid") for i in range(6)]
        well = [service.submit(f"Meadow {i} [slow]", provider="kvid") for i in range(4)]
        for job in well:
            service.wait_status(job["id"], "completed", timeout=15)
        assert all(service.job(j["id"])["status"] != "completed" for j in sick)
        faults.outage = faults.hang = False
    # The healthy provider's polls keep their interval (0.2 s +-10 %). Waiting on the
    # sick one would add its timeout (0.5 s) to every gap; a busy machine adds an
    # occasional late poll, which the median ignores and the bound on the largest allows.
    for job in well:
        task_id = service_task_id(sandbox.kvid, job)
        times = [r.time for r in status_polls(sandbox.kvid, task_id) if "/status" in r.path]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 3
        assert statistics.median(gaps) < 0.2 * 1.1 + 0.05
        assert max(gaps) < 0.2 * 1.1 + 0.5


def service_task_id(fake, job):
    assert job["provider_job_id"] in fake.tasks
    return job["provider_job_id"]


def test_a_lost_vidu_callback_is_recovered_by_reconciliation(sandbox, tmp_path):
    with running_service(sandbox.url, tmp_path / "v.db", reconcile_after=0.5) as service:
        job = service.submit("A kite over the bay [lost]")
        done = service.wait_status(job["id"], "completed")
    assert done["callbacks"] == []
    assert [(t["to_status"], t["source"]) for t in done["transitions"]] == [
        ("queued", "api"),
        ("completed", "poll"),
    ]


def test_an_early_apimodels_callback_does_not_complete_a_running_job(service, sandbox):
    job = service.submit("A lighthouse in fog [early] [slow]", provider="apimodels")
    early = service.wait(job["id"], lambda j: len(j["callbacks"]) >= 1)
    task_id = early["provider_job_id"]
    # The callback triggered a poll, and the poll found the task still running.
    wait_for(lambda: len(status_polls(sandbox.apimodels, task_id)) >= 1, what="a poll")
    assert sandbox.apimodels.tasks[task_id].status != "completed"
    assert service.job(job["id"])["status"] in ("queued", "processing")
    done = service.wait_status(job["id"], "completed", timeout=15)
    assert done["transitions"][-1]["source"] == "poll"


def test_poll_only_jobs_wait_the_initial_delay(sandbox, tmp_path):
    overrides = {name: {"initial_delay": 0.6} for name in POLL_ONLY}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        for name in POLL_ONLY:
            service.submit("Clouds", provider=name)
        wait_for(lambda: all(status_count(sandbox, n) > 0 for n in POLL_ONLY), what="polls")
    for name in POLL_ONLY:
        fake = sandbox.fake(name)
        submitted = next(r.time for r in fake.requests if r.method == "POST")
        first_poll = next(r.time for r in fake.requests if r.method == "GET")
        assert first_poll - submitted >= 0.6 - FAST_POLLING["poll_interval"] * 0


def status_count(sandbox, name):
    return sum(1 for r in sandbox.fake(name).requests if r.method == "GET")
