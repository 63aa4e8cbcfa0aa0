"""A throwaway PostgreSQL server for the tests: one cluster per test session, in a
temporary folder, on a free port of loopback; a fresh database for each test, copied from
a template that already holds vidhook's schema (CREATE DATABASE ... TEMPLATE: a few
milliseconds, where migrating takes a few hundred).

initdb and the server refuse to run as root, as the tests and CI do: then they run as an
unprivileged user (``nobody``, through runuser), owner of the cluster's folder. fsync is
off: the tests kill vidhook, never the server, and a synced commit would only slow them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from receiver.store import pgschema
from receiver.store.postgres import pg_row, translate

ADMIN = "vidhook"
TEMPLATE = "vidhook_template"
SERVER_USER = "nobody"


def binaries() -> Path | None:
    """The folder of Debian's server programs (the newest version), or of those on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version, reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


@dataclass
class Cluster:
    folder: Path
    port: int
    bindir: Path
    _numbers: Iterator[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ADMIN}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True)

    def fresh_database(self) -> str:
        """A new database with vidhook's schema; its URL."""
        name = f"test_{os.getpid()}_{next(self._numbers)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}".encode())
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


@contextlib.contextmanager
def running_cluster(port: int, *, durable: bool = False) -> Iterator[Cluster]:
    """A cluster on ``port``; ``durable``: commits wait for the disk, as a production
    server's do (benchmarks), instead of fsync off (tests)."""
    bindir = binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    folder = Path(tempfile.mkdtemp(prefix="vidhook-pg-"))
    data, sockets = folder / "data", folder / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        for path in (folder, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    try:
        subprocess.run(
            _as_server_user(
                [str(bindir / "initdb"), "-D", str(data), "-U", ADMIN, "--auth=trust",
                 "-E", "UTF8", "--locale=C", *([] if durable else ["--no-sync"])]
            ),
            check=True, capture_output=True, cwd=folder,
        )  # fmt: skip
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                 str(folder / "server.log"), "-w", "-t", "60", "start"]
            ),
            check=True, capture_output=True, cwd=folder,
        )  # fmt: skip
        cluster = Cluster(folder, port, bindir)
        with cluster.admin() as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}".encode())
        with psycopg.connect(cluster.url(TEMPLATE), autocommit=True) as conn:
            pgschema.migrate(conn)
        yield cluster
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True, cwd=folder,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


class PgRows:
    """Rows of a test database, read with the store's own ``?`` placeholders."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, sql: str, *params: Any) -> list[Any]:
        with psycopg.connect(self.url, autocommit=True, row_factory=pg_row) as conn:
            return conn.execute(translate(sql), params).fetchall()
