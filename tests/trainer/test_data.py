"""The streaming loader: rank split, exact resume of the stream and the buffer, padding, curriculum weights."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from dataset_factory import make_dataset

from schemas.reader import open_dataset
from trainer.config import DataConfig
from trainer.data import ClipLoader, ParquetRows, RayRows, keyframe_count


@pytest.fixture
def dataset(tmp_path):
    return open_dataset(make_dataset(str(tmp_path / "ds"), files=3, rows_per_file=5))


def loader(reader, rank=0, world=1, buffer=4, seed=0):
    rows = ParquetRows(reader, rank, world, seed, read_batch_rows=2)
    return ClipLoader(rows, DataConfig(shuffle_buffer=buffer, decode_threads=2), resolution=16, seed=seed, rank=rank)


def take(clip_loader, batches, size=2):
    out = []
    for step in range(batches):
        out.append(clip_loader.next_batch(size, step).sample_ids)
    return out


def test_batches_are_padded_clips_in_range(dataset):
    batch = loader(dataset).next_batch(3)
    assert batch.frames.shape == (3, 3, 8, 16, 16)
    assert batch.frames.min() >= -1 and batch.frames.max() <= 1
    for i, k in enumerate(batch.num_valid.tolist()):
        assert 3 <= k <= 8
        assert (batch.frames[i, :, k:] == 0).all()  # padding is 0 after scaling to [-1, 1]
        assert (batch.frames[i, :, :k] != 0).any()


def test_ranks_split_the_rows_without_overlap(dataset):
    seen = []
    for rank in range(2):
        rows = ParquetRows(dataset, rank, 2, seed=0)
        stream = rows.iter_from((0, 0))
        seen.append({next(stream)[1]["sample_id"] for _ in range(sum(rows.rows_per_file))})
    all_ids = dataset.read(columns=["sample_id"]).column("sample_id").to_pylist()
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(all_ids)


def test_one_epoch_then_the_next_in_a_new_order(dataset):
    rows = ParquetRows(dataset, 0, 1, seed=0)
    stream = rows.iter_from((0, 0))
    first = [next(stream) for _ in range(30)]
    ids = [row["sample_id"] for _, row in first]
    assert sorted(ids[:15]) == sorted(ids[15:]) and len(set(ids[:15])) == 15
    assert [p for p, _ in first][14:16] == [(0, 14), (1, 0)]
    in_order = [i for f in rows.order(1) for i in pq.read_table(rows.files[f]).column("sample_id").to_pylist()]
    assert ids[15:] == in_order


def test_resume_gives_the_same_next_batches(dataset):
    straight = loader(dataset)
    expected = take(straight, 12)
    straight.close()
    first = loader(dataset)
    done = take(first, 5)
    state = first.state_dict()
    first.close()
    resumed = loader(dataset)
    resumed.load_state_dict(state)
    assert done + take(resumed, 7) == expected
    resumed.close()


def test_seek_reads_the_same_rows_as_the_stream(dataset):
    rows = ParquetRows(dataset, 0, 1, seed=3, read_batch_rows=2)
    stream = rows.iter_from((0, 0))
    streamed = [next(stream) for _ in range(20)]
    positions = [p for p, _ in streamed][::3]
    assert [r["sample_id"] for r in rows.rows_at(positions)] == [r["sample_id"] for _, r in streamed][::3]
    later = rows.iter_from((1, 2))
    assert next(later)[1]["sample_id"] == streamed[17][1]["sample_id"]


def test_a_position_just_past_an_epochs_last_row_starts_the_next_epoch(dataset):
    """A checkpoint taken right after the last row of an epoch saves (epoch, rows); resuming there must work (it
    raised IndexError: `rdtf train` continuing the demo's run failed at once)."""
    rows = ParquetRows(dataset, 0, 1, seed=0)
    stream = rows.iter_from((0, 0))
    expected = [next(stream) for _ in range(17)][15:]
    resumed = rows.iter_from((0, 15))
    assert [(p, r["sample_id"]) for p, r in (next(resumed), next(resumed))] == [
        (p, r["sample_id"]) for p, r in expected
    ]


def test_weights_admit_rows_into_the_buffer(dataset):
    clip_loader = loader(dataset, buffer=4)
    asked = []

    def easy_early(ids, difficulty, step):
        asked.append(step)
        return np.where(difficulty <= 0.2, 1.0, 0.01 if step == 0 else 1.0)

    early = [clip_loader.next_batch(2, 0, easy_early) for _ in range(3)]
    assert all((b.static_difficulty <= 0.2).all() for b in early[:1])
    assert np.mean(np.concatenate([b.static_difficulty for b in early])) < 0.3
    late = np.concatenate([clip_loader.next_batch(2, 1, easy_early).static_difficulty for _ in range(20)])
    assert late.max() > 0.5  # every row is let in once the weights allow it
    assert set(asked) == {0, 1}
    clip_loader.close()


def test_keyframe_count_is_fixed_by_seed_and_position():
    counts = {keyframe_count(0, (0, i)) for i in range(200)}
    assert counts == set(range(3, 9))
    assert keyframe_count(0, (2, 7)) == keyframe_count(0, (2, 7))


def test_too_few_files_for_the_ranks_is_a_clear_error(tmp_path):
    reader = open_dataset(make_dataset(str(tmp_path / "one"), files=1, rows_per_file=2))
    with pytest.raises(ValueError, match="fewer than the 2 training processes"):
        ParquetRows(reader, 1, 2, 0)


def test_ray_data_rows_stream_the_same_rows(dataset):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, object_store_memory=100 * 2**20, include_dashboard=False)
    try:
        rows = RayRows(dataset.ray_dataset(), read_batch_rows=4)
        stream = rows.iter_from((0, 0))
        got = [next(stream) for _ in range(16)]
        ids = [row["sample_id"] for _, row in got]
        assert len(set(ids[:15])) == 15 and got[15][0] == (1, 0)
        clip_loader = ClipLoader(rows, DataConfig(shuffle_buffer=4), resolution=16, seed=0)
        assert clip_loader.next_batch(2).frames.shape == (2, 3, 8, 16, 16)
        clip_loader.close()
    finally:
        ray.shutdown()
