"""Redis key layout of producer-only state (backfills, API keys, rate limits, idempotency, S3 event dedupe).

Keys another package also reads live in ``schemas/keys.py`` (the delivery ones in ``worker/delivery/keys.py``);
everything here is written and read by producers alone (docs/architecture.md says which module owns each).
"""

from __future__ import annotations

import hashlib

from schemas.keys import KEY_PREFIX


def backfill_lock_key(backfill_id: str) -> str:
    """String: ``host:pid:token`` of the process running the backfill (a lease with a TTL)."""
    return f"{KEY_PREFIX}:backfill:{backfill_id}:lock"


BACKFILL_INDEX = f"{KEY_PREFIX}:backfills"  # sorted set: backfill id scored by creation time
BACKFILL_TALLY = f"{KEY_PREFIX}:backfill-tally"  # hash: ``cursor`` = last verdict stream id tallied


def api_key_key(key_id: str) -> str:
    """Hash: one API key (tenant, sha256 of the secret, scopes, created/revoked times)."""
    return f"{KEY_PREFIX}:apikey:{key_id}"


def tenant_api_keys(tenant: str) -> str:
    """Set: ids of a tenant's API keys (for ``guardq api-keys list``)."""
    return f"{KEY_PREFIX}:tenant:{tenant}:apikeys"


def rate_limit_key(tenant: str, window: int) -> str:
    """Counter of a tenant's requests in one fixed window (expires with the window)."""
    return f"{KEY_PREFIX}:ratelimit:{tenant}:{window}"


def idempotency_key(tenant: str, key: str) -> str:
    """String (JSON): the request fingerprint and response remembered for an ``Idempotency-Key``."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{KEY_PREFIX}:idem:{tenant}:{digest}"


def s3_event_key(tenant: str, bucket: str, key: str, sequencer: str) -> str:
    """Marker set once per (tenant, bucket, key, sequencer): the S3 event intake's dedupe."""
    digest = hashlib.sha256(f"{tenant}\0{bucket}\0{key}\0{sequencer}".encode()).hexdigest()
    return f"{KEY_PREFIX}:s3evt:{digest}"


# Dataset mode (producers/dataset/); a backfill's shard records are in schemas.keys (the results sink reads them).
def backfill_shard_tally_key(backfill_id: str) -> str:
    """Hash: ``<shard uri>\\t<completed|failed>`` -> count, kept by the verdict tally."""
    return f"{KEY_PREFIX}:backfill:{backfill_id}:shard-tally"


DATASET_RESULTS_OWNERS = f"{KEY_PREFIX}:dataset:results-owners"  # hash: results location -> backfill id
