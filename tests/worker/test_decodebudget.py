"""Concurrent decodes share one memory budget: large images wait their turn, small ones hardly notice (unit)."""

from __future__ import annotations

import io
import threading

from PIL import Image

from worker.decodebudget import DecodeBudget, decode_cost
from worker.image import prepare_image


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_threads_decoding_large_images_never_hold_more_than_the_budget_together() -> None:
    data = png(2000, 1500)  # 3 MP: 24 MB of decode cost each
    cost = decode_cost(2000, 1500)
    budget = DecodeBudget(capacity_bytes=2 * cost + 1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            prepare_image(data, max_side=336, max_pixels=64_000_000, budget=budget)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [] == errors
    assert cost <= budget.peak <= 2 * cost + 1  # at most two at once, and at least one ran
    assert 0 == budget.used


def test_an_image_larger_than_the_whole_budget_still_runs_alone() -> None:
    budget = DecodeBudget(capacity_bytes=1024)
    prepared = prepare_image(png(400, 300), max_side=336, max_pixels=64_000_000, budget=budget)
    assert (400, 300) == (prepared.width, prepared.height)
    assert 1024 == budget.peak and 0 == budget.used


def test_a_jpeg_is_charged_for_its_draft_size_not_its_full_size() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 90, 90)).save(buf, "JPEG")
    budget = DecodeBudget(capacity_bytes=10**12)
    prepare_image(buf.getvalue(), max_side=672, max_pixels=64_000_000, budget=budget)
    assert budget.peak <= decode_cost(1000, 750)  # DCT scaling decoded it at 1/4
