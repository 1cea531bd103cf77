"""The ``guardq`` console command: one Typer app, one module per subcommand group."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from producers.cli.api import api
from producers.cli.apikeys import apikeys_cli
from producers.cli.backfill import backfill_cli
from producers.cli.enqueue import enqueue
from producers.cli.evaluate import evaluate
from producers.cli.events import events_cli
from producers.cli.fleet import fleet_cli
from producers.cli.policy import policy_cli
from producers.cli.results import results_cli
from producers.cli.status import status
from producers.cli.webhooks import webhooks_cli

app = typer.Typer(
    name="guardq",
    help="Event-driven image moderation with LlavaGuard on SGLang.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("enqueue")(enqueue)
app.command("status")(status)
app.command("eval")(evaluate)
app.add_typer(events_cli, name="events")
app.add_typer(policy_cli, name="policy")
app.add_typer(webhooks_cli, name="webhooks")
app.add_typer(results_cli, name="results")
app.add_typer(fleet_cli, name="fleet")
app.add_typer(backfill_cli, name="backfill")
app.command("api")(api)
app.add_typer(apikeys_cli, name="api-keys")


@app.command(
    "worker",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def worker(ctx: typer.Context, args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
    """Run a worker (``guardq worker --help`` for its options). Started by name: producers never import it."""
    argv = [sys.executable, "-m", "worker", *(args or []), *ctx.args]
    os.execv(sys.executable, argv)  # noqa: S606 - fixed interpreter, args passed through as a list


def main() -> None:
    app()
