"""Fuzzing what a stranger can reach: POST /callbacks/{provider}/{token}, POST /api/jobs, and
the signature checks of ``signing``.

For any input: never a 5xx and never an exception out of the app; a refused request commits
nothing (SQLite's ``data_version``, the row counts and the job's row are unchanged); an
accepted callback is stored as it was sent and never ends a job on its own.

The app runs in-process, called as ASGI by the small driver below rather than through an
HTTP client, so that headers reach it exactly as drawn (any bytes, any repeats, nothing
added) and bodies arrive in several chunks. Only the store is started: the poller and the
outbox write on their own schedule, which would blur "this request wrote nothing", and
they are not on the request path. Providers are answered by an httpx MockTransport, so
nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import secrets
import sqlite3
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from starlette.datastructures import Headers

from receiver.app import create_app
from receiver.providers import apimodels, kvid, newapi, revid
from receiver.providers import vidu as vidu_provider
from receiver.runtime import new_callback_token, new_job_id
from receiver.store import NewJob
from signing import SignatureError, standard, vidu
from tests.conftest import ADMIN_TOKEN, OLD_VIDU_KEY, VIDU_KEY, service_config
from tests.vidu_signer import vidu_headers

# The profile: a fixed number of examples per test, so that CI time is predictable, and no
# deadline, since a request waits for an fsync; the huge bodies are drawn on purpose.
settings.register_profile(
    "vidhook-fuzz",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("vidhook-fuzz")

PUBLIC_URL = "http://127.0.0.1:8000"  # only a name: requests are handed to the app in-process
HOST = (b"host", b"127.0.0.1:8000")
LIMIT = 1024 * 1024  # callbacks.max_body_bytes, the default
TABLES = ("jobs", "transitions", "callbacks", "nonces", "deliveries")
STATUSES = ("queued", "processing", "completed", "failed")
# Never stored with a callback: signatures and credentials.
UNSTORED = {"authorization", "proxy-authorization", "cookie", "x-hmac-signature", "x-api-key"}
SIGNATURE_NAMES = (
    "Date",
    "x-request-nonce",
    "X-HMAC-SIGNED-HEADERS",
    "X-HMAC-SIGNATURE",
    "X-HMAC-ALGORITHM",
    "X-HMAC-ACCESS-KEY",
)
REQUIRED = ("date", "x-request-nonce", "x-hmac-signed-headers", "x-hmac-signature")
OPTIONAL = ("x-hmac-algorithm", "x-hmac-access-key")
VIDU_STATES = ("created", "queueing", "processing", "success", "failed")
ACCEPT, REFUSE, REPLAY, UNKNOWN, TOO_LARGE = "accept", "refuse", "replay", "unknown", "too_large"


def strict_loads(text: str | bytes) -> Any:
    """JSON as any parser reads it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def is_2xx(status: int) -> bool:
    return 200 <= status < 300


# -- the app, in-process ---------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return strict_loads(self.body)


