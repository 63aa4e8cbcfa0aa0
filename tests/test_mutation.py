"""The mutation-testing command's own rules: which tests a module has, what is skipped."""

from __future__ import annotations

import pytest

from tests import mutation

SOURCE = """from __future__ import annotations

LIMIT: int | None = 3


def f(a: int | None, *, b: str = "x") -> dict[str, int]:
    return {b: (a or 0) | LIMIT}
"""


def test_each_module_is_tested_by_its_mirror():
    assert mutation.own_tests("signing/vidu.py") == ["tests/signing/test_vidu.py"]
    assert mutation.own_tests("receiver/states.py") == ["tests/test_states.py"]
    assert mutation.own_tests("receiver/store/jobs.py") == ["tests/store/test_jobs.py"]
    assert mutation.own_tests("receiver/store/writer.py") == [
        "tests/store/test_writer.py", "tests/store/test_writer_batches.py",
    ]  # fmt: skip
    assert mutation.own_tests("receiver/store/__init__.py") == ["tests/store/test_store.py"]
    assert mutation.own_tests("receiver/store/schema.py") == ["tests/store/test_store.py"]
    # Without a file of its own, a module is tested by its package's folder.
    assert mutation.own_tests("receiver/store/detail.py") == ["tests/store"]
    with pytest.raises(SystemExit, match="no test file"):
        mutation.own_tests("receiver/demo.py")


def test_a_folder_is_its_modules_less_an_untested_init():
    assert mutation.modules(["signing"]) == [
        "signing/fal.py", "signing/pixverse.py", "signing/standard.py", "signing/vidu.py",
    ]  # fmt: skip
    assert "receiver/store/__init__.py" in mutation.modules(["receiver/store"])
    with pytest.raises(SystemExit):
        mutation.modules(["receiver/nothing.py"])


def test_annotations_are_found_and_the_code_around_them_is_not():
    spans = mutation.annotation_spans(SOURCE)
    lines = SOURCE.splitlines()

    def covered(line: int, text: str) -> bool:
        column = lines[line - 1].index(text)
        return any(start <= (line, column) < end for start, end in spans)

    assert covered(3, "int | None")
    assert covered(6, "int | None") and covered(6, "str")
    assert covered(6, "dict[str, int]")
    assert not covered(6, "*")  # the keyword-only marker is code
    assert not covered(7, "| LIMIT") and not covered(3, "3")


def test_only_a_bare_star_is_taken_for_a_keyword_only_marker():
    lines = ["def f(a, *, b):", "    return a * b", "def g(", "    *,", "    c)", "f(*args)"]
    assert mutation.is_bare_star(lines, 1, lines[0].index("*"))
    assert mutation.is_bare_star(lines, 4, 4)
    assert not mutation.is_bare_star(lines, 2, lines[1].index("*"))
    assert not mutation.is_bare_star(lines, 6, 2)
    assert not mutation.is_bare_star(lines, 1, 0)
