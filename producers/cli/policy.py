"""``guardq policy``: show the exact policy text sent to the model."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from producers.cli.common import fail, settings
from schemas.errors import GuardqError
from schemas.models import get_model
from schemas.policy import Policy
from schemas.taxonomy import Declaration

policy_cli = typer.Typer(help="Inspect safety policies.", no_args_is_help=True)


@policy_cli.command("show")
def show(
    model: Annotated[str | None, typer.Option(help="Model whose prompt version to use (default GUARDQ_MODEL).")] = None,
    non_violating: Annotated[
        list[str] | None, typer.Option("--non-violating", help="Declare Ox non-violating.")
    ] = None,
    sensitive: Annotated[list[str] | None, typer.Option("--sensitive", help="Declare Ox sensitive.")] = None,
) -> None:
    """Print the exact policy text the model receives after the image."""
    try:
        spec = get_model(model or settings().model)
        declarations = dict.fromkeys(non_violating or [], Declaration.NON_VIOLATING)
        declarations |= dict.fromkeys(sensitive or [], Declaration.SENSITIVE)
        policy = Policy(name="custom" if declarations else "default", declarations=declarations)
    except GuardqError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(exc.errors()[0]["msg"])
    if policy.uses_sensitive:
        typer.echo("guardq: warning: 'sensitive' declarations are outside the released models' training", err=True)
    typer.echo(policy.text(spec.prompt_version))
