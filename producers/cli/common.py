"""Helpers shared by the CLI commands: settings with one-line errors, one JobQueue per process, and the option
checks several commands share (``--meta KEY=VALUE``, a stored ``--policy``, a webhook ``--callback-url``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import NoReturn

import redis
import typer

from producers.broker import JobQueue
from producers.policy_store import PolicyStore
from schemas.errors import GuardqError
from schemas.policy import BUILTIN_POLICY_NAME
from schemas.settings import Settings, load_settings, redacted_url
from worker.delivery import check_target


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


def parse_meta(pairs: list[str]) -> dict[str, str]:
    """``--meta KEY=VALUE`` options as a dict; a malformed one fails in one line."""
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--meta expects KEY=VALUE, got {pair!r}")
        meta[key] = value
    return meta


def check_policy_ref(ref: str | None) -> None:
    """A ``--policy NAME[@VERSION]`` must resolve now (as the API checks it): jobs under an unknown one would all
    fail later."""
    if ref in (None, "", BUILTIN_POLICY_NAME):
        return
    assert ref is not None
    try:
        with redis_errors():
            PolicyStore(job_queue().redis).get(ref)
    except GuardqError as exc:
        fail(f"--policy {ref}: {exc}")


def check_callback_url(url: str | None) -> None:
    """A ``--callback-url`` must pass the webhook target check (as the API checks it); the webhook worker checks
    the address it connects to again at send time."""
    if url is None:
        return
    try:
        check_target(url, settings())
    except GuardqError as exc:
        fail(f"--callback-url refused: {exc}")
