"""Submissions a provider refuses for now are sent again on a schedule kept in the database;
one the provider may have taken without saying so is never sent twice."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from receiver.providers.base import ProviderError
from receiver.providers.kvid import Kvid
from receiver.sandbox import ServerThread
from receiver.sandbox.kvid import KvidFake
from receiver.store import NewJob, Store
from receiver.submitter import Pending, verdict
from tests.conftest import fake_settings, free_port, running_service, wait_for
from tests.test_metrics import key, scrape
from tests.test_restart import ServiceProcess

SUBMITS = r"generate-async"


def submits(fake):
    return fake.requests_to(SUBMITS)


def post(service, prompt, provider="kvid"):
    return service.api.post("/api/jobs", json={"provider": provider, "prompt": prompt})


def sources(job):
    return [(t["from_status"], t["to_status"], t["source"]) for t in job["transitions"]]


# -- what a failed attempt means ----------------------------------------------------------


def refusal(**fields):
    return ProviderError("p", "no", **{"transient": True, **fields})


@pytest.mark.parametrize(
    ("error", "idempotent", "expected"),
    [
        (refusal(status_code=429), False, "retry"),
        (refusal(status_code=503), False, "retry"),
        (refusal(sent=False), False, "retry"),  # the connection was never made
        (refusal(), False, "unknown"),  # sent, and no answer: a timeout, a dropped connection
        (refusal(status_code=200), False, "unknown"),  # an answer vidhook could not use
        (refusal(), True, "retry"),  # the provider deduplicates: sending again is safe
        (refusal(status_code=400, transient=False), False, "refused"),
        (refusal(status_code=401, transient=False), True, "refused"),
    ],
)
def test_verdict(error, idempotent, expected):
    assert verdict(error, idempotent=idempotent) == expected


def test_a_stored_job_is_sent_again_as_it_was_submitted_until_its_time_is_up():
    job = {
        "id": "job_1", "provider": "kvid", "prompt": "Fog", "model": "v2",
        "request": {"images": ["https://e.x/a.png"], "mode": "i2v", "options": {"seed": 3}},
        "callback_url": None, "created_at": 1000.0, "deadline_at": 1300.0,
    }  # fmt: skip
    pending = Pending.of(job)
    request = pending.request
    assert (request.prompt, request.model, request.images) == ("Fog", "v2", ("https://e.x/a.png",))
    assert (request.mode, dict(request.options)) == ("i2v", {"seed": 3})
    assert pending.give_up_at(max_age=200) == 1200.0
    assert pending.give_up_at(max_age=600) == 1300.0  # the deadline comes first
    assert Pending.of({**job, "deadline_at": None}).give_up_at(max_age=600) == 1600.0


# -- against the sandbox --------------------------------------------------------------------


def test_a_429_then_ok_is_answered_202_then_sent_after_retry_after(sandbox, tmp_path):
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.rate_limit, faults.retry_after = SUBMITS, 1, 2.0
    with running_service(sandbox.url, tmp_path / "v.db") as service:
        response = post(service, "Herons at dawn")
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["location"] == f"/api/jobs/{job['id']}"
        assert (job["status"], job["provider_job_id"]) == ("queued", None)
        submission = job["submission"]
        assert submission["pending"] is True and submission["attempts"] == 1
        assert "HTTP 429" in submission["last_error"]
        assert submission["next_attempt_at"] > job["created_at"]
        assert scrape(service)[key("vidhook_submissions_waiting", provider="kvid")] == 1

        done = service.wait_status(job["id"], "completed", timeout=15)
        assert scrape(service)[key("vidhook_submissions_waiting", provider="kvid")] == 0
    first, second = submits(sandbox.kvid)
    assert (first.status_code, second.status_code) == (429, 200)
    assert second.time - first.time >= 2.0
    assert list(sandbox.kvid.tasks) == [done["provider_job_id"]]
    assert done["submission"] == {
        "pending": False, "attempts": 2, "next_attempt_at": None,
        "last_error": submission["last_error"],
    }  # fmt: skip
    assert sources(done)[0] == (None, "queued", "api")
    # A poll on a busy machine may come only once the task has ended: processing is then
    # never seen.
    assert [t[1] for t in sources(done)] in (
        ["queued", "processing", "completed"], ["queued", "completed"],
    )  # fmt: skip


def test_a_burst_of_5xx_at_submission_ends_in_one_task(sandbox, tmp_path):
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.error_burst, faults.error_status = SUBMITS, 2, 503
    with running_service(sandbox.url, tmp_path / "v.db") as service:
        response = post(service, "A lighthouse in a storm")
        assert response.status_code == 202, response.text
        done = service.wait_status(response.json()["id"], "completed", timeout=15)
    assert [r.status_code for r in submits(sandbox.kvid)] == [503, 503, 200]
    assert list(sandbox.kvid.tasks) == [done["provider_job_id"]]
    assert done["submission"]["attempts"] == 3


def test_a_provider_that_cannot_be_reached_gets_the_job_once_it_is_up(sandbox, tmp_path):
    port = free_port()  # nothing listens there yet: the connection is refused
    overrides = {"kvid": {"base_url": f"http://127.0.0.1:{port}"}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        response = post(service, "Moss on stones")
        assert response.status_code == 202, response.text
        job = response.json()
        assert "could not connect" in job["submission"]["last_error"]
        wait_for(lambda: service.job(job["id"])["submission"]["attempts"] >= 2, what="a retry")
        fake = KvidFake(fake_settings())
        with ServerThread(fake.app, port=port):
            done = service.wait_status(job["id"], "completed", timeout=15)
    assert list(fake.tasks) == [done["provider_job_id"]]
    assert [r.status_code for r in submits(fake)] == [200]


def test_a_timeout_after_sending_fails_the_job_as_unknown_and_sends_nothing_again(
    sandbox, tmp_path
):
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.slow, faults.slow_delay = SUBMITS, 1, 1.5
    overrides = {"kvid": {"timeout": 0.5}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        response = post(service, "Ice cracking on a pond")
        assert response.status_code == 502, response.text
        err = response.json()["error"]
        job = err["job"]
        assert err["code"] == "submission_outcome_unknown"
        assert err["message"] == job["error"]
        assert job["status"] == "failed" and job["provider_job_id"] is None
        for words in ("outcome unknown", "timed out", "not sent again", "kvid's console",
                      f"vidhook job {job['id']}"):  # fmt: skip
            assert words in job["error"], words
        assert job["submission"] is None  # nothing pending, and a single attempt
        stored = service.job(job["id"])
        assert sources(stored) == [(None, "queued", "api"), ("queued", "failed", "submit")]
        assert stored["transitions"][-1]["detail"]["submission"] == "unknown"
        wait_for(lambda: submits(sandbox.kvid), what="the hung request to end")
    assert len(submits(sandbox.kvid)) == 1


def test_a_provider_that_deduplicates_is_sent_a_timed_out_submission_again(
    sandbox, tmp_path, monkeypatch
):
    keys = []
    original = Kvid.submit

    async def submit(self, request, callback_url):
        keys.append(request.job_id)
        return await original(self, request, callback_url)

    monkeypatch.setattr(Kvid, "idempotent_submit", True)
    monkeypatch.setattr(Kvid, "submit", submit)
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.slow, faults.slow_delay = SUBMITS, 1, 1.0
    with running_service(sandbox.url, tmp_path / "v.db", {"kvid": {"timeout": 0.3}}) as service:
        response = post(service, "Swallows over a barn")
        assert response.status_code == 202, response.text
        job = response.json()
        assert "timed out" in job["submission"]["last_error"]
        service.wait_status(job["id"], "completed", timeout=15)
    assert keys == [job["id"], job["id"]]


def test_an_attempt_cut_short_is_sent_again_where_the_provider_deduplicates(
    sandbox, tmp_path, monkeypatch
):
    monkeypatch.setattr(Kvid, "idempotent_submit", True)
    db = tmp_path / "v.db"

    async def cut_short() -> None:
        # Inserted with its first attempt under way, and then nothing: what a crash leaves.
        store = Store(db, route=lambda status, notify: []).open()
        try:
            await store.insert_job(
                NewJob(
                    id="job_CUT",
                    provider="kvid",
                    model="v2",
                    prompt="Cut short",
                    request={"images": [], "mode": None, "options": {}},
                    callback_token=None,
                    callback_url=None,
                    key_fingerprint=None,
                    notify=None,
                    deadline_at=time.time() + 3600,
                )
            )
        finally:
            store.close()

    asyncio.run(cut_short())
    with running_service(sandbox.url, db) as service:
        done = service.wait_status("job_CUT", "completed")
    assert list(sandbox.kvid.tasks) == [done["provider_job_id"]]
    assert done["submission"]["attempts"] == 2


def test_a_provider_that_keeps_refusing_fails_the_job_with_the_last_error(sandbox, tmp_path):
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.outage, faults.error_status = SUBMITS, True, 502
    overrides = {"kvid": {"submit_max_age": 1.0, "poll_interval": 0.1}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        response = post(service, "A kite caught in a tree")
        assert response.status_code == 202, response.text
        failed = service.wait_status(response.json()["id"], "failed", timeout=10)
    attempts = len(submits(sandbox.kvid))
    assert attempts >= 2
    assert failed["error"].startswith(f"gave up after {attempts} attempts in ")
    assert "(submit_max_age or deadline)" in failed["error"] and "HTTP 502" in failed["error"]
    assert failed["submission"] == {
        "pending": False, "attempts": attempts, "next_attempt_at": None,
        "last_error": failed["error"],
    }  # fmt: skip
    assert sources(failed)[-1] == ("queued", "failed", "submit")
    assert sandbox.kvid.tasks == {}


def test_a_permanent_refusal_still_fails_at_once_with_502(sandbox, tmp_path):
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.error_burst, faults.error_status = SUBMITS, 1, 400
    with running_service(sandbox.url, tmp_path / "v.db") as service:
        response = post(service, "Sand dunes")
        assert response.status_code == 502, response.text
        err = response.json()["error"]
        assert err["code"] == "provider_refused"
        assert err["job"]["status"] == "failed" and err["job"]["submission"] is None
    assert len(submits(sandbox.kvid)) == 1


# -- a real `vidhook serve`, killed and started again ------------------------------------


@pytest.mark.slow
def test_sigkill_with_a_submission_waiting_resumes_it_after_restart(sandbox, tmp_path):
    sandbox.settings.rate_limit_submits, sandbox.settings.retry_after = 1, 3
    service = ServiceProcess(tmp_path, sandbox.url)
    try:
        service.start()
        response = service.api.post("/api/jobs", json={"provider": "vidu", "prompt": "Owl"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        service.kill()
        waiting = service.job(job_id)
        assert waiting["provider_job_id"] is None and waiting["submitting_at"] is None
        assert waiting["next_submit_at"] is not None and waiting["submit_attempts"] == 1

        service.start()
        done = wait_for(
            lambda: (row := service.job(job_id))["status"] == "completed" and row,
            timeout=20,
            what="the job to complete after the restart",
        )
    finally:
        service.close()
    posts = [r for r in sandbox.vidu.requests if r.method == "POST" and "text2video" in r.path]
    assert [r.status_code for r in posts] == [429, 200]
    assert posts[1].time - posts[0].time >= 3.0  # Retry-After, across the restart
    assert list(sandbox.vidu.tasks) == [done["provider_job_id"]]
    assert done["submit_attempts"] == 2 and done["next_submit_at"] is None


@pytest.mark.slow
def test_sigkill_during_a_submission_fails_it_as_unknown_after_restart(sandbox, tmp_path):
    faults = sandbox.kvid.settings.faults
    faults.paths, faults.slow, faults.slow_delay = SUBMITS, 1, 4.0
    kvid = (
        f'\n[providers.kvid]\nbase_url = "{sandbox.url}/kvid"\n'
        'api_key_env = "VIDU_API_KEY"\ntimeout = 30\n'
    )
    service = ServiceProcess(tmp_path, sandbox.url, extra_config=kvid)
    answers = []
    try:
        service.start()
        body = {"provider": "kvid", "prompt": "Bats at dusk"}
        thread = threading.Thread(target=lambda: answers.append(post_quietly(service, body)))
        thread.start()
        # The fake counts the fault down as the request arrives, before it hangs.
        wait_for(lambda: faults.slow == 0, what="the request to reach the provider")
        (job_id,) = service.rows("SELECT id FROM jobs WHERE submitting_at IS NOT NULL")[0]
        service.kill()
        thread.join(timeout=10)
        service.start()
        failed = wait_for(
            lambda: (row := service.job(job_id))["status"] == "failed" and row,
            what="the interrupted submission to be settled",
        )
    finally:
        service.close()
    assert answers == [None]  # the client saw the connection drop, not an answer
    assert failed["error"].startswith("outcome unknown")
    assert "vidhook stopped while the request was under way" in failed["error"]
    assert f"vidhook job {job_id}" in failed["error"]
    assert failed["submitting_at"] is None and failed["next_submit_at"] is None
    wait_for(lambda: submits(sandbox.kvid), what="the hung request to end")
    assert len(submits(sandbox.kvid)) == 1


def post_quietly(service, body):
    try:
        return service.api.post("/api/jobs", json=body)
    except httpx.HTTPError:
        return None
