"""``/healthz`` (the process answers) and ``/readyz`` (Redis, the queue, answers): for load balancers and k8s."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from producers.api.errors import error_body
from producers.api.services import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: Redis reachable", responses={503: {"description": "Redis unreachable"}})
def readyz(svc: ServicesDep) -> JSONResponse:
    try:
        svc.queue.redis.ping()
    except redis.RedisError as exc:
        return JSONResponse(error_body("unavailable", f"Redis unreachable: {exc}"), 503)
    return JSONResponse({"status": "ready"}, 200)
