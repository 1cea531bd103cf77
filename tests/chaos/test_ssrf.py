"""SSRF through the real worker: every internal target is refused with ``forbidden_source`` and never connected to.

Proof of "no connection": listeners on 127.0.0.1 and [::1] record every TCP connection they accept; the URLs aimed
at loopback (directly, by DNS name, in decimal/octal/hex spellings, IPv4-mapped IPv6, behind a redirect) name their
ports, and after the run both have seen nothing. 10/8, 172.16/12, 192.168/16 and 169.254.169.254 cannot be listened
on here; for those the code is asserted (a real connection attempt would also have taken the connect timeout, and
every job here ends in milliseconds). The test worker allows exactly 127.0.0.2/32 (``GUARDQ_URL_ALLOWED_NETWORKS``):
a site there serves redirects toward the forbidden targets, so the check after a redirect is exercised too.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import pytest
from pydantic import ValidationError

from schemas.events import CloudEvent
from schemas.job import FORBIDDEN_SCHEME_ERROR, ImageRef, ModerationJob
from tests.chaos import rawqueue
from tests.chaos.ledger import record, tally
from tests.conftest import Runner
from tests.services.procs import wait_until
from worker.delivery.stream.reader import last_id, wait_for

pytestmark = pytest.mark.integration


class Listener:
    """A TCP listener that accepts and records every connection (and answers nothing)."""

    def __init__(self, family: socket.AddressFamily, host: str) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[object] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(peer)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Redirector:
    """An allowed site (127.0.0.2) whose ``/to?u=URL`` answers 302 to URL."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                site.hits.append(self.path)
                self.send_response(302)
                self.send_header("Location", unquote(self.path.split("?u=", 1)[1]) if "?u=" in self.path else "/")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.2:{self.httpd.server_address[1]}"

    def to(self, url: str) -> str:
        return f"{self.base}/to?u={quote(url, safe='')}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    v4, v6 = Listener(socket.AF_INET, "127.0.0.1"), Listener(socket.AF_INET6, "::1")
    yield v4, v6
    v4.close()
    v6.close()


@pytest.fixture
def redirector() -> Iterator[Redirector]:
    site = Redirector()
    yield site
    site.close()


def local_names() -> list[str]:
    """Host names that already resolve here to a non-public address (no /etc/hosts edits)."""
    names = []
    for name in ("localhost", socket.gethostname()):
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
        except socket.gaierror:
            continue
        if addresses and not any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
            names.append(name)
    return names


def forbidden_urls(p4: int, p6: int, site: Redirector) -> dict[str, str]:
    direct = {
        "127.0.0.1": f"http://127.0.0.1:{p4}/x.jpg",
        "[::1]": f"http://[::1]:{p6}/x.jpg",
        "https to 127.0.0.1": f"https://127.0.0.1:{p4}/x.jpg",
        "0.0.0.0 (reaches the local host)": f"http://0.0.0.0:{p4}/x.jpg",
        "IPv4-mapped IPv6 [::ffff:127.0.0.1]": f"http://[::ffff:127.0.0.1]:{p4}/x.jpg",
        "decimal 2130706433": f"http://2130706433:{p4}/x.jpg",
        "octal 0177.0.0.1": f"http://0177.0.0.1:{p4}/x.jpg",
        "hex 0x7f000001": f"http://0x7f000001:{p4}/x.jpg",
        "dotted hex 0x7f.0x0.0x0.0x1": f"http://0x7f.0x0.0x0.0x1:{p4}/x.jpg",
        "short form 127.1": f"http://127.1:{p4}/x.jpg",
        "userinfo trick (allowed host as user)": f"http://127.0.0.2@127.0.0.1:{p4}/x.jpg",
        "cloud metadata 169.254.169.254": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "10/8": "http://10.0.0.1/x.jpg",
        "10/8 top": "http://10.255.255.254:8080/x.jpg",
        "172.16/12": "http://172.16.0.1/x.jpg",
        "172.16/12 top": "http://172.31.255.254/x.jpg",
        "192.168/16": "http://192.168.1.1/x.jpg",
        "carrier-grade NAT 100.64/10": "http://100.64.0.1/x.jpg",
        "file://": "file:///etc/passwd",
        "gopher://": f"gopher://127.0.0.1:{p4}/_PING%0d%0a",
        "dict://": f"dict://127.0.0.1:{p4}/info",
    }
    for name in local_names():
        direct[f"DNS name {name!r} -> loopback"] = f"http://{name}:{p4}/x.jpg"
    redirects = {
        "redirect to 127.0.0.1": f"http://127.0.0.1:{p4}/x.jpg",
        "redirect to [::1]": f"http://[::1]:{p6}/x.jpg",
        "redirect to localhost": f"http://localhost:{p4}/x.jpg",
        "redirect to decimal 2130706433": f"http://2130706433:{p4}/x.jpg",
        "redirect to 169.254.169.254": "http://169.254.169.254/latest/meta-data/",
        "redirect to 10.0.0.1": "http://10.0.0.1/x.jpg",
        "redirect to file://": "file:///etc/passwd",
        "redirect to gopher://": f"gopher://127.0.0.1:{p4}/_x",
        "two hops, then 127.0.0.1": site.to(f"http://127.0.0.1:{p4}/x.jpg"),
    }
    return direct | {case: site.to(target) for case, target in redirects.items()}


