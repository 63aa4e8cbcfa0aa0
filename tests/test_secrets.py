"""The API key appears nowhere in the database file or the captured logs (a test greps)."""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, VIDU_KEY, wait_for
from tests.test_restart import ServiceProcess
from tests.vidu_signer import vidu_headers

pytestmark = pytest.mark.slow


def encodings(secret: str) -> set[bytes]:
    """The secret as it could show up in a file: raw, base64, URL-encoded."""
    raw = secret.encode()
    return {
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        quote(secret, safe="").encode(),
        quote(secret).encode(),
    }


def database_files(db_path: Path) -> dict[str, bytes]:
    files = [db_path, db_path.with_name(db_path.name + "-wal")]
    files.append(db_path.with_name(db_path.name + "-shm"))
    return {p.name: p.read_bytes() for p in files if p.exists()}


def test_secrets_reach_neither_the_database_nor_the_debug_log(sandbox, tmp_path):
    svc = ServiceProcess(tmp_path, sandbox.url, log_level="debug")
    try:
        svc.start()
        done = svc.submit("A kite over the dunes")
        failing = svc.submit("A storm at sea [fail]")
        refused = svc.api.post(
            "/api/jobs", json={"provider": "vidu", "prompt": "Something forbidden [policy]"}
        )
        assert refused.status_code == 502, refused.text
        assert refused.json()["error"]["code"] == "provider_refused"
        refused_id = refused.json()["error"]["job"]["id"]

        def ended(job_id, status):
            return svc.job(job_id)["status"] == status

        wait_for(lambda: ended(done["id"], "completed"), what="the job to complete")
        wait_for(lambda: ended(failing["id"], "failed"), what="the [fail] job to fail")
        assert svc.job(refused_id)["status"] == "failed"

        callback_url = svc.job(done["id"])["callback_url"]
        body = json.dumps({"id": done["provider_job_id"], "state": "failed"}).encode()
        forged = httpx.post(
            callback_url.replace(callback_url.split("/callbacks/")[0], svc.url),
            content=body,
            headers=vidu_headers("not-the-vidu-key", callback_url),
        )
        assert forged.status_code == 401, forged.text
        assert svc.job(done["id"])["status"] == "completed"

        tokens = [r["callback_url"].rsplit("/", 1)[1] for r in svc.rows("SELECT * FROM jobs")]
        assert len(tokens) == 3 and all(len(t) >= 32 for t in tokens)
        while_running = database_files(svc.db_path)
        # A graceful stop: uvicorn re-raises the SIGTERM it caught once it has shut down.
        assert svc.stop() in (0, -signal.SIGTERM)
    finally:
        svc.close()

    after_stop = database_files(svc.db_path)
    log = svc.log_path.read_bytes()
    # The log is real and at debug level, and it saw every path exercised here.
    assert b" DEBUG " in log
    assert b"vidhook ready" in log
    assert b"Application shutdown complete" in log
    assert done["id"].encode() in log and failing["id"].encode() in log
    assert refused_id.encode() in log and b"prompt policy violation" in log
    assert b"refused: bad_signature" in log
    assert b"/callbacks/vidu/***" in log
    assert "vidhook.db" in after_stop

    blobs = {f"{name} (running)": data for name, data in while_running.items()}
    blobs |= {f"{name} (stopped)": data for name, data in after_stop.items()}
    blobs["log"] = log
    # The database does hold what it must: the jobs and the stored callback bodies.
    assert done["provider_job_id"].encode() in after_stop["vidhook.db"]
    for secret in (VIDU_KEY, ADMIN_TOKEN):
        for form in encodings(secret):
            for name, data in blobs.items():
                assert form not in data, f"{form!r} (a form of a secret) found in {name}"
    for token in tokens:
        for form in {token.encode(), quote(token, safe="").encode()}:
            assert form not in log, f"a callback token {form!r} is in the log"
