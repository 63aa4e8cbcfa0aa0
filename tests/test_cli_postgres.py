"""`vidhook check`, `backup` and `restore` when the store is PostgreSQL."""

from __future__ import annotations

import pytest

from receiver.cli import main
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, free_port

pytestmark = pytest.mark.postgres

CONFIG = """
public_url = "https://hooks.example.com"
database_url_env = "CHECK_DATABASE_URL"
[providers.vidu]
api_key_env = "VIDU_API_KEY"
[archive]
store = "off"
"""


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("VIDU_API_KEY", VIDU_KEY)
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    for name in ("VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE"):
        monkeypatch.delenv(name, raising=False)


def written(tmp_path):
    path = tmp_path / "vidhook.toml"
    path.write_text(CONFIG)
    return path


def test_check_connects_and_reports_the_server_version(tmp_path, env, pg_url, monkeypatch, capsys):
    monkeypatch.setenv("CHECK_DATABASE_URL", pg_url)
    assert main(["check", "--config", str(written(tmp_path))]) == 0
    out, _err = capsys.readouterr()
    (line,) = [line for line in out.splitlines() if line.startswith("database: ")]
    name = pg_url.rsplit("/", 1)[1]
    assert line.startswith(f"database: PostgreSQL database {name} at 127.0.0.1:")
    assert ", PostgreSQL 1" in line  # the server's own version string


def test_check_says_why_it_cannot_connect_without_the_password(tmp_path, env, monkeypatch, capsys):
    url = f"postgresql://vidhook:hunter2-secret@127.0.0.1:{free_port()}/vidhook"
    monkeypatch.setenv("CHECK_DATABASE_URL", url)
    assert main(["check", "--config", str(written(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert "database: FAILED cannot connect to PostgreSQL database vidhook at 127.0.0.1:" in out
    assert "hunter2" not in out + err


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_backup_and_restore_point_to_pg_dump(tmp_path, env, monkeypatch, capsys, command):
    monkeypatch.setenv("CHECK_DATABASE_URL", "postgresql://vidhook:hunter2@db/vidhook")
    path = written(tmp_path)
    assert main([command, str(tmp_path / "copy.db"), "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "pg_dump --format=custom" in err and "pg_restore" in err
    assert '"$CHECK_DATABASE_URL"' in err  # named, never expanded
    assert "hunter2" not in out + err
    assert not (tmp_path / "copy.db").exists()
