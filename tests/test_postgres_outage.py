"""A service on PostgreSQL whose database refuses writes (read-only, as a standby is after
a failover), keeps a table locked, or takes no connection at all: callbacks are answered
503 with Retry-After and nothing is stored, /readyz says why, and once the database takes
writes again the same callback is stored. Connections the server cut are replaced without
a refusal, the one listening for other replicas' commits included."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import httpx
import psycopg
import pytest

from tests.conftest import VIDU_KEY, running_service, wait_for
from tests.test_database_outage import assert_refused
from tests.vidu_signer import vidu_headers

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def cut_connections(admin: psycopg.Connection, name: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )


@contextmanager
def read_only(postgres, url):
    name = url.rsplit("/", 1)[1]
    with postgres.admin() as admin:
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on".encode())
        cut_connections(admin, name)  # new connections come up read-only
        try:
            yield
        finally:
            admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only".encode())
            cut_connections(admin, name)


@contextmanager
def unreachable(postgres, url):
    """No connection to be had, as while the server restarts or the network is cut."""
    name = url.rsplit("/", 1)[1]
    with postgres.admin() as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false".encode())
        cut_connections(admin, name)
        try:
            yield
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true".encode())


@contextmanager
def tables_locked(url, *tables):
    """Another program in a transaction holding the tables, as a long migration would."""
    with psycopg.connect(url) as conn:
        conn.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE".encode())
        yield
        conn.rollback()


def readyz(service):
    return httpx.get(f"{service.url}/readyz", timeout=30)


# The refusal's reason and Retry-After for each outage.
OUTAGES = {
    "read-only": ("read-only", 30),
    "locked": ("a lock is held", 5),
    "unreachable": ("no connection to PostgreSQL", 5),
}


def signed_callback(service, job):
    # The API shows the URL with its token cut short: the database has it whole.
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id = ?", job["id"])
    body = json.dumps({"id": job["provider_job_id"], "state": "processing"}).encode()
    return url, body, vidu_headers(VIDU_KEY, url)


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_a_database_that_refuses_writes_is_answered_503_and_nothing_is_stored(
    sandbox, tmp_path, postgres, pg_url, outage
):
    with running_service(sandbox.url, tmp_path / "v.db", database_url=pg_url) as service:
        job = service.submit("An egret over the marsh [lost]")
        url, body, headers = signed_callback(service, job)
        refusing = {
            "read-only": lambda: read_only(postgres, pg_url),
            # The tables a callback and /readyz write.
            "locked": lambda: tables_locked(pg_url, "callbacks", "heartbeat"),
            "unreachable": lambda: unreachable(postgres, pg_url),
        }[outage]
        reason, retry_after = OUTAGES[outage]
        with refusing():
            began = time.monotonic()
            refused = httpx.post(url, content=body, headers=headers, timeout=30)
            assert time.monotonic() - began < 15  # a bounded wait, never a hang
            error = assert_refused(refused, retry_after)
            assert reason in error["message"]
            ready = readyz(service)
            assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
        assert service.rows("SELECT count(*) FROM callbacks")[0][0] == 0
        wait_for(lambda: readyz(service).status_code == 200, timeout=20, what="/readyz")
        accepted = httpx.post(url, content=body, headers=headers, timeout=30)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json() == {"ok": True, "duplicate": False}
        stored = service.rows("SELECT provider_status, outcome FROM callbacks")
        assert [tuple(row) for row in stored] == [("processing", "applied")]
        assert service.job(job["id"])["status"] == "processing"


def listening_backends(postgres, name):
    with postgres.admin() as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query = 'LISTEN vidhook'",
            (name,),
        ).fetchall()
    return {pid for (pid,) in rows}


def test_connections_the_server_cut_are_replaced_without_refusing_a_callback(
    sandbox, tmp_path, postgres, pg_url
):
    name = pg_url.rsplit("/", 1)[1]
    with running_service(sandbox.url, tmp_path / "v.db", database_url=pg_url) as service:
        job = service.submit("A heron at dawn [lost]")
        url, body, headers = signed_callback(service, job)
        wait_for(lambda: listening_backends(postgres, name), timeout=20, what="LISTEN")
        before = listening_backends(postgres, name)
        with postgres.admin() as admin:
            cut_connections(admin, name)  # every pooled connection, and the listening one
        accepted = httpx.post(url, content=body, headers=headers, timeout=30)
        assert accepted.status_code == 200, accepted.text
        assert service.job(job["id"])["status"] == "processing"
        wait_for(
            lambda: listening_backends(postgres, name) - before,
            timeout=20,
            what="listening again for other replicas' commits",
        )