async def call_app(
    app: Any,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    query: bytes = b"",
) -> Answer:
    """One request as an ASGI server passes it: lower-cased names, the body in chunks."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii"),
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    answered = asyncio.Event()
    start: dict[str, Any] = {}
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await answered.wait()  # the client hangs up only once it has its answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    # An exception out of the app propagates from here: the test fails with its traceback.
    await app(scope, receive, send)
    assert start, "the app returned without answering"
    return Answer(int(start["status"]), b"".join(parts))


@dataclass(frozen=True)
class Job:
    id: str
    provider: str
    token: str
    url: str  # the callback URL as stored on the job, which the signature covers

    @property
    def path(self) -> str:
        return f"/callbacks/{self.provider}/{self.token}"


class Harness:
    """The app with its store open on one event loop, and a connection to look at its rows."""

    def __init__(self, app: Any, db_path: Path) -> None:
        self.app = app
        self.runtime = app.state.runtime
        self.loop = asyncio.new_event_loop()
        self.db_path = db_path
        self.db: sqlite3.Connection | None = None
        self.replayable_nonce = ""  # a nonce already accepted for another request

    def run(self, coro: Any) -> Any:
        # Bounded, so that a request that never answers fails the test instead of hanging CI.
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def open(self) -> None:
        self.run(asyncio.to_thread(self.runtime.store.open))
        self.db = sqlite3.connect(self.db_path, isolation_level=None)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
        self.run(self.runtime.client.aclose())
        self.run(asyncio.to_thread(self.runtime.store.close))
        self.loop.close()

    def rows(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        assert self.db is not None
        return self.db.execute(sql, params).fetchall()

    def new_job(self, provider: str = "vidu") -> Job:
        """A job as submit() stores it before the provider answers: queued, with its token."""
        config = self.runtime.config
        job_id, token = new_job_id(), new_callback_token()
        url = config.callback_url(provider, token)
        job = NewJob(
            id=job_id,
            provider=provider,
            model=None,
            prompt="fuzz",
            request={},
            callback_token=token,
            callback_url=url,
            key_fingerprint=config.providers[provider].api_key.fingerprint,
            notify=None,
        )
        self.run(self.runtime.store.insert_job(job))
        return Job(job_id, provider, token, url)

    def request(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        method: str = "POST",
        query: bytes = b"",
        chunks: int = 1,
        framing: bool = True,
    ) -> Answer:
        """``framing``: add Host and Content-Length, as a client and server would have them."""
        if framing:
            headers = [HOST, *headers, (b"content-length", str(len(body)).encode())]
        step = max(1, -(-len(body) // chunks))
        parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        return self.run(call_app(self.app, method, path, headers, parts, query))

    def snapshot(self, *job_ids: str) -> tuple[Any, ...]:
        """Everything a refused request must leave alone."""
        # data_version changes when any other connection commits, whatever it wrote.
        (version,) = self.rows("PRAGMA data_version")[0]
        jobs = tuple(tuple(self.rows("SELECT * FROM jobs WHERE id = ?", j)[0]) for j in job_ids)
        return version, self.counts(), jobs

    def counts(self) -> dict[str, int]:
        return {t: self.rows(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def provider_answer(request: httpx.Request) -> httpx.Response:
    # Every provider accepts every submission, in a shape each adapter reads: a refusal is a
    # 502 by design, and the admin test is about what vidhook does with the request.
    task = "fz-" + secrets.token_hex(6)
    fields = {"task_id": task, "job_id": task, "status": "pending"}
    return httpx.Response(
        200,
        json={**fields, "id": task, "state": "created", "success": True, "code": 200,
              "data": fields},
    )  # fmt: skip


@pytest.fixture(scope="module")
def vidhook(tmp_path_factory: pytest.TempPathFactory) -> Any:
    db_path = tmp_path_factory.mktemp("fuzz") / "vidhook.db"
    # One channel subscribed to every status: every transition must then have its delivery.
    extra = {
        "channels": {"log": {"type": "console", "events": list(STATUSES)}},
        "default_channels": ["log"],
    }
    config = service_config(PUBLIC_URL, "http://127.0.0.1:9", db_path, extra=extra)
    harness = Harness(create_app(config, transport=httpx.MockTransport(provider_answer)), db_path)
    harness.open()
    try:
        seed = harness.new_job()
        headers = vidu_headers(VIDU_KEY, seed.url)
        answer = harness.request(seed.path, encode(headers), processing_body(seed))
        assert answer.status == 200, answer.body
        harness.replayable_nonce = headers["x-request-nonce"]
        yield harness
    finally:
        harness.close()


@pytest.fixture(scope="module")
def decoy(vidhook: Harness) -> Job:
    """Another job, whose token a request may carry while it is signed for the job under test."""
    return vidhook.new_job()


# -- checks ----------------------------------------------------------------------------------


def encode(headers: dict[str, str] | list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def fresh_signature(job: Job) -> list[tuple[bytes, bytes]]:
    return encode(vidu_headers(VIDU_KEY, job.url))


def nonce_of(headers: list[tuple[bytes, bytes]]) -> str:
    return next(v for k, v in headers if k.lower() == b"x-request-nonce").decode("latin-1")


def processing_body(job: Job) -> bytes:
    return json.dumps({"id": f"task-{job.id}", "state": "processing", "credits": 4}).encode()


def assert_never_5xx(answer: Answer, *secret_values: str) -> None:
    assert answer.status < 500, (answer.status, answer.body[:500])
    if answer.status >= 400 and answer.body:
        err = answer.json()["error"]  # errors are JSON, in the one shape of the README
        assert isinstance(err["code"], str) and isinstance(err["message"], str)
    text = answer.body.decode("utf-8", "replace")
    for value in (VIDU_KEY, OLD_VIDU_KEY, ADMIN_TOKEN, *secret_values):
        assert len(value) < 12 or value not in text


def assert_stored(
    h: Harness, job: Job, before: dict[str, int], answer: Answer, body: bytes, nonce: str
) -> None:
    """What a 2xx callback leaves: its row as sent, and nothing that ends the job."""
    reply = answer.json()
    assert reply["ok"] is True
    after = h.counts()
    if reply["duplicate"]:  # a byte-identical retry: acknowledged, nothing new stored
        assert after == before
        return
    moved = after["transitions"] - before["transitions"]
    assert moved in (0, 1)
    assert after == {
        **before,
        "callbacks": before["callbacks"] + 1,
        "nonces": before["nonces"] + 1,
        "transitions": before["transitions"] + moved,
        "deliveries": before["deliveries"] + moved,  # the channel takes every status
    }
    row = h.rows("SELECT * FROM callbacks WHERE job_id = ? ORDER BY id DESC LIMIT 1", job.id)[0]
    assert (row["body"], row["provider"], row["nonce"]) == (
        body.decode("utf-8"),
        job.provider,
        nonce,
    )
    assert h.rows("SELECT 1 FROM nonces WHERE provider = ? AND nonce = ?", job.provider, nonce)
    assert not UNSTORED & {name.lower() for name in strict_loads(row["headers"])}
    assert job.token not in (row["received_url"] or "")
    assert row["outcome"] in ("applied", "confirming")
    job_row = h.rows("SELECT * FROM jobs WHERE id = ?", job.id)[0]
    assert job_row["last_callback_at"] is not None
    # Vidu signs no body, apimodels nothing at all: a callback alone never ends a job.
    assert job_row["status"] in ("queued", "processing")
    if row["outcome"] == "confirming":
        assert moved == 0
        assert job_row["confirm_callback_id"] == row["id"]
        assert job_row["next_poll_at"] is not None
    if moved:
        (transition,) = h.rows(
            "SELECT * FROM transitions WHERE job_id = ? ORDER BY id DESC LIMIT 1", job.id
        )
        assert (transition["source"], transition["to_status"]) == ("callback", job_row["status"])
        assert strict_loads(transition["detail"])["callback_id"] == row["id"]
        (delivery,) = h.rows("SELECT * FROM deliveries WHERE transition_id = ?", transition["id"])
        assert (delivery["channel"], delivery["event"]) == ("log", job_row["status"])


def assert_outcome(
    h: Harness,
    job: Job,
    expected: str,
    answer: Answer,
    snapshot: tuple[Any, ...],
    counts: dict[str, int],
    body: bytes,
    nonce: str,
    *also_unchanged: Job,
) -> None:
    assert_never_5xx(answer, job.token)
    # Shown only with --hypothesis-show-statistics: how often each answer was reached.
    if currently_in_test_context():  # also called from plain tests, outside hypothesis
        event(f"expected {expected}, answered {answer.status}")
    if expected == ACCEPT:
        assert answer.status == 200, answer.body[:300]
    elif expected == REFUSE:
        assert not is_2xx(answer.status), answer.body[:300]
    elif expected == REPLAY:
        assert answer.status == 409, answer.body[:300]
    elif expected == TOO_LARGE:
        assert answer.status == 413, answer.body[:300]
    if is_2xx(answer.status):
        assert_stored(h, job, counts, answer, body, nonce)
    else:
        assert h.snapshot(job.id, *(j.id for j in also_unchanged)) == snapshot


# -- strategies: headers ---------------------------------------------------------------------


def recased(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(
            c.upper() if u else c.lower() for c, u in zip(name, upper, strict=True)
        )
    )


SIGNIFICANT = (
    *SIGNATURE_NAMES,
    "Content-Type",
    "Content-Length",
    "Host",
    "Transfer-Encoding",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "Authorization",
    "Cookie",
    "X-Api-Key",
)
# Headers whose value may decide the answer; the others are at most stored.
DECISIVE = {
    n.lower().encode()
    for n in (*SIGNATURE_NAMES, "Content-Type", "Content-Length", "Host", "Transfer-Encoding")
}
# Any text as a server hands it over: its UTF-8 bytes, which the app reads as latin-1.
text_bytes = st.text().map(lambda s: s.encode("utf-8", "surrogatepass"))
header_names = st.one_of(
    st.sampled_from(SIGNIFICANT).flatmap(recased).map(str.encode),
    st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=30).map(str.encode),
    st.binary(min_size=1, max_size=30),  # non-printable, latin-1
    st.text(min_size=1).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
header_values = st.one_of(
    st.binary(max_size=300),
    text_bytes,
    st.text(string.printable, max_size=100).map(str.encode),
    st.integers(4000, 70_000).map(lambda n: b"A" * n),  # past every length limit
    st.sampled_from(
        [
            b"",
            b"application/json",
            b"text/plain",
            b"hmac-sha256",
            b"vidu",
            b"Date;x-request-nonce",
            b"Tue, 06 May 2025 12:09:42 GMT",
            base64.b64encode(bytes(32)),
            b"0",
            b"99999999999",
            b"\xb2",  # a digit to str.isdigit(), not to int()
            b"9" * 5000,  # more digits than int() converts
            b"chunked",
            b"https",
            b"::1, 203.0.113.9",
        ]
    ),
)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=12).flatmap(
    # Repeats of drawn headers, same value, are their own case.
    lambda pairs: (
        st.lists(st.sampled_from(pairs), max_size=3).map(lambda dup: pairs + dup)
        if pairs
        else st.just(pairs)
    )
)


def framed(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop the framing headers no HTTP server would pass to the app.

    h11 answers 400 itself to a Content-Length that is not ASCII digits (or too long for
    int()) and to any Transfer-Encoding but chunked, which it then removes from the body.
    """
    kept = []
    for name, value in pairs:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            continue
        if lowered == b"content-length" and not (
            value.isascii() and value.isdigit() and len(value) <= 4300
        ):
            continue
        kept.append((name, value))
    return kept


