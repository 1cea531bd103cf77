"""Images/s per image-detail level on a real SGLang server with the OneVision 7B shape (``run_e2e.py detail``).

guardq's own SGLang client (``SGLangBackend``, product defaults, the OneVision model spec) on photo-sized images
(1152x864 noise, distinct per request: no cache hit), downscaled the way the worker does for each level of a
policy's ``image_detail``: ``native`` (the model's own anyres tiling up to 1152 px) and ``base`` (384 px: one tile
plus the base image). Each level runs at a few in-flight counts; the best is the level's figure. Verdict with
rationale (the default policy) and verdict-only, since random weights write rationales of arbitrary length.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.gpu.run_e2e import noise_jpeg

OV_MODEL = "AIML-TUDA/LlavaGuard-v1.2-7B-OV"
PHOTO = (1152, 864)


def level_point(url: str, level: str, concurrency: int, n: int, seed0: int, *, with_rationale: bool) -> dict[str, Any]:
    from schemas.models import get_model
    from schemas.policy import Policy
    from schemas.settings import Settings
    from worker.image import prepare_image
    from worker.inference.base import InferenceRequest
    from worker.inference.sglang import SGLangBackend

    spec = get_model(OV_MODEL)
    backend = SGLangBackend(Settings(sglang_url=url, model=OV_MODEL), spec)
    text = Policy().text(spec.prompt_version)
    side = spec.image_side(level)
    requests = [
        InferenceRequest(
            image=prepare_image(noise_jpeg(seed0 + i, size=PHOTO), max_side=side, max_pixels=10**8),
            policy_text=text,
            rid=f"detail-{level}-{concurrency}-{i}",
            with_rationale=with_rationale,
            want_score=True,
        )
        for i in range(n)
    ]
    started = time.perf_counter()
    errors: list[str] = []

    def one(request: InferenceRequest) -> Any:
        try:
            return backend.infer(request)
        except Exception as exc:  # counted, not fatal: the figure says how many failed
            errors.append(repr(exc)[:200])
            return None

    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for r in pool.map(one, requests) if r is not None]
    wall = time.perf_counter() - started
    backend.close()
    prompt = [r.prompt_tokens for r in results if r.prompt_tokens]
    completion = [r.completion_tokens for r in results if r.completion_tokens]
    return {
        "level": level,
        "image_side": side,
        "rationale": with_rationale,
        "concurrency": concurrency,
        "n": n,
        "ok": len(results),
        "errors": len(errors),
        "error_sample": errors[:2],
        "images_per_s": round(len(results) / wall, 2),
        "prompt_tokens_mean": round(sum(prompt) / len(prompt), 1) if prompt else None,
        "completion_tokens_mean": round(sum(completion) / len(completion), 1) if completion else None,
        "wall_s": round(wall, 1),
    }


def run(url: str, *, sweep: tuple[int, ...], n: int, rationale: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"model": OV_MODEL, "photo": PHOTO, "points": []}
    seed = 20_000_000
    modes = (False, True) if rationale else (False,)
    for with_rationale in modes:
        for level in ("native", "base"):
            for concurrency in sweep:
                # base images cost a quarter of the tokens: more of them per point, so each point runs long enough
                count = n * (3 if level == "base" else 1)
                point = level_point(url, level, concurrency, count, seed, with_rationale=with_rationale)
                seed += count
                print("detail", point, flush=True)
                out["points"].append(point)
    for with_rationale in modes:
        best = {
            level: max(
                (p for p in out["points"] if p["level"] == level and p["rationale"] is with_rationale),
                key=lambda p: p["images_per_s"],
            )
            for level in ("native", "base")
        }
        key = "with_rationale" if with_rationale else "verdict_only"
        out[key] = {
            level: {k: p[k] for k in ("images_per_s", "concurrency", "prompt_tokens_mean", "completion_tokens_mean")}
            for level, p in best.items()
        }
        out[key]["base_over_native"] = round(best["base"]["images_per_s"] / best["native"]["images_per_s"], 2)
    return out
