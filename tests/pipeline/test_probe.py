"""Header facts of every input format (pipeline.probe): format by magic bytes, size, frames, per-frame delays,
the pixels a decoder would allocate, and where a truncated file was cut."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from gif_factory import GifFrame, build_gif
from media_factory import grey_ramp_video_frames, image_bytes, noise_frames, video_bytes
from PIL import Image

from rdtf.pipeline.config import DecodeConfig
from rdtf.pipeline.decode import ProbeStage
from rdtf.pipeline.probe import Probe, complete_part, probe, sniff
from rdtf.pipeline.stage import Reject

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
    assert facts.truncation.implied_frames == 3
    assert facts.truncation.message(facts.num_frames) == "the data ends inside frame 3: 2 complete frames of at least 3"


def test_a_gif_that_ends_after_a_frame_without_its_trailer_is_truncated():
    frames = _gif_frames(2)
    facts = probe(_without_trailer(build_gif(frames, 16, 12, PALETTE)))
    assert facts.truncated
    assert facts.num_frames == 2
    assert facts.truncation.implied_frames is None  # whether frames are missing is unknown
    assert "without the GIF trailer" in facts.truncation.message(2)


def test_a_complete_gif_is_not_truncated():
    facts = probe(build_gif(_gif_frames(2), 16, 12, PALETTE))
    assert not facts.truncated
    # Each frame: the 16x12 canvas it is composited into, and its own 16x12 rectangle.
    assert facts == Probe("gif", 16, 12, (50, 100), pixels=2 * (16 * 12 + 16 * 12))


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


# ------------------------------------------------------------------------------------------------------------
# Truncated animated WebP and APNG: complete frames counted, the cut located, and a decodable complete part


def _frames(data: bytes, count: int) -> list[np.ndarray]:
    """The first `count` animation frames as Pillow shows them (RGBA)."""
    with Image.open(io.BytesIO(data)) as image:
        first = 1 if image.info.get("default_image") else 0
        shown = []
        for index in range(count):
            image.seek(index + first)
            shown.append(np.asarray(image.convert("RGBA")))
        return shown


ANIMATED = {
    "gif": lambda frames: image_bytes(frames, "GIF", [100] * len(frames)),
    "webp": lambda frames: image_bytes(frames, "WEBP", [100] * len(frames), lossless=True),
    "apng": lambda frames: image_bytes(frames, "PNG", [100] * len(frames)),
}


@pytest.mark.parametrize("fmt", list(ANIMATED))
def test_a_file_cut_inside_its_last_frame_is_truncated_and_its_complete_part_decodes(fmt):
    data = ANIMATED[fmt](noise_frames(6, 48, 40))
    cut = data[: len(data) - 200]  # inside the last frame's image data
    facts = probe(cut)
    assert facts.format == fmt
    assert facts.truncated and facts.num_frames == 5
    assert facts.truncation.implied_frames == 6
    assert facts.decoded_pixels == 5 * 2 * 48 * 40  # only the complete frames are decoded
    complete = complete_part(cut, facts)
    assert not probe(complete).truncated and probe(complete).num_frames == 5
    for got, want in zip(_frames(complete, 5), _frames(data, 5), strict=True):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("fmt", list(ANIMATED))
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_every_cut_keeps_fewer_frames_than_the_file_has(fmt, fraction):
    data = ANIMATED[fmt](noise_frames(6, 48, 40))
    facts = probe(data[: int(len(data) * fraction)])
    assert facts.truncated and 1 <= facts.num_frames < 6
    assert facts.truncation.implied_frames == (6 if fmt == "apng" else facts.num_frames + 1)  # APNG: from acTL


@pytest.mark.parametrize("fmt", list(ANIMATED))
def test_complete_files_are_not_truncated_and_go_on_unchanged(fmt):
    data = ANIMATED[fmt](noise_frames(3, 48, 40))
    facts = probe(data)
    assert not facts.truncated and facts.num_frames == 3
    assert complete_part(data, facts) is data


def test_a_truncated_apng_names_the_frames_its_actl_chunk_announces():
    data = ANIMATED["apng"](noise_frames(12, 48, 40))
    facts = probe(data[: len(data) // 2])
    assert facts.truncation.implied_frames == 12
    assert "acTL chunk announces 12 frames" in facts.truncation.message(facts.num_frames)


def test_an_apng_whose_default_image_is_no_frame_keeps_only_animation_frames():
    frames = noise_frames(5, 48, 40)
    data = image_bytes(frames, "PNG", [100] * 4, default_image=True)  # 4 animation frames after the default image
    facts = probe(data[: len(data) - 100])
    assert facts.num_frames == 3 and facts.truncation.implied_frames == 4
    for got, want in zip(_frames(complete_part(data[: len(data) - 100], facts), 3), _frames(data, 3), strict=True):
        assert np.array_equal(got, want)


def test_a_webp_cut_between_frames_is_truncated_by_its_riff_size():
    data = ANIMATED["webp"](noise_frames(3, 48, 40))
    last = data.rindex(b"ANMF")  # the last frame's chunk starts here: cut exactly before it
    facts = probe(data[:last])
    assert facts.truncated and facts.num_frames == 2
    assert facts.truncation.implied_frames is None  # the RIFF size says bytes are missing, not how many frames
    assert f"ends at byte {last} of the {len(data)}" in facts.truncation.message(2)


# ------------------------------------------------------------------------------------------------------------
# Decompression bombs: the pixels a decoder allocates, from the headers alone


def _probe_stage(data: bytes, tmp_path, **settings) -> dict:
    """ProbeStage on `data`, failing if it asks Pillow to open or make an image: every pixel buffer of an image
    format would come from there."""

    def refuse(*args, **kwargs):
        raise AssertionError("Pillow was asked for an image while probing")

    path = tmp_path / "input"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "open", refuse)
        patch.setattr(Image, "new", refuse)
        batch = ProbeStage(DecodeConfig(**settings))({"source_uri": [str(path)]})
    return {column: values[0] for column, values in batch.items()}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _with_apng_canvas(data: bytes, width: int, height: int) -> bytes:
    """The APNG with its IHDR (the canvas) set to width x height; the frames keep their own size."""
    ihdr = data.index(b"IHDR") - 4
    payload = struct.pack(">II", width, height) + data[ihdr + 16 : ihdr + 21]
    return data[:ihdr] + _png_chunk(b"IHDR", payload) + data[ihdr + 25 :]


def _with_webp_canvas(data: bytes, width: int, height: int) -> bytes:
    """The animated WebP with its VP8X canvas set to width x height; the frames keep their own size."""
    vp8x = data.index(b"VP8X") + 8
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return data[: vp8x + 4] + size + data[vp8x + 10 :]


def test_a_huge_gif_screen_with_a_tiny_frame_is_a_bomb(tmp_path):
    # The file: a 16384 x 16384 logical screen (2**28 pixels: a 1 GiB RGBA canvas) and one 1x1 frame.
    gif = build_gif([GifFrame(np.ones((1, 1), np.uint8))], 16384, 16384, PALETTE)
    row = _probe_stage(gif, tmp_path)
    assert row["reject_reason"] == "decompression_bomb", row["reject_message"]
    assert str(2**28 + 1) in row["reject_message"]
    assert row["data"] is None


def test_a_gif_frame_far_larger_than_its_screen_is_a_bomb(tmp_path):
    # A normal 64x64 screen, and a frame rectangle of 20000 x 20000 that Pillow would decode before clipping.
    gif = bytearray(build_gif([GifFrame(np.ones((1, 1), np.uint8))], 64, 64, PALETTE))
    descriptor = gif.index(b"\x2c")  # image descriptor: left, top, width, height
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 20000, 20000)
    row = _probe_stage(bytes(gif), tmp_path)
    assert row["reject_reason"] == "decompression_bomb", row["reject_message"]
    assert str(64 * 64 + 20000 * 20000) in row["reject_message"]


@pytest.mark.parametrize("fmt", ["webp", "apng"])
def test_a_huge_canvas_with_small_frames_is_a_bomb(tmp_path, fmt):
    data = ANIMATED[fmt](noise_frames(2, 16, 16))
    huge = _with_webp_canvas(data, 16384, 16384) if fmt == "webp" else _with_apng_canvas(data, 16384, 16384)
    facts = probe(huge)
    assert (facts.width, facts.height, facts.num_frames) == (16384, 16384, 2)
    assert facts.decoded_pixels == 2 * (2**28 + 16 * 16)
    row = _probe_stage(huge, tmp_path)
    assert row["reject_reason"] == "decompression_bomb", row["reject_message"]


def test_a_still_webp_size_is_read_from_its_header_without_pillow(tmp_path):
    # Pillow's WebP reader allocates its canvas when the file is opened: the probe must not open it.
    data = bytearray(image_bytes(noise_frames(1, 48, 40), "WEBP", lossless=True))
    vp8l = data.index(b"VP8L") + 8
    data[vp8l + 1 : vp8l + 5] = (16383 | 16383 << 14).to_bytes(4, "little")  # 16384 x 16384
    assert probe(bytes(data)).decoded_pixels == 2**28
    row = _probe_stage(bytes(data), tmp_path, max_total_pixels=2**28 - 1)
    assert row["reject_reason"] == "decompression_bomb", row["reject_message"]


def test_a_jpeg_over_pillows_own_limit_is_a_bomb_not_corrupt():
    # JPEG sizes come from Pillow, which reads the header only, and refuses sizes over its own limit itself.
    data = bytearray(image_bytes(noise_frames(1, 48, 40), "JPEG"))
    sof = data.index(b"\xff\xc0") + 5  # start of frame: precision, then height and width
    data[sof : sof + 4] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(Reject) as error:
        probe(bytes(data))
    assert error.value.reason == "decompression_bomb"


def test_real_stickers_are_neither_bombs_nor_truncated(stickers):
    batch = ProbeStage(DecodeConfig())({"source_uri": [str(p) for p in sorted((stickers / "gifs").iterdir())]})
    assert len(batch["source_uri"]) == 299
    assert batch["reject_reason"] == [None] * 299, {m for m in batch["reject_message"] if m}
    assert batch["truncated"] == [False] * 299
