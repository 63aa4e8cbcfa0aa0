import asyncio
import json

import httpx
import pytest

import signing
from receiver.config import ProviderConfig, Secret
from receiver.providers.base import (
    CancelUnsupported,
    InvalidRequest,
    JobRef,
    ProviderError,
    SubmitRequest,
)
from receiver.providers.minimax import (
    FAILED_WITHOUT_REASON,
    PERMANENT_CODES,
    TRANSIENT_CODES,
    MiniMax,
)
from receiver.states import Status

KEY = Secret("minimax-unit-key")
BASE = "https://minimax.test"
CALLBACK = "https://hooks.example/callbacks/minimax/t0k"
TASK = "106916112212032"
FILE = "205258526306433"
OK = {"status_code": 0, "status_msg": "success"}


def make(handler, base_url=BASE, default_model="MiniMax-Hailuo-02", **config):
    config = ProviderConfig(
        name="minimax",
        type="minimax",
        base_url=base_url,
        api_key=KEY,
        default_model=default_model,
        **config,
    )
    return MiniMax(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def failure(code, message="nope"):
    return {"base_resp": {"status_code": code, "status_msg": message}}


def created(seen):
    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"task_id": TASK, "base_resp": OK})

    return handler


def answering(status, body=None, headers=None):
    def handler(request):
        return httpx.Response(status, json=body, headers=headers)

    return handler


def report(status, **fields):
    return {"task_id": TASK, "status": status, "file_id": "", "base_resp": OK, **fields}


def file_answer(**file):
    return {"file": {"file_id": int(FILE), "purpose": "video_generation", **file}, "base_resp": OK}


def routes(query, retrieve=None, seen=None):
    """A MiniMax whose query answers ``query`` and whose files/retrieve ``retrieve``."""

    def handler(request):
        if seen is not None:
            seen.append(request)
        if request.url.path.endswith("/query/video_generation"):
            return httpx.Response(200, json=query)
        if request.url.path.endswith("/files/retrieve") and retrieve is not None:
            return httpx.Response(200, json=retrieve)
        return httpx.Response(404)

    return handler


def submit(provider, request, callback_url=None):
    return asyncio.run(provider.submit(request, callback_url))


def fetch(provider, task_id=TASK):
    return asyncio.run(provider.fetch(JobRef("job_1", task_id, KEY.fingerprint)))


def refused(call):
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


# --- submit ------------------------------------------------------------------


def test_submit_sends_the_task_with_its_callback():
    seen = []
    request = SubmitRequest(
        prompt="A cat walks on a fence [Pan left]",
        options={"duration": 10, "resolution": "768P", "prompt_optimizer": False},
    )
    submission = submit(make(created(seen)), request, CALLBACK)
    sent = seen[0]
    assert (sent.method, str(sent.url)) == ("POST", f"{BASE}/v1/video_generation")
    assert sent.headers["authorization"] == "Bearer minimax-unit-key"
    assert json.loads(sent.content) == {
        "model": "MiniMax-Hailuo-02",
        "prompt": "A cat walks on a fence [Pan left]",
        "duration": 10,
        "resolution": "768P",
        "prompt_optimizer": False,
        "callback_url": CALLBACK,
    }
    assert (submission.provider_job_id, submission.key_fingerprint) == (TASK, KEY.fingerprint)
    assert submission.observation.status is Status.QUEUED


def test_a_base_url_ending_in_v1_is_taken_as_is():
    seen = []
    submit(make(created(seen), base_url="https://minimax.test/v1"), SubmitRequest(prompt="x"))
    assert str(seen[0].url) == "https://minimax.test/v1/video_generation"


@pytest.mark.parametrize(
    ("model", "images", "expected"),
    [
        ("I2V-01", ["https://img/a.png"], {"first_frame_image": "https://img/a.png"}),
        (
            "MiniMax-Hailuo-02",
            ["https://img/a.png", "data:image/png;base64,AAAA"],
            {
                "first_frame_image": "https://img/a.png",
                "last_frame_image": "data:image/png;base64,AAAA",
            },
        ),
        (
            "S2V-01",
            ["https://img/face.png"],
            {"subject_reference": [{"type": "character", "image": ["https://img/face.png"]}]},
        ),
    ],
)
def test_images_become_frames_or_the_subject(model, images, expected):
    seen = []
    submit(make(created(seen)), SubmitRequest(prompt="p", model=model, images=images))
    body = json.loads(seen[0].content)
    assert {k: body[k] for k in expected} == expected
    assert body["model"] == model


