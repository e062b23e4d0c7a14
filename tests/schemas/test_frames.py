"""Stored frames (schemas/frames.py): raw RGB + zstd since schema 2.0, PNG in 1.x files, and datasets that hold both."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rdtf.schemas import SAMPLE_SCHEMA, open_dataset
from rdtf.schemas.dataset import VERSION_KEY
from rdtf.schemas.frames import FRAME_MAGIC, decode_frame, decode_frames, encode_frame
from rdtf.schemas.layout import DATA_DIR
from rdtf.trainer.data import decode_clip
from tests.schemas.test_schema import sample, write_dataset


def _pictures(count: int = 3, height: int = 24, width: int = 40) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _png(frame: np.ndarray) -> bytes:
    """A frame as schema 1.x stored it."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_frames_round_trip_exactly_whatever_their_shape() -> None:
    pictures = _pictures()
    encoded = [encode_frame(f) for f in pictures]
    assert all(e.startswith(FRAME_MAGIC) for e in encoded)
    assert np.array_equal(decode_frames(encoded), pictures)


def test_a_schema_1_png_frame_decodes_to_the_same_pixels() -> None:
    frame = _pictures(1)[0]
    assert np.array_equal(decode_frame(_png(frame)), decode_frame(encode_frame(frame)))


def test_bytes_that_are_no_stored_frame_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not a stored frame"):
        decode_frame(b"GIF89a" + bytes(20))


def test_a_frame_that_is_not_rgb_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        encode_frame(np.zeros((4, 4, 4), np.uint8))


def test_a_dataset_with_schema_1_files_and_new_files_reads_as_one(tmp_path) -> None:
    """A 1.1 dataset resumed by this rdtf: its old files hold PNG frames, the new ones zstd; the reader and the
    trainer's decoder read both."""
    pictures = _pictures(3, 16, 16)
    old = sample("a" * 64, pictures)
    old["frames"] = [_png(f) for f in pictures]
    layout = write_dataset(tmp_path, [[old], [sample("c" * 64, pictures)]])
    first = layout.parquet_files(DATA_DIR)[0]
    table = pq.read_table(first)
    pq.write_table(table.replace_schema_metadata({**SAMPLE_SCHEMA.metadata, VERSION_KEY: b"1.1"}), first)
    rows = open_dataset(str(tmp_path)).read(columns=["sample_id", "frames", "keyframe_sets"]).to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert np.array_equal(decode_frames(row["frames"]), pictures)
        assert np.array_equal(decode_clip(row, 3, 16), pictures[[0, 1, 2]])
