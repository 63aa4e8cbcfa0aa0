"""Running the archive: keep_days, `vidhook archive`, `vidhook check`, backups, metrics."""

from __future__ import annotations

import pytest

from receiver.cli import main
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, running_service
from tests.media.helpers import (
    Clock,
    archive_extra,
    get,
    media_files,
    service_with_clock,
    wait_media,
)


@pytest.fixture
def admin_env(monkeypatch):
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)


def test_files_past_keep_days_are_pruned_and_their_rows_stay(sandbox, db_path, admin_env, capsys):
    clock = Clock()
    extra = archive_extra(keep_days=1)
    with service_with_clock(sandbox.url, db_path, clock, extra) as service:
        old = wait_media(service, service.submit("An old one")["id"])
        clock.offset = 2 * 86400.0
        fresh = wait_media(service, service.submit("A fresh one")["id"])
        assert main(["archive", "--prune", "--url", service.url]) == 0
        old, fresh = service.job(old["id"]), service.job(fresh["id"])
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        gone = get(f"{service.url}/media/{old['id']}/video", headers=admin)
        rows = service.rows(
            "SELECT kind, pruned_at IS NOT NULL FROM media WHERE job_id = ?", old["id"]
        )
    out = capsys.readouterr().out
    assert "removed 2 files kept longer than keep_days" in out
    assert "1 kept, 1 pruned" in out
    assert old["media"]["status"] == "pruned" and old["media"]["video"] is None
    assert "keep_days (1 days)" in old["media"]["error"]
    assert gone.status_code == 404
    assert sorted(rows) == [("cover", 1), ("video", 1)]  # the record of what was kept stays
    assert fresh["media"]["status"] == "kept"
    assert media_files(db_path) == [f"{fresh['id']}-cover.png", f"{fresh['id']}.mp4"]


def test_backfill_keeps_what_completed_while_the_archive_was_off(
    sandbox, db_path, admin_env, capsys
):
    with running_service(sandbox.url, db_path, extra={"archive": {"store": "off"}}) as service:
        job = service.wait_status(service.submit("Fog over a harbour")["id"], "completed")
    with running_service(sandbox.url, db_path, extra=archive_extra()) as service:
        assert service.job(job["id"])["media"]["status"] == "off"
        assert main(["archive", "--backfill", "--url", service.url]) == 0
        kept = wait_media(service, job["id"])
        assert main(["archive", "--backfill", "--url", service.url]) == 0
    out = capsys.readouterr().out
    assert "queued 1 completed jobs" in out and "queued 0 completed jobs" in out
    assert kept["media"]["video"]["bytes"] > 0


CHECK_CONFIG = """
public_url = "https://hooks.example.com"
database = "check.db"
[providers.vidu]
api_key_env = "VIDU_API_KEY"
"""


def test_check_validates_the_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDU_API_KEY", VIDU_KEY)
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    config = tmp_path / "vidhook.toml"
    config.write_text(CHECK_CONFIG)
    assert main(["check", "--config", str(config)]) == 0
    assert f"archive: local, folder {tmp_path / 'media'} (writable" in capsys.readouterr().out

    (tmp_path / "taken").write_text("a file where the folder should be")
    config.write_text(CHECK_CONFIG.replace("[providers", '[archive]\npath = "taken"\n[providers'))
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"archive: local: FAILED media folder {tmp_path / 'taken'} cannot be created" in out

    config.write_text(CHECK_CONFIG.replace("[providers", '[archive]\nstore = "off"\n[providers'))
    assert main(["check", "--config", str(config)]) == 0
    assert "archive: off" in capsys.readouterr().out


def test_backup_says_the_media_folder_is_separate(tmp_path, monkeypatch, capsys, sandbox):
    db_path = tmp_path / "check.db"
    with running_service(sandbox.url, db_path):
        pass
    config = tmp_path / "vidhook.toml"
    config.write_text(CHECK_CONFIG)
    assert main(["backup", str(tmp_path / "copy.db"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        f"kept results are not in this backup: they are in the folder {tmp_path / 'media'}" in out
    )


def test_metrics_count_downloads_and_storage(sandbox, db_path):
    with running_service(sandbox.url, db_path, extra=archive_extra()) as service:
        job = wait_media(service, service.submit("Metrics")["id"])
        text = service.http.get("/metrics").text
    size = job["media"]["video"]["bytes"] + job["media"]["cover"]["bytes"]
    assert 'vidhook_archive_downloads_total{outcome="kept"} 1.0' in text
    assert f"vidhook_archive_downloaded_bytes_total {float(size)}" in text
    assert f"vidhook_archive_stored_bytes {float(size)}" in text
    assert "vidhook_archive_stored_files 2.0" in text
    assert "vidhook_archive_backlog 0.0" in text
    assert "vidhook_archive_download_seconds_count 1.0" in text
