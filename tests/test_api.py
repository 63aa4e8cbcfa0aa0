"""The admin API under /api, /healthz and /readyz, against the real receiver and sandbox."""

from __future__ import annotations

import time

import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    OLD_VIDU_KEY,
    VIDU_KEY,
    running_sandbox,
    running_service,
    settings_restored,
)

# -- fixtures ---------------------------------------------------------------------------
# One sandbox and one receiver for the module, shadowing conftest's per-test ones (stopping
# the servers costs ~0.3 s a test). Tests that need an empty database use ``fresh``.


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def service(sandbox, tmp_path_factory):
    with running_service(sandbox.url, tmp_path_factory.mktemp("api") / "vidhook.db") as svc:
        yield svc


@pytest.fixture
def fresh(sandbox, tmp_path):
    with running_service(sandbox.url, tmp_path / "fresh.db") as svc:
        yield svc


@pytest.fixture(autouse=True)
def _restore_sandbox_settings(sandbox):
    with settings_restored(sandbox.settings):
        yield


# -- helpers ----------------------------------------------------------------------------


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    err = body["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    for secret in (VIDU_KEY, OLD_VIDU_KEY, ADMIN_TOKEN):
        assert secret not in response.text
    return err


def submits(sandbox):
    """How many submissions reached the sandbox."""
    return sum(1 for r in sandbox.vidu.requests if r.method == "POST" and "/ent/v2/" in r.path)


def status_fetches(sandbox, task_id):
    return [r for r in sandbox.vidu.requests if r.path.endswith(f"/tasks/{task_id}/creations")]


def db_job(service, job_id, columns="status, error, provider_job_id"):
    ((*values,),) = service.rows(f"SELECT {columns} FROM jobs WHERE id=?", job_id)
    return tuple(values)


def wait_task(sandbox, task_id, state, timeout=5.0):
    task = sandbox.vidu.tasks[task_id]
    deadline = time.monotonic() + timeout
    while task.state != state:
        assert time.monotonic() < deadline, f"sandbox task is still {task.state}"
        time.sleep(0.02)


def transitions(job):
    return [(t["from_status"], t["to_status"], t["source"]) for t in job["transitions"]]


# -- authentication ---------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{id}"),
    ("POST", "/api/jobs/{id}/refresh"),
]
BAD_AUTH = {
    "none": None,
    "wrong_token": "Bearer not-the-admin-token",
    "empty_bearer": "Bearer",
    "token_prefix": f"Bearer {ADMIN_TOKEN[:-1]}",
    "token_extended": f"Bearer {ADMIN_TOKEN}0",
    "other_scheme": f"Token {ADMIN_TOKEN}",
    "basic_scheme": f"Basic {ADMIN_TOKEN}",
    "bare_token": ADMIN_TOKEN,
    "vidu_key": f"Bearer {VIDU_KEY}",
}


@pytest.fixture(scope="module")
def lost_job(service):
    """A queued job that nothing moves (no sandbox callbacks, reconciliation at 60 s)."""
    return service.submit("Fog over a field [lost]")


@pytest.mark.parametrize("auth", sorted(BAD_AUTH))
@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=lambda v: v.strip("/"))
def test_every_endpoint_needs_the_admin_token(service, sandbox, lost_job, method, path, auth):
    headers = {} if BAD_AUTH[auth] is None else {"Authorization": BAD_AUTH[auth]}
    before, sent = service.counts(), len(sandbox.vidu.requests)
    body = {"provider": "vidu", "prompt": "Should never be submitted"}

    response = service.http.request(
        method,
        path.format(id=lost_job["id"]),
        headers=headers,
        json=body if method == "POST" else None,
    )

    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="vidhook"'
    assert lost_job["id"] not in response.text
    assert service.counts() == before
    assert len(sandbox.vidu.requests) == sent  # nothing submitted, nothing polled


def test_health_endpoints_need_no_token(service):
    health = service.http.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}

    ready = service.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"workers": True, "database": True}}


# -- POST /api/jobs ---------------------------------------------------------------------


