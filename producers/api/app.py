"""The FastAPI application: ``create_app(settings)`` wires one set of long-lived clients per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from producers.api import health, intake, moderations, policies, uploads, webhooks
from producers.api.handlers import install_error_handlers
from producers.api.limits import RequestLimits
from producers.api.metrics import ApiMetrics, MetricsMiddleware
from producers.api.metrics import router as metrics_router
from producers.api.services import Services
from producers.broker import JobQueue
from schemas.settings import Settings

DESCRIPTION = """\
Queue images for moderation by LlavaGuard and read their verdicts.

Authenticate with `Authorization: Bearer <API key>` (keys are per tenant: `guardq api-keys create TENANT`).
Scopes: `moderate` (moderations, uploads, status, the tenant's default policy), `intake` (S3 events), `webhooks`
(the tenant's subscriptions, replay), `policies` (operators: create and delete the stored policies all tenants share).
Errors are JSON: `{"error": {"code": "...", "message": "..."}}`. `POST` requests accept an `Idempotency-Key`.
Verdicts arrive as CloudEvents on the Redis Stream `guardq:verdicts` and through `GET /v1/moderations/{job_id}`.
"""


def create_app(settings: Settings, *, queue: JobQueue | None = None) -> FastAPI:
    """Build the API; ``queue`` lets a caller share its JobQueue (one per process)."""
    svc = Services.build(settings, queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        svc.close()

    app = FastAPI(title="guardq", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.services = svc
    app.state.metrics = ApiMetrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.api_max_body_bytes,
        read_timeout_s=settings.api_read_timeout_s,
        body_timeout_s=settings.api_body_timeout_s,
    )
    app.include_router(health.router)
    app.include_router(moderations.router)
    app.include_router(uploads.router)
    app.include_router(intake.router)
    app.include_router(policies.router)
    app.include_router(webhooks.router)
    app.include_router(metrics_router)
    return app
