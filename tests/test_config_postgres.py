"""database_url_env: PostgreSQL instead of the SQLite file, and what it asks of the archive."""

import logging

import pytest

from receiver.config import ConfigError, load_config
from receiver.logs import RedactingFilter, Redactor, config_secrets
from tests.test_config import ENV, MINIMAL, write

URL = "postgresql://vidhook:pa%24%24word-7f3c@db.internal:5432/vidhook"
PG_ENV = {**ENV, "VIDHOOK_DATABASE_URL": URL}
ON_PG = 'database_url_env = "VIDHOOK_DATABASE_URL"\n'


def test_the_url_is_read_from_the_variable_and_kept_secret(tmp_path):
    config = load_config(write(tmp_path, ON_PG + MINIMAL + '[archive]\nstore = "off"\n'), PG_ENV)
    assert config.database_url is not None and config.database_url.reveal() == URL
    assert URL not in repr(config)
    secrets = config_secrets(config)
    # The URL and its password, as written and decoded: a driver may quote either.
    assert URL in secrets and "pa%24%24word-7f3c" in secrets and "pa$$word-7f3c" in secrets


def test_without_the_key_the_store_is_the_sqlite_file(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ENV)
    assert config.database_url is None


@pytest.mark.parametrize(
    ("env", "hint"),
    [
        (ENV, "environment variable VIDHOOK_DATABASE_URL is not set"),
        ({**ENV, "VIDHOOK_DATABASE_URL": "mysql://root:hunter2@db/x"}, "postgresql:// URL"),
        ({**ENV, "VIDHOOK_DATABASE_URL": " "}, "is set but empty"),
    ],
)
def test_a_missing_or_wrong_url_is_refused_without_quoting_it(tmp_path, env, hint):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, ON_PG + MINIMAL + '[archive]\nstore = "off"\n'), env)
    message = str(caught.value)
    assert "database_url_env" in message and hint in message
    assert "hunter2" not in message


def test_a_local_archive_is_refused_with_postgresql_unless_declared_shared(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, ON_PG + MINIMAL), PG_ENV)
    message = str(caught.value)
    assert "archive.store" in message and "shared_path = true" in message and "s3" in message
    shared = ON_PG + MINIMAL + '[archive]\nstore = "local"\nshared_path = true\n'
    assert load_config(write(tmp_path, shared), PG_ENV).archive.shared_path is True
    s3 = ON_PG + MINIMAL + '[archive]\nstore = "s3"\nbucket = "results"\n'
    assert load_config(write(tmp_path, s3), PG_ENV).archive.store == "s3"


def test_shared_path_must_be_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match=r"archive\.shared_path"):
        load_config(write(tmp_path, MINIMAL + '[archive]\nshared_path = "yes"\n'), ENV)


def test_the_password_is_redacted_from_any_log_line(tmp_path):
    config = load_config(write(tmp_path, ON_PG + MINIMAL + '[archive]\nstore = "off"\n'), PG_ENV)
    record = logging.LogRecord(
        "psycopg", logging.WARNING, __file__, 1,
        "connection to %s failed: password pa$$word-7f3c refused", (URL,), None,
    )  # fmt: skip
    RedactingFilter(Redactor(config_secrets(config))).filter(record)
    assert "pa$$word" not in record.getMessage() and "pa%24%24word" not in record.getMessage()
