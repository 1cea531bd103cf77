"""A worker-wide memory budget for decoded pixels, so concurrent decodes of large images cannot exhaust memory.

32 threads each decoding a 64-megapixel PNG hold about 8 GB of pixels at once (Pillow keeps RGB at 4 bytes per
pixel, and a mode conversion holds a second copy). Each decode first reserves its estimated bytes from one budget
per process (``GUARDQ_DECODE_MEMORY_MB``); a decode that does not fit waits until earlier ones release theirs. A
single image larger than the whole budget still runs, alone. Small images (most JPEGs decode in draft mode to
about the model's input size) cost almost nothing and rarely wait.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

BYTES_PER_PIXEL = 4  # Pillow's RGB/RGBA/CMYK storage
COPIES = 2  # the decoded image and one converted/resized copy alive at once


def decode_cost(width: int, height: int) -> int:
    """Estimated peak bytes of decoding and preparing an image of this (post-draft) size."""
    return width * height * BYTES_PER_PIXEL * COPIES


class DecodeBudget:
    """Counts reserved bytes; thread-safe; FIFO enough for a pool of tens of threads."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = max(1, capacity_bytes)
        self._used = 0
        self._peak = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        """The most bytes ever reserved at once (for tests and metrics)."""
        return self._peak

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes (capped at the capacity) for the duration of the block."""
        amount = min(max(0, cost), self.capacity)
        with self._cond:
            while self._used + amount > self.capacity:
                self._cond.wait()
            self._used += amount
            self._peak = max(self._peak, self._used)
        try:
            yield
        finally:
            with self._cond:
                self._used -= amount
                self._cond.notify_all()
