"""The provider's progress on a job, through a running service: read by each poll, kept on
the job, served in its JSON while it runs; a change of it is no transition."""

import dataclasses

from tests.conftest import settings_restored
from tests.web.conftest import Browser


def long_running(fake, *, queue=0.05, run=0.15):
    """The fake's jobs wait ``queue`` seconds and run ``run`` seconds."""
    timing = fake.settings.timing
    fake.settings.timing = dataclasses.replace(timing, queue_delay=queue, run_time=run)


def test_a_polled_jobs_progress_is_in_its_json_while_it_runs(service, sandbox):
    with settings_restored(sandbox.runway.settings):
        long_running(sandbox.runway, run=3.0)
        job = service.submit("A glacier calving", provider="runway")
        seen = []

        def record(current):
            if current["progress"] is not None:
                seen.append(current["progress"]["percent"])
            return current["status"] == "completed"

        done = service.wait(job["id"], record, timeout=20)
    assert len(set(seen)) >= 2, seen  # it moved, poll by poll
    assert seen == sorted(seen) and all(0 <= p < 100 for p in seen)
    # Progress is no change of state: one transition per status, as ever.
    assert [t["to_status"] for t in done["transitions"]] == ["queued", "processing", "completed"]
    # Once the job has ended, its progress is no longer news.
    assert done["progress"] is None
    # Yet every change of it was an event for those who follow the job live.
    (changes,) = service.rows(
        "SELECT count(*) FROM events WHERE job_id = ? AND transition_id IS NULL", job["id"]
    )[0]
    assert changes >= len(set(seen)) - 1


def test_a_gateways_percentage_string_is_served_as_a_number(service):
    job = service.submit("A kite over dunes [never]", provider="newapi")
    running = service.wait(job["id"], lambda j: j["progress"] == {"percent": 30})
    assert running["status"] == "processing"
    (stored,) = service.rows("SELECT progress FROM jobs WHERE id = ?", job["id"])[0]
    assert stored == '{"percent":30}'
    # The dashboard's page of the job says it too.
    browser = Browser(service.url)
    try:
        assert browser.login().status_code == 303
        page = browser.get(f"/ui/jobs/{job['id']}").text
    finally:
        browser.close()
    assert '<span class="sub progress">30% done</span>' in page
    # and the live page redraws its head when the figure moves.
    assert '|{&#34;percent&#34;: 30}">' in page


def test_a_waiting_fal_request_shows_its_place_in_the_queue(service, sandbox):
    with settings_restored(sandbox.fal.settings):
        long_running(sandbox.fal, queue=3.0)
        job = service.submit("A heron in the reeds", provider="fal")
        waiting = service.wait(job["id"], lambda j: j["progress"] is not None)
        assert waiting["status"] == "queued"
        assert waiting["progress"] == {"queue_position": 0}
        # Running, fal gives no figure: the place in the queue is gone with the queue.
        running = service.wait(job["id"], lambda j: j["status"] != "queued", timeout=15)
        assert running["progress"] is None


def test_a_provider_that_reports_no_progress_leaves_it_null(service):
    job = service.submit("A lantern on the water", provider="kvid")
    states = []
    done = service.wait(
        job["id"], lambda j: states.append(j["progress"]) or j["status"] == "completed"
    )
    assert all(p is None for p in states) and done["progress"] is None
