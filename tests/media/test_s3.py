"""The S3 backend, end to end against moto's S3 server on loopback (tests/media/conftest.py)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import boto3
import httpx
import pytest

from receiver.cli import main
from receiver.sandbox.media import FileSettings, sample_cover, sample_video
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, running_service, settings_restored
from tests.media.helpers import (
    BUCKET,
    S3_ENV,
    get,
    media_files,
    objects,
    s3_extra,
    sha256,
    wait_media,
)

MIB = 1024 * 1024


def test_the_s3_backend_keeps_and_serves_by_presigned_redirect(s3_url, sandbox, db_path):
    with running_service(sandbox.url, db_path, extra=s3_extra(s3_url)) as service:
        job = wait_media(service, service.submit("A lighthouse in a storm")["id"])
        media = job["media"]
        video = media["video"]
        served = get(job["result_url"]).content
        assert (video["bytes"], video["sha256"]) == (len(served), sha256(served))
        kept = objects(s3_url)
        assert kept[f"kept/{job['id']}.mp4"][1] == len(served)
        assert kept[f"kept/{job['id']}-cover.png"][1] == len(sample_cover())

        moved = get(video["url"])
        assert moved.status_code == 307
        target = moved.headers["location"]
        assert target.startswith(f"{s3_url}/{BUCKET}/kept/{job['id']}.mp4?")
        assert "X-Amz-Signature=" in target and "MEDIA_S3_SECRET" not in target
        assert S3_ENV["MEDIA_S3_SECRET"] not in target

        whole = get(video["url"], follow_redirects=True)
        assert whole.status_code == 200 and sha256(whole.content) == sha256(served)
        assert whole.headers["content-type"] == "video/mp4"
        assert whole.headers["content-disposition"] == f'inline; filename="{job["id"]}.mp4"'
        part = get(video["url"], headers={"Range": "bytes=100-199"}, follow_redirects=True)
        assert part.status_code == 206 and part.content == served[100:200]
        assert get(media["cover"]["url"], follow_redirects=True).content == sample_cover()

        # HEAD is answered by vidhook itself from the record: a presigned GET cannot serve it.
        head = httpx.head(video["url"], timeout=10)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(served))
        assert head.headers["etag"] == f'"{video["sha256"]}"'

        # Tampered links are refused before any redirect is signed.
        assert get(video["url"][:-3] + "xyz").status_code == 403
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert get(f"{service.url}/media/{job['id']}/video", headers=admin).status_code == 307
    assert served == sample_video()
    # Nothing stays on the local disk but the (empty) staging folder.
    assert media_files(db_path) == []


def test_an_unreachable_bucket_is_a_failure_that_is_retried(s3_url, sandbox, db_path):
    extra = s3_extra(s3_url)
    extra["archive"]["bucket"] = "no-such-bucket"
    with running_service(sandbox.url, db_path, extra=extra) as service:
        job = service.submit("Lanterns on a lake")
        job = service.wait(job["id"], lambda j: j["media"]["error"], 20)
    assert job["media"]["status"] == "pending"
    assert "no-such-bucket" in job["media"]["error"] and "uploading" in job["media"]["error"]
    assert S3_ENV["MEDIA_S3_SECRET"] not in job["media"]["error"]
    assert media_files(db_path) == []


def test_a_result_over_the_multipart_threshold_is_kept_in_parts_and_read_back_whole(
    s3_url, sandbox, db_path
):
    size = 8 * MIB + 654_321  # past the 8 MiB parts: two of them, the last one short
    expected = sample_video(size)
    with settings_restored(sandbox.settings) as settings:
        settings.files = FileSettings(video_bytes=size)
        with running_service(sandbox.url, db_path, extra=s3_extra(s3_url)) as service:
            job = wait_media(service, service.submit("A glacier calving")["id"], timeout=60)
            video = job["media"]["video"]
            assert (video["bytes"], video["sha256"]) == (size, sha256(expected))
            # A multipart upload's ETag is the digest of its parts' digests, "-" their count.
            etag, stored = objects(s3_url)[f"kept/{job['id']}.mp4"]
            assert (etag.rsplit("-", 1)[-1], stored) == ("2", size)

            whole = get(video["url"], follow_redirects=True)
            assert whole.status_code == 200 and whole.content == expected
            edge = 8 * MIB  # where the first part ends
            asked = {
                f"bytes={edge - 100}-{edge + 99}": expected[edge - 100 : edge + 100],
                "bytes=0-99": expected[:100],
                "bytes=-1000": expected[-1000:],
                f"bytes={size - 10}-": expected[-10:],
            }
            for header, part in asked.items():
                answer = get(video["url"], headers={"Range": header}, follow_redirects=True)
                assert (answer.status_code, answer.content) == (206, part), header
            head = httpx.head(video["url"], timeout=10)
            assert head.headers["content-length"] == str(size)
    assert media_files(db_path) == []  # nothing left in the staging folder


CHECK_CONFIG = """
public_url = "https://hooks.example.com"
database = "check.db"
[providers.vidu]
api_key_env = "VIDU_API_KEY"
[archive]
store = "s3"
bucket = "{bucket}"
prefix = "kept"
endpoint_url = "{endpoint}"
access_key_id_env = "MEDIA_S3_KEY_ID"
secret_access_key_env = "MEDIA_S3_SECRET"
"""


@pytest.fixture
def check(tmp_path, monkeypatch, capsys, s3_url):
    """`vidhook check` on a config keeping to a bucket of moto's: (exit code, output)."""
    monkeypatch.setenv("VIDU_API_KEY", VIDU_KEY)
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    config = tmp_path / "vidhook.toml"

    def run(bucket=BUCKET, key_id=S3_ENV["MEDIA_S3_KEY_ID"], secret=S3_ENV["MEDIA_S3_SECRET"]):
        monkeypatch.setenv("MEDIA_S3_KEY_ID", key_id)
        monkeypatch.setenv("MEDIA_S3_SECRET", secret)
        config.write_text(CHECK_CONFIG.format(bucket=bucket, endpoint=s3_url))
        code = main(["check", "--config", str(config)])
        return code, capsys.readouterr().out

    return run


