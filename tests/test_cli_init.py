"""`vidhook init`, `vidhook sandbox`'s listing, the demo's --keep, and what `submit`
builds from its arguments."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib

import httpx
import pytest

from receiver import demo
from receiver.cli import main
from receiver.config import PROVIDER_TYPES, load_config
from receiver.sandbox import (
    MARKER_MEANINGS,
    PREFIXES,
    PixVerseFakeSettings,
    create_sandbox_app,
    markers,
)
from receiver.submission import ArgumentProblem, parse_options
from tests.conftest import free_port, wait_for
from tests.test_cli_readme import Shell, answers
from tests.test_restart import REPO

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def exports(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = shlex.split(line)[1].partition("=")
            found[name] = value
    return found


def test_init_without_a_provider_says_what_to_name(tmp_path, capsys):
    assert main(["init", str(tmp_path / "vidhook.toml")]) == 2
    assert capsys.readouterr().err == (
        "vidhook: name the providers to configure, such as --provider vidu "
        f"(types: {', '.join(PROVIDER_TYPES)}), or try --sandbox\n"
    )
    assert main(["init", str(tmp_path / "v.toml"), "--provider", "vidoo"]) == 2
    assert "unknown provider type vidoo; choose from vidu, " in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_init_keeps_an_existing_file_unless_forced(tmp_path, capsys):
    path = tmp_path / "vidhook.toml"
    path.write_text("# mine\n")
    assert main(["init", str(path), "--provider", "kvid"]) == 2
    assert (
        capsys.readouterr().err == f"vidhook: {path} already exists; pass --force to replace it\n"
    )
    assert path.read_text() == "# mine\n"
    assert main(["init", str(path), "--provider", "kvid", "--force"]) == 0
    assert "[providers.kvid]" in path.read_text()


@pytest.mark.parametrize("kind", list(PROVIDER_TYPES))
def test_init_of_each_type_loads_with_the_exports_it_printed(tmp_path, capsys, kind):
    path = tmp_path / "conf" / "vidhook.toml"
    assert main(["init", str(path), "--provider", kind]) == 0
    out = capsys.readouterr().out
    env = exports(out)
    token = env["VIDHOOK_ADMIN_TOKEN"]
    assert len(token) >= 32
    placeholders = [name for name, value in env.items() if value.startswith("<your ")]
    assert placeholders  # the provider's key, for the user to fill in
    env.update(dict.fromkeys(placeholders, "key-from-the-console"))

    config = load_config(path, env)
    assert list(config.providers) == [kind]
    assert config.providers[kind].type == kind
    assert list(config.channels) == ["console"]
    assert config.default_channels == ("console",)
    assert config.database == path.parent / "vidhook.db"
    text = path.read_text()
    assert token not in text and "key-from-the-console" not in text
    # The next commands, as they are to be typed.
    assert f"vidhook serve --config {path}" in out.splitlines()
    assert f'vidhook submit {kind} --prompt "' in out
    assert "providers on the internet cannot call back there" in out  # no --public-url


def test_init_with_a_public_url_and_port(tmp_path, capsys):
    path = tmp_path / "vidhook.toml"
    argv = ["init", str(path), "--provider", "vidu", "--provider", "kvid", "--port", "9123"]
    assert main([*argv, "--public-url", "https://hooks.example.com/vh/"]) == 0
    out = capsys.readouterr().out
    data = tomllib.loads(path.read_text())
    assert data["public_url"] == "https://hooks.example.com/vh"
    assert data["server"] == {"host": "127.0.0.1", "port": 9123}
    assert list(data["providers"]) == ["vidu", "kvid"]
    assert exports(out)["VIDHOOK_URL"] == "http://127.0.0.1:9123"
    assert "cannot call back" not in out


def test_init_sandbox_points_every_provider_at_the_sandbox(tmp_path, capsys):
    path = tmp_path / "vidhook.toml"
    assert main(["init", str(path), "--sandbox"]) == 0
    out = capsys.readouterr().out
    assert "(it needs the sandbox running: vidhook sandbox --port 8800)" in out
    env = exports(out)
    assert env["SANDBOX_API_KEY"] == "sandbox-key"
    config = load_config(path, env)
    assert list(config.providers) == list(PREFIXES)
    for name, provider in config.providers.items():
        assert provider.base_url == f"http://127.0.0.1:8800/{name}"
        assert provider.initial_delay == 1
    # The sandbox serves its videos on loopback: without this, no result would be kept.
    assert config.archive.allow_private_hosts
    # The sandbox's signing secrets are known: its webhooks verify.
    pixverse = config.providers["pixverse"].webhook_secret
    assert pixverse is not None and pixverse.reveal() == PixVerseFakeSettings().webhook_secret
    assert "# sends callbacks" in path.read_text().split("[providers.pixverse]")[1].splitlines()[0]


def test_init_sandbox_on_another_port_says_where_pixverse_must_send(tmp_path, capsys):
    path = tmp_path / "vidhook.toml"
    assert main(["init", str(path), "--sandbox", "--port", "9123"]) == 0
    out = capsys.readouterr().out
    assert (
        "(it needs the sandbox running: vidhook sandbox --port 8800 --pixverse-webhook "
        "http://127.0.0.1:9123/callbacks/pixverse)"
    ) in out
    # Without PixVerse there is nothing to say.
    assert (
        main(["init", str(path), "--force", "--sandbox", "--port", "9123", "--provider", "vidu"])
        == 0
    )
    assert "(it needs the sandbox running: vidhook sandbox --port 8800)" in capsys.readouterr().out


def test_init_for_real_providers_keeps_downloads_off_private_addresses(tmp_path, capsys):
    path = tmp_path / "vidhook.toml"
    assert main(["init", str(path), "--provider", "vidu"]) == 0
    config = load_config(path, exports(capsys.readouterr().out))
    assert not config.archive.allow_private_hosts
    assert "allow_private_hosts" not in path.read_text()


@pytest.mark.slow
def test_the_sandboxs_pixverse_sends_its_webhooks_to_the_service_init_configured(tmp_path):
    shell = Shell(tmp_path, {"8800": free_port(), "8000": free_port()})
    sandbox_url = f"http://127.0.0.1:{shell.ports['8800']}"
    service_url = f"http://127.0.0.1:{shell.ports['8000']}"
    try:
        init = shell.run(".venv/bin/vidhook init --sandbox http://127.0.0.1:8800 --port 8000")
        assert init.returncode == 0, init.stderr
        shell.export_printed(init.stdout)
        # init names the sandbox command that sends PixVerse's webhooks where they belong.
        told = re.search(r"\(it needs the sandbox running: (.*)\)", init.stdout)
        assert told is not None, init.stdout
        assert f"--pixverse-webhook {service_url}/callbacks/pixverse" in told.group(1)
        shell.start(".venv/bin/" + told.group(1), "sandbox.log")
        shell.start(".venv/bin/vidhook serve", "serve.log")
        for url in (sandbox_url, f"{service_url}/healthz"):
            wait_for(lambda url=url: answers(url), timeout=20, what=url)

        line = '.venv/bin/vidhook submit pixverse --prompt "A lantern on a lake" --wait'
        submitted = shell.run(line)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = submitted.stdout.split()[0]
        admin = {"Authorization": f"Bearer {shell.env['VIDHOOK_ADMIN_TOKEN']}"}
        job = httpx.get(f"{service_url}/api/jobs/{job_id}", headers=admin, timeout=5).json()
    finally:
        shell.stop()
    # The end came by PixVerse's signed webhook, not by a poll.
    assert (job["status"], job["transitions"][-1]["source"]) == ("completed", "callback")
    assert [c["outcome"] for c in job["callbacks"]] == ["applied"]


def test_every_marker_a_fake_knows_has_a_meaning():
    known = markers(create_sandbox_app())
    assert set(known) == set(PREFIXES)
    for name, found in known.items():
        assert found, name
        assert set(found) <= set(MARKER_MEANINGS), name


def test_the_readmes_marker_table_names_the_fakes_that_know_each_marker():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("| marker | what the fake provider does | which fakes know it |")[1]
    documented: dict[str, set[str]] = {}
    for row in table.split("\n\n", 1)[0].splitlines()[2:]:
        names, _, which = (cell.strip() for cell in row.strip("|").split("|"))
        if which == "all 13":
            takers = set(PREFIXES)
        elif which.startswith("all but "):
            takers = set(PREFIXES) - {which.removeprefix("all but ").lower()}
        else:
            takers = {name.strip().lower() for name in which.split(",")}
        for marker in re.findall(r"`\[([\w-]+)\]`", names):
            documented[marker] = takers
    known = markers(create_sandbox_app())
    actual: dict[str, set[str]] = {}
    for name, found in known.items():
        for marker in found:
            actual.setdefault(marker, set()).add(name)
    assert documented == actual


@pytest.mark.slow
def test_sandbox_prints_each_base_url_and_each_marker(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "sandbox", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "writes a vidhook.toml that uses these" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    url = re.match(r"vidhook sandbox: fake providers on (http://127\.0\.0\.1:\d+);", lines[0])
    assert url, lines
    for name in PREFIXES:
        assert f"{name:<10} {url.group(1)}/{name}" in lines
    for marker, meaning in MARKER_MEANINGS.items():
        assert any(line.startswith(f"  [{marker}]") and meaning in line for line in lines), marker
    assert (
        "PixVerse sends every video's webhook to the URL set in its console: "
        "http://127.0.0.1:8000/callbacks/pixverse"
    ) in lines


def test_demo_keep_keeps_the_database(monkeypatch, capsys):
    monkeypatch.setattr(demo, "SAMPLES", demo.SAMPLES[1:2])  # one job: the point is the file
    assert demo.run_demo(timeout=30, keep=True) == 0
    out = capsys.readouterr().out
    kept = re.search(r"the database is kept: (\S+)", out)
    assert kept, out
    path = kept.group(1)
    try:
        assert os.path.getsize(path) > 0
        assert "  [fail] in the prompt: the provider fails the job" in out
    finally:
        shutil.rmtree(os.path.dirname(path))


# -- what submit sends --


def test_options_read_json_values_and_keep_other_text():
    assert parse_options(
        ["duration=8", "bgm=true", "aspect_ratio=16:9", "seed=007", 'payload={"a": [1]}', "x="]
    ) == {
        "duration": 8,
        "bgm": True,
        "aspect_ratio": "16:9",
        "seed": "007",
        "payload": {"a": [1]},
        "x": "",
    }
    with pytest.raises(ArgumentProblem, match="write it as KEY=VALUE"):
        parse_options(["duration"])
    with pytest.raises(ArgumentProblem, match="-o seed is given twice"):
        parse_options(["seed=1", "seed=2"])


def test_submit_passes_options_mode_and_a_local_image(service, cli_env, tmp_path, capsys):
    image = tmp_path / "frame.png"
    image.write_bytes(PNG)
    argv = ["submit", "vidu", "--prompt", "A frame comes alive", "--image", str(image)]
    argv += ["-o", "duration=8", "-o", "bgm=true", "--mode", "img2video", "--url", service.url]
    assert main(argv) == 0
    captured = capsys.readouterr()
    job_id, status = captured.out.split()
    assert status == "queued"
    assert captured.err == f"follow it with: vidhook wait {job_id}\n"
    request = service.job(job_id)["request"]
    assert request["mode"] == "img2video"
    assert request["options"] == {"duration": 8, "bgm": True}
    assert request["images"] == ["data:image/png;base64," + base64.b64encode(PNG).decode()]


def test_a_local_image_is_refused_where_the_provider_takes_urls_only(service, cli_env, tmp_path):
    image = tmp_path / "frame.png"
    image.write_bytes(PNG)
    with pytest.raises(SystemExit) as exc:
        main(["submit", "kvid", "--prompt", "x", "--image", str(image), "--url", service.url])
    assert str(exc.value.code).splitlines() == [
        "vidhook: some fields are invalid",
        "  images: kvid takes images as http(s) URLs only, not as data: URIs (a local file); "
        "put the image at a URL the provider can fetch and pass that",
    ]
    assert service.counts()["jobs"] == 0


def test_a_missing_image_file_is_named_before_anything_is_sent(tmp_path, cli_env, capsys):
    missing = tmp_path / "nope.png"
    argv = ["submit", "vidu", "--prompt", "x", "--image", str(missing), "--url", "http://x.invalid"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"vidhook: --image {missing}: no such file, and not an http(s) URL; "
        "pass the image's URL or the path of a local file\n"
    )
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert main([*argv[:5], str(text), *argv[6:]]) == 2
    assert "not an image this can tell (PNG, JPEG, GIF or WebP)" in capsys.readouterr().err


def test_notify_names_channels_the_service_checks(service, cli_env):
    with pytest.raises(SystemExit) as exc:
        main(["submit", "vidu", "--prompt", "x", "--notify", "team", "--url", service.url])
    assert str(exc.value.code).splitlines()[1] == "  notify: unknown channels: team"
    assert service.counts()["jobs"] == 0
