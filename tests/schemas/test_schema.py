"""The dataset contract: schemas, folder layout and the one reader (schemas.dataset, schemas.layout, schemas.reader)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rdtf.pipeline.write import write_table
from rdtf.schemas import REJECT_SCHEMA, SAMPLE_SCHEMA, SCHEMA_VERSION, SchemaVersionError, open_dataset
from rdtf.schemas.dataset import KEYFRAME_COUNTS, REJECT_REASONS, VERSION_KEY
from rdtf.schemas.frames import decode_frames, encode_frame
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, TEMP_PREFIX, DatasetLayout


def frames(count: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def sample(sample_id: str = "a" * 64, pictures: np.ndarray | None = None) -> dict:
    pictures = frames() if pictures is None else pictures
    return {
        "sample_id": sample_id,
        "source_uri": f"/stickers/{sample_id[:8]}.gif",
        "source_id": "id-1",
        "source_version": "12345:1733300000000000000",
        "format": "gif",
        "num_bytes": 12345,
        "width": 64,
        "height": 48,
        "num_frames": 5,
        "truncated": False,
        "frame_durations_ms": [100, 100, 40, 40, 100],
        "frames": [encode_frame(f) for f in pictures],
        "frame_timestamps_ms": [0, 125, 250][: len(pictures)],
        "frame_size": int(pictures.shape[1]),
        "keyframe_sets": [[0, 1, 2, 1, 0, 1, 2, 1][:k] for k in KEYFRAME_COUNTS],
        "caption": "a red circle bouncing",
        "caption_source": "given",
        "spatial_entropy": 5.5,
        "temporal_entropy": 2.25,
        "static_difficulty": 0.5,
        "clip_embedding": [0.5, -0.5, 0.5, -0.5],
        "clip_score": 0.25,
        "tags": [{"tag": "circle", "score": 0.75}],
    }


def reject(source_uri: str = "/stickers/broken.gif") -> dict:
    return {
        "source_uri": source_uri,
        "sample_id": "b" * 64,
        "source_version": "321:1733300000000000000",
        "stage": "probe",
        "reason": "corrupt",
        "message": "GIF has no complete frame",
        "kept_sample_id": None,
    }


def write_dataset(root, samples: list[list[dict]], rejects: list[dict] | None = None) -> DatasetLayout:
    """One data file per inner list, and one rejects file."""
    layout = DatasetLayout.at(str(root))
    for i, rows in enumerate(samples):
        write_table(layout, DATA_DIR, f"part-{i:03d}.parquet", pa.Table.from_pylist(rows, SAMPLE_SCHEMA))
    if rejects:
        write_table(layout, REJECTS_DIR, "part-000.parquet", pa.Table.from_pylist(rejects, REJECT_SCHEMA))
    return layout


def test_a_row_and_a_reject_read_back_equal(tmp_path):
    pictures = frames()
    row, bad = sample(pictures=pictures), reject()
    write_dataset(tmp_path / "ds", [[row]], [bad])
    assert sorted(p.name for p in (tmp_path / "ds" / DATA_DIR).iterdir()) == ["part-000.parquet"]
    assert sorted(p.name for p in (tmp_path / "ds" / REJECTS_DIR).iterdir()) == ["part-000.parquet"]

    ds = open_dataset(str(tmp_path / "ds"))
    assert ds.num_rows == 1
    table = ds.read()
    assert table.schema.names == SAMPLE_SCHEMA.names
    assert table.to_pylist() == [row]
    assert np.array_equal(decode_frames(table["frames"][0].as_py()), pictures)
    assert ds.rejects().to_pylist() == [bad]
    assert ds.card == {}


def test_the_written_files_carry_the_schema_version(tmp_path):
    layout = write_dataset(tmp_path, [[sample()]], [reject()])
    for path in layout.parquet_files(DATA_DIR) + layout.parquet_files(REJECTS_DIR):
        assert pq.read_schema(path).metadata[VERSION_KEY] == SCHEMA_VERSION.encode()


def test_reading_some_columns(tmp_path):
    write_dataset(tmp_path, [[sample("a" * 64), sample("c" * 64)]])
    table = open_dataset(str(tmp_path)).read(columns=["sample_id", "static_difficulty"])
    assert table.to_pylist() == [
        {"sample_id": "a" * 64, "static_difficulty": 0.5},
        {"sample_id": "c" * 64, "static_difficulty": 0.5},
    ]


def test_frames_round_trip_losslessly():
    pictures = frames(4, 32, seed=5)
    assert np.array_equal(decode_frames([encode_frame(f) for f in pictures]), pictures)


def test_reject_reasons_describe_themselves():
    assert all(isinstance(k, str) and v for k, v in REJECT_REASONS.items())
    assert KEYFRAME_COUNTS == (3, 4, 5, 6, 7, 8)


def _rewrite_version(path, version: bytes | None) -> None:
    table = pq.read_table(path)
    metadata = dict(table.schema.metadata or {})
    metadata.pop(VERSION_KEY, None)
    if version is not None:
        metadata[VERSION_KEY] = version
    pq.write_table(table.replace_schema_metadata(metadata), path)


def test_a_newer_major_version_is_refused_naming_both_versions(tmp_path):
    layout = write_dataset(tmp_path, [[sample()]])
    _rewrite_version(layout.parquet_files(DATA_DIR)[0], b"3.0")
    with pytest.raises(SchemaVersionError) as error:
        open_dataset(str(tmp_path))
    message = str(error.value)
    assert "3.0" in message and SCHEMA_VERSION in message
    assert "part-000.parquet" in message


def test_a_reject_file_of_another_version_is_refused(tmp_path):
    layout = write_dataset(tmp_path, [[sample()]], [reject()])
    _rewrite_version(layout.parquet_files(REJECTS_DIR)[0], b"0.9")
    with pytest.raises(SchemaVersionError, match="0.9"):
        open_dataset(str(tmp_path))


def test_a_file_without_a_version_is_refused(tmp_path):
    layout = write_dataset(tmp_path, [[sample()]])
    _rewrite_version(layout.parquet_files(DATA_DIR)[0], None)
    with pytest.raises(SchemaVersionError, match="none"):
        open_dataset(str(tmp_path))


def test_a_newer_minor_version_is_read(tmp_path):
    layout = write_dataset(tmp_path, [[sample()]])
    _rewrite_version(layout.parquet_files(DATA_DIR)[0], SCHEMA_VERSION.split(".")[0].encode() + b".7")
    assert open_dataset(str(tmp_path)).num_rows == 1


def test_half_written_files_are_ignored(tmp_path):
    layout = write_dataset(tmp_path, [[sample()]])
    (tmp_path / DATA_DIR / f"{TEMP_PREFIX}part-009.parquet").write_bytes(b"half a file")
    ds = open_dataset(str(tmp_path))
    assert ds.num_rows == 1
    assert layout.temp_files() == [f"{layout.root}/{DATA_DIR}/{TEMP_PREFIX}part-009.parquet"]


def test_rank_files_split_files_without_overlap(tmp_path):
    ids = [f"{i:064x}" for i in range(5)]
    write_dataset(tmp_path, [[sample(sample_id)] for sample_id in ids])
    ds = open_dataset(str(tmp_path))
    assert len(ds.sample_files) == 5
    assert list(ds.sample_files) == sorted(ds.sample_files)
    for world_size in (1, 2, 3, 5, 7):
        shards = [ds.rank_files(rank, world_size) for rank in range(world_size)]
        flat = [f for shard in shards for f in shard]
        assert sorted(flat) == list(ds.sample_files)  # every file once, no file twice
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        rows = [
            sample_id
            for rank in range(world_size)
            for batch in ds.iter_batches(columns=["sample_id"], rank=rank, world_size=world_size)
            for sample_id in batch["sample_id"].to_pylist()
        ]
        assert sorted(rows) == ids
    with pytest.raises(ValueError):
        ds.rank_files(2, 2)
    with pytest.raises(ValueError):
        ds.rank_files(-1, 2)


def test_the_card_is_read(tmp_path):
    layout = write_dataset(tmp_path, [[sample()]])
    layout.write_card({"counts": {"rows": 1, "rejects": 0}})
    assert open_dataset(str(tmp_path)).card["counts"] == {"rows": 1, "rejects": 0}
    assert not layout.temp_files()


def test_a_card_alone_is_a_dataset(tmp_path):
    DatasetLayout.at(str(tmp_path)).write_card({"status": "running"})
    ds = open_dataset(str(tmp_path))
    assert ds.num_rows == 0 and ds.sample_files == () and ds.card == {"status": "running"}


def test_an_empty_folder_is_no_dataset(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_dataset(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        open_dataset(str(tmp_path / "does_not_exist"))
