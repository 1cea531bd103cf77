"""Start ``guardq webhooks worker`` (dispatcher, scheduler and the Celery delivery worker) for delivery tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from schemas.settings import Settings
from tests.services.procs import ROOT, Service, wait_until

WEBHOOK_ENV = {
    "GUARDQ_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.2/32"]',  # receivers listen on 127.0.0.2 only
    "GUARDQ_WEBHOOK_ALLOW_HTTP": "true",
    "GUARDQ_WEBHOOK_RETRY_SCHEDULE_S": "[0.2, 0.2, 0.2]",  # 4 attempts within about a second (plus timeouts)
    "GUARDQ_WEBHOOK_JITTER": "0.1",
    "GUARDQ_WEBHOOK_TIMEOUT_S": "1",
    "GUARDQ_WEBHOOK_CONNECT_TIMEOUT_S": "1",
    "GUARDQ_WEBHOOK_POLL_S": "0.05",
    "GUARDQ_WEBHOOK_CONCURRENCY": "8",
}


def webhook_settings(settings: Settings, **extra: object) -> Settings:
    """The test session's settings plus the webhook ones above (for producer-side calls made by tests)."""
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.2/32"],
            "webhook_allow_http": True,
            "webhook_retry_schedule_s": [0.2, 0.2, 0.2],
            **extra,
        }
    )


def start_webhook_worker(env: dict[str, str], workdir: Path, *, name: str = "wh1") -> Service:
    """A real ``guardq webhooks worker`` process; returns once its loops and its Celery consumer are up."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"webhooks-{name}.log"
    exe = Path(sys.executable).parent / "guardq"
    out = log.open("wb")
    proc = subprocess.Popen(
        [str(exe), "webhooks", "worker", f"--name={name}-{os.getpid()}"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env, **WEBHOOK_ENV, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        start_new_session=True,
    )
    service = Service(proc, name, workdir, log)

    def up() -> bool:
        text = log.read_text(errors="replace")
        return "webhook_loops_started" in text and " ready." in text

    wait_until(up, 60, f"webhooks worker {name}", proc)
    return service
