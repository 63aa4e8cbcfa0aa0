"""A running `vidhook serve` whose database refuses writes: locked by another program past
the busy timeout, or on a disk that takes no more bytes.

Writes from HTTP requests are answered 503 with Retry-After and a JSON error (providers
send the callback again), nothing is acknowledged that was not stored, /readyz answers
503 within a second or so, and the log says so once when the outage begins and once
when it ends.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import sqlite3
import time
from contextlib import contextmanager

import httpx
import pytest

from receiver.sandbox import ServerThread
from receiver.sandbox.slack import SlackAnswer, create_slack_sink
from tests.conftest import VIDU_KEY, running_service, wait_for
from tests.test_restart import ServiceProcess
from tests.vidu_signer import vidu_headers

pytestmark = pytest.mark.slow

# Longer than a worker's pause between two looks at a database that refuses writes
# (worker.IDLE_WAIT, 5 s, plus the 1 s its heartbeat may wait).
WORKER_PAUSE = 7.0

BEGAN = "cannot take writes"
ENDED = "takes writes again"


@contextmanager
def write_locked(path):
    """Another program in a write transaction on the database, as a sqlite3 shell would be."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture
def svc(sandbox, tmp_path):
    service = ServiceProcess(tmp_path, sandbox.url)
    try:
        yield service
    finally:
        service.close()


def readyz(svc):
    return httpx.get(f"{svc.url}/readyz", timeout=30)


def log_lines(svc, text):
    return [line for line in svc.log().splitlines() if text in line]


def count(svc, table):
    return svc.rows(f"SELECT count(*) FROM {table}")[0][0]


def assert_refused(response, retry_after):
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(retry_after)
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert "nothing was stored" in error["message"]
    return error


def test_a_database_locked_by_another_program(sandbox, svc):
    svc.start()
    job = svc.submit("A heron standing in the reeds [lost]")
    url = svc.job(job["id"])["callback_url"]
    body = json.dumps({"id": job["provider_job_id"], "state": "processing"}).encode()
    headers = vidu_headers(VIDU_KEY, url)
    tasks = len(sandbox.vidu.tasks)

    with write_locked(svc.db_path):
        began = time.monotonic()
        ready = readyz(svc)
        # Answered after its bounded wait, not after the busy timeout or never.
        assert time.monotonic() - began < 4
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"workers": True, "database": False}
        assert ready.json()["problems"]["database"].startswith("a write waited more than 1 s")

        for _ in range(3):  # the provider tries again, and is refused again
            began = time.monotonic()
            refused = httpx.post(url, content=body, headers=headers, timeout=30)
            assert time.monotonic() - began < 15
            error = assert_refused(refused, 5)
            assert "(database is locked)" in error["message"]
        assert_refused(
            svc.api.post("/api/jobs", json={"provider": "vidu", "prompt": "Refused [lost]"}), 5
        )
        ready = readyz(svc)
        assert ready.status_code == 503
        assert "database is locked" in ready.json()["problems"]["database"]
        # Nothing acknowledged, nothing stored, nothing sent to the provider.
        assert count(svc, "callbacks") == 0
        assert count(svc, "jobs") == 1
        assert len(sandbox.vidu.tasks) == tasks

    wait_for(lambda: readyz(svc).status_code == 200, timeout=15, what="/readyz after the lock")
    accepted = httpx.post(url, content=body, headers=headers, timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"ok": True, "duplicate": False}
    stored = svc.rows("SELECT provider_status, outcome FROM callbacks")
    assert [tuple(row) for row in stored] == [("processing", "applied")]
    assert svc.job(job["id"])["status"] == "processing"

    wait_for(lambda: log_lines(svc, ENDED), what="the end of the outage in the log")
    (began_line,) = log_lines(svc, BEGAN)
    (ended_line,) = log_lines(svc, ENDED)
    assert "ERROR" in began_line and str(svc.db_path) in began_line
    assert "(database is locked)" in began_line and "503 with Retry-After" in began_line
    assert str(svc.db_path) in ended_line and "refused meanwhile)" in ended_line
    assert "Traceback" not in svc.log()


