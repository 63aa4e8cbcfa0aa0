"""Online backups of the live database, and restoring one.

`backup` copies the database with SQLite's online backup API while the service keeps
running: in WAL mode a reader never blocks the writer. The copy is written to a hidden
file beside the target, checked with ``PRAGMA integrity_check``, flushed to disk and only
then renamed onto the target, so a failed backup never leaves a partial file there.

Restoring, by hand or with `restore`: stop the service; move the database and any
``-wal``, ``-shm`` and ``-journal`` files beside it out of the way (a ``-wal`` left there
would be replayed onto the restored file and corrupt it); put a checked copy of the backup
in its place; start the service.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from receiver.store.lock import holder, lock_path

log = logging.getLogger("vidhook.backup")

# Files SQLite keeps beside a database; they belong to it and travel with it.
SIDECARS = ("-wal", "-shm", "-journal")
# A sidecar that holds changes not yet in the main file: with one of these beside it, a
# file cannot be replaced without the stale changes being applied to the new file.
_HOT_SIDECARS = ("-wal", "-journal")


class BackupError(Exception):
    """A backup or restore was refused or failed; the message says why and what to do."""


class _Unusable(Exception):
    """A database file that must not be used as a backup."""


@dataclass(frozen=True)
class BackupReport:
    target: Path
    size: int  # bytes
    jobs: int
    integrity: str  # always "ok": a copy that fails the check is never put in place
    seconds: float

    def summary(self) -> str:
        return (
            f"backup written to {self.target}: {self.jobs} jobs, {self.size} bytes, "
            f"integrity {self.integrity}"
        )


def sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def backup(
    database: Path,
    target: Path,
    *,
    pages_per_step: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> BackupReport:
    """Copy the live database to target as it was when the backup began.

    ``progress(remaining, total)`` is called with page counts after every step. While the
    backup runs, the WAL cannot be checkpointed past its snapshot and grows a little.
    """
    if pages_per_step < 1:
        raise ValueError("pages_per_step must be at least 1")
    started = time.monotonic()
    database, target = Path(database), Path(target)
    if not database.is_file():
        raise BackupError(
            f"{database}: no database there; is --config (or VIDHOOK_CONFIG, "
            "VIDHOOK_DATABASE) the one the service runs with?"
        )
    _refuse_live_target(database, target)
    if target.is_dir():
        raise BackupError(f"{target} is a folder; give the backup a file name inside it")
    for suffix in _HOT_SIDECARS:
        if sidecar(target, suffix).exists():
            raise BackupError(
                f"{sidecar(target, suffix)} exists: {target} is open in some program or was "
                "not closed cleanly, and replacing it could corrupt it; choose another path"
            )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
    except OSError as exc:
        raise BackupError(f"cannot write in {target.parent}: {exc.strerror or exc}") from None
    partial = Path(name)
    try:
        _snapshot_copy(database, partial, pages_per_step, progress)
        try:
            jobs = _check(partial)
        except _Unusable as exc:
            raise BackupError(
                f"the copy of {database} failed its check ({exc}), so nothing was written to "
                f"{target}; the live database may be damaged: stop the service and run "
                f"sqlite3 {database} 'PRAGMA integrity_check'"
            ) from None
        _fsync(partial)
        os.replace(partial, target)
        _fsync(target.parent)
    except OSError as exc:
        _discard(partial)
        raise BackupError(f"backup to {target} failed: {exc.strerror or exc}") from None
    except BaseException:
        _discard(partial)
        raise
    return BackupReport(
        target=target,
        size=target.stat().st_size,
        jobs=jobs,
        integrity="ok",
        seconds=time.monotonic() - started,
    )


def restore(backup: Path, database: Path) -> None:
    """Put a backup in place of the database. Stop the service first.

    The backup is copied beside the database and checked before anything else is touched,
    so a damaged backup leaves the database as it was. The previous database and its
    sidecar files are kept as ``<database>.before-restore-<UTC time>`` (plus their
    suffixes). A database still open elsewhere is refused: a running service holds its
    lock file, any other program SQLite's shared lock.
    """
    backup, database = Path(backup), Path(database)
    if not backup.is_file():
        raise BackupError(f"{backup}: no backup file there")
    if backup.resolve() == database.resolve() or (
        database.exists() and os.path.samefile(backup, database)
    ):
        raise BackupError(f"{backup} is the database itself; nothing to restore")
    running = holder(database)
    if running is not None:
        raise BackupError(f"{database} is in use: stop the service ({running}) before restoring")
    wal = sidecar(backup, "-wal")
    # An empty one is what a reader leaves behind; one with frames holds part of the data.
    if wal.exists() and wal.stat().st_size > 0:
        raise BackupError(
            f"{wal} is not empty: the backup is open in some program, or is a copy of a live "
            "database rather than a backup; make backups with `vidhook backup`"
        )
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            dir=database.parent, prefix=f".{database.name}.", suffix=".restoring"
        )
        os.close(fd)
    except OSError as exc:
        raise BackupError(f"cannot write in {database.parent}: {exc.strerror or exc}") from None
    incoming = Path(name)
    aside: Path | None = None
    try:
        shutil.copyfile(backup, incoming)
        try:
            _self_contained(incoming)
            jobs = _check(incoming)
        except _Unusable as exc:
            raise BackupError(
                f"{backup} cannot be restored: {exc}; {database} was left as it was"
            ) from None
        _fsync(incoming)
        previous = database.stat() if database.exists() else None
        if previous is not None or any(sidecar(database, s).exists() for s in SIDECARS):
            aside = _set_aside(database)
        if previous is not None:
            _take_ownership_of(previous, incoming)
        os.replace(incoming, database)
        _fsync(database.parent)
    except OSError as exc:
        _discard(incoming)
        kept = f"; the previous database is at {aside}" if aside else ""
        raise BackupError(f"restore into {database} failed: {exc.strerror or exc}{kept}") from None
    except BaseException:
        _discard(incoming)
        raise
    kept = f"; the previous one is kept as {aside}" if aside else ""
    log.info("restored %s into %s (%d jobs)%s", backup, database, jobs, kept)


def _refuse_live_target(database: Path, target: Path) -> None:
    live = {database.absolute(), database.resolve()}
    live_files = {sidecar(p, s) for p in live for s in ("", *SIDECARS)}
    live_files |= {lock_path(p) for p in live}
    if target.resolve() in live_files or (target.exists() and os.path.samefile(target, database)):
        raise BackupError(
            f"{target} is the live database (or one of its files); back up to another path"
        )


def _read_only(path: Path) -> str:
    # A URI, so that a mistyped path fails instead of creating an empty database there.
    return path.resolve().as_uri() + "?mode=ro"


def _snapshot_copy(
    database: Path,
    partial: Path,
    pages_per_step: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    source = sqlite3.connect(_read_only(database), uri=True, isolation_level=None, timeout=30)
    try:
        dest = sqlite3.connect(partial, isolation_level=None)
        try:
            # One read transaction held across every step pins one snapshot. Without it
            # each step would read the newest database, and SQLite restarts a backup
            # whenever another connection commits: a busy service could starve it forever.
            source.execute("BEGIN")
            try:
                source.execute("SELECT count(*) FROM jobs").fetchone()
            except sqlite3.DatabaseError as exc:
                raise BackupError(f"{database} is not a vidhook database ({exc})") from None
            # The file is flushed once, when complete: a crash leaves only a .part file.
            dest.execute("PRAGMA synchronous=OFF")

            def step(status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(remaining, total)

            source.backup(dest, pages=pages_per_step, progress=step)
            source.execute("COMMIT")
            # The copied header says WAL; a backup is better as one self-contained file.
            dest.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:
            raise BackupError(f"backup of {database} failed: {exc}") from None
        finally:
            dest.close()
    finally:
        source.close()


def _self_contained(path: Path) -> None:
    """Turn a WAL-mode file (a copy made some other way) into one that needs no -wal."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise _Unusable(f"not an SQLite database ({exc})") from None


