"""Entry of ``guardq worker --gpus ...`` / ``--sglang-url A --sglang-url B``: resolve GPUs, plan, print or supervise."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from schemas.errors import ConfigError
from schemas.models import get_model
from schemas.settings import Settings
from worker.fleet.gpus import select_gpus
from worker.fleet.launcher import FleetPlan, build_plan

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
    busy = busy_server_ports(plan, settings.sglang_host)
    if busy:
        fail(
            f"port(s) {', '.join(busy)} already in use on {settings.sglang_host}: another process (an SGLang "
            "server left running?) holds them; stop it or choose --base-port"
        )
        return 2
    from worker.fleet.supervisor import Supervisor

    log.info("fleet_starting", model=model.name, slots=[s.node for s in plan.slots], queues=plan.queues)
    return Supervisor(plan, settings, model, log_dir=Path(log_dir) if log_dir else None).run()


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not listen on ``host:port`` because something else already does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT leftovers are fine
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def busy_server_ports(plan: FleetPlan, host: str) -> list[str]:
    """``port (node)`` for each server the plan launches whose port is taken: checked once, before launching,
    so a port clash is one clear error instead of a server that crash-loops (or a stranger answering its probes)."""
    busy = []
    for slot in plan.slots:
        if slot.server is None:
            continue
        port = urlsplit(slot.url).port
        if port is not None and port_in_use(host, port):
            busy.append(f"{port} ({slot.node})")
    return busy
