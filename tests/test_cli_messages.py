"""Messages that point the right way: each is read as the user reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from receiver.app import create_app
from receiver.cli import main
from receiver.config import parse_config
from receiver.ports import listen
from receiver.sandbox import ServerThread
from tests.conftest import ADMIN_TOKEN, ENV, VIDU_KEY, Service
from tests.test_restart import REPO

GOOD = """
public_url = "https://hooks.example.com"
[providers.vidu]
api_key_env = "VIDU_API_KEY"
"""


@pytest.fixture
def config_env(monkeypatch):
    monkeypatch.setenv("VIDU_API_KEY", VIDU_KEY)
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    for name in ("VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE", "VIDHOOK_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def problems(tmp_path, text, capsys):
    """The problem lines `vidhook check` prints for a config file."""
    path = tmp_path / "vidhook.toml"
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"vidhook: {path} has problems:"
    return [line.strip() for line in err[1:]], path


@pytest.mark.parametrize(
    ("text", "key", "meant"),
    [
        (GOOD.replace("public_url", "publc_url"), "publc_url", "public_url"),
        (GOOD.replace("api_key_env", "api_key_evn"), "providers.vidu.api_key_evn", "api_key_env"),
        (GOOD + "[server]\nprot = 8000\n", "server.prot", "port"),
        (
            GOOD + "[channels.log]\ntype = 'console'\nevent = ['failed']\n",
            "channels.log.event",
            "events",
        ),
        (GOOD.replace("[providers.vidu]", "[providers.vidoo]"), "providers.vidoo.type", "vidu"),
    ],
)
def test_a_misspelt_key_gets_a_did_you_mean(tmp_path, config_env, capsys, text, key, meant):
    found, path = problems(tmp_path, text, capsys)
    line = next(p for p in found if p.startswith(f"{path}: {key}:"))
    assert line.endswith(f"did you mean {meant}?")


def test_an_unknown_key_like_none_lists_the_known_ones(tmp_path, config_env, capsys):
    found, path = problems(tmp_path, GOOD + "[server]\nzzz = 1\n", capsys)
    assert found == [
        f"{path}: server.zzz: unknown key; known keys: allowed_hosts, header_timeout, host,"
        " max_body_memory, max_connections, port, trusted_proxies"
    ]


def test_a_quoted_number_is_said_to_be_a_string(tmp_path, config_env, capsys):
    found, path = problems(tmp_path, GOOD + '[server]\nport = "8000"\n', capsys)
    assert found == [
        f"{path}: server.port: must be an integer, got a string; write port = 8000 without quotes"
    ]
    found, path = problems(tmp_path, GOOD + 'timeout = "30"\n', capsys)
    assert found == [
        f"{path}: providers.vidu.timeout: must be a positive number of seconds, got a string;"
        " write timeout = 30 without quotes"
    ]


def test_a_bad_public_url_from_the_environment_is_blamed_on_the_variable(
    tmp_path, config_env, monkeypatch, capsys
):
    monkeypatch.setenv("VIDHOOK_PUBLIC_URL", "127.0.0.1:8000")
    found, _ = problems(tmp_path, GOOD, capsys)
    assert found == [
        "environment variable VIDHOOK_PUBLIC_URL: must be an absolute http(s) URL such as "
        "https://hooks.example.com, got '127.0.0.1:8000'"
    ]


def test_a_bad_public_url_in_the_file_is_blamed_on_the_file(tmp_path, config_env, capsys):
    found, path = problems(tmp_path, GOOD.replace("https://hooks.example.com", "hooks"), capsys)
    assert found == [
        f"{path}: public_url: must be an absolute http(s) URL such as https://hooks.example.com"
    ]


def test_an_empty_variable_is_said_to_be_empty_not_unset(tmp_path, config_env, monkeypatch, capsys):
    monkeypatch.setenv("VIDU_API_KEY", "")
    found, path = problems(tmp_path, GOOD, capsys)
    assert (
        f"{path}: providers.vidu.api_key_env: environment variable VIDU_API_KEY is set but "
        "empty; give it the value"
    ) in found
    monkeypatch.delenv("VIDU_API_KEY")
    found, path = problems(tmp_path, GOOD, capsys)
    assert (
        f"{path}: providers.vidu.api_key_env: environment variable VIDU_API_KEY is not set; "
        "export it before starting"
    ) in found


def test_submitting_to_an_unknown_provider_lists_the_configured_ones(service, cli_env):
    with pytest.raises(SystemExit) as exc:
        main(["submit", "pika", "--prompt", "x", "--url", service.url])
    configured = ", ".join(sorted(service.server.app.state.runtime.providers))
    assert str(exc.value.code).splitlines() == [
        "vidhook: some fields are invalid",
        f"  provider: no provider is named pika; the configured providers are {configured}",
    ]


@contextmanager
def service_with_a_gateway(sandbox_url, db_path):
    """The service with a new-api gateway configured under the name "gateway"."""
    server = ServerThread(None).bind()
    providers = {
        "vidu": {"base_url": f"{sandbox_url}/vidu", "api_key_env": "VIDU_API_KEY"},
        "gateway": {
            "type": "newapi",
            "base_url": f"{sandbox_url}/newapi",
            "api_key_env": "VIDU_API_KEY",
            "default_model": "kling-v1",
        },
    }
    data = {"public_url": server.url, "database": str(db_path), "providers": providers}
    server.app = create_app(parse_config(data, ENV))
    server.start()
    service = Service(server, db_path)
    try:
        yield service
    finally:
        service.close()
        server.stop()


def test_submitting_to_a_provider_type_names_the_provider_of_that_type(sandbox, tmp_path, cli_env):
    with service_with_a_gateway(sandbox.url, tmp_path / "vidhook.db") as service:
        with pytest.raises(SystemExit) as exc:
            main(["submit", "newapi", "--prompt", "x", "--url", service.url])
        assert str(exc.value.code).splitlines() == [
            "vidhook: some fields are invalid",
            "  provider: newapi is a provider type, not a configured provider's name; "
            "the configured provider of type newapi is gateway",
        ]
        assert service.rows("SELECT count(*) FROM jobs")[0][0] == 0


@pytest.mark.slow
def test_a_busy_port_is_reported_before_anything_says_ready(tmp_path):
    held = listen("127.0.0.1", 0)
    held.listen()
    port = held.getsockname()[1]
    config = tmp_path / "vidhook.toml"
    config.write_text(GOOD + f"[server]\nport = {port}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDHOOK_")}
    env |= {"VIDU_API_KEY": VIDU_KEY, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "receiver", "serve", "--config", str(config)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        held.close()
    assert done.returncode == 3  # EXIT_PORT
    assert done.stderr.splitlines() == [
        f"vidhook: cannot listen on 127.0.0.1:{port}: the port is in use (another vidhook, "
        "or another program); stop it, or pick another port with --port"
    ]
    assert "ready" not in done.stdout + done.stderr


def test_check_warns_of_an_email_password_sent_without_tls(
    tmp_path, config_env, monkeypatch, capsys
):
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-secret")
    mail = (
        '[channels.mail]\ntype = "email"\nhost = "{host}"\nsecurity = "none"\n'
        'username = "me"\npassword_env = "SMTP_PASSWORD"\nfrom = "a@example.com"\n'
        'to = ["b@example.com"]\n'
    )
    path = tmp_path / "vidhook.toml"
    path.write_text(GOOD + mail.format(host="smtp.example.com"))
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        'warning: channel mail logs in to smtp.example.com without TLS (security = "none"): '
        'its password crosses the network in clear; use "starttls" or "tls"'
    ) in out.splitlines()
    assert "smtp-secret" not in out
    # A relay on this machine is not the network.
    path.write_text(GOOD + mail.format(host="127.0.0.1"))
    assert main(["check", "--config", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out
