import asyncio
import base64
import json

import httpx
import jwt
import pytest

import signing
from receiver.config import KeyPair, ProviderConfig, Secret
from receiver.providers.base import InvalidRequest, JobRef, ProviderError, SubmitRequest
from receiver.providers.kling import (
    RENEW_BEFORE,
    TOKEN_LIFETIME,
    Kling,
    kling_image,
    observation,
    task_of,
)
from receiver.states import Status

PAIR = KeyPair(Secret("ak-unit-0001"), Secret("sk-unit-secret-0001-long-enough-for-hs256"))
OLD_PAIR = KeyPair(Secret("ak-unit-old"), Secret("sk-unit-secret-old-long-enough-for-hs256"))
TASK_ID = "8279963853"
JOB_ID = "01JOB0000000000000000000AA"
VIDEO = "https://cdn.klingai.example/videos/8279963853.mp4"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


def envelope(data, code=0, message="SUCCEED"):
    return {"code": code, "message": message, "request_id": "req-1", "data": data}


def task(status="submitted", **extra):
    data = {
        "task_id": TASK_ID,
        "task_status": status,
        "task_status_msg": "",
        "task_info": {"external_task_id": JOB_ID},
        "created_at": 1722769557708,
        "updated_at": 1722769557708,
    }
    return data | extra


SUCCEEDED = task(
    "succeed",
    final_unit_deduction="1",
    task_result={"videos": [{"id": "v1", "url": VIDEO, "duration": "5"}]},
)


def make(handler, default_model="kling-v2-6"):
    config = ProviderConfig(
        name="kling",
        type="kling",
        base_url="https://kling.test",
        api_key=PAIR,
        previous_api_keys=(OLD_PAIR,),
        default_model=default_model,
    )
    return Kling(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def answer(status_code, body, headers=None):
    return httpx.Response(status_code, json=body, headers=headers)


def recorder(*answers):
    """A handler answering in turn, keeping every request it saw."""
    seen = []
    queue = list(answers)

    def handler(request):
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return seen, handler


def claims_of(request, pair=PAIR):
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    return jwt.decode(
        token,
        pair.secret.reveal(),
        algorithms=["HS256"],
        options={"require": ["iss", "exp", "nbf"]},
    )


def submit(kling, request):
    return asyncio.run(kling.submit(request, "https://hooks.test/callbacks/kling/tok"))


def fetch(kling, fingerprint=PAIR.fingerprint, task_id=TASK_ID):
    return asyncio.run(kling.fetch(JobRef(JOB_ID, task_id, fingerprint)))


# -- auth -------------------------------------------------------------------------------------


def test_each_request_carries_a_token_an_independent_jwt_library_accepts():
    seen, handler = recorder(answer(200, envelope(task("processing"))))
    kling = make(handler)
    kling.clock = lambda: 1_800_000_000.0
    fetch(kling)
    # Verified by PyJWT at the time it was made: exp and nbf are real claims.
    token = seen[0].headers["authorization"].split()[1]
    claims = jwt.decode(
        token,
        PAIR.secret.reveal(),
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    assert claims == {"iss": "ak-unit-0001", "exp": 1_800_000_000 + 1800, "nbf": 1_800_000_000 - 5}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another secret, as long as the right one", algorithms=["HS256"])


def test_a_token_made_now_verifies_now():
    seen, handler = recorder(answer(200, envelope(task("processing"))))
    fetch(make(handler))
    assert claims_of(seen[0])["iss"] == "ak-unit-0001"


def test_the_token_is_kept_and_renewed_before_it_expires():
    seen, handler = recorder(answer(200, envelope(task("processing"))))
    kling = make(handler)
    now = [1_800_000_000.0]
    kling.clock = lambda: now[0]
    tokens = []
    for step in (0, 60, TOKEN_LIFETIME - RENEW_BEFORE - 61, 1, 10):
        now[0] += step
        fetch(kling)
        tokens.append(seen[-1].headers["authorization"])
    # Kept until five minutes before its expiry, then replaced by one valid from then.
    assert tokens[0] == tokens[1] == tokens[2]
    assert tokens[3] != tokens[2]
    assert tokens[4] == tokens[3]
    fresh = jwt.decode(tokens[3].split()[1], options={"verify_signature": False})
    assert fresh["exp"] == int(now[0] - 10) + TOKEN_LIFETIME


def test_a_job_is_polled_with_the_pair_that_created_it():
    seen, handler = recorder(answer(200, envelope(task("processing"))))
    kling = make(handler)
    fetch(kling, OLD_PAIR.fingerprint)
    fetch(kling, "sha256:gone")  # that pair is no longer configured: the current one
    assert claims_of(seen[0], OLD_PAIR)["iss"] == "ak-unit-old"
    assert claims_of(seen[1])["iss"] == "ak-unit-0001"


@pytest.mark.parametrize("code", [1002, 1003, 1004])
def test_a_refused_token_is_made_anew_once(code):
    refused = answer(401, {"code": code, "message": "Authorization is invalid", "request_id": "r"})
    seen, handler = recorder(refused, answer(200, envelope(task("processing"))))
    kling = make(handler)
    ticks = iter(range(1_800_000_000, 1_800_000_100))
    kling.clock = lambda: float(next(ticks))
    fetch(kling)
    assert fetch(kling).status is Status.PROCESSING
    assert len(seen) == 3
    tokens = [r.headers["authorization"] for r in seen]
    # The refused token was replaced, and the new one is kept for the next request.
    assert tokens[1] != tokens[0]
    assert tokens[2] == tokens[1]


def test_a_token_refused_twice_fails_with_a_hint():
    refused = answer(401, {"code": 1004, "message": "Authorization has expired", "request_id": "r"})
    seen, handler = recorder(refused)
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert len(seen) == 2
    assert not caught.value.transient
    assert caught.value.code == "1004"
    assert "Authorization has expired (check this machine's clock)" in str(caught.value)


def test_secrets_do_not_show_in_errors_or_reprs():
    refused = answer(401, {"code": 1000, "message": "Authentication failed", "request_id": "r"})
    _, handler = recorder(refused)
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert "sk-unit" not in str(caught.value) and "ak-unit" not in str(caught.value)
    assert "sk-unit" not in repr(PAIR) and "sk-unit" not in str(PAIR)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (429, 1302, True),
        (429, 1303, True),
        (500, 5000, True),
        (503, 5001, True),
        (504, 5002, True),
        (429, 1100, False),
        (429, 1101, False),
        (429, 1102, False),
        (429, 1304, False),
        (403, 1103, False),
        (400, 1200, False),
        (400, 1301, False),
        (401, 1000, False),
        (401, 1001, False),
    ],
)
def test_kling_codes_decide_whether_to_retry(status, code, transient):
    body = {"code": code, "message": "refused", "request_id": "r"}
    _, handler = recorder(answer(status, body))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).submit(SubmitRequest(prompt="a cat"), None))
    assert caught.value.transient is transient
    assert caught.value.code == str(code)
    assert caught.value.status_code == status


