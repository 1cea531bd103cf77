"""``guardq webhooks``: manage signed-webhook subscriptions and run the webhook worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Annotated

import typer
from pydantic import ValidationError

from producers.broker import JobQueue
from producers.cli.common import fail, job_queue, settings
from schemas.errors import GuardqError
from schemas.records import DeliveryField
from schemas.webhooks import DeliveryState
from worker.delivery import DeliveryStore, SubscriptionRegistry, queue_test_delivery, wait_settled

webhooks_cli = typer.Typer(help="Signed webhooks (Standard Webhooks): subscriptions and the delivery worker.")


def _registry() -> SubscriptionRegistry:
    return SubscriptionRegistry(job_queue().redis, settings())


@webhooks_cli.command("add")
def add(
    url: Annotated[str, typer.Argument(help="Endpoint that receives the events (https://...).")],
    tenant: Annotated[str, typer.Option(help="Tenant whose events go there.")] = "default",
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only these types: completed, failed (repeatable; default all).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="A note for people.")] = None,
) -> None:
    """Register an endpoint; prints the subscription as JSON, including its whsec_ secret (shown only here)."""
    try:
        sub = _registry().add(url=url, tenant=tenant, event_types=event_type or [], description=description)
    except GuardqError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(exc.errors()[0]["msg"])
    typer.echo(sub.model_dump_json(indent=2))


@webhooks_cli.command("list")
def list_(tenant: Annotated[str | None, typer.Option(help="Only this tenant's subscriptions.")] = None) -> None:
    """Print subscriptions as JSON lines (secrets left out)."""
    for sub in _registry().all(tenant):
        typer.echo(json.dumps(sub.public()))


@webhooks_cli.command("remove")
def remove(subscription_id: Annotated[str, typer.Argument(help="Subscription id (sub_...).")]) -> None:
    """Delete a subscription; its pending deliveries are dead-lettered when they come due."""
    if not _registry().remove(subscription_id):
        fail(f"no webhook subscription {subscription_id!r}", code=1)
    typer.echo(f"removed {subscription_id}")


@webhooks_cli.command("enable")
def enable(subscription_id: Annotated[str, typer.Argument(help="Subscription id (sub_...).")]) -> None:
    """Re-enable a subscription (for instance after its endpoint answered 410 and was fixed)."""
    try:
        sub = _registry().set_enabled(subscription_id, True)
    except GuardqError as exc:
        fail(str(exc), code=1)
    typer.echo(json.dumps(sub.public()))


@webhooks_cli.command("test")
def ping(
    subscription_id: Annotated[str, typer.Argument(help="Subscription id (sub_...).")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 30.0,
) -> None:
    """Send one signed guardq.webhook.test event (one attempt) and print the outcome; exit 1 unless delivered.

    Needs a running `guardq webhooks worker`.
    """
    queue = job_queue()
    try:
        delivery_id = queue_test_delivery(queue.redis, settings(), subscription_id)
    except GuardqError as exc:
        fail(str(exc), code=1)
    status = wait_settled(DeliveryStore(queue.redis, settings()), delivery_id, timeout) or {}
    shown = (DeliveryField.STATE, DeliveryField.ATTEMPTS, DeliveryField.LAST_STATUS, DeliveryField.LAST_ERROR)
    outcome = {k.value: status.get(k) for k in shown}
    typer.echo(json.dumps({"delivery_id": delivery_id, **outcome}))
    state = status.get(DeliveryField.STATE)
    if state != DeliveryState.DELIVERED:
        fail(
            "test delivery not delivered"
            + (" (is `guardq webhooks worker` running?)" if state == DeliveryState.PENDING else ""),
            code=1,
        )


@webhooks_cli.command("secret")
def secret(
    tenant: Annotated[str, typer.Option(help="Tenant whose callback secret to show.")] = "default",
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it with a new one.")] = False,
) -> None:
    """Print the whsec_ secret that signs the tenant's per-job callback_url deliveries (created on first use)."""
    typer.echo(_registry().callback_secret(tenant, rotate=rotate))


@webhooks_cli.command("worker")
def worker(
    concurrency: Annotated[int | None, typer.Option(min=1, help="Deliveries in flight (threads).")] = None,
    dispatch: Annotated[bool, typer.Option(help="Run the dispatcher (stream -> deliveries).")] = True,
    deliver: Annotated[bool, typer.Option(help="Run the Celery delivery worker (queue guardq.webhooks).")] = True,
    name: Annotated[str | None, typer.Option(help="Name of this process (consumer and Celery node).")] = None,
) -> None:
    """Run webhook delivery: dispatcher and scheduler loops here, the Celery worker as a child process."""
    if concurrency is not None:
        os.environ["GUARDQ_WEBHOOK_CONCURRENCY"] = str(concurrency)
        settings.cache_clear()
    cfg = settings()
    from schemas.logs import configure_logging
    from worker.delivery import DeliveryLoops

    configure_logging(cfg.log_format, cfg.log_level)
    node = name or f"webhooks-{os.getpid()}"
    child = (
        subprocess.Popen(
            [sys.executable, "-m", "worker.delivery.webhooks", f"--hostname={node}@{socket.gethostname()}"]
        )
        if deliver
        else None
    )
    queue = JobQueue(cfg)  # its own clients, closed below: the loops' threads use them
    loops = DeliveryLoops(cfg, client=queue.redis, celery=queue.celery, name=node, dispatch=dispatch)
    loops.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    while not stop.wait(0.5):
        if child is not None and child.poll() is not None:
            code = child.returncode or 1
            break
        if not loops.alive():
            code = 1
            break
    loops.stop()
    queue.close()
    if child is not None and child.poll() is None:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
    raise typer.Exit(code)
