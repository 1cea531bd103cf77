"""``guardq worker`` (``python -m worker``): one Celery worker, or a supervised GPU fleet.

- no ``--gpus`` and at most one ``--sglang-url``: this process is one worker bound to one inference server;
- ``--gpus 0,1,...|all``: launch one SGLang server per GPU (group of ``tp``) and one worker per server;
- ``--sglang-url`` given several times: one worker per running server (Kubernetes sidecars, compose services).

``--dry-run`` prints the fleet's commands and environment without starting anything.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Annotated

import typer

cli = typer.Typer(add_completion=False, no_args_is_help=False, help="Run a guardq worker or a GPU fleet.")


def _export(name: str, value: object | None) -> None:
    if value is not None:
        os.environ[f"GUARDQ_{name}"] = str(value)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"guardq worker: {message}", err=True)
    raise typer.Exit(code)


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
    sglang_url: Annotated[
        list[str] | None,
        typer.Option(help="SGLang server URL; repeat to attach one supervised worker per running server."),
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="Launch one SGLang server per GPU (group of tp): '0,1,2,3' or 'all'.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the fleet's commands and environment.")] = False,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Jobs in flight per worker (threads).")] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name of a single worker, e.g. gpu0@host.")] = None,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues (default: the model's).")] = None,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the SGLang server (or the local model) to be ready.")
    ] = 600.0,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    server_cmd: Annotated[
        str | None, typer.Option(help="Server command before its flags (GUARDQ_SGLANG_LAUNCH_CMD).")
    ] = None,
    base_port: Annotated[int | None, typer.Option(help="Port of the first server (GUARDQ_SGLANG_BASE_PORT).")] = None,
    tp: Annotated[int | None, typer.Option(min=1, help="GPUs per server (default: the model's, 2 for 34B).")] = None,
    mem_fraction_static: Annotated[float | None, typer.Option(help="SGLang --mem-fraction-static.")] = None,
    max_running_requests: Annotated[int | None, typer.Option(min=1, help="SGLang --max-running-requests.")] = None,
    max_queued_requests: Annotated[int | None, typer.Option(min=1, help="SGLang --max-queued-requests.")] = None,
    server_args: Annotated[
        str | None, typer.Option(help="Further launch_server flags (GUARDQ_SGLANG_EXTRA_ARGS).")
    ] = None,
    model_path: Annotated[
        str | None, typer.Option(help="Fleet: local weights for --model-path (GUARDQ_SGLANG_MODEL_PATH).")
    ] = None,
    tokenizer_path: Annotated[
        str | None, typer.Option(help="Fleet: local tokenizer for --tokenizer-path (GUARDQ_SGLANG_TOKENIZER_PATH).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(min=0, help="Metrics port (fleet: worker i gets port+i).")] = None,
    log_dir: Annotated[str | None, typer.Option(help="Fleet: write each child's output to DIR/<name>.log.")] = None,
    node_host: Annotated[str | None, typer.Option(help="Fleet: host part of node names (default: hostname).")] = None,
) -> None:
    """Start one worker, or launch and supervise a fleet (``--gpus`` / several ``--sglang-url``)."""
    urls = list(sglang_url or [])
    fleet = gpus is not None or len(urls) > 1
    if gpus is not None and urls:
        _fail("give either --gpus (launch servers) or --sglang-url (attach to running ones), not both")
    if dry_run and not fleet:
        _fail("--dry-run needs --gpus or several --sglang-url")
    _export("MODEL", model)
    _export("SGLANG_URL", urls[0] if len(urls) == 1 else None)
    _export("WORKER_CONCURRENCY", concurrency if not fleet else None)
    _export("SGLANG_LAUNCH_CMD", server_cmd)
    _export("SGLANG_BASE_PORT", base_port)
    _export("SGLANG_TP", tp)
    _export("SGLANG_MEM_FRACTION_STATIC", mem_fraction_static)
    _export("SGLANG_MAX_RUNNING_REQUESTS", max_running_requests)
    _export("SGLANG_MAX_QUEUED_REQUESTS", max_queued_requests)
    _export("SGLANG_EXTRA_ARGS", server_args)
    _export("SGLANG_MODEL_PATH", model_path)
    _export("SGLANG_TOKENIZER_PATH", tokenizer_path)
    _export("METRICS_PORT", metrics_port)
    from schemas.errors import ConfigError
    from schemas.logs import configure_logging
    from schemas.settings import load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
        return
    configure_logging(settings.log_format, settings.log_level)
    # Celery's per-task "received"/"succeeded" lines duplicate our structured job_finished line and cost CPU.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if fleet:
        from worker.fleet.main import run_fleet

        raise typer.Exit(
            run_fleet(
                settings,
                gpus=gpus,
                urls=urls,
                concurrency=concurrency,
                dry_run=dry_run,
                log_dir=log_dir,
                host=node_host or socket.gethostname(),
                fail=_fail,
            )
        )
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
    if settings.backend == "sglang" and settings.scores:
        from worker.runtime import get_runtime

        get_runtime().backend.probe_logprobs()  # type: ignore[attr-defined]  # before any job: jobs never wait for it
    from worker.app import app

    node = hostname or f"guardq-{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={settings.max_in_flight()}",
        f"--queues={queues or ','.join(app.conf.guardq_queues)}",
        f"--hostname={node}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


def main() -> None:
    cli(prog_name="guardq worker", args=sys.argv[1:])


if __name__ == "__main__":
    main()
