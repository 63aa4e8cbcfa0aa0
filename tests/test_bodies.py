"""Request bodies in memory: one budget across all requests, and none read for a stranger.

A receiver with a small ``[server] max_body_memory``; bodies are sent on raw sockets so
that one can be left half-sent while another arrives.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import ADMIN_TOKEN, VIDU_KEY, running_service
from tests.vidu_signer import vidu_headers

BUDGET = 4096


@pytest.fixture
def service(sandbox, db_path):
    extra = {"server": {"max_body_memory": BUDGET}}
    with running_service(sandbox.url, db_path, extra=extra) as svc:
        yield svc


def lost_job(service):
    job = service.submit("A still pond [lost]")
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id=?", job["id"])
    return job, url


def signed_callback(job, url, size):
    """A valid processing callback for ``job``, its body padded to ``size`` bytes."""
    body = json.dumps({"id": job["provider_job_id"], "state": "processing", "pad": ""})
    body = body.replace('"pad": ""', '"pad": "' + "p" * (size - len(body)) + '"').encode()
    assert len(body) == size
    return vidu_headers(VIDU_KEY, url), body


def head(path, headers, length=None, port=0):
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append("Content-Type: application/json")
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(service):
    return socket.create_connection(("127.0.0.1", service.server.port), timeout=5)


def answer_of(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head_, _, rest = data.partition(b"\r\n\r\n")
    lines = head_.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(rest) < int(headers.get("content-length", 0)):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest


def path_of(url):
    return "/" + url.split("/", 3)[3]


def test_a_body_past_the_budget_is_503_with_retry_after_and_writes_nothing(service):
    job, url = lost_job(service)
    headers, body = signed_callback(job, url, BUDGET + 1)
    before = service.counts()

    response = service.http.post(url, content=body, headers=headers)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "busy"
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["connection"] == "close"
    assert service.counts() == before


def test_the_budget_is_shared_by_bodies_in_flight_and_given_back(service):
    first_job, first_url = lost_job(service)
    second_job, second_url = lost_job(service)
    size = BUDGET * 2 // 3  # one fits; two at once do not
    first_headers, first_body = signed_callback(first_job, first_url, size)
    second_headers, second_body = signed_callback(second_job, second_url, size)
    before = service.counts()

    with connect(service) as slow, connect(service) as fast:
        # The first declares its length and sends half: its whole length is held.
        slow.sendall(head(path_of(first_url), first_headers, len(first_body)))
        slow.sendall(first_body[: size // 2])
        time.sleep(0.3)
        fast.sendall(head(path_of(second_url), second_headers, len(second_body)) + second_body)
        status, headers, _ = answer_of(fast)
        assert (status, headers.get("retry-after") is not None) == (503, True)
        assert service.counts() == before

        slow.sendall(first_body[size // 2 :])
        assert answer_of(slow)[0] == 200

    # Given back: the second, sent again with a fresh signature, fits now.
    second_headers, second_body = signed_callback(second_job, second_url, size)
    response = service.http.post(second_url, content=second_body, headers=second_headers)
    assert response.status_code == 200, response.text


def test_a_chunked_body_is_counted_as_it_arrives(service):
    job, url = lost_job(service)
    headers, body = signed_callback(job, url, BUDGET + 100)
    before = service.counts()
    with connect(service) as sock:
        sock.sendall(head(path_of(url), headers))
        for start in range(0, len(body), 1000):
            piece = body[start : start + 1000]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, _, answered = answer_of(sock)
    assert status == 503, answered
    assert service.counts() == before


def test_an_api_request_past_the_budget_is_503(service):
    before = service.counts()
    response = service.http.post(
        "/api/jobs",
        content=json.dumps({"provider": "vidu", "prompt": "p" * BUDGET}),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "busy"
    assert "retry-after" in response.headers
    assert service.counts() == before


def test_an_unknown_token_is_404_before_a_byte_of_the_body_is_read(service):
    _job, url = lost_job(service)
    other = url[:-1] + ("A" if url[-1] != "A" else "B")
    before = service.counts()
    with connect(service) as sock:
        # A megabyte promised, none sent: the answer cannot wait for it.
        sock.sendall(head(path_of(other), vidu_headers(VIDU_KEY, other), 1024 * 1024))
        status, headers, body = answer_of(sock)
        assert status == 404
        assert json.loads(body)["error"]["code"] == "unknown_token"
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""  # and the connection ends there
    assert service.counts() == before