# -- strategies: bodies, each with what must happen to it -------------------------------------

# Numbers every JSON parser reads exactly; the others are among OUT_OF_RANGE.
safe_numbers = st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
safe_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
json_scalars = st.none() | st.booleans() | safe_numbers | safe_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(safe_text, inner, max_size=4),
    max_leaves=20,
)
# Raw tokens Python's json reads, another parser may refuse, and nothing stores as they are.
OUT_OF_RANGE = [
    "1e999",
    "-1e999",
    "1e-999",
    "1" + "0" * 400,
    "-" + "9" * 400,
    "123456789012345678901234567890",
    "18446744073709551616",
    '"\\ud800"',
    '"x\\udc00\\ud83d"',
    '"\\u0000"',
]
NOT_JSON = ["NaN", "Infinity", "-Infinity"]
MARK = "\x01fuzz-token\x01"  # placeholder in a dumped body for one raw token


def shaped(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A Vidu callback's shape, with any values in state, creations and credits."""
    creation = st.fixed_dictionaries(
        {}, optional={"url": values, "cover_url": values, "id": values}
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "id": values,
            "task_id": values,
            "state": st.sampled_from(VIDU_STATES) | values,
            "status": st.sampled_from(VIDU_STATES) | values,
            "err_code": values,
            "creations": st.lists(creation | values, max_size=3) | values,
            "credits": values,
            "payload": values,
        },
    )


def with_raw(shape: dict[str, Any], raw: str) -> bytes:
    return json.dumps(shape).replace(json.dumps(MARK), raw).encode()


def with_raw_token(verdict: str) -> Any:
    """A callback with the raw token in one field, at least, and maybe in others too."""
    return st.builds(
        lambda shape, name, raw: (with_raw({**shape, name: MARK}, raw), verdict),
        shaped(st.just(MARK) | json_values),
        st.sampled_from(["credits", "state", "id", "payload"]),
        st.sampled_from(OUT_OF_RANGE if verdict == UNKNOWN else NOT_JSON),
    )


def judge_bytes(body: bytes) -> str:
    """Arbitrary bytes: only a plain JSON object may be stored."""
    try:
        value = strict_loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return REFUSE
    return UNKNOWN if isinstance(value, dict) else REFUSE


def nested(depth: int, kind: str) -> bytes:
    inner = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    return ('{"state":"processing","deep":' + inner + "}").encode()


def spliced(value: dict[str, Any], at: int, bad: bytes) -> bytes:
    """An object's UTF-8 text with a byte sequence that is not UTF-8 put inside it."""
    text = json.dumps(value, ensure_ascii=False).encode()
    at = min(at, len(text) - 1)
    return text[:at] + bad + text[at:]


INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf5\x80\x80\x80", b"\xe2\x82"]

