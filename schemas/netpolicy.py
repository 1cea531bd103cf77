"""Which network addresses guardq may connect to for user-supplied URLs (image URLs, webhook targets).

Pure address logic shared by both sides: the worker checks every resolved address at connect time (inside its
HTTP client's network backend, see ``worker/sources/netguard.py``); producers run the same check when a webhook
target is registered, so a URL pointing inside is refused up front and again at send time (DNS can change).

Only globally routable unicast addresses pass, unless an operator lists networks explicitly
(``GUARDQ_URL_ALLOWED_NETWORKS`` for image fetches, ``GUARDQ_WEBHOOK_ALLOWED_NETWORKS`` for webhook targets).
IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
from httpcore._backends.base import SOCKET_OPTION

from schemas.errors import ErrorCode, PermanentError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressPolicy:
    """Allow global unicast addresses, plus any explicitly allowed networks."""

    def __init__(self, allowed_networks: Iterable[str] = (), *, code: ErrorCode = ErrorCode.FORBIDDEN_SOURCE) -> None:
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self.code = code

    def permits(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self._allowed):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return self.permits(ip.ipv4_mapped)
        return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_private)

    def check(self, host: str, ip: IPAddress) -> None:
        if not self.permits(ip):
            raise PermanentError(
                f"refusing to connect to {host!r}: it resolves to non-public address {ip}", code=self.code
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


def check_url(url: str, policy: AddressPolicy, *, allow_http: bool) -> None:
    """Refuse a target URL unless its scheme is allowed and every address its host resolves to passes ``policy``.

    Raises :class:`PermanentError` (the policy's code) for a refused URL; a DNS failure that may pass is transient.
    """
    parts = urlsplit(url)
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme.lower() not in schemes:
        raise PermanentError(
            f"URL scheme {parts.scheme or '(none)'!r} is not allowed; use {' or '.join(sorted(schemes))}",
            code=policy.code,
        )
    if not parts.hostname:
        raise PermanentError(f"URL {url[:100]!r} has no host", code=policy.code)
    if parts.username or parts.password:
        raise PermanentError("URL must not carry credentials", code=policy.code)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise PermanentError(f"URL {url[:100]!r} has an invalid port", code=policy.code) from None
    try:
        addresses = resolve(parts.hostname, port)
    except PermanentError as exc:
        raise PermanentError(exc.message, code=policy.code) from None
    for ip in addresses:
        policy.check(parts.hostname, ip)


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
