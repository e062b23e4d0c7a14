"""Every reject reason, produced by the real stages on real files, and the Stage contract itself."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from gif_factory import GifFrame, build_gif
from media_factory import image_bytes, noise_frames, solid_frames

from rdtf.pipeline.config import DecodeConfig, DifficultyConfig, FilterConfig
from rdtf.pipeline.decode import DecodeStage, ProbeStage
from rdtf.pipeline.entropy import EntropyStage
from rdtf.pipeline.filters import EntropyFilterStage, MetadataFilterStage
from rdtf.pipeline.hash_inputs import HashStage
from rdtf.pipeline.keyframes import KeyframeStage
from rdtf.pipeline.probe import probe
from rdtf.pipeline.sampling import schedule
from rdtf.pipeline.stage import STATUS_COLUMNS, Reject, Stage, check_chain
from rdtf.pipeline.write import EncodeFramesStage, ShardWriter
from rdtf.schemas.dataset import REJECT_REASONS

INPUT_COLUMNS = ("source_uri", "sample_id", "num_bytes", "caption", "source_id")  # what the runner's main pass gets


def stages(decode: DecodeConfig | None = None, filters: FilterConfig | None = None) -> list[Stage]:
    """The main pass, in the runner's order."""
    decode, filters = decode or DecodeConfig(), filters or FilterConfig()
    return [
        ProbeStage(decode),
        MetadataFilterStage(filters),
        DecodeStage(decode),
        EntropyStage(DifficultyConfig()),
        EntropyFilterStage(filters),
        KeyframeStage(),
    ]


def run(paths: list, decode: DecodeConfig | None = None, filters: FilterConfig | None = None) -> dict[str, list]:
    """Hash pass then main pass over `paths`, as plain function calls on one batch."""
    decode = decode or DecodeConfig()
    batch: dict[str, list[Any]] = {"source_uri": [str(p) for p in paths]}
    batch = HashStage(decode.max_file_bytes)(batch)
    batch["caption"] = [None] * len(paths)
    batch["source_id"] = [None] * len(paths)
    for stage in stages(decode, filters):
        batch = stage(batch)
    return batch


def run_one(path, **configs) -> dict[str, Any]:
    return {column: values[0] for column, values in run([path], **configs).items()}


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def good_gif(size: tuple[int, int] = (64, 64), count: int = 4) -> bytes:
    return image_bytes(noise_frames(count, *size), "GIF", [100] * count)


def assert_rejected(row: dict, reason: str, stage: str) -> None:
    assert row["reject_reason"] == reason, (row["reject_reason"], row["reject_message"])
    assert row["reject_stage"] == stage
    assert reason in REJECT_REASONS
    assert isinstance(row["reject_message"], str) and row["reject_message"]


def test_a_good_sticker_is_a_row(tmp_path):
    row = run_one(write(tmp_path, "good.gif", good_gif()))
    assert row["reject_reason"] is None, row["reject_message"]
    assert row["format"] == "gif" and row["num_frames"] == 4
    assert row["frames"].shape == (4, 256, 256, 3)
    assert len(row["keyframe_sets"]) == 6
    assert row["spatial_entropy"] > 0.5


def test_unreadable_missing_path(tmp_path):
    row = run_one(tmp_path / "no_such_file.gif")
    assert_rejected(row, "unreadable", "hash")
    assert row["sample_id"] is None


def test_unreadable_directory(tmp_path):
    folder = tmp_path / "a_folder.gif"
    folder.mkdir()
    assert_rejected(run_one(folder), "unreadable", "hash")


def test_probe_stage_rejects_a_file_gone_since_the_hash_pass(tmp_path):
    batch = ProbeStage(DecodeConfig())({"source_uri": [str(tmp_path / "gone.gif")]})
    assert batch["reject_reason"] == ["unreadable"]
    assert batch["reject_stage"] == ["probe"]
    assert batch["data"] == [None]


def test_empty_file(tmp_path):
    assert_rejected(run_one(write(tmp_path, "empty.gif", b"")), "empty_file", "hash")


def test_file_too_large(tmp_path):
    path = write(tmp_path, "big.gif", good_gif())
    row = run_one(path, decode=DecodeConfig(max_file_bytes=path.stat().st_size - 1))
    assert_rejected(row, "file_too_large", "hash")
    assert run_one(path, decode=DecodeConfig(max_file_bytes=path.stat().st_size))["reject_reason"] is None


def test_unsupported_format(tmp_path):
    row = run_one(write(tmp_path, "not_a_gif.gif", b"this is a text file that pretends to be a GIF\n"))
    assert_rejected(row, "unsupported_format", "probe")
    assert row["sample_id"] == hashlib.sha256(b"this is a text file that pretends to be a GIF\n").hexdigest()


