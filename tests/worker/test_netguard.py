"""SSRF guard: user URLs may only reach public addresses; refused targets see no connection at all."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest

from schemas.errors import PermanentError
from worker.sources.http import HttpFetcher
from worker.sources.netguard import AddressPolicy, resolve


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "0.0.0.0",
        "100.64.0.1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "240.0.0.1",
    ],
)
def test_internal_addresses_are_not_permitted(address: str) -> None:
    assert not AddressPolicy().permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_permitted(address: str) -> None:
    assert AddressPolicy().permits(ipaddress.ip_address(address))


def test_an_operator_can_allow_a_network_explicitly() -> None:
    policy = AddressPolicy(["127.0.0.2/32"])
    assert policy.permits(ipaddress.ip_address("127.0.0.2"))
    assert not policy.permits(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f000001", "017700000001", "0x7f.1", "127.1"])
def test_odd_ip_spellings_resolve_to_what_they_mean(spelling: str) -> None:
    assert [ipaddress.ip_address("127.0.0.1")] == resolve(spelling, 80)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[tuple[str, int]]]]:
    """A loopback TCP listener that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[tuple[str, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except OSError:
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    server.close()


def fetcher() -> HttpFetcher:
    return HttpFetcher(policy=AddressPolicy(), max_bytes=1_000_000, timeout_s=2, connect_timeout_s=1, max_redirects=3)


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/x.jpg",
        "http://[::ffff:127.0.0.1]:{port}/x.jpg",
        "http://2130706433:{port}/x.jpg",
        "http://0x7f.1:{port}/x.jpg",
        "http://localhost:{port}/x.jpg",
        "http://127.1:{port}/x.jpg",
    ],
)
def test_forbidden_targets_fail_as_forbidden_source_and_no_connection_is_made(
    listener: tuple[int, list[tuple[str, int]]], template: str
) -> None:
    port, accepted = listener
    with pytest.raises(PermanentError) as info:
        fetcher().fetch(template.format(port=port))
    assert "forbidden_source" == info.value.code
    assert [] == accepted


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://example.com/x.jpg"])
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(PermanentError) as info:
        fetcher().fetch(url)
    assert "forbidden_source" == info.value.code