def test_a_task_id_given_as_a_number_is_read_as_text():
    provider = make(answering(200, {"task_id": int(TASK), "base_resp": OK}))
    assert submit(provider, SubmitRequest(prompt="x")).provider_job_id == TASK


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES | PERMANENT_CODES | {1999}))
def test_an_error_inside_a_200_is_read_from_base_resp(code):
    provider = make(answering(200, {"task_id": "", **failure(code, "what MiniMax says")}))
    error = refused(lambda: submit(provider, SubmitRequest(prompt="x")))
    assert (error.code, error.message) == (str(code), "what MiniMax says")
    assert error.transient is (code not in PERMANENT_CODES)


def test_a_200_rate_limit_pauses_the_provider_for_a_while():
    provider = make(answering(200, failure(1002, "rate limit exceeded(RPM)")))
    provider.rate_limit_pause = 2.0
    error = refused(lambda: submit(provider, SubmitRequest(prompt="x")))
    assert (error.transient, error.retry_after) == (True, 2.0)
    assert 1.5 < provider.gate.blocked_for <= 2.0


def test_an_http_429_keeps_its_retry_after():
    provider = make(answering(429, failure(1002, "rate limit exceeded"), {"Retry-After": "3"}))
    error = refused(lambda: submit(provider, SubmitRequest(prompt="x")))
    assert (error.status_code, error.code, error.retry_after) == (429, "1002", 3.0)
    assert error.transient and provider.gate.blocked_for > 2


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [(401, 1004, False), (500, 2013, False), (400, 1033, True), (503, None, True)],
)
def test_an_http_error_is_classified_by_its_code_when_it_has_one(status, code, transient):
    body = failure(code) if code else {"oops": True}
    error = refused(lambda: submit(make(answering(status, body)), SubmitRequest(prompt="x")))
    assert (error.status_code, error.transient) == (status, transient)


def test_a_create_answer_without_a_task_id_is_a_permanent_error():
    provider = make(answering(200, {"base_resp": OK}))
    error = refused(lambda: submit(provider, SubmitRequest(prompt="x")))
    assert error.transient is False and "task_id" in error.message


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="x" * 2001), "prompt"),
        (SubmitRequest(prompt="x", images=["https://a/1", "https://a/2", "https://a/3"]), "images"),
        (SubmitRequest(prompt="x", images=["ftp://a/1"]), "images"),
        (SubmitRequest(prompt="x", model="S2V-01"), "images"),
        (
            SubmitRequest(prompt="x", model="S2V-01", images=["https://a/1", "https://a/2"]),
            "images",
        ),
        (SubmitRequest(prompt="x", mode="i2v"), "mode"),
        (SubmitRequest(prompt="x", options={"duration": "6"}), "options.duration"),
        (SubmitRequest(prompt="x", options={"resolution": "4K"}), "options.resolution"),
        (SubmitRequest(prompt="x", options={"prompt_optimizer": "no"}), "options.prompt_optimizer"),
        (
            SubmitRequest(prompt="x", options={"first_frame_image": "x"}),
            "options.first_frame_image",
        ),
    ],
)
def test_invalid_requests_name_the_field_and_send_nothing(request_, field):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(created(seen)), request_)
    assert field in caught.value.fields
    assert seen == []


def test_an_image_alone_needs_no_prompt():
    seen = []
    submit(make(created(seen)), SubmitRequest(prompt=None, images=["https://img/a.png"]))
    assert "prompt" not in json.loads(seen[0].content)


# --- status ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("Preparing", Status.QUEUED),
        ("Queueing", Status.QUEUED),
        ("Processing", Status.PROCESSING),
        ("processing", Status.PROCESSING),
    ],
)
def test_running_statuses(word, status):
    seen = []
    obs = fetch(make(routes(report(word), seen=seen)))
    assert (obs.status, obs.provider_status, obs.known) == (status, word, True)
    assert seen[0].url.params["task_id"] == TASK
    assert seen[0].headers["authorization"] == "Bearer minimax-unit-key"


