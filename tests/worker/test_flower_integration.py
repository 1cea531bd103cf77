"""Flower, Celery's web monitor, works against the guardq app (the command docs/fleet.md gives)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services.procs import ROOT, Service, free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def flower(worker_env: dict[str, str], session_dir: Path) -> Iterator[str]:
    port = free_port()
    log = session_dir / "flower.log"
    env = {**os.environ, **worker_env, "FLOWER_UNAUTHENTICATED_API": "true"}
    celery = str(Path(sys.executable).parent / "celery")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [celery, "-A", "worker.app:app", "flower", f"--port={port}", "--address=127.0.0.1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1).text == "OK"
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 30, "flower", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_flower_lists_the_running_worker_and_its_queues(flower: str, worker: Service) -> None:
    found: dict[str, Any] = {}

    def listed() -> bool:
        found.update(httpx.get(f"{flower}/api/workers", params={"refresh": "true"}, timeout=10).json())
        return worker.url in found

    wait_until(listed, 20, "worker listed by flower")
    queues = [q["name"] for q in found[worker.url]["active_queues"]]
    assert ["guardq.llavaguard-7b", "guardq.llavaguard-7b.bulk"] == queues