def test_create_job_returns_201_with_location_and_the_job(service, sandbox):
    before = submits(sandbox)
    response = service.api.post(
        "/api/jobs", json={"provider": "vidu", "prompt": "A kite on a beach [lost]"}
    )

    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["provider"] == "vidu"
    assert job["prompt"] == "A kite on a beach [lost]"
    assert job["provider_job_id"] in sandbox.vidu.tasks
    assert job["request"] == {"images": [], "mode": None, "options": {}}
    assert job["key_fingerprint"].startswith("sha256:")
    assert submits(sandbox) == before + 1
    assert db_job(service, job["id"]) == ("queued", None, job["provider_job_id"])


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", None],
)
def test_create_job_with_wrong_content_type_is_415(service, sandbox, content_type):
    before, sent = service.counts(), submits(sandbox)
    headers = {} if content_type is None else {"Content-Type": content_type}

    response = service.api.post(
        "/api/jobs", content=b'{"provider": "vidu", "prompt": "x"}', headers=headers
    )

    assert_error(response, 415, "unsupported_media_type")
    assert service.counts() == before
    assert submits(sandbox) == sent


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"provider": "vidu",}', id="trailing_comma"),
        pytest.param(b'{"provider": "vidu"', id="truncated"),
        pytest.param(b'{"provider": "vidu", "prompt": "\\udc80"}', id="lone_surrogate"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply_nested"),
    ],
)
def test_create_job_with_invalid_json_is_400(service, sandbox, body):
    before, sent = service.counts(), submits(sandbox)

    response = service.api.post(
        "/api/jobs", content=body, headers={"Content-Type": "application/json"}
    )

    assert_error(response, 400, "invalid_json")
    assert service.counts() == before
    assert submits(sandbox) == sent


INVALID_SUBMISSIONS = {
    "unknown_provider": ({"provider": "no-such-provider", "prompt": "x"}, {"provider"}),
    "missing_provider": ({"prompt": "x"}, {"provider"}),
    "provider_not_a_string": ({"provider": ["vidu"], "prompt": "x"}, {"provider"}),
    "prompt_not_a_string": ({"provider": "vidu", "prompt": 42}, {"prompt"}),
    "missing_prompt": ({"provider": "vidu"}, {"prompt"}),
    "images_not_a_list": (
        {"provider": "vidu", "prompt": "x", "images": "https://img.example/a.png"},
        {"images"},
    ),
    "images_with_empty_string": ({"provider": "vidu", "prompt": "x", "images": [""]}, {"images"}),
    "img2video_without_images": (
        {"provider": "vidu", "prompt": "x", "mode": "img2video", "images": []},
        {"images"},
    ),
    "unknown_mode": ({"provider": "vidu", "prompt": "x", "mode": "sound2video"}, {"mode"}),
    "prompt_too_long": ({"provider": "vidu", "prompt": "x" * 2001}, {"prompt"}),
    "unknown_field": ({"provider": "vidu", "prompt": "x", "colour": "red"}, {"colour"}),
    "callback_url_top_level": (
        {"provider": "vidu", "prompt": "x", "callback_url": "https://evil.example/hook"},
        {"callback_url"},
    ),
    "notify_unknown_channel": (
        {"provider": "vidu", "prompt": "x", "notify": ["slack"]},
        {"notify"},
    ),
    "notify_not_a_list": ({"provider": "vidu", "prompt": "x", "notify": "slack"}, {"notify"}),
    "options_callback_url": (
        {"provider": "vidu", "prompt": "x", "options": {"callback_url": "https://evil.example"}},
        {"options.callback_url"},
    ),
    "options_model": (
        {"provider": "vidu", "prompt": "x", "options": {"model": "viduq1"}},
        {"options.model"},
    ),
    "options_not_an_object": ({"provider": "vidu", "prompt": "x", "options": [1]}, {"options"}),
    "body_not_an_object": (["vidu", "x"], {"body"}),
    "many_at_once": (
        {"provider": "vidu", "prompt": 7, "images": "a.png", "notify": ["x"], "extra": 1},
        {"prompt", "images", "notify", "extra"},
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_SUBMISSIONS))
def test_invalid_submission_is_422_naming_each_field_and_writes_nothing(service, sandbox, case):
    payload, fields = INVALID_SUBMISSIONS[case]
    before, sent = service.counts(), submits(sandbox)

    response = service.api.post("/api/jobs", json=payload)

    err = assert_error(response, 422, "invalid_fields")
    assert set(err["fields"]) == fields
    assert all(isinstance(m, str) and m for m in err["fields"].values())
    assert service.counts() == before
    assert submits(sandbox) == sent


def test_a_field_of_the_wrong_type_is_reported_as_such(service):
    # Not as "required": the type error is what the caller has to fix.
    response = service.api.post(
        "/api/jobs",
        json={"provider": "vidu", "prompt": 42, "mode": "img2video", "images": "a.png"},
    )

    err = assert_error(response, 422, "invalid_fields")
    assert err["fields"]["prompt"] == "must be a string"
    assert err["fields"]["images"] == "must be a list of image URLs or data: URIs"


