"""An SGLang server's load, from ``/v1/loads`` (JSON, per data-parallel rank) or ``/metrics`` (Prometheus text).

Shapes as a real 0.5.17 server answered (``tests/fixtures/sglang-0.5.17/v1_loads.json``, ``metrics.txt``):
``{"loads": [{"dp_rank": 0, "num_running_reqs": 3, "num_waiting_reqs": 0, "max_running_requests": 4096, ...}]}``
and ``sglang:num_running_reqs{engine_type="unified",model_name="...",tp_rank="0",...} 3.0``.
"""

from __future__ import annotations

import re

import orjson

from worker.inflight import ServerLoad

_SAMPLE = re.compile(r"^sglang:(num_running_reqs|num_queue_reqs)(\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)
_TP_RANK = re.compile(r'tp_rank="(\d+)"')


def loads_from_json(body: bytes) -> ServerLoad | None:
    try:
        ranks = orjson.loads(body)["loads"]
        running = sum(int(r["num_running_reqs"]) for r in ranks)
        waiting = sum(int(r["num_waiting_reqs"]) for r in ranks)
        caps = [int(r["max_running_requests"]) for r in ranks if r.get("max_running_requests")]
    except (ValueError, KeyError, TypeError):
        return None
    if not ranks:
        return None
    return ServerLoad(running=running, waiting=waiting, max_running=sum(caps) if caps else None)


def loads_from_metrics(text: str) -> ServerLoad | None:
    """Sum over data-parallel schedulers; with tensor parallelism every tp rank reports the same batch, so only
    ``tp_rank="0"`` samples count."""
    totals = {"num_running_reqs": 0.0, "num_queue_reqs": 0.0}
    seen = False
    for name, labels, value in _SAMPLE.findall(text):
        rank = _TP_RANK.search(labels or "")
        if rank is not None and rank.group(1) != "0":
            continue
        totals[name] += float(value)
        seen = True
    if not seen:
        return None
    return ServerLoad(running=int(totals["num_running_reqs"]), waiting=int(totals["num_queue_reqs"]))
