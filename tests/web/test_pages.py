"""The dashboard's pages and forms through a running service, read as HTML."""

from __future__ import annotations

import base64
import html
import re

import pytest

from receiver.sandbox.media import sample_cover
from receiver.sandbox.slack import SlackAnswer
from receiver.web import jobs as jobs_view
from tests.conftest import settings_restored, wait_for
from tests.web.conftest import Browser

ROW = re.compile(r'<(?:tr|li)[^>]*data-job-id="([^"]+)" data-status="([^"]+)"')


def rows(page) -> list[tuple[str, str]]:
    return ROW.findall(page.text)


def text(page) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.text))


def test_the_list_shows_jobs_newest_first_with_their_statuses(service, browser):
    first = service.submit("A red fox in fresh snow")
    failing = service.submit("The lighthouse beam [fail]")
    last = service.submit("Paper boats on a rainy street")
    for job, status in ((first, "completed"), (failing, "failed"), (last, "completed")):
        service.wait_status(job["id"], status)
    page = browser.get("/ui/")
    assert page.status_code == 200
    assert rows(page) == [
        (last["id"], "completed"),
        (failing["id"], "failed"),
        (first["id"], "completed"),
    ]
    words = " ".join(text(page).split())
    assert "all 3" in words and "completed 2" in words and "failed 1" in words
    # The gallery shows the kept cover, which the archive keeps a moment after the end.
    service.wait(last["id"], lambda job: job["media"]["status"] == "kept")
    gallery = browser.get("/ui/?view=gallery")
    assert [job_id for job_id, _ in rows(gallery)] == [last["id"], failing["id"], first["id"]]
    assert f'src="/media/{last["id"]}/cover"' in gallery.text


def test_filters_search_and_pages(service, browser, monkeypatch):
    monkeypatch.setattr(jobs_view, "PAGE_SIZE", 2)
    made = [service.submit(f"Kite number {n}") for n in range(4)]
    made.append(service.submit("A lantern on the water [fail]"))
    for job in made:
        service.wait(job["id"], lambda j: j["status"] in ("completed", "failed"))
    ids = [job["id"] for job in reversed(made)]
    failed = browser.get("/ui/?status=failed")
    assert rows(failed) == [(made[-1]["id"], "failed")]
    assert [i for i, _ in rows(browser.get("/ui/?q=LANTERN"))] == [made[-1]["id"]]
    assert rows(browser.get("/ui/?provider=kvid")) == []
    assert "No job matches these filters" in browser.get("/ui/?provider=kvid").text
    # Keyset pages: each "Older" link goes on after the last job shown.
    seen, path = [], "/ui/"
    while path:
        page = browser.get(path)
        seen += [i for i, _ in rows(page)]
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        path = html.unescape(older.group(1)) if older else None
    assert seen == ids
    unknown = browser.get("/ui/?status=lost")
    assert unknown.status_code == 200
    assert "There is no status “lost”" in text(unknown)


def test_a_job_page_shows_the_video_its_story_and_redacted_callback_headers(service, browser):
    job = service.submit("A hummingbird at a feeder")
    done = service.wait(job["id"], lambda j: j["media"]["status"] == "kept")
    page = browser.get(f"/ui/jobs/{job['id']}")
    assert page.status_code == 200
    assert f'data-job-id="{job["id"]}" data-status="completed"' in page.text
    assert f'src="/media/{job["id"]}/video" poster="/media/{job["id"]}/cover"' in page.text
    words = " ".join(text(page).split())
    for expected in ("via api", "via callback", "How long it took", "generating",
                     "keeping the copy", "Callbacks received", "viduq2"):  # fmt: skip
        assert expected in words, expected
    assert len(done["callbacks"]) >= 1
    stored = service.rows("SELECT headers FROM callbacks WHERE job_id = ?", job["id"])
    for (headers,) in stored:
        for name, value in re.findall(r'"([^"]+)":"([^"]*)"', headers):
            if "signature" in name.lower() and len(value) > 8:
                assert value not in page.text  # shown as "redacted (N characters)"
    assert "redacted (" in page.text


def test_an_unknown_job_is_a_404_page(browser):
    page = browser.get("/ui/jobs/job_NOPE")
    assert page.status_code == 404
    assert "There is no job job_NOPE." in text(page)


API_PROBLEMS = [
    {"provider": "nope", "prompt": "x"},
    {"provider": "vidu", "prompt": "x", "notify": ["nowhere"]},
    {"provider": "vidu", "prompt": "x", "options": {"subjects": "x"}},
]


@pytest.mark.parametrize("payload", API_PROBLEMS, ids=["provider", "notify", "options"])
def test_the_form_refuses_what_the_api_refuses_in_the_same_words(service, browser, payload):
    api = service.api.post("/api/jobs", json=payload)
    assert api.status_code == 422
    before = service.counts()
    form = {"provider": payload["provider"], "prompt": payload["prompt"]}
    if "options" in payload:
        form["options"] = "\n".join(f"{k}={v}" for k, v in payload["options"].items())
    if "notify" in payload:
        form |= {"notify_choice": "chosen", "notify": payload["notify"]}
    page = browser.act("/ui/new", form, from_page="/ui/new")
    assert page.status_code == 422
    for field, message in api.json()["error"]["fields"].items():
        assert f"{field}: {message}" in " ".join(text(page).split())
    assert service.counts() == before


def test_the_form_refuses_options_it_cannot_read(service, browser):
    before = service.counts()
    page = browser.act(
        "/ui/new",
        {"provider": "vidu", "prompt": "x", "options": "no equals sign"},
        from_page="/ui/new",
    )
    assert page.status_code == 422
    assert "line 1: write each option as key=value" in text(page)
    assert service.counts() == before


