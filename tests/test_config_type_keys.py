"""Keys only some provider types take: Replicate's and PixVerse's webhook secrets, fal's JWKS
URL."""

import pytest

from receiver.app import create_app
from receiver.config import PROVIDER_TYPES, TYPE_KEYS, ConfigError, parse_config
from receiver.logs import config_secrets

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {
    "VIDHOOK_ADMIN_TOKEN": "admin-secret",
    "REPLICATE_API_TOKEN": "r8_token",
    "REPLICATE_WEBHOOK_SECRET": SECRET,
    "FAL_KEY": "fal-key",
}


def config(providers, env=ENV):
    return parse_config({"public_url": "https://hooks.example.com", "providers": providers}, env)


def problems(providers, env=ENV):
    with pytest.raises(ConfigError) as caught:
        config(providers, env)
    return caught.value.problems


REPLICATE = {"api_key_env": "REPLICATE_API_TOKEN", "webhook_secret_env": "REPLICATE_WEBHOOK_SECRET"}


def test_replicate_reads_its_webhook_secret_from_the_environment():
    replicate = config({"replicate": REPLICATE}).providers["replicate"]
    assert replicate.webhook_secret is not None
    assert replicate.webhook_secret.reveal() == SECRET
    assert SECRET not in repr(replicate)
    assert replicate.jwks_url is None
    assert replicate.base_url == "https://api.replicate.com"


def test_replicate_needs_its_webhook_secret():
    assert problems({"replicate": {"api_key_env": "REPLICATE_API_TOKEN"}}) == [
        "<memory>: providers.replicate.webhook_secret_env: missing; name the environment "
        "variable that holds the secret"
    ]
    empty = problems({"replicate": REPLICATE}, {**ENV, "REPLICATE_WEBHOOK_SECRET": ""})
    assert len(empty) == 1
    assert empty[0].startswith(
        "<memory>: providers.replicate.webhook_secret_env: environment variable "
        "REPLICATE_WEBHOOK_SECRET is set but empty"
    )


def test_pixverse_needs_its_webhook_secret_and_gets_its_defaults():
    env = {**ENV, "PIXVERSE_API_KEY": "pv-key", "PIXVERSE_WEBHOOK_SECRET": "pv-secret"}
    section = {"api_key_env": "PIXVERSE_API_KEY"}
    assert problems({"pixverse": section}, env) == [
        "<memory>: providers.pixverse.webhook_secret_env: missing; name the environment "
        "variable that holds the secret"
    ]
    section |= {"webhook_secret_env": "PIXVERSE_WEBHOOK_SECRET"}
    pixverse = config({"pixverse": section}, env).providers["pixverse"]
    assert pixverse.webhook_secret is not None and pixverse.webhook_secret.reveal() == "pv-secret"
    assert (pixverse.base_url, pixverse.default_model) == ("https://app-api.pixverse.ai", "v5")
    assert (pixverse.reconcile_after, pixverse.reconcile_interval) == (120, 30)
    assert "pv-secret" in config_secrets(config({"pixverse": section}, env))


def test_a_secret_written_in_the_file_is_refused_without_echoing_it():
    (problem,) = problems({"replicate": REPLICATE | {"webhook_secret": SECRET}})
    assert "put it in an environment variable" in problem and SECRET not in problem


def test_fal_has_a_default_jwks_url_that_can_be_changed():
    fal = config({"fal": {"api_key_env": "FAL_KEY"}}).providers["fal"]
    assert fal.jwks_url == "https://rest.alpha.fal.ai/.well-known/jwks.json"
    assert (fal.base_url, fal.webhook_secret, fal.deadline) == ("https://queue.fal.run", None, 7200)
    other = {"api_key_env": "FAL_KEY", "jwks_url": "https://rest.fal.ai/.well-known/jwks.json"}
    assert config({"fal": other}).providers["fal"].jwks_url == other["jwks_url"]


@pytest.mark.parametrize("value", ["ftp://x/keys.json", "keys.json", 3])
def test_a_jwks_url_must_be_an_http_url(value):
    (problem,) = problems({"fal": {"api_key_env": "FAL_KEY", "jwks_url": value}})
    assert problem.startswith("<memory>: providers.fal.jwks_url: ")


@pytest.mark.parametrize(
    ("kind", "key", "takers"),
    [
        ("vidu", "webhook_secret_env", "pixverse, replicate"),
        ("fal", "webhook_secret_env", "pixverse, replicate"),
        ("veo", "webhook_secret_env", "pixverse, replicate"),
        ("replicate", "jwks_url", "fal"),
    ],
)
def test_a_key_of_another_type_is_refused_naming_who_takes_it(kind, key, takers):
    section = {"type": kind, "api_key_env": "FAL_KEY", key: "REPLICATE_WEBHOOK_SECRET"}
    if kind == "replicate":
        section |= {"webhook_secret_env": "REPLICATE_WEBHOOK_SECRET"}
    assert f"<memory>: providers.p.{key}: a {kind} provider does not take {key}; only {takers}" in (
        " ".join(problems({"p": section}))
    )


def test_which_types_take_which_keys_is_said_by_their_defaults():
    assert {k: sorted(t for t, d in PROVIDER_TYPES.items() if k in d) for k in TYPE_KEYS} == {
        "webhook_secret_env": ["pixverse", "replicate"],
        "jwks_url": ["fal"],
    }


def test_the_webhook_secret_is_redacted_from_logs():
    assert SECRET in config_secrets(config({"replicate": REPLICATE}))


def test_a_secret_that_is_not_a_webhook_secret_stops_the_service():
    bad = config({"replicate": REPLICATE}, {**ENV, "REPLICATE_WEBHOOK_SECRET": "plain-text"})
    with pytest.raises(ConfigError) as caught:
        create_app(bad)
    (problem,) = caught.value.problems
    assert problem.startswith("providers.replicate.webhook_secret_env: not a webhook signing")
    assert "plain-text" not in problem
