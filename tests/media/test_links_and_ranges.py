"""Signed media links and byte ranges: the pure parts of serving."""

from __future__ import annotations

import pytest

from receiver.config import Secret
from receiver.media.links import Links
from receiver.media.ranges import Unsatisfiable, byte_range
from tests.conftest import ADMIN_TOKEN
from tests.media.helpers import signed_url

NOW = 1_800_000_000.0


def links(token=ADMIN_TOKEN, ttl=3600):
    return Links.from_admin_token(Secret(token), "https://hooks.example.com/vh", ttl)


def parts(url):
    query = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
    return query["expires"], query["sig"]


def test_a_link_is_the_documented_hmac_and_verifies_until_it_expires():
    url = links().url("job_1", "video", NOW)
    expires, sig = parts(url)
    assert int(expires) == NOW + 3600
    assert url == signed_url("https://hooks.example.com/vh", "job_1", "video", expires)
    assert links().verify("job_1", "video", expires, sig, NOW + 3599)
    assert not links().verify("job_1", "video", expires, sig, NOW + 3601)


@pytest.mark.parametrize(
    "change",
    [
        lambda e, s: ("job_2", "video", e, s),
        lambda e, s: ("job_1", "cover", e, s),
        lambda e, s: ("job_1", "video", str(int(e) + 60), s),
        lambda e, s: ("job_1", "video", e, s[:-1] + ("A" if s[-1] != "A" else "B")),
        lambda e, s: ("job_1", "video", e, None),
        lambda e, s: ("job_1", "video", None, s),
        lambda e, s: ("job_1", "video", "1e9", s),
        lambda e, s: ("job_1", "video", "\u0663\u0663\u0663", s),
        lambda e, s: ("job_1", "video", e, "é" + s),
    ],
)
def test_anything_changed_does_not_verify(change):
    expires, sig = parts(links().url("job_1", "video", NOW))
    assert not links().verify(*change(expires, sig), NOW)


def test_another_admin_token_revokes_every_link():
    expires, sig = parts(links().url("job_1", "video", NOW))
    assert not links("another-token").verify("job_1", "video", expires, sig, NOW)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=100-199", (100, 199)),
        ("bytes=0-", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes = 5-9", (5, 9)),
        ("BYTES=5-9", (5, 9)),
        ("bytes=5-9,20-30", None),  # several ranges: the whole file
        ("bytes=9-5", None),  # malformed: ignored
        ("bytes=a-b", None),
        ("items=0-5", None),
        ("bytes=-", None),
        ("bytes=\u0661-\u0662", None),  # digits, but not ASCII ones
    ],
)
def test_ranges(header, expected):
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0), ("bytes=1500-1600", 1000)],
)
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(Unsatisfiable):
        byte_range(header, size)
