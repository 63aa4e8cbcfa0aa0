from pathlib import Path

import pytest

from receiver.config import (
    ConfigError,
    KeyPair,
    Secret,
    database_path,
    load_config,
    parse_config,
)
from receiver.logs import config_secrets

ROOT = Path(__file__).resolve().parent.parent
ENV = {"VIDHOOK_ADMIN_TOKEN": "admin-secret", "VIDU_API_KEY": "vidu-secret-key"}


def write(tmp_path, text):
    path = tmp_path / "vidhook.toml"
    path.write_text(text)
    return path


MINIMAL = """
public_url = "https://hooks.example.com/"
[providers.vidu]
api_key_env = "VIDU_API_KEY"
"""


def test_minimal_config_fills_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ENV)
    vidu = config.providers["vidu"]
    assert config.public_url == "https://hooks.example.com"
    assert config.database == tmp_path / "vidhook.db"
    assert vidu.base_url == "https://api.vidu.com"
    assert vidu.auth_scheme == "Token"
    assert vidu.api_key.reveal() == "vidu-secret-key"
    assert config.callback_url("vidu", "abc") == "https://hooks.example.com/callbacks/vidu/abc"


def test_example_file_documents_a_loadable_config():
    keys = ("KVID_API_KEY", "REVID_API_KEY", "APIMODELS_API_KEY", "GATEWAY_API_KEY")
    keys += (
        "KLING_ACCESS_KEY",
        "KLING_SECRET_KEY",
        "RUNWAY_API_KEY",
        "LUMA_API_KEY",
        "MINIMAX_API_KEY",
        "REPLICATE_API_TOKEN",
        "REPLICATE_WEBHOOK_SECRET",
        "FAL_KEY",
        "PIXVERSE_API_KEY",
        "PIXVERSE_WEBHOOK_SECRET",
        "GEMINI_API_KEY",
    )
    config = load_config(ROOT / "vidhook.example.toml", {**ENV, **dict.fromkeys(keys, "k")})
    known = {"vidu", "kvid", "revid", "apimodels", "gateway", "kling", "runway", "luma", "minimax",
             "replicate", "fal", "pixverse", "veo"}  # fmt: skip
    assert set(config.providers) == known
    assert config.providers["luma"].base_url == "https://api.lumalabs.ai/dream-machine/v1"
    assert config.providers["minimax"].reconcile_after == 300
    assert config.providers["gateway"].type == "newapi"
    assert config.providers["revid"].initial_delay == 45
    assert config.providers["pixverse"].webhook_secret is not None
    assert config.providers["veo"].base_url == "https://generativelanguage.googleapis.com"


