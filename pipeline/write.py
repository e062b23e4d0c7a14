"""The end of the pipeline: a batch's rows and rejects become Parquet shards, written atomically.

A shard is named after the inputs in it, so a batch that is processed again (a retried task) writes the same file
name and replaces, never duplicates. A file appears under its final name only when complete. Workers write into
their run's staging folder; the run's driver publishes each shard into data/ or rejects/ as its summary arrives
(`publish`), so a late writer of a killed run can never add a row (schemas/layout.py, STAGING_DIR).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rdtf.pipeline.stage import NOT_DONE, Batch, Stage
from rdtf.schemas.dataset import REJECT_SCHEMA, SAMPLE_SCHEMA
from rdtf.schemas.frames import encode_frame
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, STAGING_DIR, TEMP_PREFIX, DatasetLayout

# What the driver gets back for each input: enough for progress, the summary and the accounting check, and the
# staged shard that holds it ("data/NAME" or "rejects/NAME"), for the driver to publish.
SUMMARY_COLUMNS = ("source_uri", "reject_reason", "num_bytes", "shard")
# Written by the CLIP stage when it runs (caption and caption_source too, for inputs without a caption).
CLIP_COLUMNS = ("clip_embedding", "clip_score", "tags")


def shard_name(source_uris: list[str]) -> str:
    """A file name that depends only on which inputs are in the shard."""
    digest = hashlib.sha1("\n".join(sorted(source_uris)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def write_table(layout: DatasetLayout, kind: str, name: str, table: pa.Table, run_id: str | None = None) -> None:
    """Write `table` to `kind`/`name` through a temporary file and a rename; into run `run_id`'s staging folder
    when given (published later by `publish`)."""
    root = layout.root if run_id is None else layout.staging_dir(run_id)
    folder = f"{root}/{kind}"
    layout.fs.create_dir(folder, recursive=True)
    temp = f"{folder}/{TEMP_PREFIX}{name}"
    pq.write_table(table, temp, filesystem=layout.fs, compression="zstd")
    layout.fs.move(temp, f"{folder}/{name}")


def publish(layout: DatasetLayout, run_id: str, shard: str) -> None:
    """Move a staged shard ("data/NAME" or "rejects/NAME") of run `run_id` to its place in the dataset."""
    kind = shard.split("/", 1)[0]
    layout.fs.create_dir(layout.dir(kind), recursive=True)
    layout.fs.move(f"{layout.staging_dir(run_id)}/{shard}", f"{layout.root}/{shard}")


def clear_staging(layout: DatasetLayout, run_id: str | None = None) -> None:
    """Delete run `run_id`'s staging folder, or every run's (at the start of a run: what killed runs left)."""
    folder = layout.staging_dir(run_id) if run_id else f"{layout.root}/{STAGING_DIR}"
    if layout.fs.get_file_info(folder).type == pafs.FileType.Directory:
        layout.fs.delete_dir(folder)


def reject_rows(batch: Batch) -> list[dict[str, Any]]:
    """The batch's rejects as REJECT_SCHEMA rows (inputs left NOT_DONE are not rejects: they are written nowhere)."""
    return [
        {
            "source_uri": batch["source_uri"][i],
            "sample_id": batch["sample_id"][i] if "sample_id" in batch else None,
            "source_version": batch["source_version"][i] if "source_version" in batch else None,
            "stage": batch["reject_stage"][i],
            "reason": batch["reject_reason"][i],
            "message": batch["reject_message"][i],
            "kept_sample_id": batch["kept_sample_id"][i],
        }
        for i in range(len(batch["source_uri"]))
        if batch["reject_reason"][i] not in (None, NOT_DONE)
    ]


def encode_frames(frames: list) -> list[bytes]:
    """Encode each frame (schemas/frames.py); a frame sampled twice in a row (held on screen) is encoded once."""
    encoded: list[bytes] = []
    for i, frame in enumerate(frames):
        same = i > 0 and np.array_equal(frame, frames[i - 1])
        encoded.append(encoded[-1] if same else encode_frame(frame))
    return encoded


