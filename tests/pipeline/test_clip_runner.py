"""The CLIP stage inside `rdtf preprocess`, end to end on real stickers with random weights and the tiny model:
a CPU actor pool of 2, embeddings and captions on every row, a planted near-duplicate across blocks, the same rows
whatever the pool and block sizes, re-runs, and resume after SIGKILL."""

from __future__ import annotations

import csv
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageSequence
from test_runner import _kill_group, _rows, _shard_count

from rdtf.pipeline.config import ClipConfig, PreprocessConfig, RayConfig
from rdtf.pipeline.runner import run_preprocess
from rdtf.schemas import REJECT_REASONS, open_dataset
from rdtf.schemas.config import ConfigError

pytestmark = pytest.mark.slow

STICKERS_USED = 20  # real stickers in the corpus: enough for several blocks, few enough for a quick test
# With random weights distinct stickers can be very close (measured on the 299 shared stickers with the tiny model:
# median cosine 0.984, 9 pairs of 37,675 at 0.9999 or more); a re-encoded copy is at 0.99999994.
THRESHOLD = 0.99999
CLIP = ClipConfig(model="rdtf-tiny-clip", weights="random", batch_size=16, near_duplicate_threshold=THRESHOLD)


def _config(pool_size: int, rows_per_shard: int) -> PreprocessConfig:
    clip = dataclasses.replace(CLIP, pool_size=pool_size)
    return PreprocessConfig(clip=clip, ray=RayConfig(num_cpus=2, rows_per_shard=rows_per_shard, object_store_mb=256))


def _reencode(source: Path, target: Path) -> None:
    """The same animation written again by Pillow: other bytes (so not an exact duplicate), the same pictures."""
    with Image.open(source) as image:
        frames = [frame.convert("RGBA") for frame in ImageSequence.Iterator(image)]
        durations = [frame.info.get("duration", 100) for frame in ImageSequence.Iterator(image)]
    frames[0].save(target, save_all=True, append_images=frames[1:], duration=durations, loop=0, disposal=2)