bodies: st.SearchStrategy[tuple[bytes, str]] = st.one_of(
    shaped(json_values).map(lambda v: (json.dumps(v).encode(), ACCEPT)),
    (json_scalars | st.lists(json_values, max_size=4)).map(
        lambda v: (json.dumps(v).encode(), REFUSE)  # JSON, but not an object
    ),
    with_raw_token(UNKNOWN),
    with_raw_token(REFUSE),
    st.binary(max_size=200).map(lambda b: (b, judge_bytes(b))),
    st.builds(spliced, shaped(json_values), st.integers(0, 60), st.sampled_from(INVALID_UTF8)).map(
        lambda b: (b, REFUSE)
    ),
    st.builds(nested, st.sampled_from([1, 10, 100, 400]), st.sampled_from(["list", "dict"])).map(
        lambda b: (b, ACCEPT)
    ),
    # A parser may refuse nesting this deep, or not; it must not fail on it.
    st.builds(
        nested, st.sampled_from([900, 1000, 1100, 5000, 100_000]), st.sampled_from(["list", "dict"])
    ).map(lambda b: (b, UNKNOWN)),
    st.sampled_from([10, 1000, 100_000]).map(
        lambda n: (json.dumps({"state": "processing", "text": "\u00e9" * n}).encode(), ACCEPT)
    ),
    # Sizes at the limit: what the body holds does not matter, only its length.
    st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1, 3 * LIMIT]).map(
        lambda n: (b'{"s":"' + b"a" * (n - 8) + b'"}', ACCEPT if n <= LIMIT else TOO_LARGE)
    ),
)


# -- the callback endpoint: signed Vidu callbacks, mutated ---------------------------------

CONTENT_TYPES = {
    "application/json": True,
    "application/json; charset=utf-8": True,
    "Application/JSON": True,
    "application/vnd.api+json": True,
    "text/plain": False,
    "text/json": False,
    "application/jsonp": False,
    "application/x-www-form-urlencoded": False,
    "multipart/form-data; boundary=x": False,
    "": False,
}


