"""Frames of a short video (MP4, MOV, WebM, MKV), decoded with PyAV (FFmpeg) one at a time.

Hostile files are contained before anything is decoded:

- the demuxer is chosen from the file's signature (``worker/media.py``), never probed, and only a list of
  well-known video decoders is accepted (``unsupported_format`` otherwise);
- one pass over the packets, without decoding, counts the frames (``too_many_frames`` past
  ``GUARDQ_MAX_FRAMES``), measures the running time from the timestamps (``too_long`` past
  ``GUARDQ_MAX_DURATION_S``; a declared duration over the limit fails at once) and finds the keyframes;
- the frame size is checked against ``GUARDQ_MAX_IMAGE_PIXELS`` (``decompression_bomb``), and the frames decoded
  are planned so that at most ``min(GUARDQ_VIDEO_DECODE_MAX_FRAMES, GUARDQ_MAX_TOTAL_PIXELS / frame pixels)``
  frames are decoded, whatever the file's structure.

*Keyframe-first sampling* (:func:`plan_targets`): a video of at most that many frames is decoded frame by frame;
a longer one gets its keyframes (encoders put them at scene cuts), then again and again the middle of the widest
stretch not yet sampled, while the decoding cost (frames from the preceding keyframe to each target) stays within
the bound. A video whose keyframes are further apart than the bound fails (``too_many_frames``): frames deep in
such a stretch could not be reached. Decoded
frames are scaled to the model's size by FFmpeg, rotated upright, and handed on; none is kept.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.logging
from PIL import Image

from schemas.errors import ErrorCode, PermanentError
from worker.animation import DecodedFrame
from worker.frames import FrameLimits

DEMUXERS = {"MP4": "mov,mp4,m4a,3gp,3g2,mj2", "MOV": "mov,mp4,m4a,3gp,3g2,mj2", "WEBM": "matroska,webm"}
DEMUXERS["MKV"] = DEMUXERS["WEBM"]
# FFmpeg decoder names (codec_context.name) accepted; everything else is refused before decoding.
DECODERS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libvpx", "libvpx-vp9", "mpeg4", "mjpeg", "mpeg2video"}
)
# FFmpeg's own logger writes to stderr at info level (a hostile file makes it chatty); hand it to Python's
# logging, errors only: whatever matters about a file is in the job's event.
av.logging.set_level(av.logging.ERROR)
_UPRIGHT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class VideoInfo:
    format: str
    codec: str
    width: int  # as displayed (rotation applied)
    height: int
    frames: int
    duration_s: float
    keyframes: int


def plan_targets(frames: int, keyframes: list[int], *, budget: int, decode_limit: int, first_only: bool) -> list[int]:
    """Frame indices (presentation order, ascending) to decode; the decoding cost never exceeds ``decode_limit``."""
    if frames <= 0:
        return []
    if first_only:
        return [0]
    if frames <= decode_limit:
        return list(range(frames))
    keys = sorted(set(keyframes) | {0})
    key_share = max(1, decode_limit // 2)
    if len(keys) > key_share:  # thin the keyframes evenly, keeping the first
        keys = sorted({keys[round(i * (len(keys) - 1) / max(1, key_share - 1))] for i in range(key_share)})
    chosen = set(keys)
    for _ in range(2 * budget):  # then the middle of the widest unsampled stretch that still fits, again and again
        ordered = sorted(chosen)
        stretches = sorted(zip(ordered, [*ordered[1:], frames], strict=True), key=lambda ab: (ab[0] - ab[1], ab[0]))
        for start, end in stretches:
            if end - start < 2:
                break
            middle = (start + end) // 2
            if decode_cost(sorted(chosen | {middle}), keyframes) <= decode_limit:
                chosen.add(middle)
                break
        else:
            break
    return sorted(chosen)


def decode_cost(targets: list[int], keyframes: list[int]) -> int:
    """Frames decoded to reach ``targets`` in order: seek to the keyframe before a target, or decode on to it."""
    keys = sorted(set(keyframes) | {0})
    cost, position = 0, -1
    for target in targets:
        key = keys[bisect.bisect_right(keys, target) - 1]
        cost += target - key + 1 if key > position else target - position
        position = target
    return cost


class Video:
    """An opened video whose limits have been checked: :attr:`info`, then :meth:`frames` for the planned ones."""

    def __init__(self, data: bytes, container: str, limits: FrameLimits) -> None:
        self._limits = limits
        what = f"this {container} video"
        try:
            self._container: Any = av.open(io.BytesIO(data), format=DEMUXERS[container], mode="r")
        except av.FFmpegError as exc:  # the signature said video: what follows it is damaged or cut short
            raise PermanentError(f"{what} cannot be read: {exc}", code=ErrorCode.TRUNCATED_IMAGE) from None
        try:
            self._open(container, what)
        except BaseException:
            self.close()
            raise

    def _open(self, container: str, what: str) -> None:
        limits = self._limits
        if not self._container.streams.video:
            raise PermanentError(f"{what} has no video stream", code=ErrorCode.NOT_AN_IMAGE)
        stream = self._stream = self._container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in DECODERS:
            raise PermanentError(
                f"{what} is encoded as {codec}; accepted: {', '.join(sorted(DECODERS))}",
                code=ErrorCode.UNSUPPORTED_FORMAT,
            )
        stream.codec_context.thread_count = 1  # the worker runs many jobs at once; one core each is fair
        limits.check_canvas(stream.codec_context.width, stream.codec_context.height, what)
        if self._container.duration:
            limits.check_duration(self._container.duration / av.time_base, what + " (by its header)")
        self._time_base = stream.time_base or Fraction(1, av.time_base)
        self._pts, keys = self._scan(what)
        if not self._pts:
            raise PermanentError(f"{what} has no frames", code=ErrorCode.NOT_AN_IMAGE)
        self._keys = sorted({bisect.bisect_left(self._pts, k) for k in keys} | {0})
        width, height = stream.codec_context.width, stream.codec_context.height
        self.info = VideoInfo(
            container, codec, width, height, len(self._pts), self._seconds(self._pts[-1]), len(self._keys)
        )
        self.decode_limit = max(1, min(limits.video_decode_max_frames, limits.max_total_pixels // (width * height)))
        gop = max(b - a for a, b in zip(self._keys, [*self._keys[1:], len(self._pts)], strict=True))
        if gop > self.decode_limit:  # frames deep inside such a stretch cannot be reached within the bound
            raise PermanentError(
                f"{what} has {gop:,} frames between keyframes; at most {self.decode_limit:,} can be decoded "
                "to sample it (GUARDQ_VIDEO_DECODE_MAX_FRAMES, GUARDQ_MAX_TOTAL_PIXELS)",
                code=ErrorCode.TOO_MANY_FRAMES,
            )

    def _scan(self, what: str) -> tuple[list[int], list[int]]:
        """Every frame's timestamp and the keyframes', from the packets alone (nothing is decoded)."""
        pts: list[int] = []
        keys: list[int] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
                self._limits.check_count(len(pts), what)
                if len(pts) == 1:
                    low = high = packet.pts
                low, high = min(low, packet.pts), max(high, packet.pts)
                self._limits.check_duration(float((high - low) * self._time_base), what)
        except av.FFmpegError as exc:
            raise PermanentError(f"{what} is damaged: {exc}", code=ErrorCode.TRUNCATED_IMAGE) from None
        pts.sort()
        self._origin = pts[0] if pts else 0
        if pts:
            self._limits.check_duration(float((pts[-1] - pts[0]) * self._time_base), what)
        return pts, keys

    def _seconds(self, pts: int) -> float:
        return round(float((pts - self._origin) * self._time_base), 3)

    @property
    def keyframes(self) -> list[int]:
        return list(self._keys)

    def frames(self, targets: list[int], *, max_side: int) -> Iterator[DecodedFrame]:
        """Decode the ``targets`` (ascending indices), seeking to keyframes only when that saves decoding."""
        decoder: Iterator[Any] | None = None
        position = last = -1
        what = f"this {self.info.format} video"
        decoded, allowed = 0, 2 * max(self.decode_limit, len(targets))
        try:
            for target in targets:
                if target <= last:
                    continue
                key = self._keys[bisect.bisect_right(self._keys, target) - 1]
                if decoder is None or key > position:
                    self._container.seek(self._pts[key], stream=self._stream, backward=True, any_frame=False)
                    decoder = iter(self._container.decode(self._stream))
                for frame in decoder:
                    decoded += 1
                    if decoded > allowed:
                        raise PermanentError(
                            f"{what} needed more than {allowed} decoded frames to reach {len(targets)} planned ones "
                            "(keyframes that are not where the container says)",
                            code=ErrorCode.DECOMPRESSION_BOMB,
                        )
                    position = self._index(frame, position)
                    if position >= target:
                        last = position
                        yield DecodedFrame(position, self._seconds(self._pts[position]), self._picture(frame, max_side))
                        break
                else:
                    return  # the stream ended before this target: every frame there is was seen
        except av.FFmpegError as exc:
            raise PermanentError(f"{what} cannot be decoded: {exc}", code=ErrorCode.TRUNCATED_IMAGE) from None

    def _index(self, frame: Any, previous: int) -> int:
        if frame.pts is None:
            return min(previous + 1, len(self._pts) - 1)
        return min(bisect.bisect_left(self._pts, frame.pts), len(self._pts) - 1)

    def _picture(self, frame: Any, max_side: int) -> Image.Image:
        """The frame scaled by FFmpeg so its longer side is at most ``max_side``, in RGB, upright."""
        width, height = frame.width, frame.height
        scale = min(1.0, max_side / max(width, height))
        size = (max(2, round(width * scale)), max(2, round(height * scale)))
        image: Image.Image = frame.to_image(width=size[0], height=size[1])
        rotation = int(getattr(frame, "rotation", 0) or 0) % 360
        return image.transpose(_UPRIGHT[rotation]) if rotation in _UPRIGHT else image

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
