"""Header facts of every input format (pipeline.probe): format by magic bytes, size, frames, per-frame delays."""

from __future__ import annotations

import numpy as np
import pytest
from gif_factory import GifFrame, build_gif
from media_factory import grey_ramp_video_frames, image_bytes, noise_frames, video_bytes

from pipeline.config import DecodeConfig
from pipeline.decode import ProbeStage
from pipeline.probe import Probe, probe, sniff
from pipeline.stage import Reject

DELAYS_MS = [40, 70, 120]  # GIF delays are centiseconds, so multiples of 10 survive every format
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def _gif_frames(count: int) -> list[GifFrame]:
    rng = np.random.default_rng(count)
    return [GifFrame(rng.integers(0, 4, (12, 16), dtype=np.uint8), delay_cs=5 * (i + 1)) for i in range(count)]


def _without_trailer(gif: bytes) -> bytes:
    assert gif.endswith(b"\x3b")
    return gif[:-1]


@pytest.fixture(scope="module")
def samples() -> dict[str, bytes]:
    frames = noise_frames(3, width=48, height=40)
    ramp = grey_ramp_video_frames(5, width=64, height=48)
    return {
        "gif": image_bytes(frames, "GIF", DELAYS_MS),
        "apng": image_bytes(frames, "PNG", DELAYS_MS),
        "webp": image_bytes(frames, "WEBP", DELAYS_MS, lossless=True),
        "png": image_bytes(frames[:1], "PNG"),
        "webp_still": image_bytes(frames[:1], "WEBP"),
        "webp_still_alpha": image_bytes([frames[0].convert("RGBA")], "WEBP"),
        "jpeg": image_bytes(frames[:1], "JPEG"),
        "mp4": video_bytes(ramp, "mp4", "mpeg4", fps=10),
        "webm": video_bytes(ramp, "webm", "libvpx-vp9", fps=10),
    }


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("gif", "gif"),
        ("apng", "apng"),
        ("webp", "webp"),
        ("png", "png"),
        ("webp_still", "webp"),
        ("webp_still_alpha", "webp"),
        ("jpeg", "jpeg"),
        ("mp4", "mp4"),
        ("webm", "webm"),
    ],
)
def test_sniff_names_the_format_by_magic_bytes(samples, name, fmt):
    assert sniff(samples[name]) == fmt
    assert probe(samples[name]).format == fmt


@pytest.mark.parametrize("name", ["gif", "apng", "webp"])
def test_animated_images_keep_their_saved_delays(samples, name):
    facts = probe(samples[name])
    assert (facts.width, facts.height) == (48, 40)
    assert facts.num_frames == 3
    assert list(facts.delays_ms) == DELAYS_MS
    assert facts.durations_ms == DELAYS_MS
    assert not facts.truncated


@pytest.mark.parametrize("name", ["png", "webp_still", "webp_still_alpha", "jpeg"])
def test_a_still_is_one_frame_of_100_ms(samples, name):
    facts = probe(samples[name])
    assert (facts.width, facts.height) == (48, 40)
    assert facts.delays_ms == (100,)


@pytest.mark.parametrize("name", ["mp4", "webm"])
def test_videos_report_size_frames_and_frame_durations(samples, name):
    facts = probe(samples[name])
    assert (facts.width, facts.height) == (64, 48)
    assert facts.num_frames == 5
    assert facts.durations_ms == [100] * 5  # 10 fps


def test_video_frame_durations_are_not_stretched_by_the_gif_browser_rule():
    # The 0/10 ms -> 100 ms rule is how browsers play GIF-style animations; a 120 fps video's 8 ms frames
    # are real frame times and must not become 100 ms (that would play the clip 12x slower).
    facts = probe(video_bytes(grey_ramp_video_frames(12), "mp4", "mpeg4", fps=120))
    assert facts.num_frames == 12
    assert all(abs(d - 1000 / 120) <= 1 for d in facts.durations_ms), facts.durations_ms


def test_gif_zero_and_10_ms_delays_are_shown_for_100_ms():
    frames = [GifFrame(f.indices, delay_cs=d) for f, d in zip(_gif_frames(4), [0, 1, 2, 7], strict=True)]
    facts = probe(build_gif(frames, 16, 12, PALETTE))
    assert facts.delays_ms == (0, 10, 20, 70)
    assert facts.durations_ms == [100, 100, 20, 70]


def test_png_bytes_named_gif_probe_as_png(tmp_path, samples):
    path = tmp_path / "sticker.gif"
    path.write_bytes(samples["png"])
    batch = ProbeStage(DecodeConfig())({"source_uri": [str(path)]})
    assert batch["reject_reason"] == [None]
    assert batch["format"] == ["png"]
    assert batch["num_frames"] == [1]


def test_a_text_file_is_unsupported():
    with pytest.raises(Reject) as error:
        probe(b"this is a text file that pretends to be a GIF\n")
    assert error.value.reason == "unsupported_format"


@pytest.mark.parametrize("brand", [b"avif", b"avis", b"heic", b"mif1"])
def test_still_image_iso_bmff_brands_are_unsupported(brand):
    data = b"\x00\x00\x00\x1cftyp" + brand + b"\x00\x00\x00\x00mif1miaf" + b"\x00" * 64
    assert sniff(data) is None
    with pytest.raises(Reject) as error:
        probe(data)
    assert error.value.reason == "unsupported_format"


def test_a_truncated_gif_keeps_its_complete_frames():
    frames = _gif_frames(3)
    full = build_gif(frames, 16, 12, PALETTE)
    two = _without_trailer(build_gif(frames[:2], 16, 12, PALETTE))
    assert full.startswith(two)
    third_frame = len(full) - len(two)
    cut = full[: len(two) + third_frame // 2]  # inside the third frame's image data
    facts = probe(cut)
    assert facts.truncated
    assert facts.delays_ms == (50, 100)
    assert (facts.width, facts.height) == (16, 12)


def test_a_gif_that_ends_after_a_frame_without_its_trailer_is_truncated():
    frames = _gif_frames(2)
    facts = probe(_without_trailer(build_gif(frames, 16, 12, PALETTE)))
    assert facts.truncated
    assert facts.num_frames == 2


def test_a_complete_gif_is_not_truncated():
    facts = probe(build_gif(_gif_frames(2), 16, 12, PALETTE))
    assert not facts.truncated
    assert facts == Probe("gif", 16, 12, (50, 100), truncated=False, frame_pixels=2 * 16 * 12)


@pytest.mark.parametrize("keep", [6, 13, 40, 200])  # in the header, the palette, the descriptor, the image data
def test_a_gif_cut_inside_its_first_frame_is_corrupt(keep):
    gif = build_gif(_gif_frames(1), 16, 12, PALETTE)
    assert keep < len(gif) - 2
    with pytest.raises(Reject) as error:
        probe(gif[:keep])
    assert error.value.reason == "corrupt"


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 4,  # a PNG signature and no IHDR
        b"\xff\xd8\xff\xe0" + b"garbage" * 4,  # a JPEG marker and no frame header
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64,  # an MP4 with no movie in it
    ],
    ids=["png", "jpeg", "mp4"],
)
def test_malformed_headers_are_corrupt(data):
    with pytest.raises(Reject) as error:
        probe(data)
    assert error.value.reason == "corrupt"