def test_corrupt(tmp_path):
    gif = good_gif()
    assert_rejected(run_one(write(tmp_path, "cut.gif", gif[:60])), "corrupt", "probe")


def _garbage_gif(width: int, height: int, frames: int) -> bytes:
    """A GIF whose headers are valid and whose image data is not LZW at all: decoding it must fail."""
    gif = bytearray(
        build_gif(
            [GifFrame(np.ones((height, width), np.uint8))] * frames,
            width,
            height,
            np.array([[0, 0, 0], [200, 0, 0]], np.uint8),
        )
    )
    body = gif.index(b"\x2c") + 12  # first frame: descriptor, LZW code size, first sub-block size
    gif[body : body + 200] = b"\xff" * 200
    return bytes(gif)


def test_decompression_bomb_is_refused_before_any_frame_is_decoded(tmp_path, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(DecodeStage, "process_row", no_decoding)  # frames are decoded in the decoder process
    path = write(tmp_path, "bomb.gif", _garbage_gif(64, 64, 3))  # 3 x (64 x 64 canvas + 64 x 64 frame) = 24576
    row = run_one(path, decode=DecodeConfig(max_total_pixels=24575))
    assert_rejected(row, "decompression_bomb", "probe")
    assert "24576" in row["reject_message"]


def test_the_garbage_gif_is_corrupt_when_it_is_no_bomb(tmp_path):
    # The same file under a limit it fits: now it is decoded, and decoding fails. This is what the bomb test
    # above would say if ProbeStage let the file through to the decoder.
    row = run_one(write(tmp_path, "garbage.gif", _garbage_gif(64, 64, 3)), decode=DecodeConfig(max_total_pixels=24576))
    assert_rejected(row, "corrupt", "decode")


def test_decompression_bomb_counts_every_frame(tmp_path):
    path = write(tmp_path, "many.gif", good_gif((40, 40), count=10))  # 10 x (1600 canvas + 1600 frame) = 32000
    assert_rejected(run_one(path, decode=DecodeConfig(max_total_pixels=31999)), "decompression_bomb", "probe")
    assert run_one(path, decode=DecodeConfig(max_total_pixels=32000))["reject_reason"] is None


def test_decompression_bomb_counts_gif_frames_larger_than_the_logical_screen(tmp_path):
    # GIF frames may be larger than the logical screen (pipeline.gif clips them), and each is decoded at its own
    # size before it is clipped. A 32x32 screen whose two frames are 600x600 decodes 720000 pixels: the limit must
    # count the frames' own rectangles, not only the screen's 2048 pixels.
    frame = GifFrame(np.ones((600, 600), np.uint8))
    gif = build_gif([frame, frame], 32, 32, np.array([[0, 0, 0], [200, 0, 0]], np.uint8))
    batch = ProbeStage(DecodeConfig(max_total_pixels=100_000))({"source_uri": [str(write(tmp_path, "wide.gif", gif))]})
    assert batch["reject_reason"] == ["decompression_bomb"], (batch["reject_reason"], batch["width"])


def test_decompression_bomb_counts_the_gif_screen_of_every_frame(tmp_path):
    # The other way round: a 16384 x 16384 logical screen (a 1 GiB RGBA canvas) with one 1x1 frame.
    gif = build_gif([GifFrame(np.ones((1, 1), np.uint8))], 16384, 16384, np.array([[0, 0, 0], [200, 0, 0]], np.uint8))
    row = run_one(write(tmp_path, "screen.gif", gif))
    assert_rejected(row, "decompression_bomb", "probe")


CUT_STICKERS = {
    "gif": lambda frames: image_bytes(frames, "GIF", [100] * len(frames)),
    "webp": lambda frames: image_bytes(frames, "WEBP", [100] * len(frames), lossless=True),
    "apng": lambda frames: image_bytes(frames, "PNG", [100] * len(frames)),
}


def _cut_sticker(fmt: str) -> tuple[bytes, int]:
    """A 12-frame 64x64 sticker of the format cut in half, and how many complete frames the half holds."""
    data = CUT_STICKERS[fmt](noise_frames(12, 64, 64))
    cut = data[: len(data) // 2]
    complete = probe(cut).num_frames
    assert 1 <= complete < 12
    return cut, complete


@pytest.mark.parametrize("fmt", list(CUT_STICKERS))
def test_truncated(tmp_path, fmt):
    cut, complete = _cut_sticker(fmt)
    row = run_one(write(tmp_path, f"cut.{fmt}", cut))
    assert_rejected(row, "truncated", "probe")
    implied = 12 if fmt == "apng" else complete + 1  # APNG's acTL chunk says 12; a GIF or WebP: the cut frame
    assert f"{complete} complete frames of at least {implied}" in row["reject_message"], row["reject_message"]
    assert "decode.keep_truncated" in row["reject_message"]
    assert row["frames"] is None  # refused before decoding


@pytest.mark.parametrize("fmt", list(CUT_STICKERS))
def test_keep_truncated_keeps_the_complete_frames_marked(tmp_path, fmt):
    cut, complete = _cut_sticker(fmt)
    cfg = DecodeConfig(keep_truncated=True)
    row = run_one(write(tmp_path, f"cut.{fmt}", cut), decode=cfg)
    assert row["reject_reason"] is None, row["reject_message"]
    assert row["truncated"] is True
    assert row["num_frames"] == complete and row["frame_durations_ms"] == [100] * complete
    times = schedule(row["frame_durations_ms"], cfg.fps, cfg.max_frames)[1].tolist()
    assert row["frame_timestamps_ms"] == times and row["frames"].shape == (len(times), 256, 256, 3)


def test_the_stored_row_says_whether_it_was_truncated(tmp_path):
    cut, _ = _cut_sticker("webp")
    paths = [write(tmp_path, "cut.webp", cut), write(tmp_path, "whole.gif", good_gif())]
    batch = EncodeFramesStage()(run(paths, decode=DecodeConfig(keep_truncated=True)))
    ShardWriter(str(tmp_path / "out"), 256, run_id="run")(batch)
    (shard,) = (tmp_path / "out").rglob("data/*.parquet")
    table = pq.read_table(shard, columns=["source_uri", "truncated"])
    assert table["source_uri"].to_pylist() == [str(p) for p in paths]
    assert table["truncated"].to_pylist() == [True, False]


@pytest.mark.parametrize("fmt", list(CUT_STICKERS))
@pytest.mark.parametrize("keep", [False, True])
def test_a_complete_file_is_marked_not_truncated(tmp_path, fmt, keep):
    data = CUT_STICKERS[fmt](noise_frames(4, 64, 64))
    row = run_one(write(tmp_path, f"whole.{fmt}", data), decode=DecodeConfig(keep_truncated=keep))
    assert row["reject_reason"] is None, row["reject_message"]
    assert row["truncated"] is False


def test_too_small(tmp_path):
    row = run_one(write(tmp_path, "tiny.gif", good_gif((16, 16))))
    assert_rejected(row, "too_small", "filter")
    assert row["frames"] is None  # refused before decoding


def test_bad_aspect_ratio(tmp_path):
    row = run_one(write(tmp_path, "banner.png", image_bytes(noise_frames(1, 200, 40), "PNG")))
    assert_rejected(row, "bad_aspect_ratio", "filter")
    assert row["frames"] is None
    ok = run_one(write(tmp_path, "wide.png", image_bytes(noise_frames(1, 120, 40), "PNG")))  # exactly 3:1
    assert ok["reject_reason"] is None, ok["reject_message"]


def test_too_few_frames(tmp_path):
    path = write(tmp_path, "still.png", image_bytes(noise_frames(1, 64, 64), "PNG"))
    assert_rejected(run_one(path, filters=FilterConfig(min_frames=2)), "too_few_frames", "filter")
    assert run_one(path, filters=FilterConfig(min_frames=1))["reject_reason"] is None


@pytest.mark.parametrize("name, fmt, count", [("blank.png", "PNG", 1), ("blank.gif", "GIF", 3)])
def test_low_entropy_blank_white_sticker(tmp_path, name, fmt, count):
    # Pillow merges identical GIF frames, so the animated one alternates two nearly white frames.
    colours = [(255, 255, 255), (254, 254, 254)] * 2
    data = image_bytes(solid_frames(colours[:count], 64, 64), fmt, [100] * count)
    row = run_one(write(tmp_path, name, data))
    assert_rejected(row, "low_entropy", "filter")
    assert row["spatial_entropy"] < 0.5
    assert row["keyframe_sets"] is None


class Exploding(Stage):
    name = "exploding"
    reads = ("source_uri",)
    writes = ("value",)

    def process_row(self, row):
        if row["source_uri"].endswith("bad"):
            return {}["no such key"]
        return {"value": len(row["source_uri"])}


def test_internal_error_keeps_the_row_and_says_what_happened():
    batch = Exploding()({"source_uri": ["ok", "bad", "fine"]})
    assert batch["reject_reason"] == [None, "internal_error", None]
    assert batch["reject_stage"] == [None, "exploding", None]
    assert "KeyError" in batch["reject_message"][1] and "no such key" in batch["reject_message"][1]
    assert batch["value"] == [2, None, 4]
    assert "internal_error" in REJECT_REASONS


def test_reject_with_kept_sample_id():
    class Duplicates(Stage):
        name = "dedupe"
        reads = ("source_uri",)
        writes = ()

        def process_row(self, row):
            raise Reject("duplicate", "same bytes", kept_sample_id="abc")

    batch = Duplicates()({"source_uri": ["a"]})
    assert batch["reject_reason"] == ["duplicate"]
    assert batch["kept_sample_id"] == ["abc"]


def test_a_rejected_row_passes_through_later_stages_untouched():
    frames = np.zeros((2, 256, 256, 3), np.uint8)
    batch = {
        "source_uri": ["rejected", "kept"],
        "frames": [frames, frames],
        "reject_reason": ["too_small", None],
        "reject_stage": ["filter", None],
        "reject_message": ["16x16 is small", None],
        "kept_sample_id": [None, None],
    }
    out = EntropyStage(DifficultyConfig())(batch)
    assert out["reject_reason"] == ["too_small", None]
    assert out["reject_stage"] == ["filter", None]
    assert out["reject_message"] == ["16x16 is small", None]
    assert out["spatial_entropy"][0] is None and out["spatial_entropy"][1] == 0.0
    assert out["frames"][0] is frames


def test_a_mixed_batch_keeps_every_row_in_order(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    paths = [
        write(tmp_path, "good.gif", good_gif()),
        tmp_path / "missing.gif",
        folder,
        write(tmp_path, "empty.gif", b""),
        write(tmp_path, "text.gif", b"hello"),
        write(tmp_path, "cut.gif", good_gif()[:60]),
        write(tmp_path, "tiny.gif", good_gif((16, 16))),
        write(tmp_path, "banner.png", image_bytes(noise_frames(1, 200, 40), "PNG")),
        write(tmp_path, "blank.png", image_bytes(solid_frames([(255, 255, 255)], 64, 64), "PNG")),
        write(tmp_path, "also_good.png", image_bytes(noise_frames(1, 64, 64), "PNG")),
    ]
    batch = run(paths)
    assert batch["source_uri"] == [str(p) for p in paths]
    assert all(len(values) == len(paths) for values in batch.values())
    assert batch["reject_reason"] == [
        None,
        "unreadable",
        "unreadable",
        "empty_file",
        "unsupported_format",
        "corrupt",
        "too_small",
        "bad_aspect_ratio",
        "low_entropy",
        None,
    ]
    assert batch["reject_stage"] == [None, "hash", "hash", "hash", "probe", "probe", "filter", "filter", "filter", None]
    assert {r for r in batch["reject_reason"] if r is not None} <= set(REJECT_REASONS)
    for i, reason in enumerate(batch["reject_reason"]):
        assert (batch["keyframe_sets"][i] is None) == (reason is not None)


def test_every_status_column_is_added():
    batch = ProbeStage(DecodeConfig())({"source_uri": []})
    for column in STATUS_COLUMNS + ProbeStage.writes:
        assert batch[column] == []


def test_check_chain_accepts_the_pipeline():
    check_chain(stages(), INPUT_COLUMNS)


def test_check_chain_names_a_missing_column():
    chain = [s for s in stages() if not isinstance(s, DecodeStage)]
    with pytest.raises(ValueError, match=r"entropy.*'frames'"):
        check_chain(chain, INPUT_COLUMNS)
    with pytest.raises(ValueError, match=r"keyframes.*'sample_id'"):
        check_chain(stages(), ("source_uri",))


def test_hundreds_of_frames_become_at_most_max_frames(tmp_path):
    frames = noise_frames(300, 24, 24, seed=3)
    frames = [f.resize((48, 48)) for f in frames]
    path = write(tmp_path, "long.gif", image_bytes(frames, "GIF", [40] * 300))
    cfg = DecodeConfig()
    row = run_one(path, decode=cfg)
    assert row["reject_reason"] is None, row["reject_message"]
    assert row["num_frames"] == 300
    assert len(row["frame_durations_ms"]) == 300
    assert 1 <= len(row["frames"]) <= cfg.max_frames
    assert len(row["frame_timestamps_ms"]) == len(row["frames"])
    assert row["frame_timestamps_ms"][0] == 0
    assert row["frame_timestamps_ms"][-1] > 10_000  # spread over the 12 s clip, not its first 2 s
