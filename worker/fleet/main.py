"""Entry of ``guardq worker --gpus ...`` / ``--sglang-url A --sglang-url B``: resolve GPUs, plan, print or supervise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from schemas.errors import ConfigError
from schemas.models import get_model
from schemas.settings import Settings
from worker.fleet.gpus import select_gpus
from worker.fleet.launcher import build_plan

log = structlog.get_logger("guardq.fleet")


def run_fleet(
    settings: Settings,
    *,
    gpus: str | None,
    urls: list[str],
    concurrency: int | None,
    dry_run: bool,
    log_dir: str | None,
    host: str,
    fail: Callable[[str], None],
) -> int:
    """Print the plan (``dry_run``) or launch and supervise it until SIGTERM; returns the exit code."""
    model = get_model(settings.model)
    try:
        selected = select_gpus(gpus) if gpus is not None else None
        plan = build_plan(settings, model, host=host, gpus=selected, urls=urls, concurrency=concurrency)
    except ConfigError as exc:
        fail(str(exc))
        return 2
    if dry_run:
        print(plan.render(), end="")
        return 0
    from worker.fleet.supervisor import Supervisor

    log.info("fleet_starting", model=model.name, slots=[s.node for s in plan.slots], queues=plan.queues)
    return Supervisor(plan, settings, model, log_dir=Path(log_dir) if log_dir else None).run()
