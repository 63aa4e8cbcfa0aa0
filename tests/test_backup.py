"""Online backups while callbacks stream in, and restoring one.

The service runs as its own process here, as in production: `vidhook backup` is another
process reading the database the service writes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import threading
from pathlib import Path

import httpx
import pytest

from receiver.backup import BackupError, backup, restore
from receiver.store import migrate
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, running_sandbox, wait_for
from tests.test_restart import ServiceProcess
from tests.vidu_signer import vidu_headers


@pytest.fixture(scope="module")
def sandbox():
    # One sandbox for the module: the tests here never change its settings.
    with running_sandbox() as fakes:
        yield fakes


# -- helpers ------------------------------------------------------------------------------


def rows(path, sql, *params):
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def job_ids(path):
    return {job_id for (job_id,) in rows(path, "SELECT id FROM jobs")}


def integrity(path):
    return rows(path, "PRAGMA integrity_check")


def names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def make_db(path, prefix="job", count=3):
    """A vidhook database, in WAL mode, holding ``count`` queued jobs."""
    migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        for i in range(count):
            conn.execute(
                "INSERT INTO jobs (id, provider, status, prompt, created_at, updated_at)"
                " VALUES (?, 'vidu', 'queued', ?, 1, 1)",
                (f"{prefix}_{i}", f"prompt {i}"),
            )
            conn.execute(
                "INSERT INTO transitions (job_id, to_status, source, at)"
                " VALUES (?, 'queued', 'api', 1)",
                (f"{prefix}_{i}",),
            )
    finally:
        conn.close()
    return {f"{prefix}_{i}" for i in range(count)}


def damage_an_index(path):
    """A database SQLite still opens and counts, but whose integrity check fails."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE INDEX damaged ON jobs(prompt)")
        conn.execute("PRAGMA writable_schema=ON")
        # The entries stay those of prompt while the schema now says status.
        conn.execute(
            "UPDATE sqlite_master SET sql = 'CREATE INDEX damaged ON jobs(status)'"
            " WHERE name = 'damaged'"
        )
    finally:
        conn.close()
    assert integrity(path) != [("ok",)]


