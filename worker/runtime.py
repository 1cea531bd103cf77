"""Per-process state of a worker: settings, Redis, the image source, the inference backend, the publisher.

Created once, lazily, on first use by any worker thread (the threads pool has no per-child init signal) and
closed at worker shutdown. Tasks never build clients of their own.
"""

from __future__ import annotations

import importlib
import socket
from dataclasses import dataclass

import redis

from schemas.errors import ConfigError
from schemas.models import ModelSpec, get_model
from schemas.settings import Settings, load_settings
from worker.cache import VerdictCache
from worker.decodebudget import DecodeBudget
from worker.inference.base import InferenceBackend
from worker.liveness import Liveness, current_incarnation
from worker.pipeline import Moderator
from worker.policies import PolicyResolver
from worker.publish import Publisher
from worker.singleton import PerProcess
from worker.sources import ImageSource


def make_backend(settings: Settings, model: ModelSpec) -> InferenceBackend:
    """The inference backend named by ``GUARDQ_BACKEND``."""
    if settings.backend == "transformers":
        try:  # optional heavy dependency: pip install 'guardq[local]'
            local = importlib.import_module("worker.inference.local")
        except ImportError as exc:
            raise ConfigError(
                f"GUARDQ_BACKEND=transformers needs the local extra (pip install 'guardq[local]'): {exc}"
            ) from None
        backend: InferenceBackend = local.TransformersBackend(settings, model)
        return backend
    from worker.inference.sglang import SGLangBackend

    return SGLangBackend(settings, model)


def verdict_cache(
    settings: Settings, client: redis.Redis[bytes], cache_client: redis.Redis[bytes] | None = None
) -> VerdictCache:
    """The cache, its lock outliving the longest inference (every invalid-output retry at the full timeout).

    A duplicate waits for the lock's holder at most a quarter of the visibility timeout, so a wait can never hold a
    message until the broker hands it out a second time; a holder that died is taken over (``worker.cache``).
    """
    lock_s = settings.sglang_timeout_s * (settings.invalid_output_retries + 1) + 10
    wait_s = min(settings.verdict_cache_wait_s, settings.visibility_timeout_s / 4)
    return VerdictCache(
        cache_client or client,
        ttl_s=settings.verdict_cache_ttl_s,
        wait_s=wait_s,
        lock_s=lock_s,
        incarnation=current_incarnation,
        alive=Liveness(client).alive,  # leases live in the main Redis, wherever the cache is
        stream=None if cache_client is not None else client,  # sharing the stream's Redis: rationales by reference
    )


CacheClient = redis.Redis  # the field ``redis`` below shadows the module inside the class


@dataclass
class Runtime:
    settings: Settings
    model: ModelSpec
    redis: redis.Redis[bytes]
    publisher: Publisher
    source: ImageSource
    backend: InferenceBackend
    moderator: Moderator
    hostname: str
    cache_redis: CacheClient[bytes] | None = None

    @classmethod
    def build(cls, settings: Settings, *, hostname: str | None = None) -> Runtime:
        model = get_model(settings.model)
        client = redis.Redis.from_url(
            settings.redis_url,
            max_connections=settings.max_in_flight() + 8,
            socket_timeout=30,
            socket_connect_timeout=5,
            health_check_interval=25,
            retry_on_timeout=True,
        )
        cache_client = (
            redis.Redis.from_url(
                settings.cache_redis_url,
                max_connections=settings.max_in_flight() + 4,
                socket_timeout=30,
                socket_connect_timeout=5,
                health_check_interval=25,
                retry_on_timeout=True,
            )
            if settings.cache_redis_url and settings.cache_redis_url != settings.redis_url
            else None
        )
        source = ImageSource(settings)
        backend = make_backend(settings, model)
        return cls(
            settings=settings,
            model=model,
            redis=client,
            publisher=Publisher(
                client,
                stream_maxlen=settings.stream_maxlen,
                stream_max_age_s=settings.stream_max_age_s,
                job_ttl_s=settings.job_ttl_s,
                bulk_record_ttl_s=settings.bulk_record_ttl_s,
            ),
            source=source,
            backend=backend,
            moderator=Moderator(
                settings,
                model,
                source,
                backend,
                PolicyResolver(client),
                verdict_cache(settings, client, cache_client),
                decode_budget=DecodeBudget(settings.decode_memory_mb * 1024 * 1024),
            ),
            hostname=hostname or socket.gethostname(),
            cache_redis=cache_client,
        )

    def close(self) -> None:
        self.moderator.close()
        self.backend.close()
        self.source.close()
        self.redis.close()
        if self.cache_redis is not None:
            self.cache_redis.close()


_runtime: PerProcess[Runtime] = PerProcess(lambda: Runtime.build(load_settings()))
get_runtime = _runtime.get
close_runtime = _runtime.close