def test_an_unknown_code_falls_back_to_the_http_status():
    _, handler = recorder(answer(502, {"code": 9999, "message": "odd", "request_id": "r"}))
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert caught.value.transient


def test_retry_after_of_a_rate_limit_is_kept():
    body = {"code": 1302, "message": "rate limit", "request_id": "r"}
    _, handler = recorder(answer(429, body, {"Retry-After": "7"}))
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert caught.value.transient and caught.value.retry_after == 7


def test_a_refusal_inside_a_200_answer_is_an_error():
    _, handler = recorder(answer(200, {"code": 1303, "message": "parallel task over limit"}))
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert caught.value.transient and caught.value.code == "1303"
    assert "parallel task over limit" in str(caught.value)


# -- submitting -------------------------------------------------------------------------------


def test_text2video_sends_the_documented_body():
    seen, handler = recorder(answer(200, envelope(task())))
    kling = make(handler)
    request = SubmitRequest(prompt="a cat", options={"duration": 10, "mode": "pro"}, job_id=JOB_ID)
    submission = submit(kling, request)
    sent = seen[0]
    assert sent.method == "POST" and sent.url.path == "/v1/videos/text2video"
    assert json.loads(sent.content) == {
        "model_name": "kling-v2-6",
        "prompt": "a cat",
        "duration": "10",
        "mode": "pro",
        "callback_url": "https://hooks.test/callbacks/kling/tok",
        "external_task_id": JOB_ID,
    }
    assert submission.provider_job_id == TASK_ID
    assert submission.observation.status is Status.QUEUED
    assert submission.observation.provider_status == "submitted"
    assert submission.key_fingerprint == PAIR.fingerprint
    assert Kling.idempotent_submit is True


@pytest.mark.parametrize(
    ("images", "image", "tail"),
    [
        (["https://example.com/a.png"], "https://example.com/a.png", None),
        ([f"data:image/png;base64,{PNG}"], PNG, None),
        ([PNG], PNG, None),
        (
            ["https://example.com/a.png", f"data:image/jpeg;base64,{PNG}"],
            "https://example.com/a.png",
            PNG,
        ),
    ],
)
def test_image2video_takes_urls_and_base64_without_the_data_prefix(images, image, tail):
    seen, handler = recorder(answer(200, envelope(task())))
    submit(make(handler), SubmitRequest(prompt=None, images=images, job_id=JOB_ID))
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/v1/videos/image2video"
    assert body["image"] == image
    assert body.get("image_tail") == tail
    assert "prompt" not in body and "aspect_ratio" not in body


