"""Direct requests to a real SGLang server (tempered logprobs): fixtures, score agreement, continuation, sweep.

Run by ``tests/gpu/run_e2e.py attached`` before the worker attaches. Every request body is built by guardq's own
``SGLangBackend.build_body``; what comes back is written to ``$OUT/probes.json`` (the raw responses are the test
server's fixtures: ``tests/fixtures/sglang-0.5.17/``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx

from schemas.models import get_model
from schemas.policy import Policy
from schemas.settings import Settings
from tests.gpu.run_e2e import MODEL, noise_jpeg
from worker.image import prepare_image
from worker.inference.base import InferenceRequest
from worker.inference.scores import rating_score
from worker.inference.sglang import SGLangBackend
from worker.inference.tempering import classify, probe_body, spread

PREFIX = '{"rating": "'


def body_for(url: str, seed: int, *, with_rationale: bool = True, **settings: Any) -> dict[str, Any]:
    backend = SGLangBackend(Settings(sglang_url=url, **settings), get_model(MODEL))
    prepared = prepare_image(noise_jpeg(seed), max_side=336, max_pixels=10**8)
    request = InferenceRequest(
        image=prepared,
        policy_text=Policy().text(get_model(MODEL).prompt_version),
        rid=f"probe-{seed}",
        with_rationale=with_rationale,
        want_score=True,
    )
    body = backend.build_body(request)
    backend.close()
    return body


def continued(body: dict[str, Any], prefix: str, **extra: Any) -> dict[str, Any]:
    """The same request continued from an assistant prefix (``continue_final_message``)."""
    out = copy.deepcopy(body)
    out["messages"].append({"role": "assistant", "content": prefix})
    out["continue_final_message"] = True
    out.pop("response_format", None)
    out.update(extra)
    return out


def post(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[int, Any, float]:
    started = time.perf_counter()
    response = client.post(url + "/v1/chat/completions", json=body, timeout=300)
    took = time.perf_counter() - started
    try:
        return response.status_code, response.json(), took
    except ValueError:
        return response.status_code, response.text[:2000], took


def fixtures(client: httpx.Client, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, with_rationale in (("rationale", True), ("verdict_only", False)):
        status, payload, took = post(client, url, body_for(url, 7 + with_rationale, with_rationale=with_rationale))
        out[f"chat_{name}"] = {"status": status, "seconds": round(took, 3), "response": payload}
    spreads = []
    for temperature in (1.0, 0.25):
        status, payload, _ = post(client, url, probe_body(temperature, f"fixture-probe-{temperature}"))
        out[f"probe_T{temperature}"] = {"status": status, "response": payload}
        spreads.append(spread(payload) if status == 200 else None)
    out["probe_classified"] = classify(*spreads) if None not in spreads else None  # type: ignore[arg-type]
    out["probe_spreads"] = spreads
    for path in ("/health", "/ready", "/model_info", "/server_info", "/v1/loads", "/metrics"):
        started = time.perf_counter()
        response = client.get(url + path, timeout=60)
        out[f"GET {path}"] = {"status": response.status_code, "seconds": round(time.perf_counter() - started, 3),
                              "body": response.text[:20000]}
    return out


def agreement(client: httpx.Client, url: str, images: int = 24) -> dict[str, Any]:
    """Same image, same prefix ``{"rating": "``: the detempered score at T=0.2 against the direct one at T=1.0."""
    rows = []
    for seed in range(1000, 1000 + images):
        base = body_for(url, seed)
        scores = {}
        for temperature in (0.2, 1.0):
            body = continued(base, PREFIX, temperature=temperature, max_tokens=1, rid=f"agree-{seed}-{temperature}")
            status, payload, _ = post(client, url, body)
            if status != 200:
                scores[temperature] = {"status": status, "error": str(payload)[:300]}
                continue
            candidates = payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            scores[temperature] = {
                "detempered": (s := rating_score(candidates, temperature=temperature)) and s.unsafe,
                "naive": (n := rating_score(candidates)) and n.unsafe,
                "complete": s.complete if s else None,
                "candidates": [(c["token"], round(c["logprob"], 4)) for c in candidates[:8]],
            }
        rows.append({"seed": seed, **{f"T{t}": v for t, v in scores.items()}})
    diffs = [abs(r["T0.2"]["detempered"] - r["T1.0"]["detempered"]) for r in rows
             if isinstance(r.get("T0.2"), dict) and r["T0.2"].get("detempered") is not None
             and isinstance(r.get("T1.0"), dict) and r["T1.0"].get("detempered") is not None]
    naive = [abs(r["T0.2"]["naive"] - r["T1.0"]["detempered"]) for r in rows
             if isinstance(r.get("T0.2"), dict) and r["T0.2"].get("naive") is not None
             and isinstance(r.get("T1.0"), dict) and r["T1.0"].get("detempered") is not None]
    return {
        "images": images,
        "compared": len(diffs),
        "max_abs_diff_detempered": max(diffs, default=None),
        "mean_abs_diff_detempered": sum(diffs) / len(diffs) if diffs else None,
        "max_abs_diff_naive": max(naive, default=None),
        "mean_abs_diff_naive": sum(naive) / len(naive) if naive else None,
        "rows": rows,
    }


def continuation(client: httpx.Client, url: str, images: int = 8) -> dict[str, Any]:
    """Two steps: the verdict up to ``"rationale": "``, then the same request continued from that text."""
    rows = []
    for seed in range(2000, 2000 + images):
        base = body_for(url, seed)
        first = copy.deepcopy(base) | {"stop": ['"rationale": "'], "no_stop_trim": True, "rid": f"c1-{seed}"}
        s1, p1, t1 = post(client, url, first)
        row: dict[str, Any] = {"seed": seed, "step1_status": s1, "step1_s": round(t1, 3)}
        if s1 != 200:
            row["step1_error"] = str(p1)[:400]
            rows.append(row)
            continue
        text = p1["choices"][0]["message"]["content"]
        row |= {"step1_text": text, "step1_finish": p1["choices"][0]["finish_reason"], "step1_usage": p1.get("usage")}
        regex = r'([^"\\\x00-\x1f]|\\["\\/bfnrt]){0,399}"\}'
        second = continued(base, text, regex=regex, rid=f"c2-{seed}", logprobs=False)
        second.pop("top_logprobs", None)
        s2, p2, t2 = post(client, url, second)
        row |= {"step2_status": s2, "step2_s": round(t2, 3)}
        if s2 == 200:
            content = p2["choices"][0]["message"]["content"]
            row |= {"step2_text": content[:300], "step2_finish": p2["choices"][0]["finish_reason"],
                    "step2_usage": p2.get("usage")}
            try:
                row["joined_parses"] = sorted(json.loads(text + content, strict=False))
            except ValueError as exc:
                row["joined_parses"] = repr(exc)[:200]
        else:
            row["step2_error"] = str(p2)[:400]
        rows.append(row)
    return {"rows": rows}


async def _sweep_point(url: str, body: dict[str, Any], concurrency: int, n: int, seed0: int) -> dict[str, Any]:
    bodies = []
    for i in range(n):
        b = copy.deepcopy(body)
        b.pop("rid", None)
        b["messages"][0]["content"][0]["image_url"]["url"] = prepare_image(noise_jpeg(seed0 + i), max_side=336, max_pixels=10**8).data_uri()
        bodies.append(b)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    stats: dict[str, Any] = {"ok": 0, "err": 0, "completion": 0, "prompt": 0, "lat": []}
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        async def worker() -> None:
            while not queue.empty():
                b = queue.get_nowait()
                started = time.perf_counter()
                r = await client.post(url + "/v1/chat/completions", json=b)
                if r.status_code == 200:
                    usage = r.json().get("usage") or {}
                    stats["ok"] += 1
                    stats["completion"] += usage.get("completion_tokens", 0)
                    stats["prompt"] += usage.get("prompt_tokens", 0)
                    stats["lat"].append(time.perf_counter() - started)
                else:
                    stats["err"] += 1

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - started
    lat = sorted(stats["lat"]) or [math.nan]
    return {"concurrency": concurrency, "n": n, "ok": stats["ok"], "err": stats["err"], "wall_s": round(wall, 2),
            "images_per_s": round(stats["ok"] / wall, 2), "completion_mean": round(stats["completion"] / max(1, stats["ok"]), 1),
            "prompt_mean": round(stats["prompt"] / max(1, stats["ok"]), 1),
            "p50_s": round(lat[len(lat) // 2], 3), "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3)}


def sweep(url: str, concurrencies: list[int], n: int = 128) -> list[dict[str, Any]]:
    rows = []
    seed = 3_000_000
    for with_rationale in (False, True):
        body = body_for(url, 1, with_rationale=with_rationale)
        for c in concurrencies:
            row = asyncio.run(_sweep_point(url, body, c, n, seed)) | {"rationale": with_rationale}
            seed += n
            print("sweep", row, flush=True)
            rows.append(row)
    return rows


def run_all(url: str, out: Path, *, concurrencies: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with httpx.Client() as client:
        for name, step in (("fixtures", fixtures), ("agreement", agreement), ("continuation", continuation)):
            started = time.monotonic()
            try:
                results[name] = step(client, url)
            except Exception as exc:  # record and go on: one probe failing must not lose the others
                results[name] = {"error": repr(exc)}
            print(name, "done in", round(time.monotonic() - started, 1), "s", flush=True)
    if concurrencies:
        results["sweep"] = sweep(url, [int(c) for c in concurrencies.split(",")])
    (out / "probes.json").write_text(json.dumps(results, indent=1, default=str))
    return {k: (v if k == "sweep" else {kk: vv for kk, vv in v.items() if kk != "rows"} if isinstance(v, dict) else v)
            for k, v in results.items() if k != "fixtures"}
