"""Programs some tests need from the machine rather than from PyPI.

Debian's chromium (the dashboard in a real browser), ffmpeg (the sample videos decode)
and PostgreSQL's server programs are not Python packages. Where one is missing, its tests
are skipped with the command that installs it, so that the README's test command passes on
a fresh machine; CI installs them all (.ci/run) and sets ``VIDHOOK_TESTS_NEED_ALL=1``,
under which a missing program fails its tests instead.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

NEED_ALL = "VIDHOOK_TESTS_NEED_ALL"


def missing(what: str, install: str) -> NoReturn:
    message = f"{what} is not installed: {install}"
    if os.environ.get(NEED_ALL) == "1":
        pytest.fail(f"{message} ({NEED_ALL}=1)")
    pytest.skip(message)
