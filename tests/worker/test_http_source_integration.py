"""URL sources through the real worker: fetched behind the SSRF guard, with size caps and redirect re-checks.

The test worker allows exactly 127.0.0.2/32 (GUARDQ_URL_ALLOWED_NETWORKS); everything else internal is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.events import EventType
from schemas.job import ImageRef, ModerationJob
from tests import images
from tests.conftest import Runner

pytestmark = pytest.mark.integration
BIG = 60 * 1024 * 1024


class ImageSite:
    """A loopback web server with an image, a redirect to a forbidden host, a 404 and an endless body."""

    def __init__(self, host: str) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                site.hits.append(self.path)
                if self.path == "/cat.jpg":
                    body = images.solid((40, 120, 200), (500, 400))
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("?to=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/huge.jpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    chunk = b"\xff" * 65536
                    try:
                        for _ in range(BIG // len(chunk) + 2):
                            self.wfile.write(chunk)
                    except OSError:
                        return
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def allowed_site() -> Iterator[ImageSite]:
    site = ImageSite("127.0.0.2")
    yield site
    site.close()


@pytest.fixture(scope="module")
def forbidden_site() -> Iterator[ImageSite]:
    site = ImageSite("127.0.0.1")
    yield site
    site.close()


def url_job(url: str) -> ModerationJob:
    return ModerationJob(image=ImageRef.parse(url))


def test_an_image_url_on_an_allowed_host_is_fetched_and_moderated(runner: Runner, allowed_site: ImageSite) -> None:
    event = runner.one(url_job(allowed_site.url("/cat.jpg")))
    assert EventType.COMPLETED == event.type
    assert (500, 400) == (event.data.image.width, event.data.image.height)


def test_internal_hosts_and_redirects_to_them_are_refused_without_a_connection(
    runner: Runner, allowed_site: ImageSite, forbidden_site: ImageSite
) -> None:
    direct = url_job(forbidden_site.url("/cat.jpg"))
    hop = url_job(allowed_site.url("/redirect?to=" + forbidden_site.url("/cat.jpg")))
    metadata = url_job(allowed_site.url("/redirect?to=http://169.254.169.254/latest/meta-data/"))
    events = runner.run(direct, hop, metadata)
    for j in (direct, hop, metadata):
        assert events[j.job_id].data.error is not None
        assert "forbidden_source" == events[j.job_id].data.error.code
    assert [] == forbidden_site.hits


def test_missing_and_oversized_downloads_fail_with_their_codes(runner: Runner, allowed_site: ImageSite) -> None:
    missing, huge = url_job(allowed_site.url("/nope.jpg")), url_job(allowed_site.url("/huge.jpg"))
    events = runner.run(missing, huge)
    assert events[missing.job_id].data.error is not None and "not_found" == events[missing.job_id].data.error.code
    assert events[huge.job_id].data.error is not None and "too_large" == events[huge.job_id].data.error.code
