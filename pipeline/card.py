"""The dataset card: what is in a dataset and how it was made, written as card.json beside the shards."""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

from rdtf.schemas.dataset import SCHEMA_VERSION
from rdtf.schemas.frames import FRAME_FORMAT
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout


def software_version() -> str:
    return version("rdtf")


def count_outputs(rows: int, rejects_by_reason: dict[str, int], layout: DatasetLayout) -> dict[str, Any]:
    """The card's counts, from the ledger of the files themselves (pipeline.ledger.counts), so they are right after
    any number of resumed runs."""
    rejects = sum(rejects_by_reason.values())
    return {
        "rows": rows,
        "rejects": rejects,
        "inputs": rows + rejects,
        "rejects_by_reason": dict(sorted(rejects_by_reason.items())),
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
