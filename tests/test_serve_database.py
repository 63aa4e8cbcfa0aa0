"""`vidhook serve` and its database file, as an operator meets them: real processes.

A database it cannot serve (damaged, empty, not SQLite, not writable) ends the start
with one line on stderr and exit code 4; a database another `vidhook serve` holds, with
exit code 5 and that process's pid. A SIGKILLed service leaves no lock behind. backup,
check and restore behave beside a running service as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from receiver.backup import backup
from receiver.store import migrate
from tests.test_restart import REPO, ServiceProcess

pytestmark = pytest.mark.slow

EXIT_DATABASE = 4
EXIT_IN_USE = 5
NO_PROVIDER = "http://127.0.0.1:9"  # these services are never asked to submit anything
RESTORE = "restore the latest backup with `vidhook restore BACKUP`"


def vidhook(svc: ServiceProcess, *args: str, preexec: Callable[[], None] | None = None):
    """A `vidhook` command on the service's config, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args, "--config", str(svc.config_path)],
        cwd=REPO,
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=preexec,
    )


def refused_start(svc: ServiceProcess, code: int, preexec: Callable[[], None] | None = None):
    """Run `vidhook serve`, expect it to refuse with ``code``; its one line of stderr."""
    done = vidhook(svc, "serve", preexec=preexec)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vidhook: ")
    return lines[0]


def a_vidhook_database(path: Path, jobs: int = 50) -> set[str]:
    migrate(path)
    ids = {f"job_{i:03d}" for i in range(jobs)}
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO jobs (id, provider, status, prompt, created_at, updated_at)"
            " VALUES (?, 'vidu', 'queued', ?, 0, 0)",
            [(job_id, "fog rolling over a harbour " * 20) for job_id in sorted(ids)],
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return ids


