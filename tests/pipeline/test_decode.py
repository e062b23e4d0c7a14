"""DecodeStage: the sampled frames of every format on the white square training canvas."""

from __future__ import annotations

import numpy as np
import pytest
from gif_factory import GifFrame, build_gif
from media_factory import grey_ramp_video_frames, image_bytes, noise_frames, solid_frames, video_bytes
from PIL import Image

from rdtf.pipeline.config import DecodeConfig
from rdtf.pipeline.decode import DecodeStage
from rdtf.pipeline.probe import probe
from rdtf.pipeline.sampling import schedule

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 30), (30, 30, 220), (255, 255, 255)


def decode(data: bytes, cfg: DecodeConfig | None = None) -> dict:
    """Probe `data`, run DecodeStage on a one-row batch, and return the row (rejects included)."""
    facts = probe(data)
    batch = {
        "source_uri": ["mem://sticker"],
        "data": [data],
        "format": [facts.format],
        "frame_durations_ms": [facts.durations_ms],
    }
    out = DecodeStage(cfg or DecodeConfig())(batch)
    return {column: values[0] for column, values in out.items()}


def centre(frame: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in frame[128, 128])


def close(a, b, tol: int = 12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    colours = solid_frames([RED, GREEN, BLUE], width=48, height=48)
    ramp = grey_ramp_video_frames(6, width=64, height=64)
    return {
        "gif": image_bytes(colours, "GIF", [100, 200, 100]),
        "webp": image_bytes(colours, "WEBP", [100, 200, 100], lossless=True),
        "apng": image_bytes(colours, "PNG", [100, 200, 100]),
        "png": image_bytes(noise_frames(1, 48, 48), "PNG"),
        "jpeg": image_bytes(noise_frames(1, 48, 48), "JPEG"),
        "mp4": video_bytes(ramp, "mp4", "mpeg4", fps=10),
        "webm": video_bytes(ramp, "webm", "libvpx-vp9", fps=10),
    }


@pytest.mark.parametrize("fmt", ["gif", "webp", "apng", "png", "jpeg", "mp4", "webm"])
def test_every_format_decodes_to_square_uint8_frames(inputs, fmt):
    cfg = DecodeConfig(fps=10)
    row = decode(inputs[fmt], cfg)
    assert row["reject_reason"] is None, row["reject_message"]
    expected, _ = schedule(probe(inputs[fmt]).durations_ms, cfg.fps, cfg.max_frames)
    frames = row["frames"]
    assert isinstance(frames, np.ndarray)
    assert frames.dtype == np.uint8
    assert frames.shape == (len(expected), 256, 256, 3)


@pytest.mark.parametrize("fmt", ["gif", "webp", "apng"])
def test_animated_images_show_the_frame_on_screen_at_each_sample(inputs, fmt):
    row = decode(inputs[fmt], DecodeConfig(fps=10))  # looks at 0, 100, 200, 300 ms
    shown = [centre(f) for f in row["frames"]]
    assert len(shown) == 4
    for got, want in zip(shown, [RED, GREEN, GREEN, BLUE], strict=True):
        assert close(got, want), shown
    assert row["frame_timestamps_ms"] == [0, 100, 200, 300]


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_video_frames_come_in_display_order(inputs, fmt):
    row = decode(inputs[fmt], DecodeConfig(fps=10))
    brightness = [int(f[128, 128].mean()) for f in row["frames"]]
    assert len(brightness) == 6
    assert all(b > a + 10 for a, b in zip(brightness, brightness[1:], strict=False)), brightness


@pytest.mark.parametrize("fps, max_frames, delays", [(8, 16, [100] * 5), (10, 4, [100] * 30), (4, 16, [50, 300, 20])])
def test_frame_timestamps_match_the_schedule(fps, max_frames, delays):
    data = image_bytes(noise_frames(len(delays), 32, 32), "GIF", delays)
    row = decode(data, DecodeConfig(fps=fps, max_frames=max_frames))
    _, times = schedule(probe(data).durations_ms, fps, max_frames)
    assert row["frame_timestamps_ms"] == times.tolist()
    assert len(row["frames"]) == len(times)


def test_transparent_gif_pixels_become_white():
    palette = np.array([[0, 0, 0], [200, 0, 0]], dtype=np.uint8)
    indices = np.ones((16, 16), dtype=np.uint8)
    indices[:, :8] = 0  # left half: the transparent index (black in the palette)
    gif = build_gif([GifFrame(indices, transparent_index=0)], 16, 16, palette)
    frame = decode(gif)["frames"][0]
    assert (frame[:, :100] == 255).all()  # the left half of the canvas (128 columns, minus resampling)
    assert close(frame[128, 200], (200, 0, 0))


def test_uncovered_gif_canvas_is_white():
    # A 16x16 screen whose only frame covers its top-left quarter: the rest was never drawn (transparent).
    palette = np.array([[0, 0, 0], [0, 0, 200]], dtype=np.uint8)
    gif = build_gif([GifFrame(np.ones((8, 8), dtype=np.uint8))], 16, 16, palette)
    frame = decode(gif)["frames"][0]
    assert close(frame[60, 60], (0, 0, 200))
    assert (frame[140:, :] == 255).all() and (frame[:, 140:] == 255).all()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_alpha_is_composited_over_white(fmt):
    # Three frames: opaque red, fully transparent, half-transparent red.
    frames = solid_frames([(200, 0, 0, 255), (200, 0, 0, 0), (200, 0, 0, 128)], width=32, height=32)
    data = image_bytes(frames, fmt, [100, 100, 100], **({"lossless": True} if fmt == "WEBP" else {}))
    shown = [centre(f) for f in decode(data, DecodeConfig(fps=10))["frames"]]
    assert close(shown[0], (200, 0, 0), tol=2)
    assert shown[1] == WHITE
    assert close(shown[2], (228, 127, 127), tol=3)  # 0.5 * red + 0.5 * white


@pytest.mark.parametrize("size, content", [((64, 32), "rows"), ((32, 64), "columns")])
def test_aspect_ratio_is_kept_with_white_padding(size, content):
    frame = decode(image_bytes(solid_frames([RED], *size), "PNG"))["frames"][0]
    if content == "columns":
        frame = frame.transpose(1, 0, 2)
    # 64x32 -> 256x128, centred: white rows 0..63 and 192..255, the picture in rows 64..191.
    assert (frame[:64] == 255).all()
    assert (frame[192:] == 255).all()
    assert (frame[64:192] == RED).all()


@pytest.mark.parametrize("size", [(100, 255), (100, 257), (255, 100), (257, 100), (100, 300)])
def test_the_longer_side_is_scaled_to_exactly_the_canvas(size):
    # A picture whose longer side is one pixel off the canvas size must still be scaled to exactly 256:
    # its first and last lines land on the canvas's first and last lines, neither cropped nor padded.
    width, height = size
    picture = np.full((height, width, 3), RED, dtype=np.uint8)
    if height > width:
        picture[[0, -1]] = BLUE
    else:
        picture[:, [0, -1]] = BLUE
    frame = decode(image_bytes([Image.fromarray(picture)], "PNG"))["frames"][0]
    if width > height:
        frame = frame.transpose(1, 0, 2)
    line = frame[:, 128]
    assert close(line[0], line[-1], tol=4), (line[0], line[-1])
    assert close(line[0], BLUE, tol=100) and line[0][2] > 100, line[0]
    assert (line[2:-2] != 255).any(axis=1).all(), "no white padding inside the picture's span"


def test_a_frame_held_on_screen_is_repeated():
    data = image_bytes(solid_frames([RED, BLUE], 32, 32), "GIF", [500, 100])
    frames = decode(data, DecodeConfig(fps=10))["frames"]
    assert len(frames) == 6
    assert all(np.array_equal(frames[0], f) for f in frames[1:5])
    assert close(centre(frames[5]), BLUE)


def test_a_truncated_gif_decodes_its_complete_frames():
    palette = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]], dtype=np.uint8)
    frames = [GifFrame(np.full((16, 16), i + 1, dtype=np.uint8), delay_cs=10) for i in range(3)]
    full = build_gif(frames, 16, 16, palette)
    cut = full[: len(full) - 100]  # inside the last frame
    row = decode(cut, DecodeConfig(fps=10))
    assert row["reject_reason"] is None, row["reject_message"]
    assert [centre(f) for f in row["frames"]] == [(200, 0, 0), (0, 200, 0)]


def test_apng_default_image_outside_the_animation_is_not_shown():
    # With default_image=True the first picture is the PNG's fallback image, not an animation frame: browsers
    # play only GREEN then BLUE, each for 100 ms.
    data = image_bytes(solid_frames([RED, GREEN, BLUE], 32, 32), "PNG", [100, 100], default_image=True)
    row = decode(data, DecodeConfig(fps=10))
    assert row["reject_reason"] is None, row["reject_message"]
    shown = [centre(f) for f in row["frames"]]
    assert len(shown) == 2
    assert close(shown[0], GREEN) and close(shown[1], BLUE), shown


def test_a_gif_with_garbage_image_data_is_corrupt():
    gif = bytearray(build_gif([GifFrame(np.ones((16, 16), dtype=np.uint8))], 16, 16, np.zeros((2, 3), np.uint8)))
    # Overwrite the LZW data (after the 9-byte descriptor and min code size) with codes that are not in the table.
    start = gif.index(b"\x2c") + 10 + 2  # descriptor, LZW minimum code size, first sub-block size
    gif[start : start + 40] = b"\xff" * 40
    row = decode(bytes(gif))
    assert row["reject_reason"] == "corrupt", row
    assert row["reject_stage"] == "decode"