def test_the_form_submits_options_and_uploaded_images_as_the_api_would(service, browser):
    cover = sample_cover()
    response = browser.act(
        "/ui/new",
        {"provider": "vidu", "prompt": "The cover comes alive", "model": "viduq2",
         "images": "https://example.com/a.jpg", "options": "duration=4\nresolution=720p"},
        from_page="/ui/new",
        files={"files": ("cover.png", cover, "image/png")},
    )  # fmt: skip
    assert response.status_code == 303, response.text
    job_id = re.search(r"/ui/jobs/(job_[0-9A-Z]+)\?done=submitted", response.headers["location"])
    assert job_id is not None
    job = service.job(job_id.group(1))
    assert job["prompt"] == "The cover comes alive"
    assert job["request"]["options"] == {"duration": 4, "resolution": "720p"}
    assert job["request"]["images"] == [
        "https://example.com/a.jpg",
        "data:image/png;base64," + base64.b64encode(cover).decode(),
    ]


def test_a_file_that_is_no_image_is_refused(service, browser):
    before = service.counts()
    page = browser.act(
        "/ui/new",
        {"provider": "vidu", "prompt": "x"},
        from_page="/ui/new",
        files={"files": ("notes.png", b"just text", "image/png")},
    )
    assert page.status_code == 422
    assert "notes.png is not a PNG, JPEG, GIF or WebP image" in text(page)
    assert service.counts() == before


def test_job_actions_refresh_keep_again_submit_again_and_refuse_a_cancel(service, browser):
    job = service.submit("Tea steam curling", model="viduq2")
    service.wait(job["id"], lambda j: j["media"]["status"] == "kept")
    page = f"/ui/jobs/{job['id']}"
    kept = browser.act(f"{page}/archive", from_page=page)
    assert kept.status_code == 303
    assert kept.headers["location"] == f"{page}?done=keeping"
    assert "The result is being downloaded again." in browser.get(kept.headers["location"]).text
    before = service.counts()
    refused = browser.act(f"{page}/cancel", from_page=page)
    assert refused.status_code == 409
    assert "the job has already ended (completed); nothing to cancel" in text(refused)
    assert service.counts() == before
    again = browser.act(f"{page}/again", from_page=page)
    assert again.status_code == 303
    new_id = re.search(r"(job_[0-9A-Z]+)", again.headers["location"]).group(1)
    copy = service.job(new_id)
    assert new_id != job["id"]
    assert (copy["provider"], copy["prompt"], copy["model"]) == (
        "vidu",
        "Tea steam curling",
        "viduq2",
    )


def test_a_running_job_is_refreshed_and_canceled_from_its_page(service, sandbox, browser):
    with settings_restored(sandbox.settings) as settings:
        settings.queue_delay = 30
        job = service.submit("A paper crane unfolds")
        wait_for(lambda: service.job(job["id"])["provider_job_id"], what="the task id")
        page = f"/ui/jobs/{job['id']}"
        assert "Refresh now" in browser.get(page).text
        refreshed = browser.act(f"{page}/refresh", from_page=page)
        assert refreshed.headers["location"] == f"{page}?done=refreshed"
        canceled = browser.act(f"{page}/cancel", from_page=page)
        assert canceled.headers["location"] == f"{page}?done=canceled"
    assert service.job(job["id"])["status"] == "canceled"


def test_dead_deliveries_are_listed_with_their_error_and_retried_from_the_page(
    slack_service, slack
):
    service = slack_service
    browser = Browser(service.url)
    browser.login()
    slack.answer(SlackAnswer(status=500), SlackAnswer(status=500))
    first = service.submit("A jellyfish drifting")
    second = service.submit("Waves against black rocks")
    for job in (first, second):
        service.wait(job["id"], lambda j: [d["status"] for d in j["deliveries"]] == ["dead"])
    page = browser.get("/ui/deliveries")
    dead = re.findall(r'<tr data-delivery-id="(\d+)" data-delivery-status="dead"', page.text)
    assert len(dead) == 2
    assert "HTTP 500" in page.text or "rollup_error" in page.text
    assert "2 dead" in text(page)
    one = browser.act(f"/ui/deliveries/{dead[0]}/retry", from_page="/ui/deliveries")
    assert one.headers["location"] == "/ui/deliveries?done=retried"
    wait_for(lambda: len(slack.messages) == 1, what="the retried delivery")
    everything = browser.act(
        "/ui/deliveries/retry", {"channel": "team"}, from_page="/ui/deliveries"
    )
    assert everything.headers["location"] == "/ui/deliveries?done=retried-all"
    wait_for(lambda: len(slack.messages) == 2, what="the rest of the channel's deliveries")
    assert "Nothing is dead or held" in browser.get("/ui/deliveries").text
    refused = browser.act(
        "/ui/deliveries/retry", {"channel": "nowhere"}, from_page="/ui/deliveries"
    )
    assert refused.status_code == 422
    assert "not a configured channel" in text(refused)
    browser.close()


def test_the_providers_page_shows_pauses_in_flight_polls_and_the_last_error(service, browser):
    runtime = service.server.app.state.runtime
    runtime.providers["kvid"].gate.block_for(120)
    job = service.submit("Wind in tall grass", model="viduq2")
    service.wait_status(job["id"], "completed")
    page = browser.get("/ui/providers")
    words = " ".join(text(page).split())
    assert page.status_code == 200
    assert "the provider asked for a pause" in words
    assert "completed 1" in words
    assert "Polls in flight 0 of 8" in words