def _check(path: Path) -> int:
    """The number of jobs in the file, once PRAGMA integrity_check said ok."""
    conn = sqlite3.connect(_read_only(path), uri=True)
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
            raise _Unusable(f"PRAGMA integrity_check: {shown}")
        try:
            (jobs,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        except sqlite3.OperationalError:
            raise _Unusable("not a vidhook database: it has no jobs table") from None
        return int(jobs)
    except sqlite3.DatabaseError as exc:
        raise _Unusable(f"not a usable SQLite database ({exc})") from None
    finally:
        conn.close()


def _refuse_if_in_use(database: Path) -> None:
    """Refuse a database that something has open.

    In WAL mode every open connection holds a shared lock on the file, so leaving WAL mode,
    which needs the exclusive lock, succeeds only when no one else has it open. Doing so
    also folds the -wal into the file, so the previous database is kept as one file.
    """
    try:
        conn = sqlite3.connect(database.resolve().as_uri() + "?mode=rw", uri=True, timeout=0)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {database} to check it is not in use: {exc}") from None
    try:
        conn.execute("PRAGMA journal_mode=DELETE").fetchone()
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise BackupError(
                f"{database} is in use: stop the service (and anything else that has the "
                "database open) before restoring"
            ) from None
        raise BackupError(f"cannot check that {database} is not in use: {exc}") from None
    except sqlite3.DatabaseError:
        pass  # not a database, or damaged: nothing can be using it, and it is being replaced
    finally:
        conn.close()


def _set_aside(database: Path) -> Path:
    if database.exists():
        _refuse_if_in_use(database)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = sidecar(database, f".before-restore-{stamp}")
    n = 1
    while any(sidecar(aside, s).exists() for s in ("", *SIDECARS)):
        n += 1
        aside = sidecar(database, f".before-restore-{stamp}-{n}")
    # Sidecars first: a crash part-way must never leave an old -wal beside a new file.
    for suffix in (*SIDECARS, ""):
        if sidecar(database, suffix).exists():
            os.replace(sidecar(database, suffix), sidecar(aside, suffix))
    return aside


def _take_ownership_of(previous: os.stat_result, path: Path) -> None:
    """Give the restored file the previous one's mode and, when allowed, its owner."""
    os.chmod(path, stat.S_IMODE(previous.st_mode))
    if (previous.st_uid, previous.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(path, previous.st_uid, previous.st_gid)
        except PermissionError:
            log.warning(
                "the restored database belongs to the user who restored it, not to the "
                "previous one's owner; the service may not be able to write it"
            )


def _fsync(path: Path) -> None:
    # Folders too: a rename is durable only once its folder is flushed.
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    for suffix in ("", *SIDECARS):
        sidecar(path, suffix).unlink(missing_ok=True)
