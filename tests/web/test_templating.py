"""The words the pages use for times, durations and stages (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from receiver.web.job import Stage, shown_headers, stages, waterfall
from receiver.web.templating import ago, duration, status

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (timedelta(seconds=2), "just now"),
        (timedelta(seconds=42), "42 s ago"),
        (timedelta(minutes=4, seconds=59), "4 min ago"),
        (timedelta(hours=2, minutes=30), "2 h ago"),
        (timedelta(days=1, hours=3), "1 day ago"),
        (timedelta(days=9), "9 days ago"),
        (timedelta(days=800), "2 y ago"),
        (-timedelta(minutes=3), "in 3 min"),
    ],
)
def test_relative_times(delta, words):
    assert ago(NOW - delta, NOW) == words


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (None, "\N{EN DASH}"),
        (0.4213, "0.42 s"),
        (12.34, "12.3 s"),
        (245, "4 min 05 s"),
        (7800, "2 h 10 min"),
    ],
)
def test_durations(seconds, words):
    assert duration(seconds) == words


def test_a_status_is_a_word_as_well_as_a_colour_and_is_escaped():
    assert str(status("failed")).endswith(">failed</span>")
    assert "<script>" not in str(status("<script>"))


def job(**fields):
    base = {
        "created_at": 100.0,
        "finished_at": 130.0,
        "status": "completed",
        "transitions": [
            {"to_status": "queued", "at": 100.0},
            {"to_status": "processing", "at": 105.0},
            {"to_status": "completed", "at": 130.0},
        ],
        "download": {"finished_at": 132.0},
        "deliveries": [
            {"event": "completed", "delivered_at": 131.0},
            {"event": "completed", "delivered_at": 133.5},
        ],
    }
    return base | fields


def test_the_stages_of_a_completed_job():
    found = stages(job())
    assert [(s.name, s.seconds) for s in found] == [
        ("waiting for the provider", 5.0),
        ("generating", 25.0),
        ("keeping the copy", 2.0),
        ("notifying", 3.5),
    ]


def test_a_stage_under_way_has_no_end_and_a_job_never_started_waited_throughout():
    running = stages(job(finished_at=None, status="processing", download=None, deliveries=[]))
    assert [(s.name, s.end) for s in running] == [
        ("waiting for the provider", 105.0),
        ("generating", None),
    ]
    refused = job(
        transitions=[{"to_status": "queued", "at": 100.0}, {"to_status": "failed", "at": 101.0}],
        finished_at=101.0,
        status="failed",
        download=None,
        deliveries=[{"event": "failed", "delivered_at": None}],
    )
    assert [(s.name, s.seconds) for s in stages(refused)] == [
        ("waiting for the provider", 1.0),
        ("notifying", None),
    ]


def test_the_waterfall_puts_each_stage_on_one_axis():
    bars = waterfall([Stage("a", 0.0, 10.0), Stage("b", 10.0, 40.0)], now=50.0, width=1000)
    assert bars == [{"x": 0.0, "width": 250.0}, {"x": 250.0, "width": 750.0}]


def test_secret_looking_headers_are_never_shown():
    shown = dict(
        shown_headers(
            {
                "content-type": "application/json",
                "webhook-signature": "v1,abcdefgh",
                "x-api-token": "secret-value",
            }
        )
    )
    assert shown["content-type"] == "application/json"
    assert shown["webhook-signature"] == "redacted (11 characters)"
    assert shown["x-api-token"] == "redacted (12 characters)"
