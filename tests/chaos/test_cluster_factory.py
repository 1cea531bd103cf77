"""The cluster fixture stops what it made: a cluster's Redis and workers never outlive its test."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.cluster import Cluster


def test_every_cluster_the_factory_makes_is_tracked_for_teardown(
    cluster_factory: type[Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory(tmp_path)  # not started: its teardown stop() has nothing to stop
    assert [cluster] == cluster_factory.made  # type: ignore[attr-defined]