@pytest.mark.parametrize("word", ["Success", "success"])
def test_success_resolves_the_file_to_its_download_url(word):
    seen = []
    download = "https://cdn.example/output.mp4?Expires=1&Signature=x"
    handler = routes(report(word, file_id=FILE), file_answer(download_url=download), seen)
    obs = fetch(make(handler))
    assert (obs.status, obs.result_url, obs.provider_status) == (Status.COMPLETED, download, word)
    retrieve = seen[1]
    assert (retrieve.url.path, retrieve.url.params["file_id"]) == ("/v1/files/retrieve", FILE)
    assert retrieve.headers["authorization"] == "Bearer minimax-unit-key"


def test_the_backup_url_serves_when_the_main_one_is_missing():
    backup = "https://backup.example/output.mp4"
    handler = routes(report("Success", file_id=int(FILE)), file_answer(backup_download_url=backup))
    assert fetch(make(handler)).result_url == backup


@pytest.mark.parametrize(
    "handler",
    [
        routes(report("Success")),  # no file_id yet
        routes(report("Success", file_id=FILE), file_answer()),  # no URL in the file
        routes(report("Success", file_id=FILE), failure(2013, "file not found")),
        routes(report("Success", file_id=FILE), failure(1001, "timeout")),
        routes({"task_id": TASK, "base_resp": OK}),  # no status
        routes(failure(1033, "downstream error")),
    ],
)
def test_what_may_still_come_right_is_asked_again(handler):
    assert refused(lambda: fetch(make(handler))).transient is True


@pytest.mark.parametrize(
    "handler",
    [
        routes(report("Success", file_id=FILE), failure(1004, "login fail")),
        routes(failure(2013, "invalid params, task not found")),
        routes(failure(2049, "invalid api key")),
    ],
)
def test_what_will_not_come_right_fails_the_poll_for_good(handler):
    assert refused(lambda: fetch(make(handler))).transient is False


def test_fail_keeps_the_code_and_message_of_the_task():
    body = report("Fail", base_resp={"status_code": 1027, "status_msg": "output video sensitive"})
    obs = fetch(make(routes(body)))
    assert (obs.status, obs.error) == (Status.FAILED, "output video sensitive (1027)")


def test_fail_without_a_reason_says_so():
    obs = fetch(make(routes(report("Fail"))))
    assert (obs.status, obs.error) == (Status.FAILED, FAILED_WITHOUT_REASON)


def test_an_unknown_status_is_kept_raw_and_read_as_queued():
    obs = fetch(make(routes(report("Suspended"))))
    assert (obs.status, obs.provider_status, obs.known) == (Status.QUEUED, "Suspended", False)


def test_minimax_cannot_cancel():
    with pytest.raises(CancelUnsupported):
        asyncio.run(make(answering(200)).cancel(JobRef("job_1", TASK, KEY.fingerprint)))


# --- the challenge and callbacks ------------------------------------------------------


def test_the_challenge_is_echoed():
    provider = make(answering(500))
    assert provider.handshake(b'{"challenge": "c2VjcmV0"}') == {"challenge": "c2VjcmV0"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"task_id": "1", "status": "success", "challenge": "x"}',
        b'{"challenge": 7}',
        b'{"status": "processing"}',
        b"[]",
        b"not json",
    ],
)
def test_anything_else_is_not_a_challenge(body):
    assert make(answering(500)).handshake(body) is None


JOB = JobRef("job_1", TASK, KEY.fingerprint, CALLBACK)


def verify(job, body):
    return make(answering(500)).verify_callback(job, {}, json.dumps(body).encode(), tolerance=300)


def test_a_status_has_one_nonce_however_it_is_spelled():
    assert verify(JOB, report("success")) == verify(JOB, report("Success", file_id=FILE))
    assert verify(JOB, report("failed")) == verify(JOB, report("Fail"))
    assert verify(JOB, report("Preparing")) != verify(JOB, report("Queueing"))
    assert verify(JOB, report("processing")) != verify(JOB, report("success"))
    assert verify(JOB, {**report("processing"), "task_id": int(TASK)}) == verify(
        JOB, report("processing")
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({**report("success"), "task_id": "999"}, "wrong_task"),
        ({"status": "success"}, "wrong_task"),
    ],
)
def test_a_callback_not_about_this_task_is_refused(body, reason):
    with pytest.raises(signing.SignatureError) as caught:
        verify(JOB, body)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("word", "status"),
    [("processing", Status.PROCESSING), ("success", Status.COMPLETED), ("failed", Status.FAILED)],
)
def test_callback_words_are_read_without_case(word, status):
    obs = make(answering(500)).parse_callback(report(word))
    assert (obs.status, obs.provider_status, obs.known) == (status, word, True)
