"""``guardq api``: serve the HTTP API with uvicorn (OpenAPI docs at ``/docs``)."""

from __future__ import annotations

from typing import Annotated

import typer

from producers.cli.common import settings
from schemas.logs import configure_logging


def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    proxy_headers: Annotated[
        bool, typer.Option(help="Trust X-Forwarded-* from --forwarded-allow-ips (behind a proxy).")
    ] = False,
    forwarded_allow_ips: Annotated[str, typer.Option(help="Proxies trusted for X-Forwarded-*.")] = "127.0.0.1",
) -> None:
    """Serve POST /v1/moderations, POST /v1/uploads, GET /v1/moderations/{id}, POST /v1/intake/s3-events.

    One process holds one Redis pool and one Celery producer; run several behind a load balancer to scale.
    """
    import uvicorn

    from producers.api.app import create_app
    from producers.api.limits import timed_h11

    cfg = settings()
    configure_logging(cfg.log_format, cfg.log_level)
    uvicorn.run(
        create_app(cfg),
        host=host,
        port=port,
        log_config=None,  # uvicorn's loggers go through structlog (configure_logging)
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        http=timed_h11(cfg.api_read_timeout_s),  # a request head must arrive within the read timeout
    )
