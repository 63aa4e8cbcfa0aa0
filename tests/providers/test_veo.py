import asyncio
import base64
import json

import httpx
import pytest

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import InvalidRequest, JobRef, ProviderError, SubmitRequest
from receiver.providers.veo import RETENTION, Veo, observation
from receiver.states import Status

KEY = Secret("veo-unit-key")
OLD_KEY = Secret("veo-old-key")
BASE = "https://generativelanguage.test"
MODEL = "veo-3.1-generate-preview"
NAME = f"models/{MODEL}/operations/op4x7y2"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(8)
JPEG = b"\xff\xd8\xff\xe0" + bytes(8)
URI = f"{BASE}/v1beta/files/f1a2b3:download?alt=media"
RESPONSE_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"


def make(handler, base_url=BASE, default_model=MODEL, **config):
    config = ProviderConfig(
        name="veo", type="veo", base_url=base_url, api_key=KEY, default_model=default_model,
        previous_api_keys=(OLD_KEY,), **config,
    )  # fmt: skip
    return Veo(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def data_uri(content, kind="image/png"):
    return f"data:{kind};base64,{base64.b64encode(content).decode()}"


def answering(status, body, headers=None, seen=None):
    def handler(request):
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def submit(provider, request):
    return asyncio.run(provider.submit(request, None))


def fetch(provider, name=NAME, key=KEY):
    return asyncio.run(provider.fetch(JobRef("job_1", name, key.fingerprint)))


def refused(call):
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


def done(response=None, **extra):
    operation = {"name": NAME, "done": True, **extra}
    if response is not None:
        operation["response"] = {
            "@type": RESPONSE_TYPE,
            "generateVideoResponse": response,
        }
    return operation


# --- submit ----------------------------------------------------------------------------


def test_submit_sends_the_instance_and_parameters_with_the_key():
    seen = []
    request = SubmitRequest(
        prompt="A heron lifts off the river",
        images=[data_uri(PNG), data_uri(JPEG, "image/jpeg")],
        options={"durationSeconds": 8, "aspect_ratio": "9:16", "negativePrompt": "text"},
    )
    submission = submit(make(answering(200, {"name": NAME}, seen=seen)), request)
    sent = seen[0]
    assert (sent.method, str(sent.url)) == (
        "POST", f"{BASE}/v1beta/models/{MODEL}:predictLongRunning",
    )  # fmt: skip
    assert sent.headers["x-goog-api-key"] == "veo-unit-key"
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == {
        "instances": [
            {
                "prompt": "A heron lifts off the river",
                "image": {"bytesBase64Encoded": base64.b64encode(PNG).decode(),
                          "mimeType": "image/png"},
                "lastFrame": {"bytesBase64Encoded": base64.b64encode(JPEG).decode(),
                              "mimeType": "image/jpeg"},
            }
        ],
        "parameters": {"durationSeconds": 8, "aspectRatio": "9:16", "negativePrompt": "text"},
    }  # fmt: skip
    assert submission.provider_job_id == NAME
    assert (submission.observation.status, submission.observation.provider_status) == (
        Status.QUEUED, None,
    )  # fmt: skip


def test_a_text_job_sends_no_parameters_when_none_are_given_and_a_models_prefix_is_dropped():
    seen = []
    provider = make(answering(200, {"name": NAME}, seen=seen), base_url=f"{BASE}/v1beta")
    submit(provider, SubmitRequest(prompt="Rain", model=f"models/{MODEL}"))
    assert str(seen[0].url) == f"{BASE}/v1beta/models/{MODEL}:predictLongRunning"
    assert json.loads(seen[0].content) == {"instances": [{"prompt": "Rain"}]}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=""), "prompt"),
        (SubmitRequest(prompt="x", mode="i2v"), "mode"),
        (SubmitRequest(prompt="x", images=["https://img.test/a.png"]), "images"),
        (SubmitRequest(prompt="x", images=["gs://bucket/a.png"]), "images"),
        (SubmitRequest(prompt="x", images=["data:image/png;base64,!!"]), "images"),
        (SubmitRequest(prompt="x", images=[data_uri(PNG)] * 3), "images"),
        (SubmitRequest(prompt="x", model="veo 3"), "model"),
        (SubmitRequest(prompt="x", options={"seed": 3}), "options.seed"),
        (SubmitRequest(prompt="x", options={"fps": 24}), "options.fps"),
        (SubmitRequest(prompt="x", options={"generateAudio": True}), "options.generateAudio"),
        (SubmitRequest(prompt="x", options={"generate_audio": True}), "options.generate_audio"),
        (SubmitRequest(prompt="x", options={"outputGcsUri": "gs://b/"}), "options.outputGcsUri"),
        (SubmitRequest(prompt="x", options={"pubsubTopic": "t"}), "options.pubsubTopic"),
        (SubmitRequest(prompt="x", options={"compressionQuality": "lossless"}),
         "options.compressionQuality"),
        (SubmitRequest(prompt="x", options={"lastFrame": {}}), "options.lastFrame"),
        (SubmitRequest(prompt="x", options={"durationSeconds": "8"}), "options.durationSeconds"),
        (SubmitRequest(prompt="x", options={"sampleCount": 0}), "options.sampleCount"),
        (SubmitRequest(prompt="x", options={"aspectRatio": "wide"}), "options.aspectRatio"),
        (SubmitRequest(prompt="x", options={"enhancePrompt": "yes"}), "options.enhancePrompt"),
        (SubmitRequest(prompt="x", options={"aspect_ratio": "16:9", "aspectRatio": "9:16"}),
         "options.aspectRatio"),
    ],
)  # fmt: skip
def test_invalid_requests_are_refused_before_sending(request_, field):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(answering(200, {"name": NAME}, seen=seen)), request_)
    assert field in caught.value.fields
    assert seen == []


