"""SSRF guard: connect only to addresses the :class:`~schemas.netpolicy.AddressPolicy` permits.

The address rules live in ``schemas/netpolicy.py`` (producers check webhook targets with them at registration);
this module plugs them into httpcore. The check runs on the resolved address at connect time (inside the HTTP
client's network backend), so DNS names pointing inside, DNS rebinding, odd IP spellings (decimal, octal, hex)
and redirects to internal hosts are all refused the same way, before any connection is made.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpcore
from httpcore._backends.base import SOCKET_OPTION

from schemas.netpolicy import AddressPolicy, IPAddress, resolve

__all__ = ["AddressPolicy", "GuardedBackend", "IPAddress", "resolve"]


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
