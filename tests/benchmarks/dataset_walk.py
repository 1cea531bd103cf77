"""Walk one dataset shard in S3 the way a dataset backfill does and report memory, time and bytes read, as JSON.

Run as its own process (``python -m tests.benchmarks.dataset_walk BUCKET KEY``) by the dataset benchmark, so the
peak RSS it reports (VmHWM) belongs to the walk alone: the baseline is taken after the imports, before the walk.
"""

from __future__ import annotations

import json
import os
import sys
import time

from producers.dataset.samples import Sample, Shard, ShardDone
from producers.dataset.tarwalk import WalkEnd, walk_tar
from producers.dataset.webdataset import webdataset_samples
from producers.dataset.window import S3Window
from producers.s3client import make_s3_client
from schemas.settings import load_settings
from tests.benchmarks.harness import proc_rss_mb


def main(bucket: str, key: str) -> dict[str, float]:
    s3 = make_s3_client(load_settings())
    head = s3.head_object(Bucket=bucket, Key=key)
    shard = Shard(bucket, key, int(head["ContentLength"]), head["ETag"].strip('"'))
    baseline, _ = proc_rss_mb(os.getpid())
    started = time.perf_counter()
    rows = 0
    summary = None
    for unit in webdataset_samples(s3, shard):  # what the backfill runs: tar walk + grouping into samples
        if isinstance(unit, Sample):
            rows += 1
        elif isinstance(unit, ShardDone):
            summary = unit.summary
    seconds = time.perf_counter() - started
    _, peak = proc_rss_mb(os.getpid())
    reader = S3Window(s3, bucket, key, size=shard.size, etag=shard.etag)
    members = sum(1 for _ in walk_tar(reader, WalkEnd()))  # again, to count the bytes one walk reads
    assert summary is not None and not summary.problems, summary
    return {
        "shard_bytes": shard.size,
        "rows": rows,
        "members": members,
        "seconds": seconds,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "requests": reader.stats.requests,
        "bytes_read": reader.stats.bytes,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
