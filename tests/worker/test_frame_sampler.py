"""The frame sampler: duplicates never reach the model, the budget is never exceeded, outliers are never dropped."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from tests import motion
from worker.frames import FrameSampler, distance, fingerprint, jpeg


def sampler(budget: int = 16, threshold: float = 3.0) -> FrameSampler:
    return FrameSampler(budget=budget, threshold=threshold, encode=lambda image: jpeg(image, 90))


def feed(s: FrameSampler, images: list[Image.Image]) -> list[int]:
    for i, image in enumerate(images):
        s.offer(i, i * 0.04, image)
    counts = s.counts()
    assert counts.sampled == counts.moderated + counts.duplicates + counts.over_budget == len(images)
    return [c.index for c in s.chosen()]


def solid(rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (64, 48), rgb)


def test_identical_frames_are_moderated_once() -> None:
    s = sampler()
    assert [0] == feed(s, [solid((40, 120, 200))] * 30)
    assert (30, 1, 29, 0) == (s.counts().sampled, s.counts().moderated, s.counts().duplicates, s.counts().over_budget)


def test_alternating_frames_are_two_distinct_frames() -> None:
    a, b = solid((40, 120, 200)), solid((200, 200, 40))
    assert [0, 1] == feed(sampler(), [a, b] * 10)


def test_a_slow_fade_cannot_drift_past_the_threshold_one_small_step_at_a_time() -> None:
    """Each step is below the threshold, but the end is far from the start: it is compared with the run's first."""
    steps = [solid((40 + 3 * i, 120, 200 - 3 * i)) for i in range(60)]
    assert all(distance(fingerprint(x), fingerprint(y)) <= 3.0 for x, y in itertools.pairwise(steps))
    s = sampler()
    feed(s, steps)
    last = fingerprint(steps[-1])
    assert min(distance(last, c.thumb) for c in s.chosen()) <= 3.0  # the end of the fade is moderated too


def test_frames_that_differ_only_in_hue_are_not_merged() -> None:
    """Same brightness, different colour: a grey-only fingerprint would call these duplicates."""
    red, green = solid((200, 60, 60)), solid((60, 130, 60))
    grey = [sum(v * w for v, w in zip(c.getpixel((0, 0)), (0.299, 0.587, 0.114), strict=True)) for c in (red, green)]
    assert abs(grey[0] - grey[1]) < 3
    assert [0, 1] == feed(sampler(), [red, green])


def test_threshold_zero_merges_only_frames_with_identical_thumbnails() -> None:
    frames = [solid((100, 100, 100 + (i % 2))) for i in range(4)]
    assert [0] == feed(sampler(threshold=3.0), frames)
    assert [0, 1] == feed(sampler(threshold=0.0), frames)


def test_the_budget_caps_the_frames_moderated_and_the_first_frame_is_always_one_of_them() -> None:
    s = sampler(budget=16)
    chosen = feed(s, [solid((i, 255 - i, (7 * i) % 256)) for i in range(0, 250, 2)])
    assert 16 == len(chosen) == s.counts().moderated
    assert 0 == chosen[0]
    assert s.counts().over_budget == 125 - 16


def test_a_budget_of_one_is_the_first_frame_only() -> None:
    assert [0] == feed(sampler(budget=1), motion.frames(40, unsafe_at={20}))


@pytest.mark.parametrize("position", [1, 17, 58, 99, 150, 239])
def test_a_single_unsafe_frame_among_many_distinct_harmless_ones_is_always_kept(position: int) -> None:
    images = motion.frames(240, unsafe_at={position})
    s = sampler(budget=16)
    assert position in feed(s, images)
    assert s.counts().over_budget > 0  # the budget was binding: the frame survived on its merit


def test_ordinary_frames_thin_out_evenly_over_the_whole_file() -> None:
    """A grey ramp: every frame equally novel, so the kept ones spread from start to end."""
    ramp = [solid((i, i, i)) for i in range(256)]
    chosen = feed(sampler(budget=16, threshold=0.5), ramp)
    gaps = [b - a for a, b in itertools.pairwise(chosen)]
    assert 255 - chosen[-1] <= 256 // 16  # the end is sampled too
    assert max(gaps) <= 2 * 256 // 16, chosen


def test_only_the_kept_frames_hold_a_jpeg() -> None:
    s = sampler(budget=4)
    feed(s, motion.frames(60))
    assert all(c.payload is not None and c.payload.startswith(b"\xff\xd8") for c in s.chosen())
    assert all(c.size == (160, 120) for c in s.chosen())
