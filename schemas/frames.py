"""What a verdict event says about the frames of an animated image or a video (``data.frames``).

The job's verdict is Unsafe when any moderated frame is Unsafe; it is then the verdict of the most confident
Unsafe frame (highest P(Unsafe); the earliest one without scores), otherwise that of the riskiest Safe frame.
``unsafe_score`` is the highest P(Unsafe) of any moderated frame. ``decisive`` names the frame whose verdict the
job reports; ``results`` lists every moderated frame compactly.

Counting: ``sampled`` frames were decoded and compared; each is either ``moderated`` (one model call or cache
hit per frame), a ``duplicates`` of a moderated frame (identical or near-identical, skipped before any model
call), or ``over_budget`` (distinct, but the per-file budget of model calls was spent on more distinct frames).
``sampled == moderated + duplicates + over_budget``; ``moderated <= budget``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.taxonomy import Rating

FrameSource = Literal["animation", "video"]


class FrameResult(BaseModel):
    """One moderated frame: its index in the file, its presentation time, and the model's answer."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0, description="0-based frame number in presentation order")
    time_s: float | None = Field(default=None, description="presentation time in seconds")
    rating: Rating
    category: str = Field(description="category code: O1..O9 or NA")
    score: float | None = Field(default=None, description="P(Unsafe) when scores were requested")
    cached: bool = False


class FramesSummary(BaseModel):
    """How a multi-frame file was sampled and what each moderated frame got."""

    model_config = ConfigDict(frozen=True)

    source: FrameSource
    total: int | None = Field(default=None, description="frames in the file (counted without decoding)")
    duration_s: float | None = None
    first_frame_only: bool = False
    budget: int = Field(ge=1, description="most frames moderated for this file")
    sampled: int = Field(ge=0)
    moderated: int = Field(ge=0)
    duplicates: int = Field(ge=0)
    over_budget: int = Field(ge=0)
    decisive: int | None = Field(default=None, description="index of the frame whose verdict the job reports")
    results: list[FrameResult] = Field(default_factory=list)

    @property
    def unsafe_frames(self) -> list[FrameResult]:
        return [r for r in self.results if r.rating == "Unsafe"]
