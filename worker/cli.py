"""``guardq worker``: run one Celery worker bound to one inference server (``python -m worker``)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Annotated

import typer

cli = typer.Typer(add_completion=False, no_args_is_help=False, help="Run a guardq worker.")


def _export(name: str, value: object | None) -> None:
    if value is not None:
        os.environ[f"GUARDQ_{name}"] = str(value)


def _wait_ready(timeout_s: float) -> bool:
    from worker.runtime import get_runtime

    backend = get_runtime().backend
    deadline = time.monotonic() + timeout_s
    while True:
        if backend.ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


@cli.command()
def run(
    model: Annotated[str | None, typer.Option(help="Model served (default GUARDQ_MODEL).")] = None,
    sglang_url: Annotated[str | None, typer.Option(help="SGLang server URL (default GUARDQ_SGLANG_URL).")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Jobs in flight (threads).")] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. gpu0@host.")] = None,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues (default: the model's).")] = None,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the SGLang server (or the local model) to be ready.")
    ] = 600.0,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Start one worker: consumes the model's queues (interactive first, then bulk) with a threads pool."""
    _export("MODEL", model)
    _export("SGLANG_URL", sglang_url)
    _export("WORKER_CONCURRENCY", concurrency)
    from schemas.errors import ConfigError
    from schemas.logs import configure_logging
    from schemas.settings import load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(f"guardq worker: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_format, settings.log_level)
    # Celery's per-task "received"/"succeeded" lines duplicate our structured job_finished line and cost CPU.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        ready = _wait_ready(ready_timeout)  # SGLang answering, or the local model loaded, before consuming jobs
    except ConfigError as exc:
        typer.echo(f"guardq worker: {exc}", err=True)
        raise typer.Exit(2) from None
    if not ready:
        where = (
            f"no SGLang server ready at {settings.sglang_url}"
            if settings.backend == "sglang"
            else "the local transformers model did not load"
        )
        typer.echo(f"guardq worker: {where} after {ready_timeout:g}s", err=True)
        raise typer.Exit(3)
    from worker.app import app

    node = hostname or f"guardq-{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={settings.worker_concurrency}",
        f"--queues={queues or ','.join(app.conf.guardq_queues)}",
        f"--hostname={node}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


def main() -> None:
    cli(prog_name="guardq worker")


if __name__ == "__main__":
    main()
