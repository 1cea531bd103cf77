"""The `guardq` command: every subcommand has --help, bad arguments exit non-zero with one line, the flow works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import images
from tests.services.procs import Service
from worker.delivery.stream.reader import last_id

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "policies"


def guardq(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from producers.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        input=stdin,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["worker", "--help"],
        ["enqueue", "--help"],
        ["events", "tail", "--help"],
        ["status", "--help"],
        ["policy", "show", "--help"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = guardq(*command)
    assert 0 == result.returncode, result.stderr
    assert "Usage" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["policy", "show", "--non-violating", "O12"], {}, "unknown policy category"),
        (["policy", "show", "--model", "nope"], {}, "unknown model"),
        (["enqueue", "ftp://x/y.jpg"], {}, "unsupported image source"),
        (["enqueue", "/no/such/file.jpg"], {}, "neither a URI"),
        (["enqueue", "s3://b/k.jpg", "--meta", "novalue"], {}, "--meta expects KEY=VALUE"),
        (["status", "x"], {"GUARDQ_REDIS_URL": "http://wrong"}, "GUARDQ_REDIS_URL"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_clear_line(args: list[str], env: dict[str, str], fragment: str) -> None:
    result = guardq(*args, env=env)
    assert 0 != result.returncode
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 == len(lines), result.stderr
    assert fragment in lines[0]


def test_policy_show_prints_the_exact_trained_text() -> None:
    result = guardq("policy", "show", "--model", "AIML-TUDA/LlavaGuard-v1.2-7B-OV", "--non-violating", "O9")
    assert 0 == result.returncode
    assert (FIXTURES / "v1.2_O9_non_violating.txt").read_text() + "\n" == result.stdout


def test_policy_show_warns_about_sensitive_declarations() -> None:
    result = guardq("policy", "show", "--sensitive", "O2")
    assert (FIXTURES / "v1.0_O2_sensitive.txt").read_text() + "\n" == result.stdout
    assert "sensitive" in result.stderr


@pytest.mark.integration
def test_enqueue_wait_prints_the_terminal_events_and_status_shows_them(
    worker: Service, worker_env: dict[str, str], tmp_path: Path
) -> None:
    good, bad = tmp_path / "cat.png", tmp_path / "notes.jpg"
    good.write_bytes(images.solid((30, 160, 90), (300, 200), "PNG"))
    bad.write_bytes(b"not really a jpeg")
    result = guardq("enqueue", str(good), str(bad), "--wait", "--timeout", "30", "--meta", "post=7", env=worker_env)
    assert 0 == result.returncode, result.stderr
    events = {e["data"]["metadata"]["source_file"]: e for e in map(json.loads, result.stdout.splitlines())}
    assert "guardq.moderation.completed" == events["cat.png"]["type"]
    assert events["cat.png"]["subject"].startswith("upload://")
    assert {"source_file": "cat.png", "post": "7"} == events["cat.png"]["data"]["metadata"]
    assert "not_an_image" == events["notes.jpg"]["data"]["error"]["code"]

    status = guardq("status", events["cat.png"]["data"]["job_id"], env=worker_env)
    assert 0 == status.returncode
    assert "completed" == json.loads(status.stdout)["state"]
    assert 1 == guardq("status", "no-such-job", env=worker_env).returncode


@pytest.mark.integration
def test_enqueue_reads_sources_from_stdin_and_events_tail_prints_them(
    worker: Service, worker_env: dict[str, str], tmp_path: Path, redis_client: Any
) -> None:
    after = last_id(redis_client)
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(images.solid((10 * i, 90, 200)))
        paths.append(str(path))
    queued = guardq("enqueue", "-", env=worker_env, stdin="\n".join(paths) + "\n")
    assert 0 == queued.returncode, queued.stderr
    job_ids = queued.stdout.split()
    assert 2 == len(job_ids)
    tail = guardq("events", "tail", "--after", after, "--count", "2", "--timeout", "20", env=worker_env)
    seen = {json.loads(line)["data"]["job_id"] for line in tail.stdout.splitlines()}
    assert set(job_ids) == seen
