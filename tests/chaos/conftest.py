"""Fixtures for fault injection: a fresh Cluster per test (own Redis, SGLang test server, workers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.cluster import Cluster


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[type[Cluster]]:
    made: list[Cluster] = []

    class Tracked(Cluster):
        def __post_init__(self) -> None:
            made.append(self)

    yield Tracked
    for cluster in made:
        cluster.stop()
