"""End to end on an embedded Ray: accounting, duplicates, determinism across workers, re-runs and SIGKILL resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from rdtf.jobs.corpus import make_corpus
from rdtf.pipeline.config import PreprocessConfig, RayConfig
from rdtf.pipeline.runner import run_preprocess
from rdtf.pipeline.write import ShardWriter
from rdtf.schemas import REJECT_REASONS, open_dataset
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, STAGING_DIR, DatasetLayout

pytestmark = pytest.mark.slow


def _corpus(folder: Path) -> Path:
    """The synthetic corpus plus a manifest line for a file that does not exist."""
    make_corpus(str(folder), count=8)
    with open(folder / "manifest.csv", "a") as f:
        f.write("missing/nowhere.gif,a sticker that is not there\n")
    return folder / "manifest.csv"


def _config(num_cpus: int, rows_per_shard: int) -> PreprocessConfig:
    return PreprocessConfig(ray=RayConfig(num_cpus=num_cpus, rows_per_shard=rows_per_shard, object_store_mb=256))


def _rows(out: Path) -> tuple[list[dict], list[dict]]:
    reader = open_dataset(str(out))
    samples = sorted(reader.read().to_pylist(), key=lambda r: r["source_uri"])
    rejects = sorted(reader.rejects().to_pylist(), key=lambda r: r["source_uri"])
    return samples, rejects


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean run with 2 workers, the rows every other run is compared with."""
    out = tmp_path_factory.mktemp("reference") / "dataset"
    run_preprocess([str(manifest)], str(out), _config(2, 3), show_progress=False)
    return out


def test_every_input_is_a_row_or_a_reject_once(manifest: Path, reference: Path) -> None:
    samples, rejects = _rows(reference)
    uris = [r["source_uri"] for r in samples] + [r["source_uri"] for r in rejects]
    manifest_lines = (manifest.read_text().strip().splitlines())[1:]
    assert len(uris) == len(set(uris)) == len(manifest_lines)
    reasons = {r["source_uri"].rsplit("/", 1)[-1]: r["reason"] for r in rejects}
    assert reasons == {
        "nowhere.gif": "unreadable",
        "empty.gif": "empty_file",
        "not_a_gif.gif": "unsupported_format",
        "sticker_000_copy.gif": "duplicate",
        "tiny.gif": "too_small",
        "truncated.gif": "truncated",  # sticker_000.gif cut to a third: never a silent partial row by default
    }
    assert set(reasons.values()) <= set(REJECT_REASONS)
    by_name = {r["source_uri"].rsplit("/", 1)[-1]: r for r in samples}
    duplicate = next(r for r in rejects if r["reason"] == "duplicate")
    assert duplicate["kept_sample_id"] == by_name["sticker_000.gif"]["sample_id"]
    truncated = next(r for r in rejects if r["reason"] == "truncated")
    assert truncated["stage"] == "probe" and "decode.keep_truncated" in truncated["message"]
    assert [r["truncated"] for r in samples] == [False] * len(samples)
    assert {r["format"] for r in samples} == {"gif", "webp", "apng", "png", "jpeg"}
    assert by_name["sticker_001.gif"]["caption"] == "a green square sliding"
    assert by_name["sticker_001.gif"]["caption_source"] == "given"
    assert by_name["sticker_000.gif"]["caption"] is None and by_name["sticker_000.gif"]["caption_source"] is None
    card = open_dataset(str(reference)).card
    assert card["status"] == "complete"
    assert card["counts"]["rows"] == len(samples) and card["counts"]["rejects"] == len(rejects)


