"""[archive] in vidhook.toml: defaults, and every key refused with a message saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config import ConfigError, parse_config

BASE = {
    "public_url": "https://hooks.example.com",
    "database": "data/vidhook.db",
    "providers": {"vidu": {"api_key_env": "VIDU_API_KEY"}},
}
ENV = {
    "VIDU_API_KEY": "k",
    "VIDHOOK_ADMIN_TOKEN": "t",
    "S3_ID": "id",
    "S3_SECRET": "s3-s3cr3t-value",
}


def archive(section, env=ENV):
    return parse_config({**BASE, "archive": section}, env, base_dir=Path("/srv/vh")).archive


def problems(section):
    with pytest.raises(ConfigError) as caught:
        archive(section)
    return caught.value.problems


def test_the_defaults_keep_results_beside_the_database():
    kept = parse_config(BASE, ENV, base_dir=Path("/srv/vh")).archive
    assert kept.store == "local" and kept.enabled
    assert kept.path == Path("/srv/vh/data/media")
    assert (kept.max_bytes, kept.keep_days, kept.link_ttl) == (2 * 1024**3, 0, 604800)
    assert (kept.notify_wait, kept.allow_private_hosts) == (120, False)


def test_s3_settings_with_their_secrets_from_the_environment():
    kept = archive(
        {"store": "s3", "bucket": "b", "prefix": "/r/", "region": "eu-west-1",
         "endpoint_url": "https://minio.example.com",
         "access_key_id_env": "S3_ID", "secret_access_key_env": "S3_SECRET"}
    )  # fmt: skip
    assert kept.s3 is not None
    assert (kept.s3.bucket, kept.s3.prefix, kept.s3.region) == ("b", "r", "eu-west-1")
    assert kept.s3.secret_access_key is not None
    assert kept.s3.secret_access_key.reveal() == "s3-s3cr3t-value"
    assert "s3cr3t" not in repr(kept)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"store": "ftp"}, "archive.store: must be one of local, s3, off"),
        ({"max_bytes": 0}, "archive.max_bytes: must be a positive number of bytes"),
        ({"max_bytes": "2GB"}, "archive.max_bytes: must be an integer, got a string"),
        ({"keep_days": -1}, "archive.keep_days: must be 0 (keep forever) or a number of days"),
        ({"link_ttl": 0}, "archive.link_ttl: must be a positive number of seconds"),
        ({"notify_wait": -5}, "archive.notify_wait: must be 0 (do not wait)"),
        (
            {"allow_private_hosts": "yes"},
            "archive.allow_private_hosts: must be true or false, got a string",
        ),
        ({"concurrency": 0}, "archive.concurrency: must be at least 1"),
        ({"bucket": "b"}, 'archive.bucket: only used with store = "s3"'),
        ({"store": "s3"}, "archive.bucket: missing"),
        ({"store": "s3", "bucket": "b", "endpoint_url": "minio:9000"},
         "archive.endpoint_url: must be an http(s) URL"),
        ({"store": "s3", "bucket": "b", "access_key_id_env": "S3_ID"},
         "archive.secret_access_key_env: missing"),
        ({"store": "s3", "bucket": "b", "secret_access_key": "x"},
         "archive.secret_access_key: secrets do not go in the file"),
        ({"stor": "local"}, "archive.stor: unknown key"),
    ],
)  # fmt: skip
def test_each_bad_key_is_named_with_what_to_do(section, problem):
    found = problems(section)
    assert any(problem in line for line in found), found