def archive_line(out):
    (line,) = [line for line in out.splitlines() if line.startswith("archive:")]
    return line


def test_check_reports_the_bucket_and_succeeds(check, s3_url):
    code, out = check()
    assert code == 0, out
    assert archive_line(out) == f"archive: s3, bucket {BUCKET}/kept at {s3_url} (writable)"
    assert not [key for key in objects(s3_url) if "vidhook-check" in key]  # its probe is gone


def test_check_fails_clearly_for_a_bucket_that_does_not_exist(check, s3_url):
    code, out = check(bucket="no-such-bucket")
    assert code == 1
    assert archive_line(out).startswith(
        "archive: s3: FAILED bucket no-such-bucket/kept: writing a probe object failed:"
        " HTTP 404 NoSuchBucket: "
    )
    assert S3_ENV["MEDIA_S3_SECRET"] not in out


@contextmanager
def signatures_checked(s3_url):
    """moto checks every request's credentials and signature meanwhile, as S3 does.

    By default it takes any; its /moto-api/reset-auth switches that for the whole server.
    """
    httpx.post(f"{s3_url}/moto-api/reset-auth", content=b"0", timeout=10).raise_for_status()
    try:
        yield
    finally:
        httpx.post(f"{s3_url}/moto-api/reset-auth", content=b"inf", timeout=10)


@pytest.fixture(scope="module")
def s3_user(s3_url):
    """An IAM user of moto's allowed everything in S3: its key id and secret."""
    iam = boto3.client(
        "iam", endpoint_url=s3_url, region_name="us-east-1",
        aws_access_key_id="setup", aws_secret_access_key="setup",
    )  # fmt: skip
    iam.create_user(UserName="vidhook-check")
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(
        UserName="vidhook-check", PolicyName="media", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="vidhook-check")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_check_fails_clearly_with_wrong_credentials(check, s3_url, s3_user):
    key_id, secret = s3_user
    with signatures_checked(s3_url):
        good_code, good = check(key_id=key_id, secret=secret)
        wrong_code, wrong = check(key_id=key_id, secret="not-" + secret)
        unknown_code, unknown = check(key_id="AKIAUNKNOWN000000000", secret=secret)
    # The same bucket and check with the user's own keys: what differs is the keys alone.
    assert good_code == 0, good
    assert archive_line(good).endswith("(writable)")
    prefix = f"archive: s3: FAILED bucket {BUCKET}/kept: writing a probe object failed: "
    for code, out, reason in (
        (wrong_code, wrong, "HTTP 403 SignatureDoesNotMatch: "),
        (unknown_code, unknown, "HTTP 403 InvalidAccessKeyId: "),
    ):
        assert code == 1, out
        assert archive_line(out).startswith(prefix + reason), out
        assert secret not in out
