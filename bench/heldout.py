"""Datasets for the training benchmarks: preprocess a sticker manifest once, then split its rows into a training set
and held-out sets by a rule that depends on nothing but the row (used by ablation.py and learning.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELDOUT_PERCENT = 10  # about 10% of the clips held out from training


def is_heldout(sample_id: str, percent: int = HELDOUT_PERCENT) -> bool:
    """The split rule: the first 8 bytes of sha256(sample_id) as a number, in the first `percent` percent."""
    value = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big")
    return value * 100 < percent * 2**64


def run_logged(command: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run `command` from the repository root with its output in `log`; seconds taken. Raises with the log's tail."""
    started = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}); end of {log}:\n{tail}")
    return time.perf_counter() - started


def complete(dataset: Path) -> bool:
    """Whether `dataset` holds a finished `rdtf preprocess` run (its card says so)."""
    from rdtf.schemas.layout import DatasetLayout

    card = DatasetLayout.at(str(dataset)).read_card()
    return card is not None and card.get("status") == "complete"


def preprocess(manifest: Path, out: Path, log: Path, flags: list[str] | None = None) -> None:
    """`rdtf preprocess` of `manifest` (no CLIP stage, more `flags` of the command) into `out`; skipped when `out`
    is complete, so a dataset prepared on one machine can be carried to another (bench/gpu_session.py)."""
    if complete(out):
        return
    ray_tmpdir = tempfile.mkdtemp(prefix="rdtf-bench-ray-", dir="/tmp")  # short: unix socket paths < 107 chars
    command = [sys.executable, "-m", "rdtf.jobs.cli", "preprocess", str(manifest), "--out", str(out), *(flags or [])]
    try:
        run_logged(command + ["--no-clip", "--no-progress"], log, {"RAY_TMPDIR": ray_tmpdir})
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def split(full: Path, parts: dict[str, Path], rule: Callable[[dict], str], rule_text: str) -> dict[str, int]:
    """Write one dataset per part name of `parts`, each row going to the part `rule(row)` names (row: sample_id and
    caption); file by file, so only one source file is in memory. Every part but "train" is then rewritten as one
    file in sample_id order (held-out parts are small). Row counts per part."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from rdtf.schemas.dataset import SAMPLE_SCHEMA
    from rdtf.schemas.layout import DATA_DIR, DatasetLayout
    from rdtf.schemas.reader import open_dataset

    source = open_dataset(str(full))
    counts = dict.fromkeys(parts, 0)
    for root in parts.values():
        shutil.rmtree(root, ignore_errors=True)
        (root / DATA_DIR).mkdir(parents=True)
    for path in source.sample_files:
        table = pads.dataset(path, schema=SAMPLE_SCHEMA).to_table()  # a column added since it was written: null
        names = [rule(row) for row in table.select(["sample_id", "caption"]).to_pylist()]
        for name, root in parts.items():
            rows = table.filter(pa.array([n == name for n in names]))
            if rows.num_rows:
                rows = rows.replace_schema_metadata(SAMPLE_SCHEMA.metadata)
                pq.write_table(rows, str(root / DATA_DIR / Path(path).name))
                counts[name] += rows.num_rows
    for name, root in parts.items():
        if name != "train":  # a held-out part, small: one file in sample_id order, so that "the first N clips"
            # scored are the same clips in every run (the pipeline's shards hold rows in the order tasks finished)
            files = sorted((root / DATA_DIR).glob("*.parquet"))
            if files:
                table = pa.concat_tables(pq.read_table(f) for f in files).sort_by("sample_id")
                for f in files:
                    f.unlink()
                pq.write_table(
                    table.replace_schema_metadata(SAMPLE_SCHEMA.metadata), str(root / DATA_DIR / files[0].name)
                )
        card = source.card | {
            "counts": {"rows": counts[name]},
            "split": {"of": str(full), "part": name, "rule": rule_text},
        }
        DatasetLayout.at(str(root)).write_card(card)
    return counts
