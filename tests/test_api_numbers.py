"""Numbers and cursors the admin API cannot hold: a 422 (or a 404 for an id), never a 500.

Python's int() refuses a decimal of over 4,300 digits (ValueError) and SQLite an integer of
2**63 or more (OverflowError); either used to escape as a 500. Each refusal writes nothing.
"""

from __future__ import annotations

import pytest

from tests.conftest import running_sandbox, running_service

TOO_MANY_DIGITS = "1" * 4301
PAST_SQLITE = str(2**63)
LARGEST = str(2**63 - 1)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with (
        running_sandbox() as sandbox,
        running_service(sandbox.url, tmp_path_factory.mktemp("numbers") / "vidhook.db") as svc,
    ):
        svc.submit("A lighthouse in fog [lost]")
        yield svc


def everything(service):
    """Every row a request could have written, not only their number."""
    tables = ("jobs", "transitions", "callbacks", "nonces", "deliveries")
    return {t: service.rows(f"SELECT * FROM {t} ORDER BY rowid") for t in tables}


def assert_refused(response, status, code, field=None):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["code"] == code
    if field is not None:
        assert set(err["fields"]) == {field}


@pytest.mark.parametrize("path", ["/api/jobs", "/api/deliveries"])
@pytest.mark.parametrize(
    "limit", [TOO_MANY_DIGITS, "9" * 5000, PAST_SQLITE, "1" + "0" * 20, "501", "0"]
)
def test_a_limit_out_of_range_is_422_whatever_its_size(service, path, limit):
    before = everything(service)

    response = service.api.get(path, params={"limit": limit})

    assert_refused(response, 422, "invalid_fields", "limit")
    assert everything(service) == before


@pytest.mark.parametrize("path", ["/api/jobs", "/api/deliveries"])
def test_a_limit_with_leading_zeros_is_its_number(service, path):
    response = service.api.get(path, params={"limit": "0" * 30 + "2"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "cursor", [PAST_SQLITE, str(2**64), TOO_MANY_DIGITS, "-1", "1.5", "1e3", "abc", "²", ""]
)
def test_a_deliveries_cursor_sqlite_cannot_hold_is_422(service, cursor):
    before = everything(service)

    response = service.api.get("/api/deliveries", params={"cursor": cursor})

    assert_refused(response, 422, "invalid_fields", "cursor")
    assert everything(service) == before


def test_the_largest_deliveries_cursor_is_a_page(service):
    response = service.api.get("/api/deliveries", params={"cursor": LARGEST})
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "",
        "job_",
        "job_0000000000000000000000000",  # one character short
        "job_000000000000000000000000000",  # one too many
        "job_00000000000000000000000000 ",
        "job_abcdefghjkmnpqrstvwxyz0123",  # lower case: never made
        "' OR 1=1 --",
        TOO_MANY_DIGITS,
        "job_0000000000000000000000000\x00",
    ],
)
def test_a_jobs_cursor_that_is_no_job_id_is_422(service, cursor):
    before = everything(service)

    response = service.api.get("/api/jobs", params={"cursor": cursor})

    assert_refused(response, 422, "invalid_fields", "cursor")
    assert everything(service) == before


def test_a_jobs_cursor_in_the_form_of_an_id_is_a_page(service):
    ((job_id,),) = service.rows("SELECT id FROM jobs")
    below = service.api.get("/api/jobs", params={"cursor": job_id})
    assert below.status_code == 200 and below.json()["jobs"] == []
    above = service.api.get("/api/jobs", params={"cursor": "job_" + "Z" * 26})
    assert [j["id"] for j in above.json()["jobs"]] == [job_id]


@pytest.mark.parametrize(
    "delivery_id", [PAST_SQLITE, str(2**64), TOO_MANY_DIGITS, LARGEST, "0", "-1", "1e3"]
)
def test_retrying_a_delivery_id_no_row_can_have_is_404(service, delivery_id):
    before = everything(service)

    response = service.api.post(f"/api/deliveries/{delivery_id}/retry")

    assert_refused(response, 404, "unknown_delivery")
    assert everything(service) == before
