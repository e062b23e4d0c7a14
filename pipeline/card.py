"""The dataset card: what is in a dataset and how it was made, written as card.json beside the shards."""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ledger import rows
from schemas.dataset import SCHEMA_VERSION
from schemas.frames import FRAME_FORMAT
from schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout


def software_version() -> str:
    return version("rdtf")


def count_outputs(ledger: pa.Table, layout: DatasetLayout) -> dict[str, Any]:
    """Counts from the scan of the files themselves (pipeline.ledger), so they are right after any number of
    resumed runs."""
    reasons = pc.value_counts(ledger["reason"].drop_null()).to_pylist()
    by_reason = {r["values"]: r["counts"] for r in sorted(reasons, key=lambda r: r["values"])}
    count = rows(ledger).num_rows
    return {
        "rows": count,
        "rejects": sum(by_reason.values()),
        "inputs": count + sum(by_reason.values()),
        "rejects_by_reason": by_reason,
        "files": {"data": len(layout.parquet_files(DATA_DIR)), "rejects": len(layout.parquet_files(REJECTS_DIR))},
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
