"""Vidu callback signatures: the documented example, round trips, tampering, every reason."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signing import SignatureError, vidu

SECRET = "vidu-test-key-7Qm2xR9pLw4Zt"
URL = "http://127.0.0.1:8080/vidu/callback?name=james&age=36"
DATE = "Tue, 06 May 2025 12:09:42 GMT"
WHEN = datetime(2025, 5, 6, 12, 9, 42, tzinfo=UTC)
NONCE = "123e4567-e89b-12d3-a456-426614174000"
EXAMPLE = (
    "POST\n/vidu/callback\nname=james&age=36\nvidu\nTue, 06 May 2025 12:09:42 GMT\n"
    "Date:Tue, 06 May 2025 12:09:42 GMT\nx-request-nonce:123e4567-e89b-12d3-a456-426614174000\n"
)
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def hmac_b64(secret: str, text: str) -> str:
    """Computed here rather than through the module, so the two can disagree."""
    digest = hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def example_headers(**changes: str | None) -> dict[str, str]:
    """The worked example's headers; a keyword (dashes as underscores) replaces or drops one."""
    headers = vidu.sign(SECRET, "POST", URL, date=DATE, nonce=NONCE)
    for key, value in changes.items():
        name = next(n for n in headers if n.lower() == key.replace("_", "-").lower())
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return headers


