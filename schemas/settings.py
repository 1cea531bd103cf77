"""Configuration from ``GUARDQ_*`` environment variables, validated once at process start.

A bad value stops the process with one line naming the variable (see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import sys
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError, GuardqError
from schemas.models import DEFAULT_MODEL, get_model
from schemas.verdict import RATIONALE_MAX_CHARS, rationale_budget

ENV_PREFIX = "GUARDQ_"
LOCAL_DEFAULT_CONCURRENCY = 32  # the transformers backend batches in-process: its batcher, not a server, is the limit


class Settings(BaseSettings):
    """Every knob guardq reads from the environment; the field name upper-cased with ``GUARDQ_`` is the variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Services
    redis_url: str = "redis://127.0.0.1:6379/0"
    sglang_url: str = "http://127.0.0.1:10000"
    sglang_api_key: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    upload_store: str = Field(default_factory=lambda: f"file://{Path.home() / '.local/share/guardq/uploads'}")

    # Model and inference
    model: str = DEFAULT_MODEL
    backend: Literal["sglang", "transformers"] = "sglang"
    sglang_timeout_s: float = Field(default=120.0, gt=0)
    sglang_connect_timeout_s: float = Field(default=5.0, gt=0)
    invalid_output_retries: int = Field(default=1, ge=0, le=5)
    temperature: float = Field(default=0.2, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = 50
    max_new_tokens: int = Field(default=500, ge=16)
    scores: bool = True  # request logprobs of the rating token and report P(Unsafe)
    # Candidates asked for per generated token. The score is exact when every candidate the grammar allows at the
    # rating token comes back (a masked one among them proves it); 20 is the OpenAI API's ceiling.
    score_top_logprobs: int = Field(default=20, ge=2, le=20)
    # What the server's logprobs are: "auto" asks the server once (two one-token probes at different
    # temperatures), "tempered" = log(softmax(logits/T)) (SGLang's default), "original" = untempered
    # (SGLANG_RETURN_ORIGINAL_LOGPROB=1, which `guardq worker --gpus` sets on the servers it launches).
    sglang_logprobs: Literal["auto", "tempered", "original"] = "auto"
    # SGLang request priorities (honoured by a server with --enable-priority-scheduling, which `guardq worker --gpus`
    # launches with; ignored by others): a rationale continuation (`rationale: flagged`) is admitted ahead of new
    # verdicts, while its prompt is still in the radix cache. Off for a server run with
    # --abort-on-priority-when-disabled.
    sglang_priority: bool = True
    # The rationale's maxLength; default: what fits the token budget (schemas.verdict.rationale_budget).
    rationale_max_chars: int | None = Field(default=None, ge=1, le=RATIONALE_MAX_CHARS)

    # Worker. Jobs in flight: set GUARDQ_WORKER_CONCURRENCY for a fixed number; unset, the worker sets it from its
    # SGLang server's queue (worker/inflight.py) between 1 and GUARDQ_INFLIGHT_MAX, starting at GUARDQ_INFLIGHT_START.
    worker_concurrency: int | None = Field(default=None, ge=1, le=4096)
    inflight_max: int = Field(default=1024, ge=1, le=4096)  # thread pool size (threads start only when used)
    inflight_start: int = Field(default=32, ge=1, le=4096)
    inflight_period_s: float = Field(default=0.5, gt=0, le=60)
    max_retries: int = Field(default=8, ge=0, le=100)
    retry_backoff_base_s: float = Field(default=1.0, gt=0)
    retry_backoff_max_s: float = Field(default=120.0, gt=0)
    visibility_timeout_s: int = Field(default=3600, ge=5)

    # Image fetching and preparation
    max_image_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=64_000_000, ge=10_000)
    fetch_timeout_s: float = Field(default=30.0, gt=0)
    fetch_connect_timeout_s: float = Field(default=5.0, gt=0)
    url_max_redirects: int = Field(default=5, ge=0, le=20)
    url_allowed_networks: list[str] = Field(default_factory=list)
    jpeg_quality: int = Field(default=90, ge=50, le=100)
    # Dataset mode: Parquet column chunks a worker keeps to serve a row group's other image cells (docs/datasets.md)
    dataset_chunk_cache_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)

    # Animated images and videos (worker/frames.py, worker/animation.py, worker/video.py; docs/frames.md)
    frame_budget: int = Field(default=16, ge=1, le=256)  # most frames moderated (model calls) per file
    frame_dedupe_threshold: float = Field(default=3.0, ge=0.0, le=255.0)  # near-duplicate distance (0-255 scale)
    frame_concurrency: int = Field(default=8, ge=1, le=256)  # frames in flight per process, all jobs together
    max_frames: int = Field(default=10_000, ge=1)  # frames in one file (counted before decoding): too_many_frames
    max_duration_s: float = Field(default=600.0, gt=0)  # running time of one file: too_long
    max_total_pixels: int = Field(default=2_000_000_000, ge=10_000)  # canvas x decoded frames: decompression_bomb
    video_decode_max_frames: int = Field(default=900, ge=1)  # most frames decoded per video (longer: sampled)

    # Decoded pixels held at once by one worker process (all threads); a decode that does not fit waits its turn.
    decode_memory_mb: int = Field(default=1024, ge=16)

    # Events and bookkeeping
    event_source: str = "urn:guardq"
    stream_maxlen: int = Field(default=1_000_000, ge=1000)
    stream_max_age_s: int = Field(default=2 * 24 * 3600, ge=0)  # entries older than this are trimmed; 0 = length only
    # A job's record: while open, and once finished its compact record (status, dedupe guard). A day, like an
    # Idempotency-Key's lifetime; per-job memory is rate x this (docs/scale.md).
    job_ttl_s: int = Field(default=24 * 3600, ge=60)
    # A finished backfill job's record is only its dedupe guard (results live in the results sink): kept this long.
    # A redelivery after the event comes within seconds (a failed ack or a worker dying after publishing comes back
    # through worker/reclaim.py), so ten minutes keep the per-job memory of a backfill at rate x 10 min, not x days.
    bulk_record_ttl_s: int = Field(default=600, ge=60)

    # Logging
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Delivery: stream consumers, signed webhooks, S3 JSONL results, verdict cache (docs/delivery.md)
    dlq_maxlen: int = Field(default=100_000, ge=100)
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 21600.0]
    )  # delays before retries 1..n (about a day in total); attempts = len + 1
    webhook_jitter: float = Field(default=0.2, ge=0.0, lt=1.0)  # each delay is scaled by 1 ± jitter
    webhook_retry_after_max_s: float = Field(default=86400.0, gt=0)  # cap on an honoured Retry-After
    webhook_timeout_s: float = Field(default=15.0, gt=0, le=120)
    webhook_connect_timeout_s: float = Field(default=5.0, gt=0)
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    webhook_allow_http: bool = False  # Standard Webhooks asks for HTTPS; allow http:// only for trusted networks
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)
    webhook_poll_s: float = Field(default=0.5, gt=0, le=60)  # how often due deliveries are looked for
    webhook_record_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    results_uri: str | None = None  # default s3://bucket/prefix for backfills registered without their own
    results_batch_events: int = Field(default=1000, ge=1, le=100_000)
    results_batch_s: float = Field(default=30.0, gt=0)
    verdict_cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=0)  # 0 turns the verdict cache off
    verdict_cache_wait_s: float = Field(default=60.0, ge=0)  # how long a duplicate waits for the first
    # The verdict cache on its own Redis (maxmemory-policy allkeys-lru: entries can be evicted, never the queues);
    # default: GUARDQ_REDIS_URL. Same URL rules as GUARDQ_REDIS_URL.
    cache_redis_url: str | None = None

    # Local transformers backend (GUARDQ_BACKEND=transformers, pip install 'guardq[local]')
    local_model_path: str | None = None  # a local -hf checkpoint dir or hub id; default: the model's hf_checkpoint
    local_device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    local_batch_wait_ms: float = Field(default=20.0, ge=0.0, le=1000.0)  # dynamic batching window
    local_max_batch_size: int = Field(default=8, ge=1, le=256)
    local_timeout_s: float = Field(default=600.0, gt=0)  # one infer() call, queueing included

    # GPU fleet (`guardq worker --gpus`): one SGLang server per GPU (group), each with a supervised worker
    sglang_launch_cmd: str | None = None  # shell words; default "<this python> -m sglang.launch_server"
    # Local weights instead of the model's hub id (air-gapped GPU nodes, pre-staged checkpoints); GUARDQ_MODEL still
    # names the checkpoint guardq prompts (prompt version, chat template, image size).
    sglang_model_path: str | None = None
    sglang_tokenizer_path: str | None = None
    sglang_host: str = "127.0.0.1"  # where launched servers listen (workers reach them on the same host)
    sglang_base_port: int = Field(default=30000, ge=1, le=65000)  # server i listens on base + i
    sglang_tp: int | None = Field(default=None, ge=1, le=16)  # GPUs per server; default: the model's tp
    sglang_mem_fraction_static: float | None = Field(default=None, gt=0, lt=1)
    sglang_max_running_requests: int | None = Field(default=None, ge=1)
    sglang_max_queued_requests: int | None = Field(default=None, ge=1)
    sglang_extra_args: str = ""  # further launch_server flags, shell words
    sglang_ready_timeout_s: float = Field(default=1800.0, gt=0)  # weights download + load + CUDA graphs
    sglang_restart_backoff_s: float = Field(default=2.0, gt=0)
    sglang_restart_backoff_max_s: float = Field(default=120.0, gt=0)
    sglang_liveness_failures: int = Field(default=6, ge=1)  # failed /health probes in a row before a restart
    fleet_probe_interval_s: float = Field(default=5.0, gt=0)  # launcher's /health probe period
    fleet_drain_timeout_s: float = Field(default=600.0, gt=0)  # SIGTERM: wait this long for in-flight jobs
    server_watch_interval_s: float = Field(default=1.0, gt=0)  # worker's readiness probe of its own server
    gpu: str | None = None  # GPU label of this worker (the launcher sets its server's CUDA_VISIBLE_DEVICES)

    # Observability
    metrics_port: int = Field(default=9400, ge=0, le=65535)  # Prometheus endpoint; 0 = off; fleet worker i: +i
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in containers so Prometheus can scrape
    heartbeat_interval_s: float = Field(default=5.0, gt=0)  # fleet registry refresh (guardq fleet status)
    # How often one worker sweeps for jobs the broker lost and re-sends them (worker/reconcile.py); 0 turns it off.
    reconcile_interval_s: float = Field(default=15.0, ge=0)
    reconcile_batch: int = Field(default=1000, ge=10)  # most jobs one sweep examines per index (per queue)
    # How often one worker hands the messages of dead workers (lease expired) back to their queues
    # (worker/reclaim.py); 0 leaves them to the visibility timeout.
    reclaim_interval_s: float = Field(default=2.0, ge=0)
    # A configuration-class failure (worker/faults.py) pauses consumption this long, doubling up to the max.
    fault_pause_s: float = Field(default=30.0, gt=0)
    fault_pause_max_s: float = Field(default=600.0, gt=0)

    # Producers: S3 backfill (guardq backfill)
    backfill_max_pending: int = Field(default=5000, ge=1)  # default of --max-pending: bulk jobs waiting at most
    backfill_page_size: int = Field(default=1000, ge=1, le=1000)  # ListObjectsV2 page size
    backfill_lock_ttl_s: int = Field(default=60, ge=5)  # a backfill's run lease; refreshed while it runs

    # Producers: HTTP API (guardq api) and S3 event intake
    api_max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # POST /v1/uploads size cap (413)
    api_rate_limit: int = Field(default=600, ge=1)  # requests per tenant per window (429 beyond)
    api_rate_window_s: int = Field(default=60, ge=1)
    api_idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)  # how long an Idempotency-Key is remembered
    s3_event_dedupe_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)  # bucket+key+sequencer dedupe window
    sns_auto_confirm: bool = True  # GET the SubscribeURL of an SNS SubscriptionConfirmation (else return it)
    sns_topic_arns: list[str] = Field(default_factory=list)  # accept only these topics (empty: any)
    sns_confirm_hosts: list[str] = Field(default_factory=list)  # hosts besides sns.<region>.amazonaws.com

    # Reliability and security limits of the HTTP API (docs/reliability.md)
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # any body but an upload's (413 beyond)
    api_read_timeout_s: float = Field(default=30.0, gt=0)  # longest pause while a request head or body arrives (408)
    api_body_timeout_s: float = Field(default=600.0, gt=0)  # longest time to receive a whole body (408)

    @field_validator("redis_url", "cache_redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(parts.query):
            # redis-py verifies TLS certificates by default, kombu (Celery's broker) does not: make both verify.
            # Trust a private CA with ?ssl_ca_certs=/path/ca.pem; opt out explicitly with ?ssl_cert_reqs=none.
            query = f"{parts.query}&ssl_cert_reqs=required" if parts.query else "ssl_cert_reqs=required"
            value = urlunsplit(parts._replace(query=query))
        return value

    @field_validator("sglang_url", "s3_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in {"http", "https"} or not urlsplit(value).hostname):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("upload_store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"file", "s3"} or (parts.scheme == "s3" and not parts.netloc):
            raise ValueError("must be file:///absolute/dir or s3://bucket[/prefix]")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        try:
            return get_model(value).name
        except GuardqError as exc:
            raise ValueError(exc.message) from None

    @field_validator("local_device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("url_allowed_networks", "webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every delay must be a positive number of seconds")
        return value

    @field_validator("results_uri")
    @classmethod
    def _results_uri(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme != "s3" or not urlsplit(value).netloc):
            raise ValueError("must be s3://bucket[/prefix]")
        return value.rstrip("/") if value else value

    @field_validator("sglang_launch_cmd", "sglang_extra_args")
    @classmethod
    def _shell_words(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            words = shlex.split(value)  # ValueError on unbalanced quotes
            if not words and info.field_name == "sglang_launch_cmd":
                raise ValueError("is blank; unset it for the default python -m sglang.launch_server")
        return value

    @field_validator("sglang_restart_backoff_max_s")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("sglang_restart_backoff_s")
        if base is not None and value < base:
            raise ValueError("must be >= GUARDQ_SGLANG_RESTART_BACKOFF_S")
        return value

    @property
    def inflight_adaptive(self) -> bool:
        """Whether the worker sets its in-flight count from the server's load (SGLang, no fixed concurrency)."""
        return self.worker_concurrency is None and self.backend == "sglang"

    def max_in_flight(self) -> int:
        """The most jobs a worker holds at once: the thread pool's size and the client pools' sizes."""
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        return self.inflight_max if self.backend == "sglang" else LOCAL_DEFAULT_CONCURRENCY

    def rationale_chars(self) -> int:
        """The rationale's ``maxLength``: ``GUARDQ_RATIONALE_MAX_CHARS``, else what fits ``max_new_tokens``."""
        return self.rationale_max_chars or rationale_budget(self.max_new_tokens)

    def sglang_launch_words(self) -> list[str]:
        """The server command before its flags: ``GUARDQ_SGLANG_LAUNCH_CMD`` or this Python's sglang module."""
        if self.sglang_launch_cmd:
            return shlex.split(self.sglang_launch_cmd)
        return [sys.executable, "-m", "sglang.launch_server"]

    @field_validator("sns_topic_arns")
    @classmethod
    def _topic_arns(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not arn.startswith("arn:") or arn.count(":") < 5:
                raise ValueError(f"{arn!r} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        return value

    @field_validator("sns_confirm_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not host or any(c in host for c in "/@?# :"):
                raise ValueError(f"{host!r} is not a bare host name or IPv4 address (no scheme, port or path)")
        return [h.lower() for h in value]

    def broker_transport_options(self) -> dict[str, object]:
        """Kombu options shared by producers and workers (they must agree on the visibility timeout)."""
        return {
            "visibility_timeout": self.visibility_timeout_s,
            # Sweep for messages of dead workers every tenth of the timeout (kombu's default is ~100 s).
            "unacked_restore_interval": max(1, min(60, self.visibility_timeout_s // 10)),
            "unacked_restore_throttle": 1,
            # The restore sweep runs under a Redis lock; a worker killed while holding it (kill -9, OOM) leaves it
            # until it expires, and kombu's default of 300 s stalls every redelivery that long. A sweep takes
            # milliseconds: expire the lock after a tenth of the visibility timeout, 5 to 60 s.
            "unacked_mutex_expire": min(60, max(5, self.visibility_timeout_s // 10)),
            # Consume queues in the order listed (interactive before bulk) instead of round-robin.
            "queue_order_strategy": "priority",
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 25,
        }


def redacted_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings` from the environment, turning a validation error into one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except Exception as exc:  # pydantic-settings raises SettingsError for undecodable complex values
        raise ConfigError(f"invalid configuration: {exc}") from None
