"""``guardq enqueue -`` reads sources from stdin, and ``--policy NAME`` names a stored policy on every job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from typer.testing import CliRunner

from producers.cli import app
from producers.cli import common as cli_common
from tests.producers.conftest import queued_jobs
from tests.producers.test_api_integration import PARKED_MODEL, PARKED_QUEUE

pytestmark = pytest.mark.integration


@pytest.fixture
def parked(redis_client: redis_lib.Redis) -> Iterator[Any]:
    redis_client.delete(PARKED_QUEUE)
    yield lambda: queued_jobs(redis_client, PARKED_QUEUE)
    redis_client.delete(PARKED_QUEUE)


def test_sources_are_read_from_stdin_one_per_line_and_carry_the_named_policy(
    worker_env: dict[str, str], parked: Any
) -> None:
    cli_common.settings.cache_clear()
    cli_common.job_queue.cache_clear()
    stdin = "s3://guardq-test/a.jpg\n\n# a comment\ns3://guardq-test/b c.jpg\n"
    try:
        result = CliRunner().invoke(
            app, ["enqueue", "-", "--policy", "strict@2", "--model", PARKED_MODEL], input=stdin, env=worker_env
        )
    finally:
        cli_common.settings.cache_clear()
        cli_common.job_queue.cache_clear()

    jobs = parked()
    assert 0 == result.exit_code, result.output
    assert [j["job_id"] for j in jobs] == result.stdout.split()
    assert ["s3://guardq-test/a.jpg", "s3://guardq-test/b c.jpg"] == [j["image"]["uri"] for j in jobs]
    assert {"strict@2"} == {j["policy_ref"] for j in jobs}