@dataclass
class Attempt:
    """A request made from a valid signed one, and what must happen to it."""

    job: Job
    signed: dict[str, str]  # lower-cased names -> the values as signed
    headers: list[tuple[str, str]]
    path: str
    method: str = "POST"
    query: bytes = b""
    verdicts: list[str] = field(default_factory=list)

    def occurrences(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def expected(self) -> str:
        verdicts = [*self.verdicts, self.signature_verdict(), self.content_type_verdict()]
        return next((v for v in (REFUSE, UNKNOWN, REPLAY) if v in verdicts), ACCEPT)

    def signature_verdict(self) -> str:
        for name in REQUIRED:
            # The HMAC covers Date and the nonce, the other two carry it: any change breaks it.
            if set(self.occurrences(name)) != {self.signed[name]}:
                return REFUSE
        for name in OPTIONAL:
            if not set(self.occurrences(name)) <= {self.signed[name]}:
                return UNKNOWN  # other accepted spellings exist ("HMAC-SHA256", "")
        return ACCEPT

    def content_type_verdict(self) -> str:
        found = self.occurrences("content-type")
        if not found:
            return REFUSE
        ok = CONTENT_TYPES.get(found[0])  # Starlette reads the first
        return UNKNOWN if ok is None else ACCEPT if ok else REFUSE


def corrupt(data: st.DataObject, name: str, value: str) -> str:
    """Another value for a header (never the same one with only blanks around it)."""
    if name == "content-type":
        return data.draw(st.sampled_from(sorted(CONTENT_TYPES)))
    options = [
        st.just(value[:-1] + ("B" if value[-1:] == "A" else "A")),
        st.text(st.characters(max_codepoint=255), max_size=60),
        st.just(""),
        st.just(value.swapcase()),
        st.just("A" * 5000),
    ]
    if name == "date":  # another well-formed Date, no longer the signed one
        moved = st.integers(-400, 400).map(lambda s: datetime.now(UTC) + timedelta(seconds=s))
        options.append(moved.map(lambda when: format_datetime(when, usegmt=True)))
    elif name == "x-hmac-signature":
        options.append(
            st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
        )
    elif name == "x-request-nonce":
        options.append(st.uuids().map(str))
    new = data.draw(st.one_of(options))
    assume(new.strip(" \t") != value)
    return new


# repeat, recase and move keep a request valid; drop, repeat_other and corrupt break it when
# they touch Date, the nonce, the signed list, the signature or the content type.
HEADER_OPS = ("drop", "repeat", "repeat_other", "recase", "corrupt", "move")


def mutate_headers(data: st.DataObject, attempt: Attempt) -> None:
    ops = st.tuples(
        st.sampled_from(HEADER_OPS), st.sampled_from([*SIGNATURE_NAMES, "Content-Type"])
    )
    for op, name in data.draw(st.lists(ops, max_size=3)):
        lowered = name.lower()
        at = [i for i, (k, _) in enumerate(attempt.headers) if k.lower() == lowered]
        if not at:
            continue
        i = data.draw(st.sampled_from(at))
        key, value = attempt.headers[i]
        where = data.draw(st.integers(0, len(attempt.headers)))
        if op == "drop":
            attempt.headers = [(k, v) for k, v in attempt.headers if k.lower() != lowered]
        elif op == "repeat":
            attempt.headers.insert(where, (key, value))
        elif op == "repeat_other":
            attempt.headers.insert(where, (key, corrupt(data, lowered, value)))
        elif op == "recase":
            attempt.headers[i] = (data.draw(recased(key)), value)
        elif op == "corrupt":
            attempt.headers[i] = (key, corrupt(data, lowered, value))
        else:
            attempt.headers.insert(where, attempt.headers.pop(i))


# Weighted towards a correct signature, so that the changes that keep one are tried as often.
SIGNING_VARIANTS = (
    "plain", "plain", "plain", "plain", "shifted", "shifted", "other_query", "other_path",
    "other_method", "old_key", "other_secret", "replayed_nonce",
)  # fmt: skip


def base_attempt(data: st.DataObject, h: Harness) -> Attempt:
    """A signed request for a fresh job; maybe signed at another time, or for something else."""
    job = h.new_job()
    variant = data.draw(st.sampled_from(SIGNING_VARIANTS))
    url, key, method, when, nonce, verdict = job.url, VIDU_KEY, "POST", None, None, ACCEPT
    if variant == "shifted":
        shift = data.draw(st.integers(-1000, 1000))
        when = datetime.now(UTC) + timedelta(seconds=shift)
        # A Date has whole seconds and the clock moves on: a margin either side of 300 s.
        verdict = ACCEPT if abs(shift) <= 290 else REFUSE if abs(shift) >= 310 else UNKNOWN
    elif variant == "other_query":
        url, verdict = url + data.draw(st.sampled_from(["?a=1", "?attempt=2"])), REFUSE
    elif variant == "other_path":
        # Never the decoy's URL: sent to the decoy's path, that would be a valid callback.
        other = url.rsplit("/", 1)[0] + "/" + new_callback_token()
        url, verdict = data.draw(st.sampled_from([url + "x", url + "/", other])), REFUSE
    elif variant == "other_method":
        method, verdict = data.draw(st.sampled_from(["GET", "PUT"])), REFUSE
    elif variant in ("old_key", "other_secret"):
        # The old key is configured, but this job was created with the current one.
        key = OLD_VIDU_KEY if variant == "old_key" else "not-the-vidu-key-0000"
        verdict = REFUSE
    elif variant == "replayed_nonce":
        nonce, verdict = h.replayable_nonce, REPLAY
    headers = vidu_headers(key, url, when=when, nonce=nonce, method=method)
    return Attempt(
        job=job,
        signed={k.lower(): v for k, v in headers.items()},
        headers=list(headers.items()),
        path=job.path,
        verdicts=[verdict],
    )


TARGET_CHANGES = (
    "none", "none", "none", "none", "query", "query", "token", "decoy_token", "provider", "slash",
    "method",
)  # fmt: skip


def mutate_target(data: st.DataObject, attempt: Attempt, decoy: Job) -> None:
    change = data.draw(st.sampled_from(TARGET_CHANGES))
    job = attempt.job
    if change == "query":
        # The signature covers the URL stored on the job, whatever the request adds (README).
        attempt.query = data.draw(st.sampled_from([b"a=1", b"x=%ff&y", b"t=" + job.token.encode()]))
        return
    if change == "none":
        return
    attempt.verdicts.append(REFUSE)
    if change == "token":
        alphabet = st.characters(exclude_categories=["Cs"], exclude_characters="/")
        token = data.draw(st.text(alphabet, min_size=1, max_size=40))
        assume(token != job.token)
        attempt.path = f"/callbacks/vidu/{token}"
    elif change == "decoy_token":
        attempt.path = decoy.path
    elif change == "provider":
        provider = data.draw(st.sampled_from(["VIDU", "kvid", "apimodels", "nope", ""]))
        attempt.path = f"/callbacks/{provider}/{job.token}"
    elif change == "slash":
        attempt.path = job.path + "/"
    else:
        attempt.method = data.draw(st.sampled_from(["GET", "PUT", "PATCH", "DELETE"]))


@FUZZ
@given(st.data())
def test_mutated_signed_vidu_callbacks(vidhook: Harness, decoy: Job, data: st.DataObject) -> None:
    attempt = base_attempt(data, vidhook)
    mutate_headers(data, attempt)
    mutate_target(data, attempt, decoy)
    body = processing_body(attempt.job)
    snapshot, counts = vidhook.snapshot(attempt.job.id, decoy.id), vidhook.counts()

    answer = vidhook.request(
        attempt.path,
        encode(attempt.headers),
        body,
        method=attempt.method,
        query=attempt.query,
        chunks=data.draw(st.integers(1, 3)),
    )

    nonce = (attempt.occurrences("x-request-nonce") or [""])[0]
    expected = attempt.expected()
    assert_outcome(vidhook, attempt.job, expected, answer, snapshot, counts, body, nonce, decoy)
    signature = attempt.signed["x-hmac-signature"]
    assert signature not in answer.body.decode("utf-8", "replace")


@FUZZ
@given(bodies, st.integers(1, 4))
# Found by this test: float() of a 401-digit int raised OverflowError (a 500), and 1e999
# was stored as an infinite credits value that GET /api/jobs/{id} wrote out as Infinity.
@example((b'{"state":"processing","credits":1' + b"0" * 400 + b"}", UNKNOWN), 1)
@example((b'{"state":"processing","credits":1e999}', UNKNOWN), 1)
def test_any_body_with_a_valid_vidu_signature(
    vidhook: Harness, case: tuple[bytes, str], chunks: int
) -> None:
    body, expected = case
    job = vidhook.new_job()
    headers = fresh_signature(job)
    snapshot, counts = vidhook.snapshot(job.id), vidhook.counts()

    answer = vidhook.request(job.path, headers, body, chunks=chunks)

    if expected == REFUSE:
        assert answer.status == 400, answer.body[:300]  # README: not a JSON object
    assert_outcome(vidhook, job, expected, answer, snapshot, counts, body, nonce_of(headers))
    if is_2xx(answer.status):
        (credits,) = vidhook.rows("SELECT credits FROM jobs WHERE id = ?", job.id)[0]
        assert credits is None or math.isfinite(credits)
        # What the API shows of the job must be JSON, whatever the callback held.
        admin = [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]
        shown = vidhook.request(f"/api/jobs/{job.id}", admin, method="GET")
        assert shown.status == 200
        assert shown.json()["id"] == job.id


@FUZZ
@given(header_lists, st.sampled_from(["none", "before", "after", "shuffled"]), st.data())
def test_arbitrary_headers(
    vidhook: Harness, extra: list[tuple[bytes, bytes]], signature: str, data: st.DataObject
) -> None:
    job = vidhook.new_job()
    body = data.draw(st.sampled_from([processing_body(job), b"{}", b"", b"\x00\xff"]))
    unsigned = [HOST, (b"content-type", b"application/json")]
    base = [HOST, *fresh_signature(job)] if signature != "none" else unsigned
    pairs = extra + base if signature == "before" else base + extra
    if signature == "shuffled":
        pairs = data.draw(st.permutations(pairs))
    headers = framed(pairs)
    if not any(name.lower() == b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(body)).encode()))
    snapshot, counts = vidhook.snapshot(job.id), vidhook.counts()

    answer = vidhook.request(job.path, headers, body, framing=False)

    # Without the signer's headers nothing can verify: no HMAC is drawn at random.
    expected = REFUSE if signature == "none" else UNKNOWN
    nonce = nonce_of(base) if signature != "none" else ""
    assert_outcome(vidhook, job, expected, answer, snapshot, counts, body, nonce)


