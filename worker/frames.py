"""Frame sampling shared by animated images and videos: near-duplicate detection and the per-file budget.

Frames arrive one at a time, already downscaled to the model's input size, and are never all held at once: the
sampler keeps at most ``budget`` frames (as the small JPEGs the model will get) plus a 16x16 thumbnail of each.

*Near-duplicates.* A frame's fingerprint is its 16x16 RGB thumbnail (box filter); the distance of two frames is
the mean absolute difference of those 768 values on the 0-255 scale. Frames within ``threshold`` (setting
``GUARDQ_FRAME_DEDUPE_THRESHOLD``, default 3.0, about 1.2 %) of the representative of the current run of frames,
or of any frame already chosen, are duplicates: they are counted and never sent to the model. Comparing with the
run's representative rather than with the previous frame keeps a slow fade from drifting past the threshold one
small step at a time. Colour is part of the fingerprint, so frames that differ only in hue are not merged; what a
16x16 thumbnail cannot see (fine detail at the same coarse layout, e.g. a sharp frame next to its blurred copy)
can be merged — set the threshold to 0 to merge only frames whose thumbnails are identical.

*The budget.* The first frame is always moderated. While fewer than ``budget`` distinct frames have been seen,
every one is kept. Beyond that, the kept set (plus the newcomer) loses its weakest member: the one with the
lowest novelty (its distance to the kept frame before it, in steps of :data:`NOVELTY_STEP`), and among equally
novel ones the one whose loss leaves the shortest unsampled stretch (frames between its kept neighbours; the
latest frame anchors the end, and the earlier of equals goes first). Scene changes and outliers (a single unsafe
frame spliced into a harmless animation) are the most novel and survive; a slow change is cut into even steps.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageChops

from schemas.errors import ErrorCode, PermanentError
from schemas.settings import Settings

FINGERPRINT_SIZE = (16, 16)
NOVELTY_STEP = 8.0  # novelty is compared in steps of this many levels: near-ties go to the time-coverage rule


@dataclass(frozen=True)
class FrameLimits:
    """What one multi-frame file may cost before it fails (each limit has its own error code)."""

    max_frames: int  # frames in the file (counted without decoding): too_many_frames
    max_duration_s: float  # running time: too_long
    max_pixels: int  # one frame's canvas: decompression_bomb
    max_total_pixels: int  # canvas x frames decoded: decompression_bomb
    video_decode_max_frames: int  # most frames decoded from one video

    @classmethod
    def of(cls, settings: Settings) -> FrameLimits:
        return cls(
            max_frames=settings.max_frames,
            max_duration_s=settings.max_duration_s,
            max_pixels=settings.max_image_pixels,
            max_total_pixels=settings.max_total_pixels,
            video_decode_max_frames=settings.video_decode_max_frames,
        )

    def check_count(self, frames: int, what: str) -> None:
        if frames > self.max_frames:
            raise PermanentError(
                f"{what} has {frames:,} frames or more; the limit is {self.max_frames:,}",
                code=ErrorCode.TOO_MANY_FRAMES,
            )

    def check_duration(self, seconds: float, what: str) -> None:
        if seconds > self.max_duration_s:
            raise PermanentError(
                f"{what} runs {seconds:,.1f} s or more; the limit is {self.max_duration_s:,.0f} s",
                code=ErrorCode.TOO_LONG,
            )

    def check_canvas(self, width: int, height: int, what: str) -> None:
        if width < 1 or height < 1:
            raise PermanentError(f"{what} has no pixels ({width}x{height})", code=ErrorCode.NOT_AN_IMAGE)
        if width * height > self.max_pixels:
            raise PermanentError(
                f"the frames of {what} are {width}x{height} = {width * height:,} pixels; the limit is {self.max_pixels:,}",
                code=ErrorCode.DECOMPRESSION_BOMB,
            )

    def check_total(self, width: int, height: int, frames: int, what: str) -> None:
        total = width * height * frames
        if total > self.max_total_pixels:
            raise PermanentError(
                f"{what}: {frames:,} frames of {width}x{height} decode to {total:,} pixels; "
                f"the limit is {self.max_total_pixels:,}",
                code=ErrorCode.DECOMPRESSION_BOMB,
            )


def fingerprint(image: Image.Image) -> Image.Image:
    """The 16x16 RGB thumbnail two frames are compared by."""
    return image.convert("RGB").resize(FINGERPRINT_SIZE, Image.Resampling.BOX)


def distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two fingerprints, 0 (identical) to 255."""
    mean = ImageChops.difference(a, b).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    assert isinstance(mean, tuple)
    return sum(mean) / 3.0


def jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclass(eq=False)
class Candidate:
    """A distinct frame: where it is, its fingerprint, and (while it is kept) the JPEG the model will get."""

    index: int
    time_s: float | None
    thumb: Image.Image
    payload: bytes | None = None
    size: tuple[int, int] = (0, 0)
    members: int = 1  # sampled frames it stands for: itself plus its duplicates
    kept: bool = False
    near: dict[int, float] = field(default_factory=dict)  # id(other kept candidate) -> distance


@dataclass(frozen=True)
class SampleCounts:
    sampled: int
    moderated: int
    duplicates: int
    over_budget: int


class FrameSampler:
    """Feed frames in with :meth:`offer`; :meth:`chosen` gives the distinct frames to moderate, in file order."""

    def __init__(self, *, budget: int, threshold: float, encode: Callable[[Image.Image], bytes]) -> None:
        if budget < 1:
            raise ValueError("budget must be at least 1")
        self._budget = budget
        self._threshold = threshold
        self._encode = encode
        self._kept: list[Candidate] = []
        self._run: Candidate | None = None  # representative of the run the previous frame belonged to
        self.sampled = 0
        self.over_budget = 0

    def offer(self, index: int, time_s: float | None, image: Image.Image) -> None:
        """Take one decoded frame (RGB, already at model size); it is dropped, kept, or counted as a duplicate."""
        self.sampled += 1
        thumb = fingerprint(image)
        run = self._run
        if run is not None and distance(thumb, run.thumb) <= self._threshold:
            self._join(run)
            return
        near = {id(c): distance(thumb, c.thumb) for c in self._kept}
        match = min(self._kept, key=lambda c: near[id(c)], default=None)
        if match is not None and near[id(match)] <= self._threshold:
            self._run = match
            self._join(match)
            return
        candidate = Candidate(index=index, time_s=time_s, thumb=thumb, near=near)
        self._run = candidate
        self._admit(candidate, image)

    def chosen(self) -> list[Candidate]:
        return sorted(self._kept, key=lambda c: c.index)

    def counts(self) -> SampleCounts:
        moderated = len(self._kept)
        duplicates = sum(c.members - 1 for c in self._kept)
        return SampleCounts(self.sampled, moderated, duplicates, self.over_budget)

    # --- internals ------------------------------------------------------------------------------------------
    def _join(self, representative: Candidate) -> None:
        if representative.kept:
            representative.members += 1
        else:
            self.over_budget += 1  # a duplicate of a frame the budget left out is left out too

    def _admit(self, candidate: Candidate, image: Image.Image) -> None:
        if len(self._kept) >= self._budget:
            victim = self._weakest(candidate)
            if victim is candidate:
                self.over_budget += 1
                return
            self._drop(victim)
        candidate.payload = self._encode(image)
        candidate.size = image.size
        candidate.kept = True
        for other in self._kept:
            other.near[id(candidate)] = candidate.near[id(other)]
        self._kept.append(candidate)

    def _drop(self, victim: Candidate) -> None:
        self._kept.remove(victim)
        victim.kept = False
        victim.payload = None
        self.over_budget += victim.members
        for other in self._kept:
            other.near.pop(id(victim), None)

    def _weakest(self, newcomer: Candidate) -> Candidate:
        """The member of kept + newcomer whose loss costs least; the first kept frame is never chosen."""
        pinned = self._kept[0]
        pool = sorted([*self._kept, newcomer], key=lambda c: c.index)

        def apart(a: Candidate, b: Candidate) -> float:
            return newcomer.near[id(b if a is newcomer else a)] if newcomer in (a, b) else a.near[id(b)]

        def novelty(position: int) -> float:
            """How far it is from the kept frame before it: what it adds to the story the kept frames tell."""
            return apart(pool[position - 1], pool[position])

        def hole(position: int) -> int:
            """Frames between the neighbours of ``pool[position]``: the stretch its loss would leave unsampled."""
            if position + 1 == len(pool):
                return len(self._kept) * (pool[-1].index + 1)  # the latest frame anchors the end: kept while it can
            return pool[position + 1].index - pool[position - 1].index

        ranked = [(int(novelty(i) // NOVELTY_STEP), hole(i), c.index, c) for i, c in enumerate(pool) if c is not pinned]
        return min(ranked, key=lambda r: r[:3])[3]
