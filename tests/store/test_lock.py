"""One database, one service: the lock file beside the database, in one process.

Across processes (a second `vidhook serve`, a SIGKILL and a restart): see
tests/test_serve_database.py.
"""

import os
import socket

import pytest

from receiver.store import DatabaseInUse, DatabaseUnusable, Store
from receiver.store.lock import hold, holder, lock_path


def no_route(status, notify):
    return []


def test_the_lock_names_its_holder_and_refuses_a_second_one(tmp_path):
    database = tmp_path / "vidhook.db"
    first = hold(database)
    try:
        text = lock_path(database).read_text()
        assert text == f"{os.getpid()} {socket.gethostname()} vidhook serve\n"
        assert holder(database) == f"vidhook serve (pid {os.getpid()})"
        # flock belongs to the open file, not the process: a second hold in the same
        # process is refused as another process's would be.
        with pytest.raises(DatabaseInUse) as refused:
            hold(database)
        message = str(refused.value)
        assert message.startswith(f"{database} is in use by vidhook serve (pid {os.getpid()})")
        assert "\n" not in message
        assert lock_path(database).read_text() == text  # the refused one wrote nothing
    finally:
        first.release()
    assert holder(database) is None
    second = hold(database, command="vidhook restore")
    assert holder(database) == f"vidhook restore (pid {os.getpid()})"
    second.release()


def test_no_lock_file_means_no_holder_and_checking_creates_none(tmp_path):
    database = tmp_path / "vidhook.db"
    assert holder(database) is None
    assert not lock_path(database).exists()


def test_a_holder_on_another_host_is_named_with_it(tmp_path):
    database = tmp_path / "vidhook.db"
    held = hold(database)
    try:
        # As a service on another machine sharing the folder would have written it.
        os.truncate(lock_path(database), 0)
        lock_path(database).write_text("4242 web-2 vidhook serve\n")
        assert holder(database) == "vidhook serve (pid 4242 on host web-2)"
    finally:
        held.release()


def test_an_open_store_holds_the_lock_until_closed(tmp_path):
    database = tmp_path / "vidhook.db"
    store = Store(database, route=no_route).open()
    try:
        assert store.open() is store  # opening again is nothing
        with pytest.raises(DatabaseInUse, match="is in use by vidhook serve"):
            Store(database, route=no_route).open()
    finally:
        store.close()
    assert holder(database) is None
    again = Store(database, route=no_route).open()
    again.close()


def test_a_refused_store_leaves_the_lock_free(tmp_path):
    database = tmp_path / "vidhook.db"
    database.write_bytes(b"")
    with pytest.raises(DatabaseUnusable, match="is empty"):
        Store(database, route=no_route).open()
    assert holder(database) is None