@FUZZ
@given(header_lists, st.booleans())
def test_headers_that_decide_nothing_change_nothing(
    vidhook: Harness, extra: list[tuple[bytes, bytes]], first: bool
) -> None:
    extra = [(n, v) for n, v in extra if n.lower() not in DECISIVE]
    job = vidhook.new_job()
    body = processing_body(job)
    base = [HOST, *fresh_signature(job), (b"content-length", str(len(body)).encode())]
    headers = extra + base if first else base + extra
    snapshot, counts = vidhook.snapshot(job.id), vidhook.counts()

    answer = vidhook.request(job.path, headers, body, framing=False)

    # Credentials, forwarding headers and junk: stored or not, never a reason to refuse.
    assert_outcome(vidhook, job, ACCEPT, answer, snapshot, counts, body, nonce_of(base))


# str.isdigit() takes "\xb2" (superscript two, as latin-1) and int() refuses it; a
# 5000-digit value is past int()'s limit. h11 answers 400 before the app sees either, but
# another ASGI server might not.
@pytest.mark.parametrize("declared", [b"\xb2", b"9" * 5000], ids=["superscript-two", "5000-digits"])
def test_a_content_length_that_is_not_a_number_is_not_a_5xx(
    vidhook: Harness, declared: bytes
) -> None:
    job = vidhook.new_job()
    body = processing_body(job)
    headers = [HOST, *fresh_signature(job), (b"content-length", declared)]
    snapshot, counts = vidhook.snapshot(job.id), vidhook.counts()

    answer = vidhook.request(job.path, headers, body, framing=False)

    assert_outcome(vidhook, job, UNKNOWN, answer, snapshot, counts, body, nonce_of(headers))


# -- the callback endpoint: apimodels, unsigned ------------------------------------------------

APIMODELS_TYPES = {
    "application/json": True,
    "application/cloudevents+json": True,
    "text/plain": False,
}


@FUZZ
@given(bodies, st.sampled_from(sorted(APIMODELS_TYPES)), st.integers(1, 3))
# Found by this test: credits of 400 digits raised OverflowError in float(), a 500 that
# needed no signature at all, only the job's callback URL.
@example((b'{"data":{"status":"processing","credits":' + b"9" * 400 + b"}}", UNKNOWN),
         "application/json", 1)  # fmt: skip
def test_any_unsigned_apimodels_callback(
    vidhook: Harness, case: tuple[bytes, str], content_type: str, chunks: int
) -> None:
    body, expected = case
    if not APIMODELS_TYPES[content_type]:
        expected = REFUSE  # 415, before the body is read, so before its size is known
    job = vidhook.new_job("apimodels")
    snapshot, counts = vidhook.snapshot(job.id), vidhook.counts()

    answer = vidhook.request(
        job.path, [(b"content-type", content_type.encode())], body, chunks=chunks
    )

    # Unsigned: the job and the body's digest are the nonce, and any JSON object is taken
    # (to prompt a poll).
    nonce = f"sha256:{job.id}:{hashlib.sha256(body).hexdigest()}"
    assert_outcome(vidhook, job, expected, answer, snapshot, counts, body, nonce)


# -- the admin API: POST /api/jobs -----------------------------------------------------------

PROVIDERS = ["vidu", "apimodels", "kvid", "revid", "newapi"]
CALLBACK_PROVIDERS = {"vidu", "apimodels"}
any_value = json_values | st.sampled_from([None, "", "x" * 3000])
submissions = st.fixed_dictionaries(
    {},
    optional={
        "provider": st.sampled_from(PROVIDERS) | any_value,
        "prompt": safe_text | any_value,
        "model": st.sampled_from(["viduq1", "kling-v1", "kling-motion-control"]) | any_value,
        "images": st.lists(
            st.sampled_from(["https://img.test/a.png", "data:image/png;base64,iVBORw0KGgo=", ""])
            | safe_text,
            max_size=8,
        )
        | any_value,
        "mode": st.sampled_from(["text2video", "img2video", "t2v", "i2v", "720p"]) | any_value,
        "options": st.dictionaries(safe_text, json_values, max_size=4) | any_value,
        "notify": st.lists(st.sampled_from(["log", "nope"]) | safe_text, max_size=3) | any_value,
    },
).flatmap(
    # A field vidhook does not know is refused by name.
    lambda d: st.just(d) | st.builds(lambda name: {**d, name: 1}, safe_text)
)


prompts = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300)
well_formed = st.builds(
    lambda provider, prompt, notify, options: {
        "provider": provider,
        "prompt": prompt.strip() or "a prompt",
        **notify,
        "options": options,
    },
    st.sampled_from(PROVIDERS),
    prompts,
    st.sampled_from([{}, {"notify": None}, {"notify": []}, {"notify": ["log"]},
                     {"notify": ["log", "log"]}]),
    st.dictionaries(st.sampled_from(["seed", "note", "x_tag"]), json_scalars, max_size=2),
)  # fmt: skip
# One field of a well-formed submission changed to anything, or removed.
changed = st.builds(
    lambda d, name, value: {k: v for k, v in {**d, name: value}.items() if v is not MARK},
    well_formed,
    st.sampled_from(["provider", "prompt", "model", "images", "mode", "options", "notify", "x"]),
    any_value | st.just(MARK),
)


def with_raw_option(submission: dict[str, Any], raw: str) -> bytes:
    return with_raw({**submission, "options": {"seed": MARK}}, raw)


admin_bodies = st.one_of(
    well_formed.map(lambda d: json.dumps(d).encode()),
    changed.map(lambda d: json.dumps(d).encode()),
    submissions.map(lambda d: json.dumps(d).encode()),
    st.builds(with_raw_option, well_formed, st.sampled_from(OUT_OF_RANGE + NOT_JSON)),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([900, 5000, 100_000]).map(lambda n: b"[" * n + b"]" * n),
)
AUTHORIZATIONS = {
    "good": f"Bearer {ADMIN_TOKEN}",
    "lower": f"bearer {ADMIN_TOKEN}",
    "wrong": "Bearer not-the-token",
    "basic": f"Basic {ADMIN_TOKEN}",
    "none": None,
}
ADMIN_TYPES = {"application/json": True, "application/json; charset=utf-8": True,
               "text/plain": False, None: False}  # fmt: skip


