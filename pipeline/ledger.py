"""What a dataset folder already accounts for: every input that is a row or a reject there, as one Arrow table.

This is how a re-run resumes: it skips these inputs, so a killed job finishes without duplicating or dropping
anything, and a finished job's re-run adds nothing. The scan reads three or four short columns of every file through
`pyarrow.dataset` (threaded), after checking every file's schema version from its footer on a thread pool (the scan
reuses the footers read). A run scans the output once, at its start; what it wrote itself is scanned after it, for
the accounting check (bench/scale.py measures both at 1 M rows).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.write import write_table
from schemas.dataset import REJECT_SCHEMA, SAMPLE_SCHEMA
from schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout
from schemas.reader import check_metadata

# One row per row or reject in the dataset; `reason` is null for rows.
LEDGER_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("sample_id", pa.string()),  # null for inputs that could not be read
        ("source_version", pa.string()),  # null when unknown (a manifest input, or a schema 1.0 file)
        ("reason", pa.string()),
    ]
)
READ_THREADS = 32  # footers read at once: object stores answer each request slowly, but many at a time


def _threads(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, min(READ_THREADS, count)))


def _scan_kind(layout: DatasetLayout, kind: str, files: list[str]) -> pa.Table:
    source = SAMPLE_SCHEMA if kind == DATA_DIR else REJECT_SCHEMA
    names = [n for n in LEDGER_SCHEMA.names if n in source.names]
    dataset = pads.dataset(files, schema=pa.schema([source.field(n) for n in names]), format="parquet",
                           filesystem=layout.fs)  # fmt: skip
    with _threads(len(files)) as pool:
        list(pool.map(lambda f: check_metadata(f.physical_schema.metadata, f.path), dataset.get_fragments()))
    table = dataset.to_table()
    if kind == DATA_DIR:
        table = table.append_column("reason", pa.nulls(table.num_rows, pa.string()))
    return table.cast(LEDGER_SCHEMA)


def scan(layout: DatasetLayout, data: list[str] | None = None, rejects: list[str] | None = None) -> pa.Table:
    """Every row and reject in the given files (LEDGER_SCHEMA), by default all of the dataset's."""
    data = layout.parquet_files(DATA_DIR) if data is None else data
    rejects = layout.parquet_files(REJECTS_DIR) if rejects is None else rejects
    parts = [_scan_kind(layout, kind, files) for kind, files in ((DATA_DIR, data), (REJECTS_DIR, rejects)) if files]
    return pa.concat_tables(parts) if parts else LEDGER_SCHEMA.empty_table()


def rows(ledger: pa.Table) -> pa.Table:
    """The dataset's rows, not its rejects."""
    return ledger.filter(pc.is_null(ledger["reason"]))


def without(ledger: pa.Table, uris: pa.Array) -> pa.Table:
    return ledger.filter(pc.invert(pc.is_in(ledger["source_uri"], value_set=uris)))


def drop_inputs(layout: DatasetLayout, uris: pa.Array) -> int:
    """Remove the rows and rejects of `uris` from the files that hold them (an input that changed is redone).
    Each such file is rewritten through a temporary file, or deleted when nothing is left; returns how many files
    changed. A job killed in between leaves some of them: the next run finds those inputs changed again."""
    files = [(p, DATA_DIR) for p in layout.parquet_files(DATA_DIR)]
    files += [(p, REJECTS_DIR) for p in layout.parquet_files(REJECTS_DIR)]

    def holds(item: tuple[str, str]) -> bool:
        column = pq.read_table(item[0], columns=["source_uri"], filesystem=layout.fs)["source_uri"]
        return pc.any(pc.is_in(column, value_set=uris)).as_py() or False

    with _threads(len(files)) as pool:
        hit = [item for item, found in zip(files, pool.map(holds, files), strict=True) if found]
    for path, kind in hit:
        schema = SAMPLE_SCHEMA if kind == DATA_DIR else REJECT_SCHEMA  # an older file's missing columns: null
        table = pads.dataset(path, schema=schema, format="parquet", filesystem=layout.fs).to_table()
        kept = table.filter(pc.invert(pc.is_in(table["source_uri"], value_set=uris)))
        if kept.num_rows:
            write_table(layout, kind, path.rsplit("/", 1)[-1], kept.replace_schema_metadata(schema.metadata))
        else:
            layout.fs.delete_file(path)
    return len(hit)


def remove_temp_files(layout: DatasetLayout) -> int:
    """Delete half-written files a killed job left; return how many there were."""
    leftovers = layout.temp_files()
    for path in leftovers:
        layout.fs.delete_file(path)
    return len(leftovers)