def snapshot(folder):
    """Every file in the folder with its bytes: to prove nothing was touched."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


class CallbackStream(threading.Thread):
    """Submits `[lost]` Vidu jobs and sends each one a signed processing callback.

    The sandbox sends `[lost]` jobs no callbacks, so the only callbacks are these. Every
    2xx answer is appended to ``acks`` in the order it arrived, as (kind, job id).
    """

    def __init__(self, svc, sandbox):
        super().__init__(daemon=True)
        self.svc = svc
        self.sandbox = sandbox
        self.acks = []
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self):
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=self.svc.url, headers=auth, timeout=10) as http:
            i = 0
            while not self.stopping.is_set():
                i += 1
                body = {"provider": "vidu", "prompt": f"Rain on a tin roof {i} [lost]"}
                response = http.post("/api/jobs", json=body)
                if response.status_code != 201:
                    self.errors.append(response.text)
                    return
                job = response.json()
                self.ack("job", job["id"])
                url = self.sandbox.vidu.tasks[job["provider_job_id"]].callback_url
                payload = {"id": job["provider_job_id"], "state": "processing"}
                response = http.post(
                    url, content=json.dumps(payload).encode(), headers=vidu_headers(VIDU_KEY, url)
                )
                if response.status_code != 200:
                    self.errors.append(response.text)
                    return
                self.ack("callback", job["id"])

    def ack(self, kind, job_id):
        with self.lock:
            self.acks.append((kind, job_id))

    def acknowledged(self):
        with self.lock:
            return list(self.acks)

    def stop(self):
        self.stopping.set()
        self.join(timeout=10)
        assert not self.is_alive()
        assert not self.errors, self.errors


@pytest.fixture
def live(sandbox, tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    svc = ServiceProcess(folder, sandbox.url)
    try:
        yield svc
    finally:
        svc.close()


def wait_completed(svc, job_id):
    def done():
        job = svc.api.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] == "completed" else None

    return wait_for(done, what=f"{job_id} to complete")


# -- backup while the service runs ----------------------------------------------------


@pytest.mark.slow
def test_backup_during_a_stream_of_callbacks_holds_every_job_acknowledged_before_it(
    sandbox, live, tmp_path
):
    live.start()
    stream = CallbackStream(live, sandbox)
    stream.start()
    try:
        wait_for(lambda: len(stream.acknowledged()) >= 40, what="20 jobs and their callbacks")
        before = stream.acknowledged()
        during = []

        def in_the_middle(remaining, total):
            # Holds the backup after its first step until the service has acknowledged more
            # writes: the service keeps committing while a backup is under way.
            if during:
                return
            mark = len(stream.acknowledged())
            wait_for(lambda: len(stream.acknowledged()) >= mark + 6, what="writes mid-backup")
            # The ack at `mark` may answer a request sent before the backup began; every
            # later one answers a request sent after it.
            during.extend(stream.acknowledged()[mark + 1 :])

        target = tmp_path / "backups" / "vidhook-backup.db"
        report = backup(live.db_path, target, pages_per_step=1, progress=in_the_middle)
        wait_for(lambda: len(stream.acknowledged()) >= len(before) + len(during) + 10)
    finally:
        stream.stop()

    assert integrity(target) == [("ok",)]
    assert report.integrity == "ok"
    assert report.target == target
    assert report.size == target.stat().st_size > 0
    assert names(target.parent) == ["vidhook-backup.db"]  # no partial file left behind
    copied = job_ids(target)
    assert report.jobs == len(copied)

    # Every job acknowledged before the backup began is there, with the transitions of
    # every acknowledgement it had.
    acked_jobs = [job_id for kind, job_id in before if kind == "job"]
    acked_callbacks = {job_id for kind, job_id in before if kind == "callback"}
    assert len(acked_jobs) >= 20
    assert set(acked_jobs) <= copied
    for job_id in acked_jobs:
        steps = rows(
            target,
            "SELECT from_status, to_status, source FROM transitions WHERE job_id = ? ORDER BY id",
            job_id,
        )
        stored = rows(
            target, "SELECT provider_status, outcome FROM callbacks WHERE job_id = ?", job_id
        )
        if job_id in acked_callbacks:
            assert steps == [(None, "queued", "api"), ("queued", "processing", "callback")]
            assert stored == [("processing", "applied")]
        else:  # its callback was on its way when the backup began
            assert steps[0] == (None, "queued", "api")

    # The copy is the database as it was when the backup began: nothing sent after.
    assert during
    later_jobs = {job_id for kind, job_id in during if kind == "job"}
    later_callbacks = {job_id for kind, job_id in during if kind == "callback"}
    assert later_jobs and later_callbacks
    assert not later_jobs & copied
    for job_id in later_callbacks & copied:
        assert rows(target, "SELECT count(*) FROM callbacks WHERE job_id = ?", job_id) == [(0,)]
    # ...and consistent: each job's status is the end of its own transitions.
    for job_id, status in rows(target, "SELECT id, status FROM jobs"):
        ((last,),) = rows(
            target,
            "SELECT to_status FROM transitions WHERE job_id = ? ORDER BY id DESC LIMIT 1",
            job_id,
        )
        assert last == status
    # The live database went on: everything acknowledged at all is in it.
    assert {job_id for _kind, job_id in stream.acknowledged()} <= job_ids(live.db_path)


# -- restore --------------------------------------------------------------------------


@pytest.mark.slow
def test_restore_into_a_fresh_path_brings_back_the_jobs(sandbox, live, tmp_path):
    live.start()
    jobs = [live.submit(f"A paper boat on a puddle, take {i}") for i in range(3)]
    timelines = {job["id"]: wait_completed(live, job["id"])["transitions"] for job in jobs}
    report = backup(live.db_path, tmp_path / "backups" / "vidhook.db")
    assert report.jobs == 3
    late = live.submit("Submitted after the backup [lost]")
    assert live.stop() in (0, -signal.SIGTERM)

    folder = tmp_path / "restored"
    folder.mkdir()
    fresh = ServiceProcess(folder, sandbox.url)
    try:
        assert not fresh.db_path.exists()
        restore(report.target, fresh.db_path)
        assert names(folder) == ["vidhook.db", "vidhook.toml"]
        fresh.start()
        for job in jobs:
            response = fresh.api.get(f"/api/jobs/{job['id']}")
            assert response.status_code == 200, response.text
            restored = response.json()
            assert restored["status"] == "completed"
            assert restored["result_url"]
            assert restored["transitions"] == timelines[job["id"]]
        assert fresh.api.get(f"/api/jobs/{late['id']}").status_code == 404
        # The restored database takes new work.
        wait_completed(fresh, fresh.submit("After the restore")["id"])
    finally:
        fresh.close()


@pytest.mark.slow
def test_restore_over_the_database_refuses_while_the_service_runs_then_keeps_the_old_one(
    sandbox, live, tmp_path
):
    live.start()
    kept = live.submit("Fog over a harbour")
    wait_completed(live, kept["id"])
    target = backup(live.db_path, tmp_path / "backup.db").target
    late = live.submit("Submitted after the backup [lost]")

    files_before = names(live.db_path.parent)
    with pytest.raises(BackupError, match="in use: stop the service"):
        restore(target, live.db_path)
    assert names(live.db_path.parent) == files_before
    assert live.api.get("/readyz").status_code == 200
    assert live.api.get(f"/api/jobs/{late['id']}").status_code == 200

    assert live.stop() in (0, -signal.SIGTERM)
    restore(target, live.db_path)
    (aside,) = [n for n in names(live.db_path.parent) if n.startswith("vidhook.db.before-restore-")]
    assert not any(n.startswith("vidhook.db-") for n in names(live.db_path.parent))
    # The previous database is kept whole, with what it had that the backup has not.
    aside_path = live.db_path.parent / aside
    assert integrity(aside_path) == [("ok",)]
    assert {kept["id"], late["id"]} <= job_ids(aside_path)

    live.start()
    assert live.api.get(f"/api/jobs/{kept['id']}").json()["status"] == "completed"
    assert live.api.get(f"/api/jobs/{late['id']}").status_code == 404


# -- backup: files and refusals --------------------------------------------------------


def test_backup_into_a_missing_folder_creates_it(tmp_path):
    database = tmp_path / "vidhook.db"
    ids = make_db(database)
    target = tmp_path / "a" / "b" / "c" / "backup.db"
    report = backup(database, target)
    assert (report.target, report.jobs, report.integrity) == (target, 3, "ok")
    assert (
        report.summary() == f"backup written to {target}: 3 jobs, {report.size} bytes, integrity ok"
    )
    assert job_ids(target) == ids
    assert integrity(target) == [("ok",)]


def test_the_backup_is_one_private_file(tmp_path):
    database = tmp_path / "vidhook.db"
    make_db(database)
    target = tmp_path / "out" / "backup.db"
    backup(database, target)
    # It holds callback tokens: readable by its owner only.
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # Rollback-journal mode in the header (bytes 18 and 19): it needs no -wal beside it.
    assert target.read_bytes()[18:20] == b"\x01\x01"
    assert job_ids(target)
    assert names(target.parent) == ["backup.db"]


def test_backup_replaces_an_older_backup(tmp_path):
    database = tmp_path / "vidhook.db"
    target = tmp_path / "backup.db"
    make_db(database, count=1)
    assert backup(database, target).jobs == 1
    conn = sqlite3.connect(database)
    conn.execute(
        "INSERT INTO jobs (id, provider, status, created_at, updated_at)"
        " VALUES ('job_new', 'vidu', 'queued', 2, 2)"
    )
    conn.commit()
    conn.close()
    assert backup(database, target).jobs == 2
    assert job_ids(target) == {"job_0", "job_new"}
    assert not [n for n in names(tmp_path) if n.startswith(".")]  # no partial file


@pytest.mark.parametrize(
    "aim", ["same", "dotdot", "symlink", "hardlink", "wal"], ids=lambda a: f"target={a}"
)
def test_backup_onto_the_live_database_is_refused(tmp_path, aim):
    folder = tmp_path / "data"
    folder.mkdir()
    database = folder / "vidhook.db"
    make_db(database)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = {
        "same": database,
        "dotdot": folder / ".." / "data" / "vidhook.db",
        "symlink": elsewhere / "link.db",
        "hardlink": elsewhere / "hard.db",
        "wal": folder / "vidhook.db-wal",
    }[aim]
    if aim == "symlink":
        target.symlink_to(database)
    if aim == "hardlink":
        os.link(database, target)
    before = snapshot(folder)
    with pytest.raises(BackupError, match="is the live database"):
        backup(database, target)
    assert snapshot(folder) == before
    assert names(elsewhere) == ([target.name] if aim in ("symlink", "hardlink") else [])


def test_backup_of_a_missing_database_is_refused_and_creates_nothing(tmp_path):
    with pytest.raises(BackupError, match="no database there"):
        backup(tmp_path / "missing.db", tmp_path / "out" / "backup.db")
    assert names(tmp_path) == []


def test_backup_of_a_database_that_is_not_vidhooks_is_refused(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(BackupError, match="not a vidhook database"):
        backup(other, tmp_path / "backup.db")
    assert names(tmp_path) == ["other.db"]


def test_backup_refuses_a_target_with_a_wal_beside_it(tmp_path):
    database = tmp_path / "vidhook.db"
    make_db(database)
    (tmp_path / "backup.db").write_bytes(b"an older backup")
    (tmp_path / "backup.db-wal").write_bytes(b"someone has it open")
    with pytest.raises(BackupError, match=r"backup\.db-wal exists"):
        backup(database, tmp_path / "backup.db")
    assert (tmp_path / "backup.db").read_bytes() == b"an older backup"


def test_a_copy_that_fails_its_integrity_check_is_never_put_in_place(tmp_path):
    database = tmp_path / "vidhook.db"
    make_db(database)
    damage_an_index(database)
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "backup.db").write_bytes(b"the previous backup")
    with pytest.raises(BackupError, match="integrity_check: row 1 missing from index damaged"):
        backup(database, backups / "backup.db")
    assert snapshot(backups) == {"backup.db": b"the previous backup"}


def test_pages_per_step_must_be_positive(tmp_path):
    database = tmp_path / "vidhook.db"
    make_db(database)
    with pytest.raises(ValueError, match="pages_per_step"):
        backup(database, tmp_path / "backup.db", pages_per_step=0)


def test_small_steps_copy_the_same_database(tmp_path):
    database = tmp_path / "vidhook.db"
    ids = make_db(database, count=200)
    steps = []
    report = backup(
        database, tmp_path / "b.db", pages_per_step=1, progress=lambda *p: steps.append(p)
    )
    assert len(steps) > 10 and steps[-1][0] == 0
    assert report.jobs == 200 and job_ids(report.target) == ids


# -- restore: refusals and the files around the database ----------------------------------


@pytest.fixture
def old(tmp_path):
    """A database as a SIGKILLed service leaves it: recent commits only in its -wal."""
    folder = tmp_path / "data"
    folder.mkdir()
    database = folder / "vidhook.db"
    make_db(database, prefix="old", count=2)
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(
        "INSERT INTO jobs (id, provider, status, created_at, updated_at)"
        " VALUES ('old_in_wal', 'vidu', 'queued', 2, 2)"
    )
    crashed = {n: (folder / n).read_bytes() for n in names(folder)}
    conn.close()
    for n in names(folder):
        (folder / n).unlink()
    for n, data in crashed.items():
        (folder / n).write_bytes(data)
    assert os.path.getsize(database.with_name("vidhook.db-wal")) > 0
    return database


@pytest.fixture
def good_backup(tmp_path):
    source = tmp_path / "source.db"
    make_db(source, prefix="backed_up", count=3)
    return backup(source, tmp_path / "backups" / "backup.db").target


def test_restore_keeps_the_old_database_and_its_wal_aside(old, good_backup):
    restore(good_backup, old)
    assert job_ids(old) == {"backed_up_0", "backed_up_1", "backed_up_2"}
    assert integrity(old) == [("ok",)]
    files = names(old.parent)
    # No -wal beside the restored file: SQLite would replay it onto the backup.
    assert not any(n.startswith("vidhook.db-") for n in files)
    (aside,) = [n for n in files if n.startswith("vidhook.db.before-restore-")]
    assert files == sorted(["vidhook.db", aside])
    # The previous database, including the commit only its -wal held, is all there.
    assert job_ids(old.parent / aside) == {"old_0", "old_1", "old_in_wal"}


def test_restore_twice_keeps_both_previous_databases(old, good_backup):
    restore(good_backup, old)
    restore(good_backup, old)
    asides = [n for n in names(old.parent) if n.startswith("vidhook.db.before-restore-")]
    assert len(asides) == 2


def test_restore_into_a_missing_folder(good_backup, tmp_path):
    database = tmp_path / "new" / "place" / "vidhook.db"
    restore(good_backup, database)
    assert job_ids(database) == job_ids(good_backup)
    assert names(database.parent) == ["vidhook.db"]


@pytest.mark.parametrize("kind", ["garbage", "empty", "damaged", "not_vidhook"])
def test_restore_refuses_a_bad_backup_and_leaves_the_database_untouched(old, tmp_path, kind):
    bad = tmp_path / "bad.db"
    if kind == "garbage":
        bad.write_bytes(os.urandom(64 * 1024))
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "damaged":
        make_db(bad)
        damage_an_index(bad)
    else:
        sqlite3.connect(bad).execute("CREATE TABLE t (x)").connection.close()
    before = snapshot(old.parent)
    reason = {
        "garbage": "not an SQLite database",
        "empty": "not a vidhook database",
        "damaged": "integrity_check",
        "not_vidhook": "not a vidhook database",
    }[kind]
    with pytest.raises(BackupError, match=reason) as refused:
        restore(bad, old)
    assert f"{old} was left as it was" in str(refused.value)
    assert snapshot(old.parent) == before  # the database and its -wal, byte for byte


def test_restore_refuses_a_database_that_is_open(old, good_backup):
    conn = sqlite3.connect(old)
    try:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (3,)
        before = snapshot(old.parent)
        with pytest.raises(BackupError, match="in use"):
            restore(good_backup, old)
        assert snapshot(old.parent) == before
    finally:
        conn.close()


def test_restore_refuses_a_backup_whose_wal_holds_data(old, good_backup):
    wal = good_backup.with_name("backup.db-wal")
    wal.write_bytes(b"")  # what a read-only reader leaves: harmless
    restore(good_backup, old)
    wal.write_bytes(b"frames")
    with pytest.raises(BackupError, match=r"backup\.db-wal is not empty"):
        restore(good_backup, old)


def test_restore_refuses_a_missing_backup_and_the_database_itself(old, tmp_path):
    before = snapshot(old.parent)
    with pytest.raises(BackupError, match="no backup file there"):
        restore(tmp_path / "nothing.db", old)
    with pytest.raises(BackupError, match="is the database itself"):
        restore(old, old)
    assert snapshot(old.parent) == before


def test_restore_gives_the_new_file_the_old_ones_mode(old, good_backup):
    old.chmod(0o640)
    restore(good_backup, old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
