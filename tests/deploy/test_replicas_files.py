"""deploy/compose.replicas.yaml, Caddyfile.replicas and vidhook.replicas.toml: two replicas
on one PostgreSQL behind Caddy. No Docker engine runs here: the files are parsed and
cross-checked, Caddy validates and adapts its file, and vidhook loads its config.
(tests/test_replicas_crash.py runs the Caddyfile in front of two real replicas.)"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import tomllib

import pytest

from receiver.config import load_config
from tests.deploy import DEPLOY, compose, env_example, read
from tests.deploy.test_deploy_files import CADDY_VARS, caddy_binaries, caddy_env

REPLICAS = ("vidhook-1", "vidhook-2")
UPSTREAMS = "vidhook-1:8000 vidhook-2:8000"


def document() -> dict:
    return compose("compose.replicas.yaml")


def adapted(tmp_path, upstreams: str = UPSTREAMS) -> dict:
    caddy = caddy_binaries()[0]
    env = caddy_env(tmp_path, **CADDY_VARS, VIDHOOK_UPSTREAMS=upstreams)
    command = [caddy, "adapt", "--config", str(DEPLOY / "Caddyfile.replicas")]
    done = subprocess.run(
        [*command, "--adapter", "caddyfile"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def proxy_handler(config: dict) -> dict:
    text = json.dumps(config)
    marker = '{"handler": "reverse_proxy"'
    assert text.count(marker) == 1, "one reverse_proxy"
    handler, _ = json.JSONDecoder().raw_decode(text[text.index(marker) :])
    return handler


def test_compose_runs_postgres_two_replicas_and_caddy():
    services = document()["services"]
    assert set(services) == {"postgres", *REPLICAS, "caddy"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "ports" not in postgres  # only the replicas reach it
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    names = set()
    for name in REPLICAS:
        replica = services[name]
        assert replica["image"] == "vidhook:local" and replica["env_file"] == ".env"
        assert "postgres" in replica["depends_on"]
        assert replica["volumes"] == ["./vidhook.replicas.toml:/etc/vidhook/vidhook.toml:ro"]
        assert replica["read_only"] == "true" and "ports" not in replica
        names.add(replica["environment"]["VIDHOOK_INSTANCE"])
    assert names == set(REPLICAS)  # each its own name in metrics and on its claims
    build = services["vidhook-1"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).samefile(DEPLOY / "Dockerfile")
    caddy = services["caddy"]
    assert "./Caddyfile.replicas:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert caddy["environment"]["VIDHOOK_UPSTREAMS"] == UPSTREAMS
    assert set(caddy["depends_on"]) == set(REPLICAS)


def test_caddys_address_is_a_trusted_proxy_of_the_replicas():
    doc = document()
    address = doc["services"]["caddy"]["networks"]["vidhook"]["ipv4_address"]
    (network,) = doc["networks"]["vidhook"]["ipam"]["config"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(network["subnet"])
    config = tomllib.loads(read("vidhook.replicas.toml"))
    assert address in config["server"]["trusted_proxies"]


def test_caddy_validates_the_replicas_caddyfile(tmp_path):
    for caddy in caddy_binaries():
        env = caddy_env(tmp_path, **CADDY_VARS, VIDHOOK_UPSTREAMS=UPSTREAMS)
        command = [caddy, "validate", "--config", str(DEPLOY / "Caddyfile.replicas")]
        done = subprocess.run(
            [*command, "--adapter", "caddyfile"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{caddy}: {done.stderr}"


def test_caddy_balances_round_robin_over_every_replica_with_health_checks(tmp_path):
    handler = proxy_handler(adapted(tmp_path))
    assert [u["dial"] for u in handler["upstreams"]] == UPSTREAMS.split()
    assert handler["load_balancing"]["selection_policy"]["policy"] == "round_robin"
    assert handler["health_checks"]["active"]["uri"] == "/readyz"
    variables = {
        name for name, _ in re.findall(r"\{\$(\w+)(:[^}]*)?\}", read("Caddyfile.replicas"))
    }
    environment = document()["services"]["caddy"]["environment"]
    assert variables == set(environment)


@pytest.mark.parametrize("missing", ["", "VIDHOOK_DATABASE_URL"])
def test_the_replicas_config_loads_on_postgresql_with_results_in_s3(tmp_path, missing):
    (tmp_path / "vidhook.toml").write_text(read("vidhook.replicas.toml"))
    names = env_example() + env_example(commented=True)
    env = {name: f"fake-{name.lower()}" for name in names}
    env["VIDHOOK_DATABASE_URL"] = "postgresql://vidhook:secret@postgres:5432/vidhook"
    if missing:
        del env[missing]
        with pytest.raises(Exception, match=missing):
            load_config(tmp_path / "vidhook.toml", env)
        return
    config = load_config(tmp_path / "vidhook.toml", env)
    assert config.database_url is not None
    assert config.archive.store == "s3" and config.archive.s3 is not None
    assert {"POSTGRES_PASSWORD", "VIDHOOK_DATABASE_URL"} <= set(env_example(commented=True))