def test_secrets_do_not_show_in_reprs(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ENV)
    assert "vidu-secret-key" not in repr(config)
    assert "admin-secret" not in repr(config)
    assert Secret("x").fingerprint.startswith("sha256:")


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("[providers.vidu]\napi_key_env='VIDU_API_KEY'", "public_url", "missing"),
        ("public_url='ftp://x'\n[providers.vidu]\napi_key_env='K'", "public_url", "http"),
        ("public_url='https://x'", "providers", "[providers.vidu]"),
        ("public_url='https://x'\n[providers.vidu]\n", "providers.vidu.api_key_env", "missing"),
        (
            "public_url='https://x'\n[providers.vidu]\napi_key_env='NOPE'",
            "providers.vidu.api_key_env",
            "NOPE is not set",
        ),
        (
            "public_url='https://x'\n[providers.vidu]\napi_key='sk-123'\napi_key_env='VIDU_API_KEY'",
            "providers.vidu.api_key",
            "environment variable",
        ),
        (
            "public_url='https://x'\n[providers.vidu]\napi_key_env='VIDU_API_KEY'\n"
            "auth_scheme='Basic'",
            "providers.vidu.auth_scheme",
            "Token, Bearer",
        ),
        (
            "public_url='https://x'\n[providers.vidu]\napi_key_env='VIDU_API_KEY'\ntimeout=-1",
            "providers.vidu.timeout",
            "positive",
        ),
        (
            "public_url='https://x'\n[providers.nope]\napi_key_env='VIDU_API_KEY'",
            "providers.nope.type",
            "unknown provider type",
        ),
        (
            "public_url='https://x'\ndefault_channels=['team']\n"
            "[providers.vidu]\napi_key_env='VIDU_API_KEY'",
            "default_channels",
            "[channels.team]",
        ),
        (
            "public_url='https://x'\nbogus=1\n[providers.vidu]\napi_key_env='VIDU_API_KEY'",
            "bogus",
            "unknown key",
        ),
    ],
)
def test_problems_name_file_key_and_fix(tmp_path, text, key, hint):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    matching = [p for p in caught.value.problems if p.startswith(f"{path}: {key}:")]
    assert matching, caught.value.problems
    assert hint in matching[0]
    assert "sk-123" not in str(caught.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml", ENV)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "public_url = "), ENV)


def test_admin_token_env_must_be_set(tmp_path):
    with pytest.raises(ConfigError, match="admin_token_env: environment variable VIDHOOK_ADMIN"):
        load_config(write(tmp_path, MINIMAL), {"VIDU_API_KEY": "k"})


def test_previous_keys_and_environment_overrides(tmp_path):
    env = {**ENV, "OLD_KEY": "old", "VIDHOOK_PUBLIC_URL": "https://other.example/vh"}
    text = MINIMAL + "previous_api_key_envs = ['OLD_KEY']\n"
    config = load_config(write(tmp_path, text), env)
    vidu = config.providers["vidu"]
    assert [k.reveal() for k in vidu.keys] == ["vidu-secret-key", "old"]
    assert vidu.key_for(Secret("old").fingerprint).reveal() == "old"
    assert vidu.key_for("sha256:unknown") is None
    assert config.public_url == "https://other.example/vh"


def test_channel_secrets_come_from_the_environment():
    data = {
        "public_url": "https://x",
        "default_channels": ["team"],
        "providers": {"vidu": {"api_key_env": "VIDU_API_KEY"}},
        "channels": {"team": {"type": "slack", "webhook_url_env": "SLACK_URL"}},
    }
    config = parse_config(data, {**ENV, "SLACK_URL": "https://hooks.slack.com/x"})
    assert config.channels["team"].secrets["webhook_url"].reveal() == "https://hooks.slack.com/x"
    data["channels"]["team"]["webhook_url"] = "https://hooks.slack.com/x"
    with pytest.raises(ConfigError, match=r"channels.team.webhook_url: secrets do not go"):
        parse_config(data, {**ENV, "SLACK_URL": "y"})


def test_provider_types_bring_their_own_defaults_and_tables_override_them(tmp_path):
    text = (
        MINIMAL
        + "[providers.revid]\napi_key_env = 'VIDU_API_KEY'\n"
        + "[providers.fast]\ntype = 'revid'\napi_key_env = 'VIDU_API_KEY'\n"
        + "requests_per_second = 2\ninitial_delay = 1\n"
    )
    config = load_config(write(tmp_path, text), ENV)
    revid, fast = config.providers["revid"], config.providers["fast"]
    assert (revid.requests_per_second, revid.initial_delay) == (16.0, 45.0)
    assert (fast.requests_per_second, fast.initial_delay, fast.type) == (2.0, 1.0, "revid")
    assert config.providers["vidu"].requests_per_second is None


def test_newapi_needs_a_base_url(tmp_path):
    text = MINIMAL + "[providers.gateway]\ntype = 'newapi'\napi_key_env = 'VIDU_API_KEY'\n"
    with pytest.raises(ConfigError, match=r"providers.gateway.base_url: required"):
        load_config(write(tmp_path, text), ENV)


def test_the_database_path_is_found_without_any_secret(tmp_path):
    path = write(tmp_path, 'database = "data/v.db"\n' + MINIMAL)
    assert database_path(path, {}) == tmp_path / "data" / "v.db"
    assert database_path(path, {"VIDHOOK_DATABASE": "/srv/v.db"}) == Path("/srv/v.db")
    with pytest.raises(ConfigError, match="file not found"):
        database_path(tmp_path / "absent.toml", {})


# -- Kling: an access key and a secret key instead of api_key_env -----------------------------

KLING_ENV = ENV | {
    "KLING_AK": "ak-config-1",
    "KLING_SK": "sk-config-1",
    "OLD_AK": "ak-0",
    "OLD_SK": "sk-0",
}


def kling_config(**section):
    providers = {"kling": section, "vidu": {"api_key_env": "VIDU_API_KEY"}}
    return parse_config({"public_url": "https://x", "providers": providers}, KLING_ENV)


def test_kling_takes_a_key_pair_with_its_own_defaults():
    config = kling_config(access_key_env="KLING_AK", secret_key_env="KLING_SK")
    kling = config.providers["kling"]
    assert isinstance(kling.api_key, KeyPair)
    assert (kling.api_key.access.reveal(), kling.api_key.secret.reveal()) == (
        "ak-config-1",
        "sk-config-1",
    )
    assert kling.base_url == "https://api-singapore.klingai.com"
    assert kling.default_model == "kling-v2-6"
    assert "sk-config-1" not in repr(config) and "ak-config-1" not in repr(config)
    # Both keys are kept out of logs, each on its own.
    assert {"ak-config-1", "sk-config-1"} <= set(config_secrets(config))


def test_a_pair_s_fingerprint_covers_both_keys():
    ak, sk = Secret("ak"), Secret("sk")
    pair = KeyPair(ak, sk)
    assert pair.fingerprint.startswith("sha256:")
    others = [
        KeyPair(ak, Secret("sk2")),  # a new secret key under the same access key
        KeyPair(Secret("ak2"), sk),
        KeyPair(Secret("aks"), Secret("k")),  # the same characters, split elsewhere
        KeyPair(sk, ak),
    ]
    assert len({pair.fingerprint, *(o.fingerprint for o in others)}) == 5
    assert pair.fingerprint not in (ak.fingerprint, sk.fingerprint, Secret("aksk").fingerprint)
    assert KeyPair(Secret("ak"), Secret("sk")).fingerprint == pair.fingerprint


def test_previous_pairs_poll_the_jobs_they_created():
    config = kling_config(
        access_key_env="KLING_AK",
        secret_key_env="KLING_SK",
        previous_access_key_envs=["OLD_AK"],
        previous_secret_key_envs=["OLD_SK"],
    )
    kling = config.providers["kling"]
    old = KeyPair(Secret("ak-0"), Secret("sk-0"))
    found = kling.key_for(old.fingerprint)
    assert isinstance(found, KeyPair) and found.secret.reveal() == "sk-0"
    assert kling.key_for(KeyPair(Secret("ak-0"), Secret("sk-1")).fingerprint) is None


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [
        (
            {"api_key_env": "KLING_AK"},
            "providers.kling.api_key_env",
            "access_key_env and secret_key_env",
        ),
        ({"api_key_env": "KLING_AK"}, "providers.kling.access_key_env", "missing"),
        ({"access_key_env": "KLING_AK"}, "providers.kling.secret_key_env", "missing"),
        (
            {"access_key_env": "KLING_AK", "secret_key_env": "NOT_SET"},
            "providers.kling.secret_key_env",
            "environment variable NOT_SET is not set",
        ),
        (
            {
                "access_key_env": "KLING_AK",
                "secret_key_env": "KLING_SK",
                "previous_api_key_envs": ["OLD_AK"],
            },
            "providers.kling.previous_api_key_envs",
            "previous_access_key_envs and previous_secret_key_envs",
        ),
        (
            {
                "access_key_env": "KLING_AK",
                "secret_key_env": "KLING_SK",
                "previous_access_key_envs": ["OLD_AK"],
                "previous_secret_key_envs": [],
            },
            "providers.kling.previous_secret_key_envs",
            "one secret key per access key",
        ),
        (
            {"access_key_env": "KLING_AK", "secret_key_env": "KLING_SK", "secret_key": "sk"},
            "providers.kling.secret_key",
            "secrets do not go in the file",
        ),
    ],
)
def test_kling_key_problems_are_named(section, key, hint):
    with pytest.raises(ConfigError) as caught:
        kling_config(**section)
    problems = [p for p in caught.value.problems if f": {key}: " in p]
    assert problems and hint in problems[0], caught.value.problems
    assert "sk-config-1" not in str(caught.value) and "ak-config-1" not in str(caught.value)


