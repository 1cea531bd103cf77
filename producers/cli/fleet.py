"""``guardq fleet status``: per-GPU server health, in-flight jobs, throughput and queue depths, from Redis."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from producers.cli.common import fail, job_queue
from producers.fleetview import snapshot

fleet_cli = typer.Typer(help="Look at the worker fleet (GPU servers, workers, queues).", no_args_is_help=True)

_HEALTH_STYLE = {"up": "green", "ready": "green", "down": "red", "lost": "red", "starting": "yellow"}


def _nodes_table(data: dict[str, Any]) -> Table:
    table = Table(title="workers", title_justify="left")
    for column in ("node", "model", "gpu", "server", "consuming", "in-flight", "done", "failed", "jobs/s", "restarts"):
        table.add_column(column, justify="right" if column in {"in-flight", "done", "failed", "jobs/s"} else "left")
    table.add_column("seen", justify="right")
    for node in data["nodes"]:
        health = node["health"]
        style = _HEALTH_STYLE.get(health, "yellow")
        state = node.get("state", "")
        if node.get("fault"):  # a misconfigured worker (worker/faults.py): paused, and says why
            health, style = f"unhealthy: {node['fault']}", "red"
        consuming = "yes" if node.get("consuming") == "1" else ("no" if node.get("consuming") == "0" else "-")
        table.add_row(
            node["node"],
            node.get("model", "").rsplit("/", 1)[-1],
            node.get("gpu", "") or "-",
            f"[{style}]{health}[/{style}]" + (f" ({state})" if state and state != "running" else ""),
            consuming,
            node.get("in_flight", "-"),
            node.get("completed", "-"),
            node.get("failed", "-"),
            node.get("jobs_per_s", "-"),
            node.get("server_restarts", "0") or "0",
            f"{node['age_s']:.0f}s ago",
        )
    return table


def _queues_table(data: dict[str, Any]) -> Table:
    table = Table(title="queues", title_justify="left")
    table.add_column("queue")
    table.add_column("waiting", justify="right")
    for queue, depth in sorted(data["queues"].items()):
        table.add_row(queue, str(depth))
    table.add_row("[dim](reserved by workers, all queues)[/dim]", str(data["reserved"]))
    return table


@fleet_cli.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    all_queues: Annotated[bool, typer.Option("--all-queues", help="Show every model's queues, even empty.")] = False,
    watch: Annotated[float | None, typer.Option(min=0.5, help="Refresh every N seconds until Ctrl-C.")] = None,
) -> None:
    """Per-GPU server health, in-flight jobs, throughput and queue depths (from the workers' Redis registry)."""
    client = job_queue().redis
    console = Console()
    while True:
        try:
            data = snapshot(client, all_queues=all_queues)
        except redis.RedisError as exc:
            fail(f"cannot read the fleet from Redis: {exc}", code=1)
        if as_json:
            typer.echo(json.dumps(data, indent=2, sort_keys=True))
        else:
            totals = data["totals"]
            console.print(_nodes_table(data) if data["nodes"] else "[yellow]no worker has reported yet[/yellow]")
            console.print(_queues_table(data))
            console.print(
                f"{totals['nodes']} worker(s), {totals['servers_up']} server(s) up, {totals['consuming']} consuming, "
                f"{totals.get('unhealthy', 0)} unhealthy, "
                f"{totals['in_flight']} in flight, {totals['jobs_per_s']} jobs/s, {totals['waiting']} waiting"
            )
        if watch is None:
            return
        time.sleep(watch)