def test_a_submission_refused_for_now_is_202_with_the_job_queued(fresh):
    service = fresh  # its own: the 429s pause the provider for every job of the service
    before = service.counts()

    response = service.api.post("/api/jobs", json={"provider": "vidu", "prompt": "Soon [429]"})

    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert (job["status"], job["provider_job_id"], job["error"]) == ("queued", None, None)
    assert job["submission"]["pending"] is True
    assert job["submission"]["attempts"] == 1
    assert job["submission"]["last_error"] == "vidu HTTP 429 TooManyRequests: too many requests"
    assert job["submission"]["next_attempt_at"] is not None
    assert transitions(job) == [(None, "queued", "api")]
    assert service.counts()["jobs"] == before["jobs"] + 1
    ((next_submit_at,),) = service.rows("SELECT next_submit_at FROM jobs WHERE id=?", job["id"])
    assert next_submit_at is not None


@pytest.mark.parametrize(("marker", "provider_message"), [("[policy]", "prompt policy violation")])
def test_refused_submission_is_502_and_the_job_is_recorded_failed(
    service, sandbox, marker, provider_message
):
    before = service.counts()

    response = service.api.post(
        "/api/jobs", json={"provider": "vidu", "prompt": f"A refused prompt {marker}"}
    )

    err = assert_error(response, 502, "provider_refused")
    assert provider_message in err["message"]
    job = err["job"]
    assert job["status"] == "failed"
    assert job["provider_job_id"] is None
    assert provider_message in job["error"]
    assert service.counts()["jobs"] == before["jobs"] + 1
    status, error, provider_job_id = db_job(service, job["id"])
    assert (status, provider_job_id) == ("failed", None)
    assert provider_message in error
    stored = service.job(job["id"])
    assert transitions(stored) == [(None, "queued", "api"), ("queued", "failed", "submit")]
    assert stored["finished_at"] is not None


def test_refusal_names_the_provider_error_code(service):
    response = service.api.post("/api/jobs", json={"provider": "vidu", "prompt": "Nope [policy]"})

    err = assert_error(response, 502, "provider_refused")
    assert "TaskPromptPolicyViolation" in err["job"]["error"]
    assert "HTTP 400" in err["job"]["error"]


# -- GET /api/jobs ----------------------------------------------------------------------


def listed_ids(service, **params):
    response = service.api.get("/api/jobs", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"jobs", "next_cursor"}
    return [j["id"] for j in body["jobs"]], body["next_cursor"]


def test_list_filters_by_status_and_provider(service):
    queued = [service.submit(f"Still water {i} [lost]")["id"] for i in range(2)]
    failed = service.api.post("/api/jobs", json={"provider": "vidu", "prompt": "No [policy]"})
    assert failed.status_code == 502
    failed_id = failed.json()["error"]["job"]["id"]

    for status in ("queued", "failed"):
        ids, cursor = listed_ids(service, status=status, limit=500)
        expected = [
            r[0]
            for r in service.rows("SELECT id FROM jobs WHERE status=? ORDER BY id DESC", status)
        ]
        assert ids == expected
        assert cursor is None
    queued_ids, _ = listed_ids(service, status="queued", limit=500)
    failed_ids, _ = listed_ids(service, status="failed", limit=500)
    assert set(queued) <= set(queued_ids)
    assert failed_id in failed_ids
    assert failed_id not in queued_ids
    assert not set(queued) & set(failed_ids)
    response = service.api.get("/api/jobs", params={"status": "failed", "limit": 500})
    assert {j["status"] for j in response.json()["jobs"]} == {"failed"}

    everything = [r[0] for r in service.rows("SELECT id FROM jobs ORDER BY id DESC")]
    assert listed_ids(service, provider="vidu", limit=500) == (everything, None)
    # A name no configured provider and no stored job has: said so, not an empty list.
    response = service.api.get("/api/jobs", params={"provider": "pika"})
    assert response.status_code == 422
    configured = ", ".join(sorted(service.server.app.state.runtime.providers))
    assert response.json()["error"]["fields"] == {
        "provider": f"no provider is named pika; the configured providers are {configured}"
    }
    assert listed_ids(service, provider="vidu", status="failed", limit=500)[0] == failed_ids


def test_list_paginates_newest_first_with_a_cursor(fresh):
    created = [fresh.submit(f"Frame {i} [lost]")["id"] for i in range(5)]

    pages, cursor, params = [], None, {"limit": 2}
    while True:
        ids, cursor = listed_ids(fresh, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(ids)
        if cursor is None:
            break
        assert cursor == ids[-1]
        assert len(pages) < 10

    assert [len(p) for p in pages] == [2, 2, 1]
    flat = [i for p in pages for i in p]
    assert flat == list(reversed(created))
    assert len(set(flat)) == 5
    # A page that ends exactly at the last job says so: no cursor to an empty page.
    assert listed_ids(fresh, limit=5) == (list(reversed(created)), None)
    assert listed_ids(fresh, limit=4)[1] == created[1]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "QUEUED"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),  # str.isdigit() says yes; int() says no
        ({"limit": "\u0661"}, "limit"),  # ARABIC-INDIC DIGIT ONE: not an ASCII number
    ],
    ids=repr,
)
def test_list_with_bad_query_is_422(service, params, field):
    response = service.api.get("/api/jobs", params=params)

    err = assert_error(response, 422, "invalid_fields")
    assert set(err["fields"]) == {field}


