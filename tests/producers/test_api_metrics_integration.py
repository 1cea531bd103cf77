"""The API's Prometheus metrics, scraped from ``GET /metrics`` of the running API and read with prometheus_client's
own parser: requests counted by route template, method and status, and a latency histogram per route."""

from __future__ import annotations

import itertools
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from producers.api.auth import ApiKeyStore
from tests.producers.conftest import ApiServer, bearer

pytestmark = pytest.mark.integration

JOB_ROUTE = "/v1/moderations/{job_id}"


def scrape(api: ApiServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: (sample name, sorted labels) -> value."""
    response = httpx.get(f"{api.url}/metrics")
    assert 200 == response.status_code
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str, method: str, status: int
) -> float:
    labels = (("method", method), ("route", route), ("status", str(status)))
    return samples.get(("guardq_api_requests_total", labels), 0.0)


def latency_count(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str, method: str) -> float:
    return samples.get(("guardq_api_request_duration_seconds_count", (("method", method), ("route", route))), 0.0)


def test_requests_are_counted_by_route_template_and_status_and_timed(api: ApiServer, keys: ApiKeyStore) -> None:
    token = keys.create(f"m-{uuid.uuid4().hex[:8]}")[1]
    before = scrape(api)

    for _ in range(3):  # three different ids: one route label, not three
        assert 404 == httpx.get(f"{api.url}/v1/moderations/{uuid.uuid4().hex}", headers=bearer(token)).status_code
    assert 401 == httpx.get(f"{api.url}/v1/moderations/{uuid.uuid4().hex}").status_code
    assert 200 == httpx.get(f"{api.url}/healthz").status_code
    assert 404 == httpx.get(f"{api.url}/no/such/{uuid.uuid4().hex}").status_code

    after = scrape(api)
    assert 3 == requests(after, JOB_ROUTE, "GET", 404) - requests(before, JOB_ROUTE, "GET", 404)
    assert 1 == requests(after, JOB_ROUTE, "GET", 401) - requests(before, JOB_ROUTE, "GET", 401)
    assert 1 == requests(after, "/healthz", "GET", 200) - requests(before, "/healthz", "GET", 200)
    assert 1 == requests(after, "unmatched", "GET", 404) - requests(before, "unmatched", "GET", 404)
    assert 4 == latency_count(after, JOB_ROUTE, "GET") - latency_count(before, JOB_ROUTE, "GET")
    assert not any("/no/such" in dict(labels).get("route", "") for _, labels in after)  # raw paths never label


def test_the_latency_histogram_has_cumulative_buckets_ending_in_inf(api: ApiServer) -> None:
    httpx.get(f"{api.url}/healthz")
    samples = scrape(api)
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "guardq_api_request_duration_seconds_bucket" and dict(labels)["route"] == "/healthz"
    )
    assert float("inf") == buckets[-1][0]
    assert latency_count(samples, "/healthz", "GET") == buckets[-1][1]
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))  # cumulative
