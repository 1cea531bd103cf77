"""SSRF guard: decide which IP addresses the worker may connect to for user-supplied URLs.

Only globally routable unicast addresses pass, unless an operator lists networks in
``GUARDQ_URL_ALLOWED_NETWORKS``. The check runs on the resolved address at connect time (inside the HTTP
client's network backend), so DNS names pointing inside, DNS rebinding, odd IP spellings (decimal, octal, hex)
and redirects to internal hosts are all refused the same way, before any connection is made.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import httpcore
from httpcore._backends.base import SOCKET_OPTION

from schemas.errors import ErrorCode, PermanentError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressPolicy:
    """Allow global unicast addresses, plus any explicitly allowed networks."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]

    def permits(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self._allowed):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return self.permits(ip.ipv4_mapped)
        return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_private)

    def check(self, host: str, ip: IPAddress) -> None:
        if not self.permits(ip):
            raise PermanentError(
                f"refusing to connect to {host!r}: it resolves to non-public address {ip}",
                code=ErrorCode.FORBIDDEN_SOURCE,
            )


def resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses ``host`` resolves to (an IP literal in any spelling resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)}:
            raise PermanentError(f"host {host!r} does not resolve", code=ErrorCode.NOT_FOUND) from None
        raise TransientError(f"DNS lookup for {host!r} failed: {exc}", code=ErrorCode.FETCH_FAILED) from None
    seen: dict[str, IPAddress] = {}
    for *_, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        seen.setdefault(address, ipaddress.ip_address(address))
    return list(seen.values())


class GuardedBackend(httpcore.SyncBackend):
    """httpcore network backend that resolves, checks every address, then connects to a checked address.

    TLS still verifies the certificate against the URL's host name: httpcore passes the origin host as SNI.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port)
        for ip in addresses:
            self._policy.check(host, ip)
        last: Exception | None = None
        for ip in addresses:
            try:
                return super().connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")
