"""Listening sockets, bound before anything says it is ready, so that a port in use is
reported as such instead of after a "ready" line."""

from __future__ import annotations

import errno
import socket


class PortProblem(Exception):
    pass


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket on ``host``:``port`` (0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise PortProblem(f"cannot listen on {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a port whose last connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise PortProblem(_why(host, port, exc)) from None
    return sock


def check_free(host: str, port: int) -> None:
    """Raise PortProblem if ``host``:``port`` cannot be listened on right now."""
    listen(host, port).close()


def _why(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use (another vidhook, or another "
            "program); stop it, or pick another port with --port"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {host} is not an address of this machine"
    return f"cannot listen on {where}: {exc.strerror or exc}"
