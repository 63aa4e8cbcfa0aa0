"""A migrated database on a writer's kind of connection, and a router that remembers."""

from __future__ import annotations

import pytest

from receiver.states import Status
from receiver.store import migrate
from receiver.store.writer import connect


class Router:
    """Routes every status to the job's own channels, or to "team"; remembers each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Status, list[str] | None]] = []

    def __call__(self, status: Status, notify: list[str] | None) -> list[str]:
        self.calls.append((status, notify))
        return ["team"] if notify is None else list(notify)


@pytest.fixture
def conn(tmp_path):
    path = tmp_path / "vidhook.db"
    migrate(path)
    connection = connect(path)
    yield connection
    connection.close()


@pytest.fixture
def route():
    return Router()