def test_vertex_only_fields_are_refused_saying_why():
    with pytest.raises(InvalidRequest) as caught:
        make(answering(200, {})).validate(SubmitRequest(prompt="x", options={"seed": 1}))
    assert "only Vertex AI" in caught.value.fields["options.seed"]


@pytest.mark.parametrize("answer", [{}, {"name": ""}, {"name": "models/../x"}, []])
def test_an_answer_without_a_usable_operation_is_not_sent_again(answer):
    error = refused(lambda: submit(make(answering(200, answer)), SubmitRequest(prompt="x")))
    assert not error.transient


@pytest.mark.parametrize(
    ("status", "google", "transient"),
    [(429, "RESOURCE_EXHAUSTED", True), (500, "INTERNAL", True), (503, "UNAVAILABLE", True),
     (400, "INVALID_ARGUMENT", False), (403, "PERMISSION_DENIED", False)],
)  # fmt: skip
def test_google_s_error_envelope(status, google, transient):
    body = {"error": {"code": status, "message": f"it went {google.lower()}", "status": google}}
    error = refused(lambda: submit(make(answering(status, body)), SubmitRequest(prompt="x")))
    assert (error.status_code, error.code, error.message) == (
        status, google, f"it went {google.lower()}",
    )  # fmt: skip
    assert error.transient is transient and not error.may_have_acted


def test_a_429_keeps_its_retry_after():
    body = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    provider = make(answering(429, body, {"Retry-After": "7"}))
    assert refused(lambda: submit(provider, SubmitRequest(prompt="x"))).retry_after == 7.0


# --- the operation ---------------------------------------------------------------------


def test_fetch_asks_for_the_operation_by_name_with_the_job_s_key():
    seen = []
    provider = make(answering(200, {"name": NAME}, seen=seen))
    running = fetch(provider, key=OLD_KEY)
    assert str(seen[0].url) == f"{BASE}/v1beta/{NAME}"
    assert seen[0].headers["x-goog-api-key"] == "veo-old-key"
    assert (running.status, running.provider_status) == (Status.PROCESSING, "running")


@pytest.mark.parametrize("operation", [{"name": NAME}, {"name": NAME, "done": False},
                                       {"name": NAME, "done": None}])  # fmt: skip
