"""Helpers shared by the CLI commands: settings with one-line errors, one JobQueue per process."""

from __future__ import annotations

from functools import lru_cache
from typing import NoReturn

import typer

from producers.broker import JobQueue
from schemas.errors import GuardqError
from schemas.settings import Settings, load_settings


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line to stderr and exit non-zero."""
    typer.echo(f"guardq: {message}", err=True)
    raise typer.Exit(code)


@lru_cache(maxsize=1)
def settings() -> Settings:
    try:
        return load_settings()
    except GuardqError as exc:
        fail(str(exc))


@lru_cache(maxsize=1)
def job_queue() -> JobQueue:
    return JobQueue(settings())
