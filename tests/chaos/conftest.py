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
        # Not __post_init__: Cluster's dataclass __init__ calls only a __post_init__ it had when it was decorated,
        # so one added by a subclass never ran, nothing was tracked, and every cluster's processes outlived its test.
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    Tracked.made = made  # type: ignore[attr-defined]
    yield Tracked
    for cluster in made:
        cluster.stop()
