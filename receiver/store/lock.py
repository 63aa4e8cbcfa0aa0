"""One database, one service: an exclusive lock on ``<database>.lock`` while it runs.

flock(2) on a file of its own, not a lock on the database: the kernel drops it with the
process however it ends (a SIGKILL leaves nothing to clean up), and it is apart from
SQLite's POSIX locks on the database, which a process loses whenever it closes any one
descriptor of the file. The holder writes its pid and host into the file, so that the
one refused can name it. The file stays when the service stops: removing it could let
two processes lock two different files of the same name.

SQLite's alone: replicas on PostgreSQL share their database by design, each claiming
the work it does (``claims``), and have no file to lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from receiver.store.errors import DatabaseInUse, DatabaseUnusable

# The holder writes its name just after it took the lock: a reader may come in between.
_NAME_WAIT = 1.0


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class DatabaseLock:
    def __init__(self, database: Path, fd: int) -> None:
        self.database = database
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # while still held: no one else has written yet
        os.close(self._fd)  # drops the lock
        self._fd = None


def hold(database: Path, command: str = "vidhook serve") -> DatabaseLock:
    """Take the database's lock, or raise DatabaseInUse naming the process that has it."""
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DatabaseUnusable(cannot_write_beside(database, path, exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_of(fd)
        os.close(fd)
        raise DatabaseInUse(
            f"{database} is in use by {holder}: one database belongs to one running "
            "service; stop that one first, or give this one a database of its own"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise DatabaseUnusable(f"cannot lock {path}: {exc.strerror or exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {command}\n".encode(), 0)
    return DatabaseLock(database, fd)


def holder(database: Path) -> str | None:
    """Who holds the database's lock, or None when no one does; takes nothing itself."""
    try:
        fd = os.open(lock_path(database), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no service ever ran on it (or the file is not ours to read)
    try:
        # Shared: it conflicts with a holder, and with nothing a reader does.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_of(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def cannot_write_beside(database: Path, path: Path, exc: OSError) -> str:
    folder, uid = database.parent, os.geteuid()
    if path != folder and path.exists():
        return (
            f"cannot open {path} ({exc.strerror or exc}): give it, and the database's other "
            f"files in {folder}, to the user vidhook runs as (uid {uid}), e.g. with chown"
        )
    what = f"write in {folder}" if path == folder else f"create {path}"
    return (
        f"cannot {what} ({exc.strerror or exc}): vidhook keeps {database.name} and its "
        f"-wal, -shm and .lock files in {folder}; make that folder writable by the user "
        f"vidhook runs as (uid {uid})"
    )


def _holder_of(fd: int) -> str:
    deadline = time.monotonic() + _NAME_WAIT
    while True:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        if text or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    pid, _, rest = text.partition(" ")
    host, _, command = rest.partition(" ")
    if not pid.isdigit():
        return "another process (it did not write its pid)"
    where = "" if host in ("", socket.gethostname()) else f" on host {host}"
    return f"{command or 'another process'} (pid {pid}{where})"
