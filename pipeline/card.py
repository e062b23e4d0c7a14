"""The dataset card: what is in a dataset and how it was made, written as card.json beside the shards."""

from __future__ import annotations

import time
from collections import Counter
from importlib.metadata import version
from typing import Any

import pyarrow.parquet as pq

from schemas.dataset import SCHEMA_VERSION
from schemas.frames import FRAME_FORMAT
from schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout


def software_version() -> str:
    return version("rdtf")


def count_outputs(layout: DatasetLayout) -> dict[str, Any]:
    """Counts read from the files themselves, so they are right after any number of resumed runs."""
    data_files, reject_files = layout.parquet_files(DATA_DIR), layout.parquet_files(REJECTS_DIR)
    rows = sum(pq.ParquetFile(f, filesystem=layout.fs).metadata.num_rows for f in data_files)
    reasons: Counter[str] = Counter()
    for path in reject_files:
        reasons.update(pq.read_table(path, columns=["reason"], filesystem=layout.fs)["reason"].to_pylist())
    return {
        "rows": rows,
        "rejects": sum(reasons.values()),
        "inputs": rows + sum(reasons.values()),
        "rejects_by_reason": dict(sorted(reasons.items())),
        "files": {"data": len(data_files), "rejects": len(reject_files)},
    }


def make_card(
    config: dict[str, Any],
    status: str,
    counts: dict[str, Any] | None,
    last_run: dict[str, Any] | None,
    clip: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`clip`: the CLIP stage's models and weights (pipeline.clip.ClipSetup.card), or None when it did not run."""
    return {
        "status": status,  # running | complete
        "schema_version": SCHEMA_VERSION,
        "software_version": software_version(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "frame_format": FRAME_FORMAT,
        "config": config,
        "clip": clip or {"status": "skipped", "reason": "no clip.weights"},
        "counts": counts,
        "last_run": last_run,
    }
