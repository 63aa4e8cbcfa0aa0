"""requirements.lock: what the image and the VM install, at exact versions with hashes.

That it matches pyproject.toml's resolution is checked by `.ci/lock --check`, which asks
PyPI; these tests read the files only.
"""

from __future__ import annotations

import re
import tomllib

from tests.deploy import REPO, dockerfile_stages, instructions, read, readme_blocks

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def lock_entries() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes), names normalized as pip does."""
    entries: dict[str, tuple[str, int]] = {}
    name = None
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if match := _PIN.match(line):
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            entries[name] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and name is not None:
            version, hashes = entries[name]
            entries[name] = (version, hashes + 1)
    return entries


def requirement_name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def test_every_runtime_dependency_is_pinned_with_hashes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    entries = lock_entries()
    for requirement in project["dependencies"]:
        assert requirement_name(requirement) in entries, requirement
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (name, version)
        assert hashes >= 1, name
    # Only what vidhook runs with: the test tools are not deployed.
    assert "pytest" not in entries and "uv" not in entries


def test_the_image_installs_the_lock_with_hashes_then_vidhook_alone():
    build = dockerfile_stages()[0]
    assert any("requirements.lock" in copy.split() for copy in instructions(build, "COPY"))
    runs = " && ".join(instructions(build, "RUN"))
    locked = runs.index(
        "/opt/vidhook/bin/pip install --quiet --require-hashes -r requirements.lock"
    )
    itself = runs.index("/opt/vidhook/bin/pip install --quiet --no-deps .")
    assert locked < itself


def test_the_vm_install_uses_the_lock_too():
    lines = [line for block in readme_blocks("sh") for line in block.splitlines()]
    pip = [line for line in lines if "/opt/vidhook/bin/pip install" in line]
    locked = "sudo /opt/vidhook/bin/pip install --require-hashes -r "
    locked += "/usr/local/src/vidhook/requirements.lock"
    assert locked in pip
    assert "sudo /opt/vidhook/bin/pip install --no-deps /usr/local/src/vidhook" in pip
    assert pip.index(locked) < pip.index(
        "sudo /opt/vidhook/bin/pip install --no-deps /usr/local/src/vidhook"
    )
    assert "## Exact versions" in read("README.md")


def test_ci_checks_the_lock_is_current():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ".ci/lock --check" in ci
    assert ci.index(".ci/lock --check") < ci.index(".venv/bin/pytest")
