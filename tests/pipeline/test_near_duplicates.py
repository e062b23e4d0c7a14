"""Near-duplicates across a whole dataset (pipeline.near_duplicates): the keep rule, clusters, and finishing a move.

The datasets here are written by hand (rows with chosen embeddings), so that which pairs are near is known.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import rdtf.pipeline.near_duplicates as near_duplicates
from rdtf.pipeline.near_duplicates import EDGE_SCHEMA, choose, drop_rejected_rows, near_duplicate_pass
from rdtf.pipeline.write import write_table
from rdtf.schemas import open_dataset
from rdtf.schemas.dataset import KEYFRAME_COUNTS, SAMPLE_SCHEMA
from rdtf.schemas.layout import DATA_DIR, DatasetLayout

DIMENSIONS = 32


def sample_id(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()


def sample_row(uri: str, embedding: np.ndarray) -> dict:
    return {
        "sample_id": sample_id(uri),
        "source_uri": uri,
        "source_id": None,
        "format": "gif",
        "num_bytes": 1,
        "width": 64,
        "height": 64,
        "num_frames": 1,
        "frame_durations_ms": [100],
        "frames": [b"png"],
        "frame_timestamps_ms": [0],
        "frame_size": 64,
        "keyframe_sets": [[0] * k for k in KEYFRAME_COUNTS],
        "caption": None,
        "caption_source": None,
        "spatial_entropy": 1.0,
        "temporal_entropy": 0.0,
        "static_difficulty": 0.1,
        "clip_embedding": (embedding / np.linalg.norm(embedding)).astype(np.float16),
        "clip_score": 0.0,
        "tags": [],
    }


def make_dataset(root: Path, groups: list[list[tuple[str, np.ndarray]]]) -> DatasetLayout:
    """One data file per group of (uri, embedding)."""
    layout = DatasetLayout.at(str(root))
    for n, group in enumerate(groups):
        table = pa.Table.from_pylist([sample_row(u, e) for u, e in group], SAMPLE_SCHEMA)
        write_table(layout, DATA_DIR, f"part-{n:03d}.parquet", table)
    return layout


def planted(rng: np.random.Generator, count: int, copies: dict[int, int]) -> list[tuple[str, np.ndarray]]:
    """`count` random directions (nearly orthogonal in 32-d), plus for each {original: copy index} a near copy."""
    base = rng.normal(size=(count, DIMENSIONS))
    rows = [(f"s3://bucket/{i:03d}.gif", base[i]) for i in range(count)]
    rows += [
        (f"s3://bucket/{copy:03d}.gif", base[original] + 0.02 * rng.normal(size=DIMENSIONS))
        for original, copy in copies.items()
    ]
    return rows


def state(root: Path) -> tuple[list[str], list[tuple[str, str, str]]]:
    reader = open_dataset(str(root))
    rows = sorted(reader.read(columns=["source_uri"])["source_uri"].to_pylist())
    rejects = sorted((r["source_uri"], r["reason"], r["kept_sample_id"]) for r in reader.rejects().to_pylist())
    return rows, rejects


@pytest.fixture
def ray_local(private_ray_tmp: str):
    import ray

    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


def edges(*pairs: tuple[str, str, float]) -> pa.Table:
    return pa.table(
        {"a": [p[0] for p in pairs], "a_uri": [p[0] for p in pairs], "b": [p[1] for p in pairs]}
        | {"b_uri": [p[1] for p in pairs], "cosine": [p[2] for p in pairs]},
        schema=EDGE_SCHEMA,
    )


def test_a_dropped_row_never_keeps_another():
    """A ~ B ~ C, A not ~ C: B goes (near A, the smallest URI), C stays (its only neighbour went)."""
    found = edges(("a", "b", 0.99), ("b", "c", 0.98))
    uris = {"a": "a", "b": "b", "c": "c"}
    assert choose(found, uris, protected=set()) == {"b": ("a", 0.99)}


def test_rows_kept_by_earlier_passes_come_first():
    found = edges(("a", "b", 0.99), ("b", "c", 0.98))
    uris = {"a": "a", "b": "b", "c": "c"}
    assert choose(found, uris, protected={"b"}) == {"a": ("b", 0.99), "c": ("b", 0.98)}


def test_the_kept_row_is_the_first_in_order_it_is_near():
    found = edges(("c", "d", 0.995), ("b", "d", 0.991), ("a", "e", 0.999))
    uris = {s: f"uri-{s}" for s in "abcde"}
    assert choose(found, uris, protected=set()) == {"d": ("b", 0.991), "e": ("a", 0.999)}


@pytest.mark.slow  # starts Ray for the clustered search
def test_pass_moves_planted_copies_across_files_and_is_idempotent(tmp_path: Path, ray_local: None):
    rng = np.random.default_rng(0)
    rows = planted(rng, 30, {3: 40, 17: 41, 29: 42})
    layout = make_dataset(tmp_path / "ds", [rows[:12], rows[12:24], rows[24:]])  # copies sit in other files
    moved = near_duplicate_pass(layout, threshold=0.99, cluster_rows=1000)
    assert sorted(moved) == [f"s3://bucket/{c:03d}.gif" for c in (40, 41, 42)]
    kept, rejects = state(tmp_path / "ds")
    assert len(kept) == 30 and all(reason == "near_duplicate" for _, reason, _ in rejects)
    assert [(uri, kept_id) for uri, _, kept_id in rejects] == [
        (f"s3://bucket/{c:03d}.gif", sample_id(f"s3://bucket/{o:03d}.gif")) for o, c in ((3, 40), (17, 41), (29, 42))
    ]
    assert near_duplicate_pass(layout, threshold=0.99, cluster_rows=1000) == []
    assert state(tmp_path / "ds") == (kept, rejects)

    # 2. Several clusters (k-means on a sample): the same pairs, well-separated groups never split a pair.
    centres = rng.normal(size=(6, DIMENSIONS)) * 3  # rows of a group: cosine about 0.9
    grouped = [(f"g/{i:03d}", centres[i % 6] + rng.normal(size=DIMENSIONS)) for i in range(120)]
    grouped += [(f"g/{i + 500:03d}", grouped[i][1] + 0.01 * rng.normal(size=DIMENSIONS)) for i in (5, 50, 99)]
    one = make_dataset(tmp_path / "one", [grouped[:60], grouped[60:]])
    many = make_dataset(tmp_path / "many", [grouped[:60], grouped[60:]])
    assert near_duplicate_pass(many, threshold=0.995, cluster_rows=20) == ["g/505", "g/550", "g/599"]
    assert near_duplicate_pass(one, threshold=0.995, cluster_rows=1000) == ["g/505", "g/550", "g/599"]
    assert state(tmp_path / "one") == state(tmp_path / "many")


def test_a_move_killed_after_its_commit_is_finished_by_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rows = planted(np.random.default_rng(1), 20, {2: 30, 11: 31})
    clean = make_dataset(tmp_path / "clean", [rows[:10], rows[10:]])
    shutil.copytree(tmp_path / "clean", tmp_path / "killed")
    killed = DatasetLayout.at(str(tmp_path / "killed"))
    near_duplicate_pass(clean, threshold=0.99, cluster_rows=1000)

    monkeypatch.setattr(near_duplicates, "drop_rejected_rows", lambda layout, uris: 0)  # killed right after the commit
    near_duplicate_pass(killed, threshold=0.99, cluster_rows=1000)
    monkeypatch.undo()
    rows_now, rejects_now = state(tmp_path / "killed")
    assert set(rows_now) & {uri for uri, _, _ in rejects_now} == {"s3://bucket/030.gif", "s3://bucket/031.gif"}

    assert drop_rejected_rows(killed) == 2  # what the next run does first
    assert near_duplicate_pass(killed, threshold=0.99, cluster_rows=1000) == []
    assert state(tmp_path / "killed") == state(tmp_path / "clean")
