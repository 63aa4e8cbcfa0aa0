"""The README's "Running it", followed to the letter with real processes.

Two things are changed in the README's lines, as any reader's machine would: the
`vidhook` of this virtualenv stands for `.venv/bin/vidhook`, and free ports stand for
8800 and 8000 (other tests run beside this one). The export lines are the ones `vidhook
init` printed, as the README says to run them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for
from tests.test_restart import REPO

pytestmark = pytest.mark.slow

VIDHOOK = Path(sys.executable).parent / "vidhook"
# Variables of the test run that would change what the README's commands do.
_OVERRIDES = ("VIDHOOK_CONFIG", "VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE", "VIDHOOK_URL")


def running_it(part: str) -> list[str]:
    """The shell lines of one part of the README's "Running it", in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Running it\n", 1)[1].split("\n## ", 1)[0]
    body = section.split(f"\n### {part}\n", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


class Shell:
    """Runs README lines the way a shell would, in a folder of its own."""

    def __init__(self, folder: Path, ports: dict[str, int]) -> None:
        self.folder = folder
        self.ports = ports
        self.env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
        self.background: list[subprocess.Popen[str]] = []

    def argv(self, line: str) -> list[str]:
        for default, port in self.ports.items():
            line = re.sub(rf"\b{default}\b", str(port), line)
        argv = shlex.split(line.removesuffix("&"))
        assert argv[0] == ".venv/bin/vidhook", line
        return [str(VIDHOOK), *argv[1:]]

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        assert not line.endswith("&")
        return subprocess.run(
            self.argv(line),
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, line: str, log: str) -> subprocess.Popen[str]:
        with open(self.folder / log, "w") as out:
            proc = subprocess.Popen(
                self.argv(line),
                cwd=self.folder,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.background.append(proc)
        return proc

    def export_printed(self, output: str) -> list[str]:
        """Run the `export NAME=value` lines of ``output``; their names."""
        names = []
        for line in output.splitlines():
            if line.startswith("export "):
                name, _, value = shlex.split(line)[1].partition("=")
                self.env[name] = value
                names.append(name)
        return names

    def stop(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


@pytest.fixture
def shell(tmp_path):
    shell = Shell(tmp_path, {"8800": free_port(), "8000": free_port()})
    try:
        yield shell
    finally:
        shell.stop()


def test_the_local_trial_against_the_sandbox_works_as_written(shell):
    sandbox_line, init_line, serve_line, submit_line = running_it(
        "A local trial against the sandbox"
    )
    sandbox_url = f"http://127.0.0.1:{shell.ports['8800']}"
    service_url = f"http://127.0.0.1:{shell.ports['8000']}"

    sandbox = shell.start(sandbox_line, "sandbox.log")
    wait_for(lambda: answers(sandbox_url), timeout=20, what="the sandbox")
    assert sandbox.poll() is None

    init = shell.run(init_line)
    assert init.returncode == 0, init.stderr
    exported = shell.export_printed(init.stdout)
    assert exported == [
        "VIDHOOK_ADMIN_TOKEN",
        "SANDBOX_API_KEY",
        "SANDBOX_REPLICATE_WEBHOOK_SECRET",
        "SANDBOX_PIXVERSE_WEBHOOK_SECRET",
        "VIDHOOK_URL",
    ]
    assert shell.env["VIDHOOK_URL"] == service_url
    config = (shell.folder / "vidhook.toml").read_text()
    assert shell.env["VIDHOOK_ADMIN_TOKEN"] not in config  # shown once, never written
    assert tomllib.loads(config)["providers"]["vidu"]["base_url"] == f"{sandbox_url}/vidu"

    service = shell.start(serve_line, "serve.log")
    wait_for(lambda: answers(f"{service_url}/healthz"), timeout=20, what="vidhook serve")
    assert service.poll() is None

    submitted = shell.run(submit_line)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    out = submitted.stdout.splitlines()
    job_id = out[0].split()[0]
    assert out[0] == f"{job_id} queued"
    assert [line.split()[2] for line in out[1:-1]] == ["queued", "processing", "completed"]
    assert out[-1].startswith(f"result: {sandbox_url}/vidu/files/")

    # The sandbox's video is on loopback, and the file init wrote lets it be kept.
    admin = {"Authorization": f"Bearer {shell.env['VIDHOOK_ADMIN_TOKEN']}"}

    def media() -> dict | None:
        job = httpx.get(f"{service_url}/api/jobs/{job_id}", headers=admin, timeout=5).json()
        return job["media"] if job["media"]["status"] != "pending" else None

    kept = wait_for(media, timeout=20, what="the kept copy")
    assert kept["status"] == "kept", kept
    served = httpx.get(out[-1].removeprefix("result: "), timeout=5).content
    assert kept["video"]["sha256"] == hashlib.sha256(served).hexdigest()
    assert httpx.get(kept["video"]["url"], timeout=5).content == served

    # The service said so in its log, and the console channel printed it.
    def console_line_printed() -> str | None:
        log = (shell.folder / "serve.log").read_text()
        return log if "[vidhook]" in log else None

    log = wait_for(console_line_printed, what="the console channel's line")
    assert f"job {job_id} completed after" in log
    assert re.search(rf"\[vidhook\] \S+ {job_id} completed\s+vidu ", log)
    assert shell.env["VIDHOOK_ADMIN_TOKEN"] not in log


def test_the_real_provider_steps_give_a_config_that_checks(shell):
    init_line, check_line, serve_line = running_it("With a real provider")
    assert serve_line == ".venv/bin/vidhook serve"

    init = shell.run(init_line)
    assert init.returncode == 0, init.stderr
    assert "export VIDU_API_KEY='<your vidu api_key>'" in init.stdout
    assert shell.export_printed(init.stdout) == [
        "VIDHOOK_ADMIN_TOKEN",
        "VIDU_API_KEY",
        "VIDHOOK_URL",
    ]
    shell.env["VIDU_API_KEY"] = "vidu-key-from-the-console"  # as the README asks

    check = shell.run(check_line)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "https://hooks.example.com/callbacks/vidu/<token>" in check.stdout
    config = tomllib.loads((shell.folder / "vidhook.toml").read_text())
    assert config["public_url"] == "https://hooks.example.com"
    assert set(config["providers"]) == {"vidu"}
    assert config["channels"] == {
        "console": {"type": "console", "events": ["completed", "failed", "canceled"]}
    }