def without_permission_override() -> Callable[[], None] | None:
    """For the child of a root test run: shed the capabilities that let root ignore file
    modes, so a read-only file is read-only to vidhook as to the service's own user."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    cap_dac_override, cap_dac_read_search, cap_fowner = 1, 2, 3

    def shed() -> None:
        for cap in (cap_dac_override, cap_dac_read_search, cap_fowner):
            if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    probe = subprocess.run(["true"], preexec_fn=shed, capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("running as root without CAP_SETPCAP: file modes cannot bind vidhook here")
    return shed


@pytest.fixture
def svc(tmp_path):
    service = ServiceProcess(tmp_path, NO_PROVIDER)
    try:
        yield service
    finally:
        service.close()


def readyz(svc: ServiceProcess) -> httpx.Response:
    return httpx.get(f"{svc.url}/readyz", timeout=10)


# -- damaged, empty, not a database --------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "overwritten"])
def test_a_damaged_or_empty_database_stops_the_start_in_one_line_until_restored(
    svc, tmp_path, damage
):
    ids = a_vidhook_database(svc.db_path)
    kept = backup(svc.db_path, tmp_path / "backups" / "vidhook.db").target
    size = svc.db_path.stat().st_size
    with open(svc.db_path, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        elif damage == "empty":
            f.truncate(0)
        else:
            f.write(b"not a database any more" * 10)
    damaged = svc.db_path.read_bytes()

    line = refused_start(svc, EXIT_DATABASE)
    what = {
        "truncated": "is damaged (",
        "empty": "is empty (0 bytes) where a vidhook database was expected",
        "overwritten": "is not an SQLite database (",
    }[damage]
    assert line.startswith(f"vidhook: {svc.db_path} {what}")
    assert RESTORE in line
    # Refused, not repaired or replaced: the file is as the operator left it.
    assert svc.db_path.read_bytes() == damaged

    # The fix the line names works: restore, then the service starts with the jobs.
    restored = vidhook(svc, "restore", str(kept))
    assert restored.returncode == 0, restored.stderr
    svc.start()
    assert readyz(svc).status_code == 200
    for job_id in sorted(ids)[:3]:
        assert svc.api.get(f"/api/jobs/{job_id}").status_code == 200
    aside = [p for p in svc.db_path.parent.iterdir() if ".before-restore-" in p.name]
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [damaged]


def test_another_programs_database_is_not_taken_over(svc):
    conn = sqlite3.connect(svc.db_path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()
    before = svc.db_path.read_bytes()
    line = refused_start(svc, EXIT_DATABASE)
    assert line.startswith(
        f"vidhook: {svc.db_path} is an SQLite database but not vidhook's (its tables: invoices)"
    )
    assert svc.db_path.read_bytes() == before


# -- not writable ------------------------------------------------------------------------


def test_a_read_only_database_file_stops_the_start(svc):
    shed = without_permission_override()
    a_vidhook_database(svc.db_path)
    svc.db_path.chmod(0o444)
    line = refused_start(svc, EXIT_DATABASE, preexec=shed)
    assert line.startswith(f"vidhook: {svc.db_path} is read-only for the user vidhook runs as")
    assert "writable by that user" in line


@pytest.mark.parametrize("database", ["new", "existing"])
def test_a_read_only_folder_stops_the_start(tmp_path, database):
    shed = without_permission_override()
    folder = tmp_path / "data"
    folder.mkdir()
    svc = ServiceProcess(tmp_path, NO_PROVIDER)
    svc.db_path = folder / "vidhook.db"
    svc.config_path.write_text(
        svc.config_path.read_text().replace(str(tmp_path / "vidhook.db"), str(svc.db_path))
    )
    if database == "existing":
        a_vidhook_database(svc.db_path)
    folder.chmod(0o555)
    try:
        line = refused_start(svc, EXIT_DATABASE, preexec=shed)
    finally:
        folder.chmod(0o755)
        svc.close()
    assert line.startswith(f"vidhook: cannot write in {folder} (Permission denied): ")
    assert "make that folder writable by the user vidhook runs as" in line


# -- one database, one service -------------------------------------------------------


def test_a_second_service_on_the_same_database_is_refused_naming_the_first(svc):
    svc.start()
    assert svc.proc is not None
    first = svc.proc.pid
    line = refused_start(svc, EXIT_IN_USE)
    assert line.startswith(f"vidhook: {svc.db_path} is in use by vidhook serve (pid {first})")
    # The first one was not disturbed.
    assert svc.proc.poll() is None
    assert readyz(svc).status_code == 200


def test_a_sigkilled_service_leaves_no_lock_behind(svc):
    svc.start()
    assert svc.proc is not None
    killed = svc.proc.pid
    svc.kill()
    assert svc.proc.returncode == -signal.SIGKILL
    # Its pid is still written in the lock file; the lock itself went with the process.
    assert svc.db_path.with_name("vidhook.db.lock").read_text().startswith(f"{killed} ")
    svc.start()
    assert svc.proc.pid != killed
    assert readyz(svc).status_code == 200
    lock_text = svc.db_path.with_name("vidhook.db.lock").read_text()
    assert lock_text.startswith(f"{svc.proc.pid} ")
    # And the restarted one holds it in turn.
    assert refused_start(svc, EXIT_IN_USE).startswith(
        f"vidhook: {svc.db_path} is in use by vidhook serve (pid {svc.proc.pid})"
    )


def test_backup_check_and_restore_beside_a_running_service(svc, tmp_path):
    svc.start()
    assert svc.proc is not None
    target = tmp_path / "backups" / "vidhook.db"
    made = vidhook(svc, "backup", str(target))
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"backup written to {target}: 0 jobs")
    checked = vidhook(svc, "check")
    assert checked.returncode == 0, checked.stderr
    assert f"database: {svc.db_path}" in checked.stdout

    files = sorted(p.name for p in svc.db_path.parent.iterdir())
    refused = vidhook(svc, "restore", str(target))
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"vidhook: {svc.db_path} is in use: stop the service "
        f"(vidhook serve (pid {svc.proc.pid})) before restoring"
    )
    assert sorted(p.name for p in svc.db_path.parent.iterdir()) == files
    assert readyz(svc).status_code == 200

    assert svc.stop() in (0, -signal.SIGTERM)
    restored = vidhook(svc, "restore", str(target))
    assert restored.returncode == 0, restored.stderr
    svc.start()
    assert readyz(svc).status_code == 200


def test_a_lock_file_left_by_another_user_is_named_with_the_fix(svc):
    shed = without_permission_override()
    a_vidhook_database(svc.db_path)
    lock_file = svc.db_path.with_name("vidhook.db.lock")
    lock_file.write_text("")
    lock_file.chmod(0o400)  # as a start by another user (root, say) would have left it
    line = refused_start(svc, EXIT_DATABASE, preexec=shed)
    assert line.startswith(f"vidhook: cannot open {lock_file} (Permission denied): give it")