def test_same_rows_whatever_the_number_of_workers(manifest: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "one_worker"
    run_preprocess([str(manifest)], str(out), _config(1, 2), show_progress=False)
    assert _rows(out) == _rows(reference)


def test_rerun_of_a_finished_job_adds_nothing(manifest: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    before = sorted(p.name for p in out.rglob("*.parquet"))
    summary = run_preprocess([str(manifest)], str(out), _config(2, 3), show_progress=False)
    assert summary.already_done == summary.inputs and summary.processed == 0
    assert sorted(p.name for p in out.rglob("*.parquet")) == before
    assert _rows(out) == _rows(reference)


def _shard_count(out: Path) -> int:
    layout = DatasetLayout.at(str(out))
    return len(layout.parquet_files(DATA_DIR)) + len(layout.parquet_files(REJECTS_DIR))


def _kill_group(process: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the job and every process it started (its session, then any Ray daemon under its own temp dir)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if ray_tmp.encode() in cmdline:
                os.kill(int(pid), signal.SIGKILL)


@pytest.mark.parametrize("kill_after_shards", [0, 1, 3])
def test_resume_after_sigkill(
    kill_after_shards: int, manifest: Path, reference: Path, tmp_path: Path, private_ray_tmp: str
) -> None:
    """SIGKILL the job once `kill_after_shards` shards exist, re-run it, and compare with a clean run."""
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "rdtf.jobs.cli",
        "preprocess",
        str(manifest),
        "--out",
        str(out),
        "--num-cpus",
        "2",
        "--rows-per-shard",
        "1",
        "--no-progress",
    ]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _shard_count(out) < kill_after_shards and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if kill_after_shards == 0:
        time.sleep(2.0)  # inside Ray's start-up or the hash pass
    assert process.poll() is None, "the job finished before it could be killed; kill earlier"
    _kill_group(process, private_ray_tmp)
    summary = run_preprocess([str(manifest)], str(out), _config(2, 3), show_progress=False)
    assert summary.already_done >= kill_after_shards
    assert _rows(out) == _rows(reference)


def test_real_stickers(stickers: Path, tmp_path: Path) -> None:
    out = tmp_path / "stickers"
    summary = run_preprocess([str(stickers / "manifest.csv")], str(out), _config(2, 64), show_progress=False)
    reader = open_dataset(str(out))
    table = reader.read(columns=["source_uri", "frames", "keyframe_sets", "caption", "frame_size", "format"])
    rejects = reader.rejects()
    assert table.num_rows + rejects.num_rows == summary.inputs == 299
    assert set(rejects["reason"].to_pylist()) <= set(REJECT_REASONS) - {"internal_error", "corrupt"}
    assert set(table["format"].to_pylist()) == {"gif"}
    assert all(1 <= len(f) <= 16 for f in table["frames"].to_pylist())
    assert all([len(s) for s in sets] == [3, 4, 5, 6, 7, 8] for sets in table["keyframe_sets"].to_pylist())
    assert all(c for c in table["caption"].to_pylist())  # every manifest line has a text
    assert pa.compute.all(pa.compute.equal(table["frame_size"], 256)).as_py()


def test_a_late_writer_of_a_killed_run_adds_nothing(manifest: Path, reference: Path, tmp_path: Path) -> None:
    """A worker of a killed run that writes after the run died (or while the next run works) changes no row: it
    writes into its own run's staging folder, which only that run's driver would publish."""
    out = tmp_path / "late"
    shutil.copytree(reference, out)
    before = _rows(out)
    uri = before[1][0]["source_uri"]  # an input that is a reject in the finished dataset
    late = ShardWriter(str(out), 256, run_id="killed-run")
    late(
        {
            "source_uri": [uri],
            "sample_id": [before[1][0]["sample_id"]],
            "num_bytes": [1],
            "reject_stage": ["probe"],
            "reject_reason": ["unsupported_format"],
            "reject_message": ["written late by a killed run's worker"],
            "kept_sample_id": [None],
        }
    )
    assert _rows(out) == before
    summary = run_preprocess([str(manifest)], str(out), _config(2, 3), show_progress=False)
    assert summary.processed == 0
    assert _rows(out) == before
    assert not (out / STAGING_DIR).exists()