def test_an_operation_not_done_is_running(operation):
    assert observation(operation).status is Status.PROCESSING


def test_an_undocumented_state_is_kept_raw_as_queued():
    seen = observation({"name": NAME, "metadata": {"state": "WAITING_FOR_CAPACITY"}})
    assert (seen.status, seen.provider_status, seen.known) == (
        Status.QUEUED, "WAITING_FOR_CAPACITY", False,
    )  # fmt: skip


def test_done_with_samples_is_completed_with_the_first_uri():
    second = URI.replace("f1a2b3", "g4")
    seen = observation(done({"generatedSamples": [{"video": {"uri": URI}},
                                                  {"video": {"uri": second}}]}))  # fmt: skip
    assert (seen.status, seen.provider_status, seen.result_url) == (Status.COMPLETED, "done", URI)
    assert seen.provider_job_id == NAME


def test_done_with_an_error_is_failed_with_google_s_message():
    seen = observation(done(error={"code": 3, "message": "The prompt could not be processed."}))
    assert (seen.status, seen.provider_status) == (Status.FAILED, "error")
    assert seen.error == "The prompt could not be processed. (code 3)"


@pytest.mark.parametrize(
    ("response", "error"),
    [
        ({"raiMediaFilteredCount": 1,
          "raiMediaFilteredReasons": ["Your prompt mentions a public figure."]},
         "Google's safety filters removed the video: Your prompt mentions a public figure."),
        ({"raiMediaFilteredCount": 2},
         "Google's safety filters removed 2 video(s) and gave no reason"),
    ],
)  # fmt: skip
def test_done_with_no_sample_but_a_filter_is_failed_with_its_reason(response, error):
    seen = observation(done(response))
    assert (seen.status, seen.provider_status, seen.error) == (Status.FAILED, "filtered", error)


def test_an_inline_video_fails_saying_so_and_its_bytes_are_not_kept():
    encoded = base64.b64encode(b"\x00" * 3000).decode()
    video = {"encodedVideo": encoded, "encoding": "video/mp4"}
    seen = observation(done({"generatedSamples": [{"video": video}]}))
    assert seen.status is Status.FAILED and "encodedVideo" in (seen.error or "")
    assert encoded not in json.dumps(seen.raw)
    kept = seen.raw["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]
    assert kept == {"encodedVideo": "<4000 base64 characters, not kept>", "encoding": "video/mp4"}


def test_done_with_nothing_readable_is_failed_naming_what_it_holds():
    seen = observation(done({"somethingNew": []}))
    assert seen.status is Status.FAILED and "somethingNew" in (seen.error or "")


def test_fetch_before_the_operation_is_known_is_asked_again():
    assert refused(lambda: fetch(make(answering(200, {})), None)).transient


def test_a_malformed_stored_name_is_never_sent():
    seen = []
    error = refused(lambda: fetch(make(answering(200, {}, seen=seen)), "models/../../x"))
    assert not error.transient and seen == []


def test_an_unknown_operation_is_a_permanent_refusal():
    body = {"error": {"code": 404, "message": "Operation not found", "status": "NOT_FOUND"}}
    error = refused(lambda: fetch(make(answering(404, body))))
    assert (error.transient, error.code) == (False, "NOT_FOUND")


# --- the video -------------------------------------------------------------------------


def test_the_video_is_downloaded_with_the_key_on_the_api_s_own_origin_only():
    provider = make(answering(200, {}))
    job = JobRef("job_1", NAME, OLD_KEY.fingerprint)
    assert dict(provider.download(job, URI).headers) == {"x-goog-api-key": "veo-old-key"}
    for elsewhere in ("https://storage.googleapis.test/v.mp4", "http://generativelanguage.test/v",
                      "https://generativelanguage.test:8443/v", "not a url"):  # fmt: skip
        assert dict(provider.download(job, elsewhere).headers) == {}


def test_videos_live_two_days_and_veo_cannot_cancel():
    provider = make(answering(200, {}))
    assert provider.result_lifetime == RETENTION == 172800
    assert not provider.supports_cancel and not provider.supports_callbacks
