"""Where frames come from: telling animations and videos from stills, decoding them, and the limits that fail.

Each failure mode is checked with the production defaults (``Settings()``) on a file built to cross that one limit.
"""

from __future__ import annotations

import io
import itertools
from fractions import Fraction

import pytest
from PIL import Image

from schemas.errors import PermanentError
from schemas.settings import Settings
from tests import images, motion
from tests.fixtures.make_bad_inputs import apng_claiming, gif_of_frames
from worker.animation import Animation
from worker.frames import FrameLimits
from worker.media import MediaKind, gif_frame_count, sniff
from worker.video import Video, decode_cost, plan_targets

DEFAULTS = FrameLimits.of(Settings())


def code_of(build: object) -> str:
    with pytest.raises(PermanentError) as info:
        build()  # type: ignore[operator]
    return str(info.value.code)


# --- telling them apart ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "kind", "fmt"),
    [
        (images.solid(), MediaKind.STILL, ""),
        (images.solid(fmt="PNG"), MediaKind.STILL, ""),
        (images.solid(fmt="GIF"), MediaKind.STILL, ""),
        (images.solid(fmt="WEBP"), MediaKind.STILL, ""),
        (motion.animation(2), MediaKind.ANIMATION, "GIF"),
        (motion.animation(4, fmt="PNG"), MediaKind.ANIMATION, "PNG"),
        (motion.animation(4, fmt="WEBP"), MediaKind.ANIMATION, "WEBP"),
        (motion.clip(5), MediaKind.VIDEO, "MP4"),
        (motion.clip(5, container="mov"), MediaKind.VIDEO, "MOV"),
        (motion.clip(5, container="webm", codec="libvpx"), MediaKind.VIDEO, "WEBM"),
        (motion.clip(5, container="matroska"), MediaKind.VIDEO, "MKV"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40, MediaKind.STILL, ""),
        (b"plain text", MediaKind.STILL, ""),
    ],
    ids=["jpeg", "png", "gif-1-frame", "webp", "gif", "apng", "webp-anim", "mp4", "mov", "webm", "mkv", "heic", "text"],
)
def test_media_kind_is_told_from_the_container_alone(data: bytes, kind: MediaKind, fmt: str) -> None:
    media = sniff(data)
    assert (kind, fmt) == (media.kind, media.format)


def test_gif_frames_are_counted_with_a_bound_however_many_there_are() -> None:
    data = gif_of_frames(1, 1, 300_000)
    assert 300_000 == gif_frame_count(data, limit=10**9)
    assert 10_001 == gif_frame_count(data, limit=10_000)  # the walk stops just past the limit


# --- animations ----------------------------------------------------------------------------------------------
def test_every_frame_of_an_animation_is_decoded_in_order_with_its_time_and_at_model_size() -> None:
    data = motion.animation(10, unsafe_at={7}, size=(800, 600), duration_ms=120)
    frames = list(Animation(data, DEFAULTS).frames(max_side=336))
    assert list(range(10)) == [f.index for f in frames]
    assert [round(0.12 * i, 3) for i in range(10)] == [f.time_s for f in frames]
    assert {(336, 252)} == {f.image.size for f in frames}
    assert motion.UNSAFE_RGB == frames[7].image.getpixel((5, 5))


def test_first_frame_only_decodes_one_frame() -> None:
    data = motion.animation(30, fmt="WEBP")
    assert [0] == [f.index for f in Animation(data, DEFAULTS).frames(max_side=336, first_only=True)]


def test_an_animation_with_more_frames_than_the_limit_fails_as_too_many_frames() -> None:
    assert "too_many_frames" == code_of(lambda: Animation(gif_of_frames(1, 1, DEFAULTS.max_frames + 1), DEFAULTS))
    assert "too_many_frames" == code_of(lambda: Animation(apng_claiming(1_000_000_000), DEFAULTS))


def test_canvas_times_frames_over_the_limit_fails_as_a_decompression_bomb_before_decoding() -> None:
    animation = Animation(gif_of_frames(4000, 4000, 200), DEFAULTS)  # 16 MP canvas is fine on its own
    assert "decompression_bomb" == code_of(lambda: next(animation.frames(max_side=336)))


def test_an_animation_running_longer_than_the_limit_fails_as_too_long() -> None:
    animation = Animation(gif_of_frames(8, 8, 2, delay_cs=65535), DEFAULTS)
    assert "too_long" == code_of(lambda: list(animation.frames(max_side=336)))