# -- GET /api/jobs/{id} and refresh -----------------------------------------------------


def test_job_detail_has_transitions_deliveries_and_callbacks(service, lost_job):
    job = service.job(lost_job["id"])
    assert job["id"] == lost_job["id"]
    assert transitions(job) == [(None, "queued", "api")]
    assert job["deliveries"] == []
    assert job["callbacks"] == []
    assert job["created_at"].endswith("Z")


@pytest.mark.parametrize("path", ["/api/jobs/{id}", "/api/jobs/{id}/refresh"])
def test_unknown_job_is_404(service, path):
    method = "POST" if path.endswith("refresh") else "GET"
    before = service.counts()

    response = service.api.request(method, path.format(id="job_0000000000000000000000000Z"))

    assert_error(response, 404, "unknown_job")
    assert service.counts() == before


def test_refresh_polls_now_and_completes_a_finished_job(service, sandbox):
    job = service.submit("Waves on rocks [lost]")
    wait_task(sandbox, job["provider_job_id"], "success")
    assert service.job(job["id"])["status"] == "queued"

    response = service.api.post(f"/api/jobs/{job['id']}/refresh")

    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "completed"
    assert transitions(done) == [(None, "queued", "api"), ("queued", "completed", "poll")]
    assert done["result_url"].startswith(sandbox.url)
    assert done["finished_at"] is not None
    assert len(status_fetches(sandbox, job["provider_job_id"])) == 1
    assert db_job(service, job["id"], "status, next_poll_at") == ("completed", None)


def test_refresh_of_a_finished_job_does_not_ask_the_provider(service, sandbox):
    job = service.submit("Sunset [lost]")
    wait_task(sandbox, job["provider_job_id"], "success")
    assert service.api.post(f"/api/jobs/{job['id']}/refresh").json()["status"] == "completed"
    before = service.counts()

    again = service.api.post(f"/api/jobs/{job['id']}/refresh")

    assert again.status_code == 200
    assert again.json()["status"] == "completed"
    assert len(status_fetches(sandbox, job["provider_job_id"])) == 1
    assert service.counts() == before


def test_refresh_during_a_provider_outage_is_502_and_writes_nothing(service, sandbox):
    job = service.submit("Night train [lost]")
    columns = "status, updated_at, next_poll_at, poll_failures, provider_status"
    row, before = db_job(service, job["id"], columns), service.counts()
    sandbox.settings.status_outage = True

    response = service.api.post(f"/api/jobs/{job['id']}/refresh")

    err = assert_error(response, 502, "provider_error")
    assert "503" in err["message"]
    assert err["transient"] is True
    assert db_job(service, job["id"], columns) == row
    assert service.counts() == before


# -- secrets ----------------------------------------------------------------------------


def test_no_response_reveals_a_callback_token_or_a_key(service, sandbox):
    responses = []
    created = service.api.post("/api/jobs", json={"provider": "vidu", "prompt": "Owl [lost]"})
    responses.append(created)
    job = created.json()
    responses.append(service.api.post("/api/jobs", json={"provider": "vidu", "prompt": "[policy]"}))
    responses.append(
        service.api.post(
            "/api/jobs",
            json={"provider": "vidu", "prompt": "x", "options": {"callback_url": "https://e.x"}},
        )
    )
    wait_task(sandbox, job["provider_job_id"], "success")
    responses.append(service.api.post(f"/api/jobs/{job['id']}/refresh"))
    responses.append(service.api.get(f"/api/jobs/{job['id']}"))
    responses.append(service.api.get("/api/jobs", params={"limit": 500}))
    responses.append(service.http.get("/readyz"))

    ((token, url),) = service.rows(
        "SELECT callback_token, callback_url FROM jobs WHERE id=?", job["id"]
    )
    assert token and token in url
    shown = service.job(job["id"])["callback_url"]
    assert shown == url.replace(token, token[:4] + "\u2026")
    tokens = [t for (t,) in service.rows("SELECT callback_token FROM jobs") if t]
    assert len(tokens) >= 2
    for response in responses:
        assert response.status_code in (200, 201, 422, 502), response.text
        text = response.text + "".join(f"{k}:{v}" for k, v in response.headers.items())
        for secret in (VIDU_KEY, OLD_VIDU_KEY, ADMIN_TOKEN, *tokens):
            assert secret not in text