@FUZZ
@given(
    admin_bodies,
    # Weighted towards requests that get past the token and the content type.
    st.sampled_from(["good"] * 6 + ["lower", "wrong", "basic", "none"]),
    st.sampled_from([*["application/json"] * 3, *ADMIN_TYPES]),
)
# Found by this test: options of 1e999 were stored as Infinity, which the 201 answer and
# every later GET then wrote out: not JSON.
@example(b'{"provider":"vidu","prompt":"p","options":{"seed":1e999}}', "good", "application/json")
# Found by this test: the same channel named twice broke the deliveries' unique index.
@example(b'{"provider":"vidu","prompt":"p","notify":["log","log"]}', "good", "application/json")
def test_admin_create_job(
    vidhook: Harness, body: bytes, auth: str, content_type: str | None
) -> None:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    if AUTHORIZATIONS[auth] is not None:
        headers.append((b"authorization", str(AUTHORIZATIONS[auth]).encode()))
    snapshot, counts = vidhook.snapshot(), vidhook.counts()

    answer = vidhook.request("/api/jobs", headers, body, chunks=2)

    assert_never_5xx(answer)
    event(f"answered {answer.status}")
    reply = answer.json()  # every answer is JSON, with no NaN or Infinity in it
    if auth not in ("good", "lower"):
        assert answer.status == 401
    elif not ADMIN_TYPES[content_type]:
        assert answer.status == 415
    if answer.status != 201:
        assert 400 <= answer.status < 500, answer.body[:300]
        assert vidhook.snapshot() == snapshot
        return
    sent = strict_loads(body)
    (row,) = vidhook.rows("SELECT * FROM jobs WHERE id = ?", reply["id"])
    assert vidhook.counts()["jobs"] == counts["jobs"] + 1
    assert row["provider"] == sent["provider"] == reply["provider"]
    default_model = vidhook.runtime.config.providers[sent["provider"]].default_model
    assert (row["prompt"], row["model"]) == (sent.get("prompt"), sent.get("model") or default_model)
    assert row["status"] == "queued" and row["provider_job_id"].startswith("fz-")
    assert (row["callback_url"] is not None) == (sent["provider"] in CALLBACK_PROVIDERS)
    assert strict_loads(row["request"])["options"] == sent.get("options", {})
    transitions = vidhook.rows("SELECT * FROM transitions WHERE job_id = ?", reply["id"])
    assert [t["to_status"] for t in transitions] == ["queued"]
    deliveries = vidhook.rows("SELECT * FROM deliveries WHERE job_id = ?", reply["id"])
    subscribed = sent.get("notify") is None or "log" in sent["notify"]
    assert [d["channel"] for d in deliveries] == (["log"] if subscribed else [])


# -- numbers and cursors in the admin API's query strings and paths ---------------------------

# Numbers of every size: int() refuses over 4,300 digits and SQLite over 2**63 - 1.
digit_strings = st.one_of(
    st.integers(0, 2**70).map(str),
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.integers(0, 30).map(lambda n: "0" * n + "7"),
    st.text(string.digits + "²٣-+ ._e", max_size=30),
)
query_values = st.one_of(digit_strings, st.text(max_size=40), st.just(new_job_id()))
query_names = st.sampled_from(["limit", "cursor", "status", "provider", "other"])
queries = st.lists(st.tuples(query_names, query_values), max_size=4)


@FUZZ
@given(st.sampled_from(["/api/jobs", "/api/deliveries"]), queries)
@example("/api/deliveries", [("cursor", str(2**63))])
@example("/api/jobs", [("limit", "1" * 4301)])
def test_admin_lists_take_any_query(
    vidhook: Harness, path: str, query: list[tuple[str, str]]
) -> None:
    headers = [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    encoded = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query).encode()
    snapshot = vidhook.snapshot()

    answer = vidhook.request(path, headers, method="GET", query=encoded)

    assert_never_5xx(answer)
    assert answer.status in (200, 422), answer.body[:300]
    event(f"answered {answer.status}")
    answer.json()
    assert vidhook.snapshot() == snapshot


