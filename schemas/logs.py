"""structlog set-up shared by every guardq process: JSON lines in production, a readable console in a terminal.

Context (job id, tenant, model, GPU) is bound through contextvars so every line of a job carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

SECRET_KEYS = frozenset({"authorization", "api_key", "password", "secret", "token", "aws_secret_access_key"})


def _redact(_: object, __: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = "***"
    return event_dict


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO", *, stream: object = None
) -> None:
    """Configure structlog (and route stdlib logging through it) once per process."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and getattr(out, "isatty", lambda: False)())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)  # type: ignore[arg-type]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for chatty in ("httpx", "httpcore"):  # one INFO line per request (health probes every second) is noise
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