def test_the_submitted_kind_is_queried_first():
    seen, handler = recorder(
        answer(200, envelope(task())), answer(200, envelope(task("processing")))
    )
    kling = make(handler)
    submit(kling, SubmitRequest(prompt=None, images=[PNG]))
    fetch(kling)
    assert [r.url.path for r in seen] == [
        "/v1/videos/image2video",
        f"/v1/videos/image2video/{TASK_ID}",
    ]


def test_after_a_restart_both_kinds_are_tried_and_the_right_one_kept():
    def handler(request):
        seen.append(request.url.path)
        if "text2video" in request.url.path:
            return answer(404, {"code": 1203, "message": "task not found", "request_id": "r"})
        return answer(200, envelope(task("processing")))

    seen = []
    kling = make(handler)
    assert fetch(kling).status is Status.PROCESSING
    assert fetch(kling).status is Status.PROCESSING
    assert seen == [
        f"/v1/videos/text2video/{TASK_ID}",
        f"/v1/videos/image2video/{TASK_ID}",
        f"/v1/videos/image2video/{TASK_ID}",
    ]


def test_a_task_missing_under_both_kinds_fails_permanently():
    _, handler = recorder(answer(404, {"code": 1203, "message": "task not found"}))
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert not caught.value.transient and caught.value.status_code == 404


def test_a_retried_submission_takes_over_the_task_the_first_attempt_made():
    duplicate = {"code": 1201, "message": "external_task_id already exists", "request_id": "r"}
    seen, handler = recorder(answer(400, duplicate), answer(200, envelope(task("processing"))))
    submission = submit(make(handler), SubmitRequest(prompt="a cat", job_id=JOB_ID))
    assert submission.provider_job_id == TASK_ID
    assert submission.observation.status is Status.PROCESSING
    assert seen[1].method == "GET" and seen[1].url.path == f"/v1/videos/text2video/{JOB_ID}"


def test_a_refusal_that_is_not_a_duplicate_stands():
    invalid = {"code": 1201, "message": "model_name is invalid", "request_id": "r"}
    other = task("processing", task_info={"external_task_id": "someone-else"})
    _, handler = recorder(answer(400, invalid), answer(200, envelope(other)))
    with pytest.raises(ProviderError) as caught:
        submit(make(handler), SubmitRequest(prompt="a cat", job_id=JOB_ID))
    assert caught.value.message == "model_name is invalid"
    _, handler = recorder(answer(400, invalid), answer(404, {"code": 1203, "message": "nf"}))
    with pytest.raises(ProviderError) as caught:
        submit(make(handler), SubmitRequest(prompt="a cat", job_id=JOB_ID))
    assert caught.value.message == "model_name is invalid"


def test_a_submit_answer_without_a_task_id_is_an_error():
    _, handler = recorder(answer(200, envelope({"task_status": "submitted"})))
    with pytest.raises(ProviderError, match="no task_id"):
        submit(make(handler), SubmitRequest(prompt="a cat"))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="   "), "prompt"),
        (SubmitRequest(prompt="x" * 2501), "prompt"),
        (SubmitRequest(prompt="a", mode="text2video", images=[PNG]), "images"),
        (SubmitRequest(prompt="a", images=[PNG, PNG, PNG]), "images"),
        (SubmitRequest(prompt="a", images=["photo.jpg"]), "images"),
        (SubmitRequest(prompt="a", images=["data:text/plain;base64,aGk="]), "images"),
        (SubmitRequest(prompt="a", mode="video2video"), "mode"),
        (SubmitRequest(prompt="a", options={"duration": 7}), "options.duration"),
        (SubmitRequest(prompt="a", options={"duration": True}), "options.duration"),
        (SubmitRequest(prompt="a", options={"mode": "turbo"}), "options.mode"),
        (SubmitRequest(prompt="a", options={"aspect_ratio": "4:3"}), "options.aspect_ratio"),
        (
            SubmitRequest(prompt="a", images=[PNG], options={"aspect_ratio": "1:1"}),
            "options.aspect_ratio",
        ),
        (SubmitRequest(prompt="a", options={"cfg_scale": 2}), "options.cfg_scale"),
        (SubmitRequest(prompt="a", options={"external_task_id": "x"}), "options.external_task_id"),
        (SubmitRequest(prompt="a", options={"callback_url": "x"}), "options.callback_url"),
    ],
)
def test_invalid_submissions_name_the_field_and_send_nothing(request_, field):
    seen, handler = recorder(answer(200, envelope(task())))
    with pytest.raises(InvalidRequest) as caught:
        submit(make(handler), request_)
    assert field in caught.value.fields
    assert seen == []


