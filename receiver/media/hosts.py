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
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IP]]]
Allowed = Callable[[IP], bool]


class RefusedHost(OSError):
    """The URL's host is, or resolves to, an address downloads may not reach.

    An OSError, as a refused connection is: that is how it passes through aiohttp's
    connector, which hands it back to the caller as itself (receiver.http).
    """

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


def parse_address(text: str) -> IP:
    # The scope of a link-local IPv6 address ("fe80::1%eth0") is dropped: it is refused.
    return ipaddress.ip_address(text.split("%")[0])


async def resolve(host: str, port: int) -> list[IP]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(parse_address(str(info[4][0])) for info in infos))


class Guard:
    """The two checks aiohttp's connector makes for downloads.

    ``resolver`` refuses a name if any of its addresses is not ``allowed`` (not only the
    one tried first); ``socket_factory`` refuses to open a socket to an address that is
    not, which covers a URL naming an address (aiohttp does not resolve those) and is
    the check on the very address connected to.
    """

    def __init__(self, *, allowed: Allowed = is_public, resolver: Resolver = resolve) -> None:
        self.allowed = allowed
        self.resolver = _GuardedResolver(self, resolver)

    def check(self, host: str, address: IP) -> None:
        if not self.allowed(address):
            raise RefusedHost(host, address)

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        self.check(str(sockaddr[0]), parse_address(str(sockaddr[0])))
        return socket.socket(family, kind, proto)


class _GuardedResolver(AbstractResolver):
    def __init__(self, guard: Guard, resolver: Resolver) -> None:
        self.guard = guard
        self.lookup = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        addresses = await self.lookup(host, port)
        for address in addresses:
            self.guard.check(host, address)
        results = []
        for address in addresses:
            kind = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family in (socket.AF_UNSPEC, kind):
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=str(address),
                        port=port,
                        family=kind,
                        proto=socket.IPPROTO_TCP,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
        return results

    async def close(self) -> None:
        return None
