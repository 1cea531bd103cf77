"""``guardq enqueue -`` reads sources from stdin, ``--policy NAME`` names a stored policy on every job, and
``--callback-url`` passes the webhook target check before anything is queued."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from typer.testing import CliRunner, Result

from producers.cli import app
from producers.policy_store import PolicyStore, build_policy
from tests.producers.conftest import queued_jobs, reset_cli_state
from tests.producers.test_api_integration import PARKED_MODEL, PARKED_QUEUE

pytestmark = pytest.mark.integration


@pytest.fixture
def parked(redis_client: redis_lib.Redis) -> Iterator[Any]:
    redis_client.delete(PARKED_QUEUE)
    yield lambda: queued_jobs(redis_client, PARKED_QUEUE)
    redis_client.delete(PARKED_QUEUE)


def enqueue(*args: str, env: dict[str, str], stdin: str | None = None) -> Result:
    """``guardq enqueue ARGS`` in-process, with settings read afresh from ``env``."""
    reset_cli_state()
    try:
        return CliRunner().invoke(app, ["enqueue", *args, "--model", PARKED_MODEL], input=stdin, env=env)
    finally:
        reset_cli_state()


def test_sources_are_read_from_stdin_one_per_line_and_carry_the_named_policy(
    worker_env: dict[str, str], parked: Any, redis_client: redis_lib.Redis
) -> None:
    name = f"strict-{uuid.uuid4().hex[:8]}"
    store = PolicyStore(redis_client)
    store.create(build_policy(name, non_violating=["O9"]))
    store.create(build_policy(name, non_violating=["O9", "O6"]))
    stdin = "s3://guardq-test/a.jpg\n\n# a comment\ns3://guardq-test/b c.jpg\n"

    result = enqueue("-", "--policy", f"{name}@2", env=worker_env, stdin=stdin)

    jobs = parked()
    assert 0 == result.exit_code, result.output
    assert [j["job_id"] for j in jobs] == result.stdout.split()
    assert ["s3://guardq-test/a.jpg", "s3://guardq-test/b c.jpg"] == [j["image"]["uri"] for j in jobs]
    assert {f"{name}@2"} == {j["policy_ref"] for j in jobs}


def test_a_policy_that_is_not_stored_is_refused_in_one_line_and_nothing_is_queued(
    worker_env: dict[str, str], parked: Any
) -> None:
    result = enqueue("s3://guardq-test/a.jpg", "--policy", "never-stored@3", env=worker_env)
    assert (2, []) == (result.exit_code, parked())
    assert [
        "guardq: --policy never-stored@3: no stored policy 'never-stored' (guardq policy list shows the stored ones)"
    ] == (result.stderr.strip().splitlines())


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://10.1.2.3/hook", "non-public address 10.1.2.3"),
        ("https://127.0.0.2/hook", "non-public address 127.0.0.2"),  # allowed for image URLs, not for webhooks
        ("http://hooks.example.com/hook", "URL scheme 'http' is not allowed; use https"),
        ("https://user:pw@hooks.example.com/hook", "URL must not carry credentials"),
    ],
    ids=["private", "loopback", "http", "credentials"],
)
def test_a_callback_url_the_webhook_check_refuses_fails_in_one_line_and_nothing_is_queued(
    worker_env: dict[str, str], parked: Any, url: str, reason: str
) -> None:
    result = enqueue("s3://guardq-test/a.jpg", "--callback-url", url, env=worker_env)
    lines = result.stderr.strip().splitlines()
    assert (2, 1, []) == (result.exit_code, len(lines), parked())
    assert lines[0].startswith("guardq: --callback-url refused: ")
    assert reason in lines[0]


def test_an_allowed_callback_url_goes_onto_every_job(worker_env: dict[str, str], parked: Any) -> None:
    env = {**worker_env, "GUARDQ_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.2/32"]', "GUARDQ_WEBHOOK_ALLOW_HTTP": "true"}
    result = enqueue(
        "s3://guardq-test/a.jpg", "s3://guardq-test/b.jpg", "--callback-url", "http://127.0.0.2:9/cb", env=env
    )
    assert 0 == result.exit_code, result.output
    assert ["http://127.0.0.2:9/cb"] * 2 == [j["callback_url"] for j in parked()]
