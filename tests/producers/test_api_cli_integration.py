"""``guardq api-keys`` and ``guardq api`` as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from producers.cli import app
from producers.cli import common as cli_common
from tests.producers.conftest import ApiServer, bearer
from tests.services.procs import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

Invoke = Callable[..., Result]


@pytest.fixture
def guardq(worker_env: dict[str, str]) -> Iterator[Invoke]:
    def invoke(*args: str) -> Result:
        cli_common.settings.cache_clear()
        cli_common.job_queue.cache_clear()
        return CliRunner().invoke(app, list(args), env=worker_env)

    yield invoke
    cli_common.settings.cache_clear()
    cli_common.job_queue.cache_clear()


def test_an_operator_creates_lists_and_revokes_keys_and_the_api_honours_it(guardq: Invoke, api: ApiServer) -> None:
    tenant = f"ops-{uuid.uuid4().hex[:6]}"
    created = guardq("api-keys", "create", tenant, "--scope", "moderate", "--bucket", "photos")
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    listed = guardq("api-keys", "list", tenant)
    url = f"{api.url}/v1/moderations/{uuid.uuid4().hex}"
    before = httpx.get(url, headers=bearer(token)).status_code
    revoked = guardq("api-keys", "revoke", tenant, key_id)
    after = httpx.get(url, headers=bearer(token))

    assert 0 == created.exit_code, created.output
    assert token.startswith(f"gq_{key_id}_") and "cannot be shown again" in created.stderr
    assert key_id in listed.stdout and "active" in listed.stdout and "photos" in listed.stdout
    assert token not in listed.stdout
    assert (0, 404) == (revoked.exit_code, before)  # authenticated: the job just does not exist
    assert (403, "api_key_revoked") == (after.status_code, after.json()["error"]["code"])
    assert "revoked" in guardq("api-keys", "list", tenant).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["api-keys", "create", "bad tenant"], "tenant 'bad tenant' must match"),
        (["api-keys", "create", "t", "--scope", "admin"], "scopes must be among moderate, intake"),
        (["api-keys", "revoke", "t", "000000000000"], "tenant 't' has no key '000000000000'"),
    ],
)
def test_bad_key_commands_exit_non_zero_with_one_line(guardq: Invoke, args: list[str], message: str) -> None:
    result = guardq(*args)
    assert result.exit_code != 0
    assert [f"guardq: {message}"] == [line[: len("guardq: ") + len(message)] for line in result.stderr.splitlines()]


def test_guardq_api_serves_on_the_given_port(worker_env: dict[str, str]) -> None:
    port = free_port()
    guardq_bin = str(Path(sys.executable).parent / "guardq")
    proc = subprocess.Popen(
        [guardq_bin, "api", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **worker_env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, "guardq api", proc)
        assert 200 == httpx.get(f"http://127.0.0.1:{port}/docs").status_code
    finally:
        proc.terminate()
        proc.wait(10)