def outcome(event: CloudEvent | None) -> str:
    if event is None:
        return "no event"
    return event.data.error.code.value if event.data.error else "completed"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "dict://127.0.0.1:11211/stat"])
def test_producers_refuse_non_http_schemes_with_the_forbidden_source_error_type(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        ImageRef.parse(url)
    assert [FORBIDDEN_SCHEME_ERROR] == [e["type"] for e in info.value.errors()]


@pytest.mark.timeout(60)
def test_internal_targets_are_refused_as_forbidden_source_without_a_connection(
    runner: Runner, listeners: tuple[Listener, Listener], redirector: Redirector
) -> None:
    v4, v6 = listeners
    urls = forbidden_urls(v4.port, v6.port, redirector)
    # Sent as raw messages: producers already refuse the non-http schemes (ImageRef), the worker must as well.
    template = ModerationJob(image=ImageRef.parse("http://127.0.0.2/x.jpg")).to_message()
    jobs = {
        case: template | {"job_id": f"ssrf-{uuid.uuid4().hex}", "image": {"uri": url}} for case, url in urls.items()
    }
    ids = [message["job_id"] for message in jobs.values()]
    after = last_id(runner.queue.redis)
    started = time.monotonic()
    for message in jobs.values():
        rawqueue.send_args(runner.queue, [message], task_id=message["job_id"])
    events = {e.data.job_id: e for e in wait_for(runner.queue.redis, ids, after=after, timeout_s=30)}
    seconds = round(time.monotonic() - started, 2)
    got = {case: outcome(events.get(message["job_id"])) for case, message in jobs.items()}
    result = tally(runner.queue.redis, ids, scenario="ssrf", variant=f"{len(jobs)} URLs")
    result.seconds = seconds
    result.extra = {"loopback_connections": len(v4.accepted) + len(v6.accepted), "redirect_hops": len(redirector.hits)}
    result.notes = "; ".join(urls)
    record(result)
    assert dict.fromkeys(urls, "forbidden_source") == got
    assert ([], []) == (v4.accepted, v6.accepted)
    for listener, host in ((v4, "127.0.0.1"), (v6, "::1")):  # control: the listeners do see a real connection
        socket.create_connection((host, listener.port), timeout=2).close()
        wait_until(lambda listener=listener: len(listener.accepted) == 1, 5, f"listener on {host} records a connection")
    assert len(redirector.hits) >= 9  # the redirects were followed up to the refused hop
    assert seconds < 20  # nothing waited out a connect timeout
