"""The per-shard results Parquet and the manifest of finished shards: their layout, names, and how to read them.

For an input shard ``<source prefix>/a/00000.tar`` (or ``.parquet``) the results file is
``<results prefix>/a/00000.parquet``, one row per job of the shard, in the shard's row order, with the columns of
:data:`SCHEMA`. ``<results prefix>/_manifest.json`` lists the shards whose results file is complete; a reader
that wants only finished shards reads the manifest first (``complete`` is true once every shard of a finished
backfill is written).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from schemas.events import CloudEvent
from worker.delivery.results.targets import split_s3_uri

MANIFEST = "_manifest.json"
_FIELDS: list[pa.Field[Any]] = [
    pa.field("key", pa.string()),
    pa.field("index", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("rating", pa.string()),
    pa.field("category", pa.string()),
    pa.field("rationale", pa.string()),
    pa.field("unsafe_score", pa.float64()),
    pa.field("needs_review", pa.bool_()),
    pa.field("policy_sha256", pa.string()),
    pa.field("model", pa.string()),
    pa.field("error_code", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("job_id", pa.string()),
]
SCHEMA = pa.schema(_FIELDS)


def result_row(event: CloudEvent) -> dict[str, Any]:
    """One results row from a job's terminal event (the event must carry ``data.sample``)."""
    data = event.data
    assert data.sample is not None
    verdict, error = data.verdict, data.error
    return {
        "key": data.sample.key,
        "index": data.sample.index,
        "sha256": data.image.sha256,
        "rating": verdict.rating if verdict else None,
        "category": verdict.category if verdict else None,
        "rationale": verdict.rationale if verdict else None,
        "unsafe_score": verdict.unsafe_score if verdict else None,
        "needs_review": data.needs_review,
        "policy_sha256": data.policy.sha256 if data.policy else None,
        "model": data.model.name if data.model else None,
        "error_code": error.code.value if error else None,
        "error_message": error.message if error else None,
        "job_id": data.job_id,
    }


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The results file of one shard: ``rows`` sorted by their index (deterministic bytes for the same rows)."""
    rows = sorted(rows, key=lambda r: (r["index"], r["job_id"]))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def results_object(results_uri: str, source_prefix: str, shard_key: str) -> tuple[str, str]:
    """Bucket and key of the results file of ``shard_key`` (same relative name, ``.parquet``)."""
    bucket, prefix = split_s3_uri(results_uri)
    relative = shard_key[len(source_prefix) :] if shard_key.startswith(source_prefix) else shard_key
    relative = relative.lstrip("/")
    for suffix in (".tar", ".parquet"):
        if relative.endswith(suffix):
            relative = relative[: -len(suffix)]
            break
    name = f"{relative}.parquet"
    return bucket, f"{prefix}/{name}" if prefix else name


def manifest_object(results_uri: str) -> tuple[str, str]:
    bucket, prefix = split_s3_uri(results_uri)
    return bucket, f"{prefix}/{MANIFEST}" if prefix else MANIFEST


def manifest_body(
    backfill_id: str, source: str, results_uri: str, written: dict[str, dict[str, Any]], *, complete: bool
) -> bytes:
    shards = [{"shard": key, **written[key]} for key in sorted(written)]
    doc = {
        "backfill_id": backfill_id,
        "source": source,
        "results": results_uri,
        "format": "parquet",
        "complete": complete,
        "shards": shards,
        "rows": sum(s["rows"] for s in shards),
    }
    return json.dumps(doc, indent=1).encode()


def summarize(body: bytes, bucket: str, key: str) -> dict[str, Any]:
    """What the manifest says about one written results file."""
    table = pq.read_table(io.BytesIO(body), columns=["error_code"])
    failed = table.num_rows - table.column("error_code").null_count
    return {
        "object": f"s3://{bucket}/{key}",
        "rows": table.num_rows,
        "completed": table.num_rows - failed,
        "failed": failed,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def read_manifest(s3: Any, results_uri: str) -> dict[str, Any] | None:
    """The manifest, or None while there is none (no shard finished yet)."""
    bucket, key = manifest_object(results_uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status == 404 or str(exc.response.get("Error", {}).get("Code", "")) in {"NoSuchKey", "404"}:
            return None
        raise
    doc: dict[str, Any] = json.loads(body)
    return doc


def read_results(s3: Any, object_uri: str) -> pa.Table:
    bucket, _, key = object_uri[len("s3://") :].partition("/")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))
