"""Prometheus metrics of the HTTP API: requests by route, method and status, and their latency; ``GET /metrics``.

One registry per app (several apps may live in one process, as in the tests), filled by a pure ASGI middleware:
no body buffering (streamed uploads stay streamed) and no task per request. Requests are labelled by their route
template (``/v1/moderations/{job_id}``), never the raw path, so label values stay few; a path that matches no
route counts as ``unmatched``. ``/metrics`` needs no API key, like the health endpoints: expose it only to the
scraper (docs/producers.md).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
# Seconds: enqueue answers take milliseconds; uploads of many MiB over slow links take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    """The API's own registry with its request counter and latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "guardq_api_requests_total",
            "HTTP requests answered by the API, by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "guardq_api_request_duration_seconds",
            "Time from a request's arrival until its response was sent, by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request and counts it under the route the router matched (set in ``scope["route"]``)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception that escapes the app becomes a 500 answer outside this middleware

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - start)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The Prometheus text exposition of this API process."""
    found: ApiMetrics = request.app.state.metrics
    return Response(found.exposition(), media_type=CONTENT_TYPE_LATEST)