class EncodeFramesStage(Stage):
    """The frames in their stored form (raw RGB + zstd, schemas/frames.py), made where they were decoded: a batch that
    goes on to another worker (the CLIP actors) carries about a sixth of the bytes of the decoded frames."""

    name = "encode"
    reads = ("frames",)
    writes = ("encoded_frames",)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"encoded_frames": encode_frames(row["frames"])}


def sample_row(batch: Batch, i: int, frame_size: int) -> dict[str, Any]:
    """One SAMPLE_SCHEMA row. The CLIP columns stay null when the CLIP stage did not run (not in the batch)."""
    caption = batch["caption"][i]
    clip = {c: batch[c][i] if c in batch else None for c in CLIP_COLUMNS}
    return {
        "sample_id": batch["sample_id"][i],
        "source_uri": batch["source_uri"][i],
        "source_id": batch["source_id"][i],
        "source_version": batch["source_version"][i],
        "format": batch["format"][i],
        "num_bytes": batch["num_bytes"][i],
        "width": batch["width"][i],
        "height": batch["height"][i],
        "num_frames": batch["num_frames"][i],
        "truncated": batch["truncated"][i],
        "frame_durations_ms": batch["frame_durations_ms"][i],
        "frames": batch["encoded_frames"][i],
        "frame_timestamps_ms": batch["frame_timestamps_ms"][i],
        "frame_size": frame_size,
        "keyframe_sets": batch["keyframe_sets"][i],
        "caption": caption,
        "caption_source": batch["caption_source"][i] if "caption_source" in batch else ("given" if caption else None),
        "spatial_entropy": batch["spatial_entropy"][i],
        "temporal_entropy": batch["temporal_entropy"][i],
        "static_difficulty": batch["static_difficulty"][i],
        **clip,
    }


def write_rejects(layout: DatasetLayout, shards: Iterable[pa.Table]) -> list[str]:
    """Write the driver's rejects (REJECT_SCHEMA: the hash pass's and the duplicates), one file per table of
    `shards`, each named after its inputs like the workers' shards; returns the files' paths."""
    paths = []
    for shard in shards:
        name = shard_name(shard["source_uri"].to_pylist())
        write_table(layout, REJECTS_DIR, name, shard.cast(REJECT_SCHEMA))
        paths.append(f"{layout.dir(REJECTS_DIR)}/{name}")
    return paths


class ShardWriter:
    """The pipeline's sink: writes a batch's samples and its rejects into run `run_id`'s staging folder, and returns
    one summary row per input, naming the staged shard that holds it.

    Samples are published before rejects: if the job dies between the two, the rejects are simply redone.
    """

    name = "write"
    # The columns it writes from: what an earlier worker must hand on (the CLIP columns and caption_source only
    # when they exist).
    reads = (
        "sample_id", "source_uri", "source_id", "source_version", "format", "num_bytes", "width", "height",
        "num_frames", "truncated", "frame_durations_ms", "encoded_frames", "frame_timestamps_ms", "keyframe_sets",
        "caption", "caption_source", "spatial_entropy", "temporal_entropy", "static_difficulty", *CLIP_COLUMNS,
    )  # fmt: skip

    def __init__(self, output: str, frame_size: int, run_id: str):
        self.output = output
        self.frame_size = frame_size
        self.run_id = run_id

    def __call__(self, batch: Batch) -> Batch:
        layout = DatasetLayout.at(self.output)
        uris = batch["source_uri"]
        name = shard_name(uris)
        samples = [sample_row(batch, i, self.frame_size) for i in range(len(uris)) if batch["reject_reason"][i] is None]
        if samples:
            write_table(layout, DATA_DIR, name, pa.Table.from_pylist(samples, SAMPLE_SCHEMA), self.run_id)
        rejects = reject_rows(batch)
        if rejects:
            write_table(layout, REJECTS_DIR, name, pa.Table.from_pylist(rejects, REJECT_SCHEMA), self.run_id)
        summary = {column: list(batch[column]) for column in SUMMARY_COLUMNS if column != "shard"}
        kinds = {None: DATA_DIR, NOT_DONE: None}
        shards = [kinds.get(reason, REJECTS_DIR) for reason in batch["reject_reason"]]
        return summary | {"shard": [None if kind is None else f"{kind}/{name}" for kind in shards]}