def test_a_disk_that_takes_no_more_bytes(svc):
    svc.start()
    assert svc.stop() == 0
    # The most any file of the service may grow to: the database as it is, and a little
    # room for the -wal, which a few jobs fill. Past it the kernel refuses the write, as
    # a full disk would.
    limit = svc.db_path.stat().st_size + 64 * 1024
    svc.preexec = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    svc.start()
    assert readyz(svc).status_code == 200

    for i in range(100):
        answer = svc.api.post(
            "/api/jobs", json={"provider": "vidu", "prompt": f"A lighthouse, take {i} [lost]"}
        )
        if answer.status_code != 201:
            break
    else:
        pytest.fail("the -wal never outgrew its limit")
    error = assert_refused(answer, 60)
    assert "(disk I/O error)" in error["message"]

    # A heartbeat is one page: the room a job could not have may still hold a few. Each
    # one that passes is a write that was possible, and takes its page.
    ready = wait_for(
        lambda: (r := readyz(svc)).status_code == 503 and r, what="/readyz to see the full disk"
    )
    assert ready.json()["checks"] == {"workers": True, "database": False}
    assert ready.json()["problems"]["database"] == "disk I/O error"
    assert readyz(svc).status_code == 503
    began = log_lines(svc, BEGAN)
    assert began and all("(disk I/O error)" in line for line in began)
    assert "Traceback" not in svc.log()


# -- the workers pause: nothing is fetched or sent that could not be recorded ----------


def test_polls_and_notifications_pause_while_the_database_refuses_writes(sandbox, db_path, caplog):
    caplog.set_level(logging.INFO)
    app = create_slack_sink()
    slack = app.state.slack
    with ServerThread(app) as sink:
        extra = {
            "env": {"SLACK_URL": f"{sink.url}/services/T000/B000/XXXX"},
            "default_channels": ["team"],
            "channels": {"team": {"type": "slack", "webhook_url_env": "SLACK_URL"}},
        }
        with running_service(sandbox.url, db_path, extra=extra) as svc:
            runtime = svc.server.app.state.runtime
            polled = svc.api.post(
                "/api/jobs", json={"provider": "kvid", "prompt": "A kite that never lands [never]"}
            ).json()

            def fetches():  # of status, by both jobs; the second one ends before the lock
                return len(sandbox.kvid.requests_to("status"))

            wait_for(lambda: fetches() >= 2, what="the first job being polled")
            # The second job's message is held a moment by Slack: the database is locked
            # before the service can record that it was delivered.
            slack.answer(SlackAnswer(delay=1.0))
            announced = svc.api.post(
                "/api/jobs", json={"provider": "kvid", "prompt": "Snow on a quiet street"}
            ).json()
            wait_for(lambda: slack.requests, what="the completed message on its way")

            with write_locked(db_path):
                wait_for(lambda: runtime.store.writer.outage is not None, timeout=15)
                fetched = fetches()
                time.sleep(WORKER_PAUSE)
                # The poll whose record was refused is not made again and again, and the
                # message is not sent again every few seconds while it cannot be recorded.
                assert fetches() == fetched
                assert len(slack.requests) == 1

            wait_for(lambda: fetches() > fetched + 2, timeout=15, what="polls after the outage")
            wait_for(
                lambda: svc.job(announced["id"])["deliveries"][0]["status"] == "delivered",
                timeout=15,
                what="the delivery to be recorded after the outage",
            )
            assert svc.job(polled["id"])["status"] == "processing"
    # The one message whose record the outage refused goes again: at least once, as after
    # a crash, and only once more.
    assert len(slack.messages) == 2
    # The same message, but for the signed link to the kept copy, made afresh at each send.
    first, again = (
        re.sub(r"expires=\d+(&amp;|&)sig=[\w-]+", "", json.dumps(m)) for m in slack.messages
    )
    assert first == again

    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 2, said
    assert BEGAN in said[0] and ENDED in said[1]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