def test_kling_image_forms():
    assert kling_image("https://example.com/a.png") == "https://example.com/a.png"
    assert kling_image(f"data:image/webp;base64,{PNG}") == PNG
    assert kling_image(PNG) == PNG
    assert kling_image("not an image") is None
    assert kling_image("data:image/png;base64,@@@") is None


# -- status -----------------------------------------------------------------------------------


def test_success_keeps_the_video_and_the_units_used():
    _, handler = recorder(answer(200, envelope(SUCCEEDED)))
    seen = fetch(make(handler))
    assert seen.status is Status.COMPLETED
    assert seen.result_url == VIDEO
    assert seen.credits == 1.0
    assert seen.provider_status == "succeed"


def test_failure_keeps_kling_s_reason():
    failed = task("failed", task_status_msg="Failure to pass the risk control system")
    _, handler = recorder(answer(200, envelope(failed)))
    seen = fetch(make(handler))
    assert seen.status is Status.FAILED
    assert seen.error == "Failure to pass the risk control system"
    assert seen.result_url is None


def test_an_unknown_status_is_kept_raw_as_queued():
    _, handler = recorder(answer(200, envelope(task("queueing"))))
    seen = fetch(make(handler))
    assert (seen.status, seen.provider_status, seen.known) == (Status.QUEUED, "queueing", False)


def test_a_success_without_a_video_is_asked_again():
    _, handler = recorder(answer(200, envelope(task("succeed", task_result={"videos": []}))))
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert caught.value.transient


def test_a_job_without_a_task_id_yet_is_asked_again():
    _, handler = recorder(answer(200, envelope(task())))
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler), task_id=None)
    assert caught.value.transient


# -- callbacks --------------------------------------------------------------------------------


def verify(kling, payload, job=None):
    job = job or JobRef(JOB_ID, TASK_ID, PAIR.fingerprint)
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return kling.verify_callback(job, {}, body, tolerance=300)


@pytest.mark.parametrize("wrapped", [False, True])
def test_callbacks_are_read_bare_or_enveloped(wrapped):
    kling = make(recorder(answer(200, {}))[1])
    payload = envelope(SUCCEEDED) if wrapped else SUCCEEDED
    assert task_of(payload) == SUCCEEDED
    seen = kling.parse_callback(payload)
    assert seen.status is Status.COMPLETED and seen.result_url == VIDEO
    verify(kling, payload)


@pytest.mark.parametrize(
    ("status", "confirm"),
    [
        ("submitted", False),
        ("processing", False),
        ("odd", False),
        ("succeed", True),
        ("failed", True),
    ],
)
def test_a_callback_ending_the_job_is_confirmed_by_a_poll(status, confirm):
    kling = make(recorder(answer(200, {}))[1])
    assert kling.needs_confirmation(kling.parse_callback(task(status))) is confirm
    # Whatever the status, only the status counts: receiver.callbacks keeps nothing else.
    assert kling.signs_callback_body is False


@pytest.mark.parametrize(
    "payload",
    [
        task("succeed", task_id="999"),
        task("succeed", task_info={"external_task_id": "01OTHERJOB"}),
        envelope(task("succeed", task_id="999")),
        {"task_status": "succeed"},
        {"code": 0, "data": {"task_status": "succeed"}},
    ],
)
def test_a_callback_naming_another_task_or_none_is_refused(payload):
    kling = make(recorder(answer(200, {}))[1])
    with pytest.raises(signing.SignatureError) as caught:
        verify(kling, payload)
    assert caught.value.reason == "wrong_task"


def test_before_the_task_id_is_known_the_job_id_decides():
    kling = make(recorder(answer(200, {}))[1])
    early = JobRef(JOB_ID, None, PAIR.fingerprint)
    verify(kling, task("processing", task_id="whatever"), early)
    with pytest.raises(signing.SignatureError):
        verify(kling, task("processing", task_info={"external_task_id": "x"}), early)


def test_one_status_change_is_one_delivery():
    kling = make(recorder(answer(200, {}))[1])
    first = verify(kling, task("processing", updated_at=5))
    assert verify(kling, envelope(task("processing", updated_at=5))) == first
    assert verify(kling, task("succeed", updated_at=5)) != first
    assert verify(kling, task("processing", updated_at=6)) != first
    # Without a change time, the body itself is the delivery.
    bare = {"task_id": TASK_ID, "task_status": "processing"}
    assert verify(kling, bare).startswith(f"sha256:{JOB_ID}:")


def test_a_body_that_is_not_json_is_left_to_the_json_check():
    kling = make(recorder(answer(200, {}))[1])
    assert verify(kling, b"not json").startswith("sha256:")


def test_observation_reads_a_bare_task():
    seen = observation(task("processing"))
    assert seen.provider_job_id == TASK_ID and seen.status is Status.PROCESSING
