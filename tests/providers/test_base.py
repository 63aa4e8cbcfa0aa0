"""HTTPProvider.request_json: how each way a request can fail says whether it was sent;
Progress: how a provider's figures of a job under way are read."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import Observation, Progress, ProviderError
from receiver.providers.kvid import Kvid
from receiver.states import Status


def failure(answer) -> ProviderError:
    """The ProviderError request_json raises when the transport does ``answer``."""

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run() -> ProviderError:
        config = ProviderConfig("kvid", "kvid", "http://provider.test", Secret("key"))
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ProviderError) as raised:
                await Kvid(config, client).request_json("POST", "/x", key=config.api_key, json={})
        return raised.value

    return asyncio.run(run())


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")],
)
def test_a_connection_never_made_was_not_sent(exc):
    error = failure(exc)
    assert error.transient and not error.sent and not error.may_have_acted


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
def test_a_failure_after_connecting_may_have_reached_the_provider(exc):
    error = failure(exc)
    assert error.transient and error.sent and error.may_have_acted


@pytest.mark.parametrize(("status", "transient"), [(429, True), (503, True), (400, False)])
def test_an_error_answer_says_the_request_was_not_carried_out(status, transient):
    error = failure(httpx.Response(status, json={"message": "no"}, headers={"Retry-After": "0"}))
    assert (error.transient, error.status_code) == (transient, status)
    assert error.sent and not error.may_have_acted


def test_a_success_answer_that_is_not_json_may_have_been_carried_out():
    error = failure(httpx.Response(200, text="<html>ok</html>"))
    assert error.transient and error.may_have_acted


def test_a_provider_paused_past_the_timeout_is_not_asked_at_all():
    async def run() -> tuple[ProviderError, int]:
        calls = 0

        def handler(request: httpx.Request) -> httpx.Response:
            nonlocal calls
            calls += 1
            return httpx.Response(200, json={})

        config = ProviderConfig("kvid", "kvid", "http://provider.test", Secret("key"), timeout=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            provider = Kvid(config, client)
            provider.gate.block_for(30)
            with pytest.raises(ProviderError) as raised:
                await provider.request_json("POST", "/x", key=config.api_key, json={})
        return raised.value, calls

    error, calls = asyncio.run(run())
    assert calls == 0
    assert not error.sent and error.retry_after is not None and error.retry_after > 29


def test_an_error_code_in_a_success_answer_is_a_refusal():
    # Kling, MiniMax and PixVerse refuse inside a 200, in their own codes.
    error = ProviderError("p", "concurrency limit", transient=True, status_code=200, code="1303")
    assert error.sent and not error.may_have_acted
    assert not ProviderError("p", "busy", transient=True, code="1002").may_have_acted


# --- Progress: the provider's word on how far a job has got ------------------------------


@pytest.mark.parametrize(
    ("value", "whole", "percent"),
    [
        (42, 100.0, 42),
        ("30%", 100.0, 30),
        (" 7 % ", 100.0, 7),
        ("55", 100.0, 55),
        (0.42, 1.0, 42),
        (0.425, 1.0, 42.5),
        (1, 1.0, 100),
        (120, 100.0, 100),  # never past done
        (0, 100.0, 0),
    ],
)
def test_a_figure_of_work_done_becomes_a_percentage(value, whole, percent):
    progress = Progress.done(value, whole=whole)
    assert progress is not None and progress.to_json() == {"percent": percent}


@pytest.mark.parametrize("value", [None, "", "%", "soon", -1, True, float("nan"), [], {}])
def test_what_is_no_figure_is_no_progress(value):
    assert Progress.done(value) is None


def test_a_place_in_the_queue_is_a_whole_number_from_zero():
    assert Progress.queued(3) == Progress(queue_position=3)
    assert Progress.queued(0).to_json() == {"queue_position": 0}
    for value in (None, -1, 2.5, "3", True):
        assert Progress.queued(value) is None


def test_an_unsigned_callback_cannot_report_progress():
    seen = Observation(Status.PROCESSING, "running", progress=Progress(percent=50))
    assert seen.evidence().progress is None
