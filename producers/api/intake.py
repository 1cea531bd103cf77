"""``POST /v1/intake/s3-events``: S3 event notifications (direct, via SNS, or EventBridge) become jobs.

One job per ObjectCreated record. Each record is deduplicated on (tenant, bucket, key, sequencer) in Redis for
``GUARDQ_S3_EVENT_DEDUPE_TTL_S`` (S3, SNS and EventBridge all deliver at least once), and its job id is derived
from the same facts. The whole payload is validated before anything is queued; if queueing fails midway, the
dedupe markers of the records not queued are removed and the API answers 503, so the sender's retry queues
exactly the rest. Query parameters ``policy`` and ``model`` apply to every job of the subscription.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from producers.api.auth import Principal
from producers.api.errors import ApiError
from producers.api.s3events import ParsedEvents, is_eventbridge, parse_eventbridge, parse_records
from producers.api.services import PrincipalDep, Services, ServicesDep, build_job, resolve_model, resolve_policy
from producers.api.sns import MESSAGE_TYPES
from producers.rediskeys import s3_event_key
from schemas.job import ImageRef

router = APIRouter(prefix="/v1/intake", tags=["intake"])
log = structlog.get_logger("guardq.api")

MAX_EVENT_BYTES = 256 * 1024  # S3 notifications are at most 64 KB; SNS envelopes add a little
_NAMESPACE = uuid.UUID("2c7b9e14-5d3a-4f60-8b1e-9a4d7c3e0f52")


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as JSON whatever its Content-Type (SNS posts JSON as text/plain)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            raise ApiError(413, "payload_too_large", f"event payloads are limited to {MAX_EVENT_BYTES} bytes")
        chunks.append(chunk)
    try:
        doc = json.loads(b"".join(chunks))
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_s3_event", "expected a JSON object")
    return doc


@router.post(
    "/s3-events",
    summary="Receive S3 event notifications (direct, SNS HTTP subscription, EventBridge)",
    responses={202: {"description": "Jobs queued"}, 200: {"description": "Nothing to queue (test, duplicate…)"}},
)
async def s3_events(
    request: Request,
    who: PrincipalDep,
    svc: ServicesDep,
    policy: Annotated[str | None, Query(description="Stored policy NAME[@VERSION] for these jobs.")] = None,
    model: Annotated[str | None, Query(description="Model for these jobs.")] = None,
    sns_type: Annotated[str | None, Header(alias="x-amz-sns-message-type")] = None,
) -> JSONResponse:
    who.require("intake")
    doc = await _json_body(request)
    if doc.get("Type") in MESSAGE_TYPES and "TopicArn" in doc:
        if sns_type is not None and sns_type != doc["Type"]:
            raise ApiError(422, "invalid_sns_message", "x-amz-sns-message-type does not match the message Type")
        svc.sns.check_topic(str(doc["TopicArn"]))
        if doc["Type"] == "SubscriptionConfirmation":
            return await run_in_threadpool(_confirm, svc, doc)
        if doc["Type"] == "UnsubscribeConfirmation":
            return JSONResponse({"ignored": "UnsubscribeConfirmation"}, 200)
        try:
            message = json.loads(str(doc.get("Message", "")))
        except ValueError:
            raise ApiError(422, "invalid_s3_event", "the SNS Message is not an S3 event notification") from None
        if not isinstance(message, dict):
            raise ApiError(422, "invalid_s3_event", "the SNS Message is not an S3 event notification")
        parsed = parse_records(message, "sns")
    elif is_eventbridge(doc):
        parsed = parse_eventbridge(doc)
    else:
        parsed = parse_records(doc, "direct")
    if parsed.test_event:
        return JSONResponse({"ignored": "s3:TestEvent", "shape": parsed.shape}, 200)
    for record in parsed.records:
        who.require_bucket(record.bucket)
    _, policy_ref = await run_in_threadpool(resolve_policy, svc, policy)
    model_name = resolve_model(model)
    return await run_in_threadpool(_enqueue, svc, who, parsed, policy_ref, model_name)


def _confirm(svc: Services, doc: dict[str, Any]) -> JSONResponse:
    url, topic = str(doc.get("SubscribeURL", "")), str(doc["TopicArn"])
    svc.sns.check_subscribe_url(url, topic)
    if not svc.sns.auto:
        log.warning("sns_subscription_pending", topic_arn=topic, subscribe_url=url)
        body = {
            "subscription": "pending",
            "topic_arn": topic,
            "subscribe_url": url,
            "message": "auto-confirm is off (GUARDQ_SNS_AUTO_CONFIRM): GET subscribe_url to confirm",
        }
        return JSONResponse(body, 200)
    svc.sns.confirm(url)
    log.info("sns_subscription_confirmed", topic_arn=topic)
    return JSONResponse({"subscription": "confirmed", "topic_arn": topic}, 200)


def _enqueue(
    svc: Services, who: Principal, parsed: ParsedEvents, policy_ref: str | None, model: str | None
) -> JSONResponse:
    jobs = []
    for record in parsed.records:  # build every job first: a bad record rejects the payload, nothing queued
        token = record.dedupe_token
        job_id = uuid.uuid5(_NAMESPACE, f"{who.tenant}\n{record.bucket}\n{record.key}\n{token}").hex
        metadata = {"s3_event": record.event_name, "sequencer": record.sequencer, "event_time": record.event_time}
        job = build_job(
            job_id=job_id,
            image=ImageRef(
                uri=f"s3://{record.bucket}/{record.key}",
                version_id=record.version_id,
                etag=record.etag,
                size=record.size,
            ),
            model=model,
            policy_ref=policy_ref,
            tenant=who.tenant,
            metadata={k: v for k, v in metadata.items() if v is not None},
        )
        jobs.append((s3_event_key(who.tenant, record.bucket, record.key, token), job))
    queued: list[dict[str, str]] = []
    duplicates = 0
    ttl = svc.settings.s3_event_dedupe_ttl_s
    redis = svc.queue.redis
    for marker, job in jobs:
        if not redis.set(marker, job.job_id, nx=True, ex=ttl):
            duplicates += 1
            continue
        try:
            svc.queue.send(job)
        except Exception:
            redis.delete(marker)  # not queued: let the sender's retry queue it (later ones were never claimed)
            raise
        queued.append({"job_id": job.job_id, "image": str(job.image)})
    body = {"shape": parsed.shape, "queued": queued, "duplicates": duplicates, "ignored": parsed.ignored}
    return JSONResponse(body, 202 if queued else 200)
