"""Downloads reach public addresses only: every connection is checked after DNS resolution.

A result URL comes from a provider, and a provider can be impersonated or compromised; a
URL naming loopback, a private network or a cloud metadata address would otherwise make
vidhook fetch from inside its own network. The check sits where connections are opened,
so it covers the first request and every redirect alike, and the address checked is the
address connected to: a name that resolves to something else a moment later (DNS
rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IP]]]


class RefusedHost(Exception):
    """The URL's host is, or resolves to, an address downloads may not reach."""

    def __init__(self, host: str, address: IP) -> None:
        super().__init__(
            f"{host} resolves to {address}, a loopback, private or link-local address; "
            "results are only downloaded from public addresses ([archive] allow_private_hosts)"
        )
        self.host = host
        self.address = address


def is_public(address: IP) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:127.0.0.1 is 127.0.0.1; 2002::/16 and Teredo embed IPv4 addresses too.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[IP]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    # The scope of a link-local IPv6 address ("fe80::1%eth0") is dropped: it is refused.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                              for info in infos))  # fmt: skip


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses ``allowed`` accepts, checked after DNS."""

    def __init__(self, *, allow_private: bool, resolver: Resolver = resolve) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await asyncio.wait_for(self.resolver(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not self.allow_private:
            # Every address, not only the one tried first: a name that also resolves to
            # a private address is refused whole.
            for address in addresses:
                if not is_public(address):
                    raise RefusedHost(host, address)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("downloads never use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its connections opened by a GuardedBackend.

    httpx has no option for the network backend, so the pool it made is replaced by one
    made the same way with the backend added; no proxy from the environment is used, as
    through a proxy the address reached could not be checked.
    """

    def __init__(self, backend: GuardedBackend, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