@pytest.fixture(scope="module")
def corpus(stickers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """STICKERS_USED real stickers in a/ (every other one without a caption), and in z/ a re-encoded copy of the
    first: sorted by URI they are first and last, so they are never in the same block."""
    folder = tmp_path_factory.mktemp("clip_corpus")
    (folder / "a").mkdir()
    (folder / "z").mkdir()
    with open(stickers / "manifest.csv", newline="") as f:
        lines = [row for row in csv.DictReader(f) if min(Image.open(stickers / row["file"]).size) >= 64]
    rows = []
    for i, line in enumerate(sorted(lines, key=lambda r: r["file"])[:STICKERS_USED]):
        target = folder / "a" / f"{i:02d}_{Path(line['file']).name}"
        shutil.copy(stickers / line["file"], target)
        rows.append({"file": f"a/{target.name}", "text": line["text"] if i % 2 == 0 else ""})
    _reencode(folder / rows[0]["file"], folder / "z" / "reencoded.gif")
    rows.append({"file": "z/reencoded.gif", "text": ""})
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One run with a pool of 2 CPU actors and blocks of at most 3 rows; and how many CLIP actors it started."""
    import ray
    from ray._private import state  # the actor table, which needs no dashboard

    out = tmp_path_factory.mktemp("clip_reference") / "dataset"
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False)
    try:
        run_preprocess([str(corpus)], str(out), _config(pool_size=2, rows_per_shard=3), show_progress=False)
        actors = [a for a in state.actors().values() if "LegActor" in a["ActorClassName"]]
    finally:
        ray.shutdown()
    return out, len(actors)


def test_a_cpu_pool_of_two_actors(reference: tuple[Path, int]) -> None:
    assert reference[1] == 2


def test_every_row_has_an_embedding_a_score_tags_and_a_caption(corpus: Path, reference: tuple[Path, int]) -> None:
    out, _ = reference
    reader = open_dataset(str(out))
    table = reader.read()
    rejects = reader.rejects()
    assert table.num_rows + rejects.num_rows == STICKERS_USED + 1
    assert set(rejects["reason"].to_pylist()) <= set(REJECT_REASONS) - {"internal_error", "corrupt"}
    assert table.schema.field("clip_embedding").type == pa.list_(pa.float16())
    embeddings = np.array(table["clip_embedding"].to_pylist(), dtype=np.float32)
    assert embeddings.shape == (table.num_rows, 64)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=2e-3)
    scores = table["clip_score"].to_numpy()
    assert np.all(np.isfinite(scores)) and np.all(np.abs(scores) <= 1)
    for row in table.select(["source_uri", "caption", "caption_source", "tags", "keyframe_sets"]).to_pylist():
        assert row["caption_source"] in ("given", "tags") and row["caption"]
        assert (row["caption_source"] == "given") == (int(Path(row["source_uri"]).name[:2]) % 2 == 0)
        assert len(row["tags"]) == CLIP.num_tags
        assert [len(s) for s in row["keyframe_sets"]] == [3, 4, 5, 6, 7, 8]
    card = reader.card
    assert card["clip"]["model"] == "rdtf-tiny-clip" and card["clip"]["weights"] == "random"
    assert card["clip"]["weights_sha256"] == "random" and "RANDOM" in card["clip"]["warning"]
    assert card["clip"]["device"] == "cpu" and card["counts"]["rows"] == table.num_rows


def test_a_reencoded_copy_in_another_block_is_a_near_duplicate(reference: tuple[Path, int]) -> None:
    out, _ = reference
    reader = open_dataset(str(out))
    table = reader.read(columns=["source_uri", "sample_id"])
    original = next(r for r in table.to_pylist() if Path(r["source_uri"]).name.startswith("00_"))
    copy = next(r for r in reader.rejects().to_pylist() if r["source_uri"].endswith("z/reencoded.gif"))
    assert copy["reason"] == "near_duplicate" and copy["stage"] == "near_duplicates"
    assert copy["kept_sample_id"] == original["sample_id"] and original["source_uri"] in copy["message"]
    kept = set(table["sample_id"].to_pylist())
    assert all(r["kept_sample_id"] in kept for r in reader.rejects().to_pylist() if r["reason"] == "near_duplicate")


def test_same_rows_whatever_the_pool_and_block_sizes(corpus: Path, reference: tuple[Path, int], tmp_path: Path):
    out = tmp_path / "one_actor"
    run_preprocess([str(corpus)], str(out), _config(pool_size=1, rows_per_shard=5), show_progress=False)
    assert _rows(out) == _rows(reference[0])


def test_rerun_of_a_finished_job_adds_nothing(corpus: Path, reference: tuple[Path, int], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    before = sorted(p.name for p in out.rglob("*.parquet"))
    summary = run_preprocess([str(corpus)], str(out), _config(pool_size=1, rows_per_shard=3), show_progress=False)
    assert summary.processed == 0 and summary.near_duplicates == 0
    assert sorted(p.name for p in out.rglob("*.parquet")) == before


def test_resume_after_sigkill(corpus: Path, reference: tuple[Path, int], tmp_path: Path, private_ray_tmp: str):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "rdtf.jobs.cli", "preprocess", str(corpus), "--out", str(out), "--num-cpus", "2"]
    command += ["--rows-per-shard", "1", "--no-progress", "--clip-model", "rdtf-tiny-clip", "--clip-weights"]
    command += ["random", "--clip-batch-size", "16", "--near-duplicate-threshold", str(THRESHOLD)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while _shard_count(out) < 6 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the job finished before it could be killed; kill earlier"
    _kill_group(process, private_ray_tmp)
    summary = run_preprocess([str(corpus)], str(out), _config(pool_size=2, rows_per_shard=3), show_progress=False)
    assert summary.already_done >= 6
    assert _rows(out) == _rows(reference[0])


def test_a_run_the_cluster_refuses_leaves_no_card(corpus: Path, tmp_path: Path) -> None:
    """clip.device cuda on a cluster without a GPU is refused once Ray is up; the corrected command must then run,
    not meet a card of the refused settings ("was made with different 'clip' settings")."""
    out = tmp_path / "out"
    on_gpu = dataclasses.replace(_config(1, 64), clip=dataclasses.replace(CLIP, device="cuda"))
    with pytest.raises(ConfigError, match="no GPU"):
        run_preprocess([str(corpus.parent / "a" / "00_*")], str(out), on_gpu, show_progress=False)
    assert not (out / "card.json").exists()
    summary = run_preprocess([str(corpus.parent / "a" / "00_*")], str(out), _config(1, 64), show_progress=False)
    assert summary.written == 1
