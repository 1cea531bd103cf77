"""``POST /v1/moderations`` (queue one image reference) and ``GET /v1/moderations/{job_id}`` (its status)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from producers.api.errors import ApiError
from producers.api.idempotency import fingerprint, keyed_job_id
from producers.api.services import (
    PrincipalDep,
    Services,
    ServicesDep,
    image_source,
    job_factory,
)
from producers.broker import JobRecord
from schemas.job import ModerationJob, new_job_id
from schemas.policy import Policy
from worker.delivery import NO_RECORD, read_job

router = APIRouter(prefix="/v1", tags=["moderations"])
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class ModerationRequest(BaseModel):
    """One image to moderate."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=4096, examples=["s3://photos/2026/cat.jpg"])
    policy: str | Policy | None = Field(
        default=None,
        description="A stored policy NAME[@VERSION], or an inline policy with category declarations.",
        examples=["strict", {"declarations": {"O2": "non_violating"}}],
    )
    model: str | None = Field(default=None, description="Checkpoint to use (default: the service's).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Echoed in the verdict event.")
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="https:// URL that gets the signed verdict (a public address; checked now and at send time).",
    )


class Accepted(BaseModel):
    job_id: str
    status: str = "queued"
    status_url: str
    image: str
    tenant: str


class JobStatus(BaseModel):
    job_id: str
    status: str
    tenant: str
    image: str | None = None
    created_at: str | None = None
    updated_at: float | None = None
    attempts: int | None = None
    event: dict[str, Any] | None = Field(default=None, description="The terminal CloudEvent once the job ended.")
    note: str | None = Field(default=None, description="Why the event is missing for a finished job (trimmed).")


def accepted(request: Request, job: ModerationJob) -> dict[str, Any]:
    url = str(request.url_for("get_moderation", job_id=job.job_id))
    return Accepted(job_id=job.job_id, status_url=url, image=str(job.image), tenant=job.tenant).model_dump()


def respond(body: dict[str, Any], *, replayed: bool = False) -> JSONResponse:
    headers = {"Location": body["status_url"]}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, 202, headers=headers)


def enqueue_once(
    svc: Services,
    request: Request,
    tenant: str,
    idem_key: str | None,
    print_: str,
    make_job: Callable[[str], ModerationJob],
) -> JSONResponse:
    """Enqueue the job ``make_job(job_id)`` builds, honouring an Idempotency-Key; nothing is half-enqueued."""
    if idem_key is None:
        job = make_job(new_job_id())
        svc.queue.send(job)
        return respond(accepted(request, job))
    claim = svc.idempotency.claim(tenant, idem_key, print_)
    if claim.replay is not None:
        return respond(claim.replay, replayed=True)
    try:
        job = make_job(keyed_job_id(tenant, idem_key))
        earlier = svc.queue.record_of(job.job_id)
        if earlier is not None:
            # The key's job id is derived from tenant and key, and its job (with its publish guard) outlives the key
            # record: never answer a new request with an old job's verdict.
            body = _earlier_use(svc, request, job, earlier, idem_key)
            svc.idempotency.complete(claim, body)
            return respond(body, replayed=True)
        svc.queue.send(job)
    except BaseException:
        svc.idempotency.release(claim)
        raise
    body = accepted(request, job)
    svc.idempotency.complete(claim, body)
    return respond(body)


def _earlier_use(svc: Services, request: Request, job: ModerationJob, earlier: JobRecord, key: str) -> dict[str, Any]:
    """The answer for a key whose record is gone while its job is still remembered.

    Within the key's lifetime that is our own crash between enqueueing and storing the answer: the same request
    gets the same job. Past it, the key was reused: a clear 409 (use a new key), not the old job's verdict.
    """
    ttl = svc.settings.api_idempotency_ttl_s
    if earlier.age_s < ttl and earlier.image in {None, str(job.image)}:
        return accepted(request, job)
    raise ApiError(
        409,
        "idempotency_key_expired",
        f"this Idempotency-Key was used for job {job.job_id} {earlier.age_s / 3600:.1f} h ago; keys are remembered "
        f"for {ttl / 3600:g} h and must not be reused after that: send a new Idempotency-Key",
    )


@router.post("/moderations", status_code=202, response_model=Accepted, summary="Queue an image for moderation")
def create_moderation(
    body: ModerationRequest,
    request: Request,
    who: PrincipalDep,
    svc: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    who.require("moderate")
    make_job = job_factory(
        svc,
        who,
        image_source(who, body.source),
        policy=body.policy,
        model=body.model,
        metadata=body.metadata,
        callback_url=body.callback_url,
        idempotency_key=idempotency_key,
    )
    print_ = fingerprint("POST", "/v1/moderations", body.model_dump(mode="json"))
    return enqueue_once(svc, request, who.tenant, idempotency_key, print_, make_job)


@router.get(
    "/moderations/{job_id}",
    response_model=JobStatus,
    summary="A job's status and, once it ended, its verdict event",
    responses={404: {"description": "No such job for this tenant"}},
)
def get_moderation(job_id: str, who: PrincipalDep, svc: ServicesDep) -> JobStatus:
    """A job of another tenant is reported exactly like a job that does not exist (404)."""
    view = read_job(svc.queue.redis, job_id) if _JOB_ID.match(job_id) else None
    if view is None or view.record.tenant != who.tenant:
        raise ApiError(404, "not_found", f"no job {job_id!r}: {NO_RECORD}")
    record, event = view.record, view.event
    return JobStatus(
        job_id=job_id,
        status=view.state,
        tenant=who.tenant,
        image=record.image or (event or {}).get("subject"),
        created_at=record.created_at,
        updated_at=record.updated_at if record.updated_at is not None else view.finished_at,
        attempts=record.attempts,
        event=event,
        note=view.note,
    )
