"""Helpers shared by the CLI commands: settings with one-line errors, one JobQueue per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import NoReturn

import redis
import typer

from producers.broker import JobQueue
from schemas.errors import GuardqError
from schemas.settings import Settings, load_settings, redacted_url


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


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn a Redis outage into one clear line (exit 3) instead of a traceback."""
    try:
        yield
    except redis.RedisError as exc:
        fail(f"Redis at {redacted_url(settings().redis_url)} failed: {exc}", code=3)