@FUZZ
@given(st.one_of(digit_strings.filter(bool), st.text(string.printable, min_size=1, max_size=30)))
@example(str(2**63))
@example("9" * 4301)
def test_retrying_any_delivery_id_is_never_a_5xx(vidhook: Harness, delivery_id: str) -> None:
    headers = [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    snapshot = vidhook.snapshot()

    answer = vidhook.request(f"/api/deliveries/{delivery_id}/retry", headers)

    assert_never_5xx(answer)
    event(f"answered {answer.status}")
    # 404: no such delivery, or a number no row could have; 409: one that exists is still
    # pending (the outbox is not running here); 405: a "/" took the path to another route.
    assert answer.status in (404, 405, 409), answer.body[:300]
    digits = delivery_id.lstrip("0") if delivery_id.isascii() and delivery_id.isdigit() else ""
    if len(digits) > 19 or (digits and int(digits) >= 2**63):  # no row can have such an id
        assert answer.status == 404
    assert vidhook.snapshot() == snapshot


# -- status answers from providers, parsed ------------------------------------------------------

# Each adapter's parser of a status answer (the same shape as a callback, for Vidu).
STATUS_PARSERS = {
    "vidu": vidu_provider.observation,
    "apimodels": apimodels.observation,
    "kvid": kvid.observation,
    "revid": revid.observation,
    "newapi": newapi.observation,
}
AMOUNTS = ("credits", "cost", "used_credit", "quota")  # where each adapter reads a number


@FUZZ
@given(
    st.sampled_from(sorted(STATUS_PARSERS)),
    shaped(json_values),
    st.sampled_from(AMOUNTS),
    st.sampled_from([*OUT_OF_RANGE, *NOT_JSON, "1e308", "-0.0", "12", "true", '"12"']),
    st.booleans(),
)
# Found by the callback tests: float() of a 401-digit int raised OverflowError in the Vidu
# and apimodels adapters; new-api's quota had the same float() on the poll path.
@example("newapi", {"status": "SUCCESS"}, "quota", "9" * 400, True)
def test_status_parsers_take_any_number(
    provider: str, shape: dict[str, Any], name: str, raw: str, enveloped: bool
) -> None:
    # Parsed as httpx's response.json() does: Python's json, which reads NaN and 1e999.
    body = json.loads(with_raw({**shape, name: MARK}, raw))
    seen = STATUS_PARSERS[provider]({"code": 200, "data": body} if enveloped else body)
    assert seen.credits is None or math.isfinite(seen.credits)
    assert not isinstance(seen.credits, bool)


# -- signing, called directly ----------------------------------------------------------------

URL = "https://hooks.example.com/callbacks/vidu/tok"
any_text = st.text()  # lone surrogates included: a broken client or a bad decode sends them
vidu_pairs = st.lists(
    st.tuples(
        st.sampled_from(SIGNATURE_NAMES).flatmap(recased) | any_text,
        any_text | st.sampled_from(["", "hmac-sha256", "vidu", "Date;x-request-nonce", "A" * 5000]),
    ),
    max_size=10,
)


def as_latin1(value: str) -> str:
    return value.encode("utf-8", "surrogatepass").decode("latin-1")


def independent_vidu_hmac(method: str, url: str, table: dict[str, str]) -> bytes:
    """The HMAC of the scheme in signing/vidu.py's docstring, written again here."""
    parts = urlsplit(url)
    names = table["x-hmac-signed-headers"].split(";")
    lines = [method.upper(), parts.path or "/", parts.query, "vidu", table["date"]]
    text = "\n".join(lines + [f"{n}:{table[n.lower()]}" for n in names]) + "\n"
    return hmac.new(VIDU_KEY.encode(), text.encode(), hashlib.sha256).digest()


@FUZZ
@given(
    vidu_pairs,
    # Hypothesis favours the first of a list: the signed headers, unchanged.
    st.sampled_from(["only", "after", "before", "none"]),
    st.sampled_from(["pairs", "dict", "starlette"]),
    # Mostly what was signed, so that the junk around a good signature is tried often.
    st.sampled_from(["POST", "post", "POST", "GET"]) | any_text,
    st.sampled_from([URL, URL, URL + "?a=1"]) | any_text,
    st.sampled_from([0, 0, 0, 299, -299, 400, -400]),
)
def test_vidu_verify_only_raises_signature_error(
    junk: list[tuple[str, str]], signed_at: str, kind: str, method: str, url: str, age: int
) -> None:
    when = datetime.now(UTC) - timedelta(seconds=age)
    good = list(vidu.sign(VIDU_KEY, "POST", URL, date=when).items())
    pairs = {"none": junk, "before": junk + good, "after": good + junk, "only": good}[signed_at]
    given_headers: Any = pairs
    if kind == "dict":
        given_headers = dict(pairs)
        pairs = list(given_headers.items())
    elif kind == "starlette":
        # What a server hands over: the text's UTF-8 bytes, which Starlette reads as latin-1.
        raw = [(k.lower(), v) for k, v in pairs]
        pairs = [(as_latin1(k), as_latin1(v)) for k, v in raw]
        given_headers = Headers(raw=encode(pairs))
    try:
        result = vidu.verify(VIDU_KEY, method, url, given_headers)
    except SignatureError as error:
        event(f"refused: {error.reason}")
        assert VIDU_KEY not in error.message
        return
    event("verified")
    # Whatever verifies carries the right HMAC over the values it holds.
    table = {k.lower(): v for k, v in pairs}
    received = base64.b64decode(table["x-hmac-signature"])
    assert hmac.compare_digest(received, independent_vidu_hmac(method, url, table))
    assert result.nonce == table["x-request-nonce"]


WHSEC = standard.new_secret()
WHSK, WHPK = standard.new_signing_key()
junk_values = any_text | st.binary(max_size=20) | st.integers() | st.none() | st.lists(any_text)
standard_names = st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"])


@FUZZ
@given(
    st.lists(st.tuples(standard_names.flatmap(recased) | any_text | st.integers(), junk_values),
             max_size=6),
    st.sampled_from(["only", "after", "before", "none"]),
    st.sampled_from([WHSEC, WHSK]),
    st.sampled_from([WHSEC, WHSK, WHPK, (WHSEC, WHPK)]),
    st.just(b'{"type":"job.completed"}') | st.binary(max_size=100) | any_text,
)  # fmt: skip
def test_standard_verify_only_raises_signature_error(
    junk: list[tuple[Any, Any]], signed_at: str, signer: str, secret: Any, body: bytes | str
) -> None:
    good = list(standard.sign_headers(signer, "msg_1", b'{"type":"job.completed"}').items())
    pairs = {"none": junk, "before": junk + good, "after": good + junk, "only": good}[signed_at]
    try:
        result = standard.verify(secret, pairs, body)
    except SignatureError as error:
        event(f"refused: {error.reason}")
        return
    event("verified")
    # Whatever verifies was signed by one of the keys over exactly this body.
    content = f"{result.id}.{result.timestamp}.".encode()
    content += body.encode() if isinstance(body, str) else body
    listed = [v for k, v in pairs if isinstance(k, str) and k.lower() == "webhook-signature"]
    keys = secret if isinstance(secret, tuple) else (secret,)
    assert any(signed_by(key, entry, content) for key in keys for entry in listed[0].split())


def signed_by(secret: str, entry: str, content: bytes) -> bool:
    version, _, value = entry.partition(",")
    if version == "v1" and secret.startswith("whsec_"):
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = hmac.new(key, content, hashlib.sha256).digest()
        return hmac.compare_digest(expected, base64.b64decode(value))
    if version == "v1a" and secret in (WHSK, WHPK):
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(WHPK.removeprefix("whpk_")))
        try:
            public.verify(base64.b64decode(value), content)
        except InvalidSignature:
            return False
        return True
    return False