def test_only_kling_takes_a_key_pair():
    providers = {"vidu": {"api_key_env": "VIDU_API_KEY", "access_key_env": "KLING_AK"}}
    with pytest.raises(
        ConfigError, match=r"providers.vidu.access_key_env: a vidu provider takes one key"
    ):
        parse_config({"public_url": "https://x", "providers": providers}, KLING_ENV)


def test_runway_defaults():
    providers = {"runway": {"api_key_env": "VIDU_API_KEY"}}
    runway = parse_config({"public_url": "https://x", "providers": providers}, ENV).providers[
        "runway"
    ]
    assert (runway.base_url, runway.default_model) == ("https://api.dev.runwayml.com", "gen4.5")
    assert runway.poll_interval == 5


def test_server_limits_have_defaults_for_a_small_vm_and_can_be_set(tmp_path):
    server = load_config(write(tmp_path, MINIMAL), ENV).server
    assert (server.max_connections, server.header_timeout) == (500, 5.0)
    assert server.max_body_memory == 64 * 1024 * 1024
    text = (
        MINIMAL + "[server]\nmax_connections = 50\nheader_timeout = 2.5\nmax_body_memory = 1000\n"
    )
    server = load_config(write(tmp_path, text), ENV).server
    assert (server.max_connections, server.header_timeout, server.max_body_memory) == (
        50,
        2.5,
        1000,
    )


@pytest.mark.parametrize(
    ("line", "key", "hint"),
    [
        ("max_connections = 0", "server.max_connections", "at least 1"),
        ("max_connections = 'many'", "server.max_connections", "must be an integer, got a string"),
        ("header_timeout = 0", "server.header_timeout", "positive number of seconds"),
        ("max_body_memory = -1", "server.max_body_memory", "positive number of bytes"),
    ],
)
def test_server_limits_refuse_values_that_cannot_work(tmp_path, line, key, hint):
    path = write(tmp_path, MINIMAL + f"[server]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    matching = [p for p in caught.value.problems if p.startswith(f"{path}: {key}:")]
    assert matching and hint in matching[0], caught.value.problems