def resigned(listed: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Example headers with a custom signed list and a correct HMAC over it."""
    headers = {**example_headers(), **(extra or {}), "X-HMAC-SIGNED-HEADERS": listed}
    lookup = {k.lower(): v for k, v in headers.items()}
    pairs = [(n, lookup.get(n.lower(), "")) for n in listed.split(";")]
    headers["X-HMAC-SIGNATURE"] = hmac_b64(SECRET, vidu.signing_string("POST", URL, DATE, pairs))
    return headers


def reason(headers: Headers, *, method: str = "POST", url: str = URL) -> str:
    with pytest.raises(SignatureError) as caught:
        vidu.verify(SECRET, method, url, headers, now=WHEN)
    assert SECRET not in caught.value.message
    assert hmac_b64(SECRET, EXAMPLE) not in caught.value.message
    return caught.value.reason


# --- the documented example ---------------------------------------------------------------


def test_worked_example_signing_string() -> None:
    pairs = [("Date", DATE), ("x-request-nonce", NONCE)]
    assert vidu.signing_string("POST", URL, DATE, pairs) == EXAMPLE


def test_worked_example_signature_is_plain_hmac_sha256_base64() -> None:
    assert vidu.sign(SECRET, "post", URL, date=DATE, nonce=NONCE) == {
        "Date": DATE,
        "x-request-nonce": NONCE,
        "X-HMAC-SIGNED-HEADERS": "Date;x-request-nonce",
        "X-HMAC-SIGNATURE": hmac_b64(SECRET, EXAMPLE),
        "X-HMAC-ALGORITHM": "hmac-sha256",
        "X-HMAC-ACCESS-KEY": "vidu",
    }


def test_worked_example_verifies() -> None:
    result = vidu.verify(SECRET, "POST", URL, example_headers(), now=WHEN + timedelta(seconds=5))
    assert result == vidu.Verified(nonce=NONCE, date=WHEN)
    assert result.date.tzinfo is UTC


@pytest.mark.parametrize(
    ("url", "path", "query"),
    [
        ("http://h", "/", ""),
        ("http://h?", "/", ""),
        ("https://h:8443?b=2&a=1", "/", "b=2&a=1"),
        ("http://h/a%2Fb/%7e;p?z=%20&z=1&a#frag", "/a%2Fb/%7e;p", "z=%20&z=1&a"),
        ("http://h//double//slash?q=a+b&q=%E2%82%AC", "//double//slash", "q=a+b&q=%E2%82%AC"),
    ],
)
def test_path_and_query_are_taken_verbatim(url: str, path: str, query: str) -> None:
    assert vidu.signing_string("get", url, DATE, []).split("\n")[:3] == ["GET", path, query]


# --- sign -----------------------------------------------------------------------------


def test_sign_formats_datetimes_as_imf_fixdate_in_gmt() -> None:
    assert vidu.sign(SECRET, "POST", URL, date=WHEN)["Date"] == DATE
    plus_two = WHEN.astimezone(timezone(timedelta(hours=2)))
    assert vidu.sign(SECRET, "POST", URL, date=plus_two)["Date"] == DATE


def test_sign_defaults_to_now_and_a_uuid4_nonce() -> None:
    first = vidu.sign(SECRET, "POST", URL)
    second = vidu.sign(SECRET, "POST", URL)
    assert uuid.UUID(first["x-request-nonce"]).version == 4
    assert first["x-request-nonce"] != second["x-request-nonce"]
    assert vidu.verify(SECRET, "POST", URL, first).nonce == first["x-request-nonce"]


@pytest.mark.parametrize(
    "names",
    [(), ("Date",), ("x-request-nonce",), ("Date", "date"), ("Date", "x-request-nonce", "Host")],
)
def test_sign_refuses_other_signed_header_lists(names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="signed_headers"):
        vidu.sign(SECRET, "POST", URL, signed_headers=names)


def test_sign_refuses_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        vidu.sign(SECRET, "POST", URL, date=datetime(2025, 5, 6, 12, 9, 42))


def test_empty_or_non_str_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        vidu.sign("", "POST", URL)
    with pytest.raises(ValueError, match="empty"):
        vidu.verify("", "POST", URL, example_headers(), now=WHEN)
    with pytest.raises(TypeError):
        vidu.verify(b"key", "POST", URL, example_headers(), now=WHEN)  # type: ignore[arg-type]


# --- verify: accepted shapes ------------------------------------------------------------------


def test_verify_accepts_pairs_starlette_headers_and_timestamp_now() -> None:
    pairs = [(name.upper(), value) for name, value in example_headers().items()]
    assert vidu.verify(SECRET, "POST", URL, pairs, now=WHEN.timestamp()).nonce == NONCE
    datastructures = pytest.importorskip("starlette.datastructures")
    raw = [(k.lower().encode(), v.encode()) for k, v in example_headers().items()]
    assert vidu.verify(SECRET, "POST", URL, datastructures.Headers(raw=raw), now=WHEN).date == WHEN


def test_optional_headers_may_be_absent_and_algorithm_is_case_insensitive() -> None:
    bare = example_headers(x_hmac_algorithm=None, x_hmac_access_key=None)
    assert vidu.verify(SECRET, "POST", URL, bare, now=WHEN).nonce == NONCE
    loud = example_headers(x_hmac_algorithm="HMAC-SHA256")
    assert vidu.verify(SECRET, "POST", URL, loud, now=WHEN).nonce == NONCE


def test_date_with_offset_is_returned_in_utc() -> None:
    local = "Tue, 06 May 2025 14:09:42 +0200"
    headers = vidu.sign(SECRET, "POST", URL, date=local, nonce=NONCE)
    assert vidu.verify(SECRET, "POST", URL, headers, now=WHEN).date == WHEN


def test_extra_signed_headers_are_covered() -> None:
    headers = resigned("x-request-nonce;Date;X-Callback-Id", {"X-Callback-Id": "job-42"})
    assert vidu.verify(SECRET, "POST", URL, headers, now=WHEN).nonce == NONCE
    assert reason({**headers, "X-Callback-Id": "job-43"}) == "bad_signature"


def test_repeated_header_with_the_same_value_is_fine() -> None:
    again = DATE[:5] + DATE[5:]  # equal, and another object
    pairs = [*example_headers().items(), ("date", again), ("Accept", "a"), ("Accept", "b")]
    assert vidu.verify(SECRET, "POST", URL, pairs, now=WHEN).nonce == NONCE


# --- verify: one test per reason ---------------------------------------------------------------

REQUIRED = ["Date", "x-request-nonce", "X-HMAC-SIGNED-HEADERS", "X-HMAC-SIGNATURE"]


@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("value", [None, ""])
def test_missing_or_empty_required_header(name: str, value: str | None) -> None:
    assert reason(example_headers(**{name.replace("-", "_"): value})) == "missing_header"


def test_signed_header_absent() -> None:
    assert reason(resigned("Date;x-request-nonce;X-Callback-Id")) == "missing_header"


@pytest.mark.parametrize("algorithm", ["hmac-sha1", "HMAC-SHA512", "sha256", "hmac-sha256 "])
def test_unsupported_algorithm(algorithm: str) -> None:
    assert reason(example_headers(x_hmac_algorithm=algorithm)) == "unsupported_algorithm"


@pytest.mark.parametrize(
    "date",
    [
        "yesterday",
        "2025-05-06T12:09:42Z",
        "Tue, 06 May 2025 12:09:42",
        "Tue, 06 May 2025 12:09:42 -0000",
        "Tue, 32 May 2025 12:09:42 GMT",
        "Tue, 06 Foo 2025 12:09:42 GMT",
        "Tue, 06 May 2025 25:61:42 GMT",
        "Tue, 06 May 99999 12:09:42 GMT",
        "Tue, 06 May 2025 12:09:42 +9999",
        "Fri, 31 Dec 9999 23:59:59 -2359",
        "Tue, 06 May 2025",
        "06",
    ],
)
def test_malformed_date(date: str) -> None:
    # Signed properly, so the date itself is the only thing wrong.
    assert reason(vidu.sign(SECRET, "POST", URL, date=date, nonce=NONCE)) == "malformed_date"


def _general_parser(value: str) -> datetime | None:
    """What the email parser makes of a Date, the way verify read every Date before."""
    try:
        parsed = parsedate_to_datetime(value)
        return parsed.astimezone(UTC) if parsed.utcoffset() is not None else None
    except Exception:
        return None


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)))
def test_parse_date_reads_imf_fixdate_as_the_general_parser_does(moment: datetime) -> None:
    text = format_datetime(moment.replace(microsecond=0, tzinfo=UTC), usegmt=True)
    assert (
        vidu.parse_date(text) == _general_parser(text) == moment.replace(microsecond=0, tzinfo=UTC)
    )


@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(
            r"\A[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{2,4} \d\d:\d\d:\d\d [A-Z+-]{1,5}\Z"
        ),
    )
)
def test_parse_date_agrees_with_the_general_parser_on_anything(text: str) -> None:
    # 31 Feb, hour 24, other zones, the obsolete forms: the same answer as before.
    assert vidu.parse_date(text) == _general_parser(text)


@pytest.mark.parametrize(
    "text",
    [
        "Sat, 29 Feb 2025 12:00:00 GMT",
        "Tue, 06 May 2025 24:00:00 GMT",
        "Tue, 06 May 2025 12:09:42 +0200",
    ],
)
def test_parse_date_hands_the_unusual_to_the_general_parser(text: str) -> None:
    assert vidu.parse_date(text) == _general_parser(text)


@pytest.mark.parametrize("offset", [301, -301, 86_400 * 365])
def test_stale_date_past_and_future(offset: int) -> None:
    now = WHEN + timedelta(seconds=offset)
    with pytest.raises(SignatureError) as caught:
        vidu.verify(SECRET, "POST", URL, example_headers(), now=now)
    assert caught.value.reason == "stale_date"
    assert f"{abs(offset)} s away" in caught.value.message
    assert "limit 300 s" in caught.value.message


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_date_at_the_tolerance_edge_is_fresh(offset: int) -> None:
    now = WHEN + timedelta(seconds=offset)
    assert vidu.verify(SECRET, "POST", URL, example_headers(), now=now).date == WHEN


def test_tolerance_is_configurable() -> None:
    headers = example_headers()
    with pytest.raises(SignatureError, match="limit 10 s"):
        vidu.verify(SECRET, "POST", URL, headers, now=WHEN + timedelta(seconds=11), tolerance=10)


def test_bad_signature() -> None:
    forged = base64.b64encode(bytes(32)).decode()
    assert reason(example_headers(x_hmac_signature=forged)) == "bad_signature"


def test_unparseable_callback_url_is_bad_signature() -> None:
    assert reason(example_headers(), url="http://[::1/vidu/callback") == "bad_signature"


@pytest.mark.parametrize("listed", ["Date", "x-request-nonce", "Date;X-Callback-Id"])
def test_signed_list_must_cover_date_and_nonce(listed: str) -> None:
    assert reason(resigned(listed, {"X-Callback-Id": "1"})) == "malformed_header"


@pytest.mark.parametrize(
    "listed",
    [
        ";",
        "Date;;x-request-nonce",
        "Date;x-request-nonce;",
        "Date; x-request-nonce",
        "Date,x-request-nonce",
        "Date;x-request-nonce;DATE",
        "Date;x-request-nonce;bad name",
        "Date;x-request-nonce;caf\u00e9",
        ";".join(["Date", "x-request-nonce", *(f"x-h{i}" for i in range(19))]),
    ],
)
def test_malformed_signed_list(listed: str) -> None:
    assert reason(example_headers(x_hmac_signed_headers=listed)) == "malformed_header"


@pytest.mark.parametrize(
    "changes",
    [
        {"x_request_nonce": "a\x00b"},
        {"x_request_nonce": "caf\u00e9"},
        {"x_request_nonce": "a\tb"},
        {"x_request_nonce": "n" * 257},
        {"date": DATE + " " * 5000},
        {"x_hmac_access_key": "someone-else"},
        {"x_hmac_signature": "not base64!"},
        {"x_hmac_signature": base64.b64encode(bytes(16)).decode()},
        {"x_hmac_signature": base64.urlsafe_b64encode(b"\xfb" * 32).decode()},
        {"x_hmac_signature": base64.b64encode(bytes(32)).decode().rstrip("=")},
        # Lenient base64 would skip the stray characters and accept the genuine signature.
        {"x_hmac_signature": hmac_b64(SECRET, EXAMPLE)[:20] + " " + hmac_b64(SECRET, EXAMPLE)[20:]},
        {"x_hmac_signature": "*" + hmac_b64(SECRET, EXAMPLE)},
    ],
)
def test_malformed_header_values(changes: dict[str, str]) -> None:
    assert reason(example_headers(**changes)) == "malformed_header"


def test_duplicate_header_with_different_values() -> None:
    later = format_datetime(WHEN + timedelta(seconds=1), usegmt=True)
    assert reason([*example_headers().items(), ("DATE", later)]) == "malformed_header"
    assert reason({**example_headers(), "date": later}) == "malformed_header"
    nonces = [*example_headers().items(), ("x-request-nonce", "other")]
    assert reason(nonces) == "malformed_header"


def test_duplicate_header_in_starlette_headers() -> None:
    datastructures = pytest.importorskip("starlette.datastructures")
    raw = [(k.lower().encode(), v.encode()) for k, v in example_headers().items()]
    raw.append((b"x-request-nonce", b"replayed"))
    assert reason(datastructures.Headers(raw=raw)) == "malformed_header"


def test_nonce_of_256_characters_is_accepted() -> None:
    headers = vidu.sign(SECRET, "POST", URL, date=DATE, nonce="n" * 256)
    assert vidu.verify(SECRET, "POST", URL, headers, now=WHEN).nonce == "n" * 256


# --- properties --------------------------------------------------------------------------

PCHAR = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
pct = st.integers(0, 255).map(lambda b: f"%{b:02X}")
segments = st.lists(st.sampled_from(list(PCHAR)) | pct, max_size=6).map("".join)
paths = st.just("") | st.lists(segments, max_size=4).map(lambda s: "/" + "/".join(s))
words = st.lists(
    st.sampled_from(list(PCHAR.replace("&", "").replace("=", "") + "/?")) | pct, max_size=5
)
fields = st.tuples(words.map("".join), words.map("".join)).map("=".join)
queries = st.lists(fields, max_size=6).map("&".join)
hosts = st.sampled_from(["http://127.0.0.1:8080", "https://example.com", "http://[::1]:9"])
secrets = st.text(min_size=1, max_size=40)
methods = st.sampled_from(["POST", "post", "Put", "GET", "patch"])
dates = st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=0)
)
nonces = st.uuids().map(str) | st.text(
    string.ascii_letters + string.digits + "-_.", min_size=1, max_size=64
)
CASES: list[Callable[[str], str]] = [str.lower, str.upper, str.title, str.swapcase, str]


@st.composite
def recased(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))


@st.composite
def callbacks(draw: st.DrawFn) -> tuple[str, str, str, str, str, datetime, list[str]]:
    """(secret, method, url, path, query, date, signed names) for a valid callback."""
    path, query = draw(paths), draw(queries)
    question = "?" if query or draw(st.booleans()) else ""
    url = draw(hosts) + path + question + query + draw(st.sampled_from(["", "#frag"]))
    order = draw(st.permutations(["Date", "x-request-nonce"]))
    names = [draw(recased(n)) for n in order]
    return draw(secrets), draw(methods), url, path, query, draw(dates), names


def deliver(data: st.DataObject, headers: dict[str, str]) -> Headers:
    """The same headers as a receiver might see them: names re-cased, dict or pairs."""
    pairs = [(data.draw(st.sampled_from(CASES))(k), v) for k, v in headers.items()]
    return dict(pairs) if data.draw(st.booleans()) else pairs


@settings(max_examples=150, deadline=None)
@given(callbacks(), st.data())
def test_sign_then_verify_round_trips(
    case: tuple[str, str, str, str, str, datetime, list[str]], data: st.DataObject
) -> None:
    secret, method, url, path, query, date, names = case
    nonce = data.draw(nonces)
    headers = vidu.sign(secret, method, url, date=date, nonce=nonce, signed_headers=names)
    # The test's own rendition: path and query verbatim, in their original order.
    values = {"date": headers["Date"], "x-request-nonce": nonce}
    text = f"{method.upper()}\n{path or '/'}\n{query}\nvidu\n{headers['Date']}\n"
    text += "".join(f"{n}:{values[n.lower()]}\n" for n in names)
    assert headers["X-HMAC-SIGNATURE"] == hmac_b64(secret, text)
    assert headers["X-HMAC-SIGNED-HEADERS"] == ";".join(names)

    now = date + timedelta(seconds=data.draw(st.integers(-300, 300)))
    received = deliver(data, headers)
    verify_method = data.draw(st.sampled_from(CASES))(method)
    result = vidu.verify(secret, verify_method, url, received, now=now)
    assert result == vidu.Verified(nonce=nonce, date=date)


@settings(max_examples=150, deadline=None)
@given(
    callbacks(), st.sampled_from(["method", "path", "query", "date", "nonce", "secret"]), st.data()
)
def test_any_change_to_a_signed_part_is_bad_signature(
    case: tuple[str, str, str, str, str, datetime, list[str]], part: str, data: st.DataObject
) -> None:
    secret, method, url, _path, query, date, names = case
    headers = vidu.sign(secret, method, url, date=date, nonce=NONCE, signed_headers=names)
    split = url.split("#")[0].partition("?")
    if part == "method":
        method = "DELETE" if method.upper() != "DELETE" else "POST"
    elif part == "path":
        url = split[0] + "/x" + split[1] + split[2]
    elif part == "query":
        fields = query.split("&")
        reordered = "&".join(fields[::-1])
        query = reordered if reordered != query else query + "&x=1"
        url = split[0] + "?" + query
    elif part == "date":
        shift = data.draw(st.integers(1, 300)) * data.draw(st.sampled_from([1, -1]))
        headers["Date"] = format_datetime(date + timedelta(seconds=shift), usegmt=True)
    elif part == "nonce":
        headers["x-request-nonce"] = data.draw(nonces.filter(lambda n: n != NONCE))
    else:
        # Not NUL: HMAC pads short keys with zero bytes, so "k" and "k\x00" are one key.
        secret += data.draw(st.text(st.characters(exclude_characters="\x00"), min_size=1))
    with pytest.raises(SignatureError) as caught:
        vidu.verify(secret, method, url, deliver(data, headers), now=date)
    assert caught.value.reason == "bad_signature"


HEADER_NAMES = [
    "Date",
    "x-request-nonce",
    "X-HMAC-SIGNED-HEADERS",
    "X-HMAC-SIGNATURE",
    "X-HMAC-ALGORITHM",
    "X-HMAC-ACCESS-KEY",
]
KEY = st.text(string.ascii_letters + string.digits, min_size=24, max_size=40)
odd_values = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("latin-1")),
    st.integers(4000, 5000).map(lambda n: "A" * n),
    st.text(string.printable),
    st.sampled_from(
        [
            "",
            DATE,
            NONCE,
            "hmac-sha256",
            "HMAC-SHA256",
            "vidu",
            "Date;x-request-nonce",
            "x-request-nonce;Date;Host",
            ";;",
            base64.b64encode(bytes(32)).decode(),
            "Tue, 06 May 2025 12:09:42 +9999",
            "Fri, 31 Dec 9999 23:59:59 -2359",
        ]
    ),
)
odd_names = st.sampled_from(HEADER_NAMES).flatmap(recased) | st.text(max_size=12)
odd_urls = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("latin-1")),
    st.sampled_from([URL, "http://[::1/x", "http://[v1.x]/", "//h", "", "?", "http://h\u2100/"]),
)


def check_message(error: SignatureError, secret: str, *signatures: str) -> None:
    assert error.reason in {
        "missing_header",
        "malformed_header",
        "unsupported_algorithm",
        "malformed_date",
        "stale_date",
        "bad_signature",
    }
    assert secret not in error.message
    for signature in signatures:
        assert len(signature) < 16 or signature not in error.message


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    KEY,
    st.text(max_size=8),
    odd_urls,
    st.dictionaries(odd_names, odd_values) | st.lists(st.tuples(odd_names, odd_values)),
)
def test_arbitrary_input_only_raises_signature_error(
    secret: str, method: str, url: str, headers: Headers
) -> None:
    try:
        vidu.verify(secret, method, url, headers, now=WHEN)
    except SignatureError as error:
        check_message(error, secret)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    KEY,
    st.dictionaries(st.sampled_from(HEADER_NAMES), odd_values | st.none()),
    odd_urls,
    st.data(),
)
def test_mangled_valid_headers_only_raise_signature_error(
    secret: str, changes: dict[str, str | None], url: str, data: st.DataObject
) -> None:
    headers = vidu.sign(secret, "POST", URL, date=DATE, nonce=NONCE)
    expected = headers["X-HMAC-SIGNATURE"]
    for name, value in changes.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    try:
        vidu.verify(
            secret,
            "POST",
            data.draw(st.sampled_from([URL, url])),
            deliver(data, headers),
            now=WHEN,
        )
    except SignatureError as error:
        check_message(error, secret, expected, headers.get("X-HMAC-SIGNATURE", ""))


# Parts of an RFC 5322 date, good and bad, so the parser is driven down its odd branches.
DATE_PARTS = [
    ["", "Tue,", "Sun", "Foo,", ","],
    ["0", "06", "31", "32", "99", "May"],
    ["May", "Dec", "Feb", "Foo", "06"],
    ["0", "99", "0100", "2025", "9999", "99999"],
    ["12:09:42", "23:59:59", "25:61:61", "12:09", "12", "", "."],
    ["GMT", "UT", "UTC", "EST", "Z", "-0000", "+0000", "+0200", "-2359", "+2359", "+9999", ""],
]
odd_dates = (
    st.tuples(*(st.sampled_from(part) for part in DATE_PARTS))
    .flatmap(lambda parts: st.just(parts) | st.permutations(parts))
    .map(" ".join)
)


@settings(max_examples=300, deadline=None)
@given(KEY, odd_dates)
def test_signed_odd_dates_only_raise_signature_error(secret: str, date: str) -> None:
    headers = vidu.sign(secret, "POST", URL, date=date, nonce=NONCE)
    try:
        result = vidu.verify(secret, "POST", URL, headers, now=WHEN, tolerance=10**12)
    except SignatureError as error:
        check_message(error, secret, headers["X-HMAC-SIGNATURE"])
        assert error.reason in {"missing_header", "malformed_date"}
    else:
        assert result.date.tzinfo is UTC


# --- limits at their edges ------------------------------------------------------------------


def test_a_signed_value_of_4096_characters_is_the_longest() -> None:
    for size, verdict in ((4096, "ok"), (4097, "malformed_header")):
        headers = resigned("Date;x-request-nonce;X-Extra", {"X-Extra": "v" * size})
        if verdict == "ok":
            assert vidu.verify(SECRET, "POST", URL, headers, now=WHEN).nonce == NONCE
        else:
            assert reason(headers) == verdict


def test_the_signed_list_and_the_signature_have_the_same_4096_limit() -> None:
    names = ["Date", "x-request-nonce"]
    filler = "x-" + "n" * (4096 - len(";".join(names)) - 3)
    listed = ";".join([*names, filler])
    assert len(listed) == 4096
    # Too long for nothing but the value limit would refuse it as missing its header.
    assert reason(example_headers(x_hmac_signed_headers=listed + "n")) == "malformed_header"
    assert reason(example_headers(x_hmac_signature="A" * 4097)) == "malformed_header"


def test_twenty_signed_headers_are_the_most() -> None:
    extra = {f"x-h{i}": f"value-{i}" for i in range(18)}
    listed = ";".join(["Date", "x-request-nonce", *extra])
    headers = resigned(listed, extra)
    assert vidu.verify(SECRET, "POST", URL, headers, now=WHEN).nonce == NONCE
    more = {**extra, "x-h18": "value-18"}
    assert reason(resigned(";".join(["Date", "x-request-nonce", *more]), more)) == (
        "malformed_header"
    )


def test_a_naive_now_is_refused_and_an_aware_one_in_any_zone_is_the_same_moment() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        vidu.verify(SECRET, "POST", URL, example_headers(), now=WHEN.replace(tzinfo=None))
    elsewhere = WHEN.astimezone(timezone(timedelta(hours=-7)))
    assert vidu.verify(SECRET, "POST", URL, example_headers(), now=elsewhere).date == WHEN
    assert vidu.verify(SECRET, "POST", URL, example_headers(), now=WHEN.timestamp() + 300)
    with pytest.raises(SignatureError):
        vidu.verify(SECRET, "POST", URL, example_headers(), now=WHEN.timestamp() + 301)


def test_times_and_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        vidu.sign(SECRET, "POST", URL, DATE)  # type: ignore[misc]
    with pytest.raises(TypeError):
        vidu.verify(SECRET, "POST", URL, example_headers(), WHEN)  # type: ignore[misc]


def test_a_verified_callback_cannot_be_changed() -> None:
    verified = vidu.verify(SECRET, "POST", URL, example_headers(), now=WHEN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.nonce = "other"  # type: ignore[misc]


def test_a_signed_header_name_may_use_every_token_character() -> None:
    name = "x-" + "".join(
        sorted(set("!#$%&'*+-.^_`|~") | set(string.ascii_letters + string.digits))
    )
    headers = resigned(f"Date;x-request-nonce;{name}", {name: "value"})
    assert vidu.verify(SECRET, "POST", URL, headers, now=WHEN).nonce == NONCE


def test_a_long_header_name_is_cut_to_64_characters_in_messages() -> None:
    name = "x-" + "n" * 62 + "TAIL"  # 68 characters
    missing = resigned(f"Date;x-request-nonce;{name}")
    too_long = resigned(f"Date;x-request-nonce;{name}", {name: "v" * 4097})
    unprintable = resigned(f"Date;x-request-nonce;{name}", {name: "caf\u00e9"})
    for headers, expected in (
        (missing, "missing_header"), (too_long, "malformed_header"),
        (unprintable, "malformed_header"),
    ):  # fmt: skip
        with pytest.raises(SignatureError) as caught:
            vidu.verify(SECRET, "POST", URL, headers, now=WHEN)
        assert caught.value.reason == expected
        assert name[:64] in caught.value.message and name[:65] not in caught.value.message


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize(
    "other", ["Mon, 05 May 2025 12:09:42 GMT", "Wed, 07 May 2025 12:09:42 GMT"]
)
def test_a_header_repeated_with_another_value_in_either_order_is_malformed(
    first: bool, other: str
) -> None:
    pairs = [(k, v) for k, v in example_headers().items() if k != "Date"]
    dates = [("Date", other), ("Date", DATE)]
    assert reason(pairs + (dates if first else dates[::-1])) == "malformed_header"
    name = "x-" + "n" * 62 + "TAIL"
    doubled = [*resigned(f"Date;x-request-nonce;{name}", {name: "a"}).items(), (name, "b")]
    with pytest.raises(SignatureError) as caught:
        vidu.verify(SECRET, "POST", URL, doubled, now=WHEN)
    assert name[:64] in caught.value.message and name[:65] not in caught.value.message


def test_a_signature_longer_than_an_hmac_is_malformed() -> None:
    long = base64.b64encode(bytes(64)).decode()
    assert reason(example_headers(x_hmac_signature=long)) == "malformed_header"
