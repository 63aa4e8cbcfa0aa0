"""Text logs: what comes from outside cannot forge a line, hide one, or reach the terminal raw.

Paths, callback bodies and exception messages are quoted in log lines; their control
characters (CR, LF, NUL, the rest of C0 and C1, DEL, the ANSI escape, U+2028/9) are written
as escapes. A traceback keeps its line breaks, each of its lines indented.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver import logs
from tests.conftest import VIDU_KEY, wait_for
from tests.test_logs import isolated_logging  # noqa: F401  (a fixture)
from tests.test_restart import ServiceProcess
from tests.vidu_signer import vidu_headers

FORGED = "2026-01-01T00:00:00.000Z ERROR vidhook: FORGED"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ \S+: ")
RAW_CONTROLS = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def raw_request(url: str, request_line: bytes) -> bytes:
    """A GET sent byte for byte, as an attacker would (no client tidies the path)."""
    authority = url.removeprefix("http://")
    host, port = authority.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        sock.sendall(request_line + head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def records(log: bytes) -> list[str]:
    """Each line that starts a record: a time, a level and a logger."""
    return [line for line in log.decode("utf-8").split("\n") if RECORD_START.match(line)]


@pytest.fixture
def process(sandbox, tmp_path):
    svc = ServiceProcess(tmp_path, sandbox.url, log_format="text")
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


@pytest.mark.slow
def test_a_path_cannot_forge_a_log_line_of_a_real_server(process):
    forged_path = b"/api/x%0a" + FORGED.replace(" ", "%20").encode()
    answer = raw_request(process.url, b"GET " + forged_path + b" HTTP/1.1")
    assert answer.startswith(b"HTTP/1.1 404")
    answer = raw_request(process.url, b"GET /api/nul%00here%1b[31mred%0d%c2%85%e2%80%a8 HTTP/1.1")
    assert answer.startswith(b"HTTP/1.1 404")
    process.kill()  # what is on disk now is all there will be

    log = process.log_path.read_bytes()
    assert RAW_CONTROLS.search(log) is None
    (forged,) = [line for line in log.decode().split("\n") if "FORGED" in line]
    assert re.match(
        r"^\S+Z INFO vidhook\.http: GET /api/x\\n2026-01-01T00:00:00\.000Z ERROR ", forged
    )
    assert not any(line.startswith("2026-01-01T00:00:00.000Z") for line in log.decode().split("\n"))
    (nul,) = [line for line in records(log) if "/api/nul" in line]
    assert "GET /api/nul\\x00here\\x1b[31mred\\r\\x85\\u2028 404" in nul


@pytest.mark.slow
def test_a_callback_body_cannot_forge_a_log_line(process):
    job = process.submit("A quiet harbour [lost]")
    ((url,),) = process.rows("SELECT callback_url FROM jobs WHERE id = ?", job["id"])
    body = json.dumps({"id": job["provider_job_id"], "state": f"odd\r\n{FORGED}\x00"})

    response = process.api.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))
    assert response.status_code == 200, response.text
    # The access line is written once the answer has gone: wait for it, then stop.
    wait_for(lambda: b"FORGED" in process.log_path.read_bytes(), what="the callback's line")
    process.kill()

    log = process.log_path.read_bytes()
    assert RAW_CONTROLS.search(log) is None
    (line,) = [line for line in log.decode().split("\n") if "FORGED" in line]
    assert RECORD_START.match(line) and f"odd\\r\\n{FORGED}\\x00 (accepted)" in line


@pytest.mark.usefixtures("isolated_logging")
def test_an_exception_message_from_outside_stays_inside_its_traceback():
    stream = io.StringIO()
    logs.configure("info", "text", [], stream=stream)
    try:
        raise RuntimeError(f"the provider said: no\n{FORGED}\r\x1b[2J")
    except RuntimeError:
        logging.getLogger("vidhook.poller").exception("poll of job %s failed", "job_1")

    lines = stream.getvalue().split("\n")
    assert len(records(stream.getvalue().encode())) == 1
    assert lines[0].endswith("ERROR vidhook.poller: poll of job job_1 failed")
    assert lines[1] == "  Traceback (most recent call last):"
    assert f"  {FORGED}\\r\\x1b[2J" in lines
    assert all(line.startswith("  ") for line in lines[1:-1]) and lines[-1] == ""


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_any_message_is_one_record_in_either_format(message: str, argument: str) -> None:
    text, json_out = io.StringIO(), io.StringIO()
    for fmt, stream in (("text", text), ("json", json_out)):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.TextFormatter() if fmt == "text" else logs.JsonFormatter())
        record = logging.LogRecord(
            "vidhook.t", logging.INFO, __file__, 1, "%s %s", (message, argument), None
        )
        handler.handle(record)
    (line,) = text.getvalue().removesuffix("\n").split("\n")
    assert not RAW_CONTROLS.search(line.encode("utf-8", "surrogatepass"))
    assert "\r" not in line and "\t" not in line
    (entry,) = json_out.getvalue().removesuffix("\n").split("\n")
    assert json.loads(entry)["message"] == f"{message} {argument}"
    assert not RAW_CONTROLS.search(entry.encode("utf-8", "surrogatepass"))
