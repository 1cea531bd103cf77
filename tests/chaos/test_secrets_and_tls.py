"""Secrets stay out of logs; Redis with a password and over TLS (``rediss://``) works end to end.

The secrets test runs the production entry points as processes — ``guardq api``, ``python -m worker``, ``guardq
webhooks worker`` — at DEBUG level against a Redis that requires a password, drives real traffic through them
(an upload moderated and delivered to a signed webhook, bad keys, a Redis crash and restart), then searches every
log line they wrote for each secret: the Redis password, API keys (valid and forged), the webhook and callback
signing secrets, the AWS secret key, the SGLang API key.

TLS: a throwaway CA signs the server certificate; clients trust it through the URL,
``rediss://:PASSWORD@host:port/0?ssl_ca_certs=/path/ca.pem`` (``ssl_certfile``/``ssl_keyfile`` add a client
certificate). Certificates are verified by default; without the CA the connection is refused.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from kombu import Connection

from producers.api.auth import ApiKeyStore
from producers.broker import JobQueue
from producers.uploads import UploadStore
from schemas.job import ModerationJob
from schemas.settings import Settings
from tests import images
from tests.chaos.ledger import Tally, record
from tests.chaos.secure_services import make_tls, start_api, start_secure_redis
from tests.services.procs import Service, start_worker, wait_until
from tests.sglang_server import SimulatedSGLang
from tests.worker.delivery.receiver import Receiver
from tests.worker.delivery.services import start_webhook_worker, webhook_settings
from worker.delivery.stream.reader import last_id, wait_for
from worker.delivery.webhooks.registry import SubscriptionRegistry

pytestmark = pytest.mark.integration


def secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(12)}"


@pytest.fixture
def started() -> Iterator[list[Service]]:
    services: list[Service] = []
    yield services
    for service in reversed(services):
        service.stop()


def base_env(url: str, sglang: SimulatedSGLang, tmp_path: Path) -> dict[str, str]:
    return {
        "GUARDQ_REDIS_URL": url,
        "GUARDQ_SGLANG_URL": sglang.url,
        "GUARDQ_UPLOAD_STORE": f"file://{tmp_path / 'uploads'}",
        "GUARDQ_LOG_FORMAT": "json",
        "GUARDQ_METRICS_PORT": "0",
        "GUARDQ_WORKER_CONCURRENCY": "4",
        "GUARDQ_VISIBILITY_TIMEOUT_S": "30",
        "GUARDQ_VERDICT_CACHE_TTL_S": "0",
    }


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(**{k[len("GUARDQ_") :].lower(): v for k, v in env.items() if k.startswith("GUARDQ_")})


def moderated_status(api: Service, token: str, job_id: str) -> str:
    response = httpx.get(f"{api.url}/v1/moderations/{job_id}", headers={"Authorization": f"Bearer {token}"})
    return str(response.json().get("status")) if response.status_code == 200 else f"http {response.status_code}"


@pytest.mark.timeout(180)
def test_no_secret_reaches_the_logs_of_the_api_the_worker_or_the_webhook_worker(
    tmp_path: Path, sglang: SimulatedSGLang, started: list[Service]
) -> None:
    password, aws_secret, sglang_key = secret("redispw"), secret("awssecret"), secret("sk-sglang")
    store = start_secure_redis(tmp_path / "redis", password=password)
    started.append(store)
    env = base_env(store.url, sglang, tmp_path) | {
        "GUARDQ_LOG_LEVEL": "DEBUG",
        "GUARDQ_SGLANG_API_KEY": sglang_key,
        "AWS_ACCESS_KEY_ID": "AKIAGUARDQTEST",
        "AWS_SECRET_ACCESS_KEY": aws_secret,
    }
    started.append(start_worker(env, tmp_path / "worker"))
    api = start_api(env, tmp_path / "api")
    started.append(api)
    started.append(start_webhook_worker(env, tmp_path / "webhooks"))
    client = redis.Redis.from_url(store.url)
    tenant = f"t{secrets.token_hex(4)}"
    key_id, token = ApiKeyStore(client).create(tenant)
    forged = f"gq_{key_id}_{secrets.token_urlsafe(32)}"
    registry = SubscriptionRegistry(client, webhook_settings(settings_of(env)))
    receiver = Receiver().start()
    try:
        subscription = registry.add(url=receiver.url(f"/hooks/{tenant}"), tenant=tenant)
        receiver.route(f"/hooks/{tenant}", secret=subscription.secret)
        callback_secret = registry.callback_secret(tenant)
        auth = {"Authorization": f"Bearer {token}"}
        upload = httpx.post(
            f"{api.url}/v1/uploads", files={"file": ("a.jpg", images.solid(), "image/jpeg")}, headers=auth
        )
        assert 202 == upload.status_code, upload.text
        job_id = upload.json()["job_id"]
        wait_until(lambda: moderated_status(api, token, job_id) == "completed", 30, "the upload moderated")
        wait_until(lambda: bool(receiver.accepted(f"/hooks/{tenant}")), 30, "the verdict delivered, signed")
        refused = [
            httpx.get(f"{api.url}/v1/moderations/{job_id}", headers={"Authorization": f"Bearer {forged}"}).status_code,
            httpx.get(f"{api.url}/v1/moderations/{job_id}", auth=("sns", forged)).status_code,
        ]
        assert [401, 401] == refused
        store.stop(signal.SIGKILL)  # a Redis crash: every process logs its trouble
        assert 503 == httpx.get(f"{api.url}/v1/moderations/{job_id}", headers=auth).status_code
        for service in started[1:4:2]:  # the worker and the webhook worker notice and log the outage
            lost = f"{service.log.name} logs the lost broker"
            wait_until(lambda s=service: "Connection to broker lost" in s.log.read_text(), 20, lost)
        port = int(store.url.rsplit(":", 1)[1].split("/")[0])
        started.append(start_secure_redis(tmp_path / "redis", password=password, port=port))
        wait_until(lambda: httpx.get(f"{api.url}/readyz").status_code == 200, 30, "the API ready again")
    finally:
        receiver.stop()
    for service in started[1:]:
        service.stop()  # SIGTERM: every process flushes its last lines
    logs = {service.log.name: service.log.read_text(errors="replace") for service in started[1:4]}
    hidden = {
        "Redis password": password,
        "API key": token,
        "forged API key": forged,
        "webhook signing secret": subscription.secret,
        "callback signing secret": callback_secret,
        "AWS secret access key": aws_secret,
        "SGLang API key": sglang_key,
    }
    leaks = {
        f"{what} in {name}": True for what, value in hidden.items() for name, text in logs.items() if value in text
    }
    lines = sum(text.count("\n") for text in logs.values())
    result = Tally("api_security", f"secrets in logs (3 processes at DEBUG, {lines} lines)", enqueued=len(hidden))
    result.completed = len(hidden) - len({k.split(" in ")[0] for k in leaks})
    result.failed = result.enqueued - result.completed
    result.notes = "searched for: " + ", ".join(hidden) + ("; LEAKED: " + ", ".join(leaks) if leaks else "; none found")
    record(result)
    assert {} == leaks
    assert all(text.count("\n") > 10 for text in logs.values()), {k: v.count("\n") for k, v in logs.items()}
    assert '"job_finished"' in logs["worker-w1.log"]


@pytest.mark.timeout(120)
def test_a_job_runs_end_to_end_over_rediss_with_a_password_and_a_private_ca(
    tmp_path: Path, sglang: SimulatedSGLang, started: list[Service]
) -> None:
    tls = make_tls(tmp_path / "tls")
    password = secret("tlspw")
    store = start_secure_redis(tmp_path / "redis", password=password, tls=tls)
    started.append(store)
    env = base_env(store.url, sglang, tmp_path)
    started.append(start_worker(env, tmp_path / "worker"))
    settings = settings_of(env)
    assert "ssl_cert_reqs=required" in settings.redis_url  # verification is on unless turned off explicitly
    queue = JobQueue(settings)
    try:
        job = ModerationJob(image=UploadStore(settings).put(images.solid((90, 20, 200))))
        after = last_id(queue.redis)
        queue.send(job)
        [event] = list(wait_for(queue.redis, [job.job_id], after=after, timeout_s=30))
    finally:
        queue.close()
    assert event.completed
    untrusted = store.url.split("?", 1)[0]  # the same server without our CA: the certificate cannot be verified
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(settings_of({"GUARDQ_REDIS_URL": untrusted}).redis_url, socket_connect_timeout=2).ping()
    broker = Connection(settings_of({"GUARDQ_REDIS_URL": untrusted}).redis_url, connect_timeout=2)
    with pytest.raises(Exception, match="certificate verify failed"):
        broker.ensure_connection(max_retries=1)
    broker.release()
    result = Tally("api_security", "Redis over TLS (rediss://, password, private CA)", enqueued=3, completed=3)
    result.notes = "job completed over rediss://; redis-py and kombu both refuse the server without the CA"
    record(result)
