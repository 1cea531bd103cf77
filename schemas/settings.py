"""Configuration from ``GUARDQ_*`` environment variables, validated once at process start.

A bad value stops the process with one line naming the variable (see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError
from schemas.models import DEFAULT_MODEL, get_model

ENV_PREFIX = "GUARDQ_"


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

    # Worker
    worker_concurrency: int = Field(default=32, ge=1, le=1024)
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

    # Events and bookkeeping
    event_source: str = "urn:guardq"
    stream_maxlen: int = Field(default=1_000_000, ge=1000)
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)

    # Logging
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
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
        return get_model(value).name if value else value

    @field_validator("url_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

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
            # Consume queues in the order listed (interactive before bulk) instead of round-robin.
            "queue_order_strategy": "priority",
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 25,
        }


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
