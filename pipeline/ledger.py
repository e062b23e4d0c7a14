"""What a dataset folder already accounts for: every input that is a row or a reject there.

This is how a re-run resumes: it skips these inputs, so a killed job finishes without duplicating or dropping
anything, and a finished job's re-run adds nothing.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout
from schemas.reader import check_version


def entries(layout: DatasetLayout) -> list[tuple[str, str | None]]:
    """(source_uri, sample_id) of every row and reject written so far; sample_id is None for unreadable inputs."""
    found: list[tuple[str, str | None]] = []
    for kind in (DATA_DIR, REJECTS_DIR):
        for path in layout.parquet_files(kind):
            check_version(layout.fs, path)
            table = pq.read_table(path, columns=["source_uri", "sample_id"], filesystem=layout.fs)
            found += zip(table["source_uri"].to_pylist(), table["sample_id"].to_pylist(), strict=True)
    return found


def accounted(layout: DatasetLayout) -> dict[str, str | None]:
    """source_uri -> sample_id of every input already accounted for."""
    return dict(entries(layout))


def remove_temp_files(layout: DatasetLayout) -> int:
    """Delete half-written files a killed job left; return how many there were."""
    leftovers = layout.temp_files()
    for path in leftovers:
        layout.fs.delete_file(path)
    return len(leftovers)