def test_an_animation_cut_short_fails_as_truncated_instead_of_moderating_what_came_before() -> None:
    frames = [Image.effect_noise((120, 90), 90 + i).convert("RGB") for i in range(6)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    data = buf.getvalue()[: int(len(buf.getvalue()) * 0.7)]
    assert "truncated_image" == code_of(lambda: list(Animation(data, DEFAULTS).frames(max_side=336)))


# --- videos --------------------------------------------------------------------------------------------------
def test_a_short_video_is_decoded_frame_by_frame() -> None:
    assert list(range(50)) == plan_targets(50, [0], budget=16, decode_limit=900, first_only=False)
    assert [0] == plan_targets(50, [0], budget=16, decode_limit=900, first_only=True)


def test_a_long_video_gets_every_keyframe_plus_evenly_spread_frames_within_the_decoding_bound() -> None:
    keys = list(range(0, 3000, 100))
    targets = plan_targets(3000, keys, budget=16, decode_limit=900, first_only=False)
    assert set(keys) <= set(targets)
    assert len(targets) > len(keys)
    assert decode_cost(targets, keys) <= 900
    assert max(b - a for a, b in itertools.pairwise(targets)) <= 100


def test_decoding_cost_counts_frames_from_the_keyframe_before_each_target() -> None:
    assert 1 + 50 == decode_cost([0, 50], [0])  # decode on from frame 0
    assert 1 + 11 == decode_cost([0, 110], [0, 100])  # seek to the keyframe at 100
    assert 1 + 11 + 5 == decode_cost([0, 110, 115], [0, 100])


def test_video_frames_come_out_at_the_planned_indices_with_their_times_and_at_model_size() -> None:
    data = motion.clip(60, unsafe_at={33}, size=(640, 480), fps=20)
    with Video(data, "MP4", DEFAULTS) as video:
        assert (60, 640, 480, "h264") == (video.info.frames, video.info.width, video.info.height, video.info.codec)
        frames = list(video.frames([0, 10, 33, 59], max_side=336))
    assert [0, 10, 33, 59] == [f.index for f in frames]
    assert [0.0, 0.5, 1.65, 2.95] == [f.time_s for f in frames]
    assert {(336, 252)} == {f.image.size for f in frames}
    red = frames[2].image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    assert isinstance(red, tuple)
    assert all(abs(a - b) <= 12 for a, b in zip(red, motion.UNSAFE_RGB, strict=True))


def test_a_video_with_more_frames_than_the_limit_fails_as_too_many_frames_without_decoding() -> None:
    data = motion.clip(DEFAULTS.max_frames + 1, size=(16, 16), options={"preset": "ultrafast"})
    assert "too_many_frames" == code_of(lambda: Video(data, "MP4", DEFAULTS))


def test_a_video_longer_than_the_limit_fails_as_too_long() -> None:
    declared = motion.clip(3, size=(16, 16), fps=Fraction(1, 400))
    assert "too_long" == code_of(lambda: Video(declared, "MP4", DEFAULTS))


def test_frames_larger_than_the_pixel_limit_fail_as_a_decompression_bomb() -> None:
    huge = motion.clip(1, size=(8200, 8200), options={"preset": "ultrafast"})  # 67 MP > 64 MP
    assert "decompression_bomb" == code_of(lambda: Video(huge, "MP4", DEFAULTS))
    small = FrameLimits(10_000, 600, 100 * 100, 2_000_000_000, 900)
    assert "decompression_bomb" == code_of(lambda: Video(motion.clip(3, size=(160, 120)), "MP4", small))


def test_keyframes_further_apart_than_the_decoding_bound_fail_as_too_many_frames() -> None:
    one_keyframe = motion.clip(1000, size=(16, 16), options={"x264-params": "keyint=1000:scenecut=0"})
    assert "too_many_frames" == code_of(lambda: Video(one_keyframe, "MP4", DEFAULTS))  # 1000 > 900 decodable
    data = motion.clip(400, options={"x264-params": "keyint=400:scenecut=0"})
    tight = FrameLimits(10_000, 600, 64_000_000, 2_000_000_000, 300)
    assert "too_many_frames" == code_of(lambda: Video(data, "MP4", tight))


def test_a_damaged_or_cut_video_fails_as_truncated_and_an_unknown_codec_as_unsupported() -> None:
    data = motion.clip(40)
    assert "truncated_image" == code_of(lambda: Video(data[: len(data) // 2], "MP4", DEFAULTS))
    assert "truncated_image" == code_of(lambda: Video(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64, "MP4", DEFAULTS))
    ffv1 = motion.clip(3, container="matroska", codec="ffv1", size=(32, 32))
    assert "unsupported_format" == code_of(lambda: Video(ffv1, "MKV", DEFAULTS))


def test_a_container_without_a_video_stream_is_not_an_image() -> None:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        silence = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        silence.sample_rate = 8000
        for packet in [*stream.encode(silence), *stream.encode()]:
            out.mux(packet)
    assert "not_an_image" == code_of(lambda: Video(buf.getvalue(), "MP4", DEFAULTS))


def test_gif_block_walk_agrees_with_pillow() -> None:
    data = motion.animation(37)
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == gif_frame_count(data, limit=1000)


@pytest.mark.parametrize(("degrees", "top_is_red"), [(-90, True), (90, False)])
def test_video_frames_reach_the_model_upright_whatever_the_display_rotation(degrees: int, top_is_red: bool) -> None:
    """A 64x32 picture, left half red, stored with a display rotation: the frame the model gets is 32x64."""
    import av

    picture = Image.new("RGB", (64, 32), (30, 60, 220))
    picture.paste(motion.UNSAFE_RGB, (0, 0, 32, 32))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)  # counter-clockwise, as FFmpeg's display matrix says
        for packet in [*stream.encode(av.VideoFrame.from_image(picture)), *stream.encode()]:
            out.mux(packet)
    with Video(buf.getvalue(), "MP4", DEFAULTS) as video:
        [upright] = list(video.frames([0], max_side=336))
    assert (32, 64) == upright.image.size
    top = upright.image.crop((0, 0, 32, 32)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    assert isinstance(top, tuple)
    assert (top[0] > 150) is top_is_red


def test_a_stray_byte_between_gif_frames_does_not_hide_the_frames_after_it() -> None:
    """Pillow skips unknown bytes between GIF blocks and decodes on; the frame count and the kind must as well."""
    clean = motion.animation(3, unsafe_at={2})
    second = clean.index(b"\x21\xf9\x04", clean.index(b"\x21\xf9\x04") + 1)
    data = clean[:second] + b"\x00" + clean[second:]
    assert MediaKind.ANIMATION == sniff(data).kind
    frames = list(Animation(data, DEFAULTS).frames(max_side=336))
    assert 3 == len(frames) == gif_frame_count(data, limit=10)
    assert motion.UNSAFE_RGB == frames[2].image.getpixel((5, 5))
