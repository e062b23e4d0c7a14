"""What a dataset folder already accounts for: every input that is a row or a reject there, as one Arrow table.

This is how a re-run resumes: it skips these inputs, so a killed job finishes without duplicating or dropping
anything, and a finished job's re-run adds nothing. The same scan, after the run, checks that every input is there
exactly once and gives the card its counts. It reads four short columns of each file, every file's footer once,
on a thread pool: columnar on the driver, a few hundred bytes per input (bench/scale.py measures it at 1 M).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.write import write_table
from schemas.dataset import REJECT_SCHEMA, SAMPLE_SCHEMA
from schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout
from schemas.reader import check_metadata

# One row per row or reject in the dataset. `reason` is null for rows; `file` is the Parquet file holding it.
LEDGER_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("sample_id", pa.string()),  # null for inputs that could not be read
        ("source_version", pa.string()),  # null when unknown (a manifest input, or a schema 1.0 file)
        ("reason", pa.string()),
        ("file", pa.dictionary(pa.int32(), pa.string())),
    ]
)
READ_THREADS = 32  # files read at once: object stores answer each read slowly, but many at a time


@dataclass(frozen=True)
class Ledger:
    table: pa.Table  # LEDGER_SCHEMA
    data_files: int
    reject_files: int

    def rows(self) -> pa.Table:
        """The dataset's rows (not its rejects)."""
        return self.table.filter(pc.is_null(self.table["reason"]))

    def without(self, uris: pa.Array) -> Ledger:
        """The ledger after `drop_inputs(..., uris)`, without a scan (file counts as before the drop: the card takes
        them from the scan after the run)."""
        kept = self.table.filter(pc.invert(pc.is_in(self.table["source_uri"], value_set=uris)))
        return Ledger(kept, self.data_files, self.reject_files)


def _read(layout: DatasetLayout, path: str, kind: str) -> pa.Table:
    file = pq.ParquetFile(path, filesystem=layout.fs)
    check_metadata(file.schema_arrow.metadata, path)
    present = set(file.schema_arrow.names)
    wanted = ["source_uri", "sample_id", "source_version"] + (["reason"] if kind == REJECTS_DIR else [])
    table = file.read(columns=[c for c in wanted if c in present])
    rows = table.num_rows
    columns = {c: table[c] if c in present else pa.nulls(rows, pa.string()) for c in wanted}
    if kind == DATA_DIR:
        columns["reason"] = pa.nulls(rows, pa.string())
    columns["file"] = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([path]))
    return pa.table(columns, schema=LEDGER_SCHEMA)


def scan(layout: DatasetLayout) -> Ledger:
    """Every row and reject written so far, in file-name order."""
    files = [(p, DATA_DIR) for p in layout.parquet_files(DATA_DIR)]
    data_files = len(files)
    files += [(p, REJECTS_DIR) for p in layout.parquet_files(REJECTS_DIR)]
    if not files:
        return Ledger(LEDGER_SCHEMA.empty_table(), 0, 0)
    with ThreadPoolExecutor(min(READ_THREADS, len(files))) as pool:
        tables = list(pool.map(lambda f: _read(layout, *f), files))
    return Ledger(pa.concat_tables(tables), data_files, len(files) - data_files)


def drop_inputs(layout: DatasetLayout, ledger: Ledger, uris: pa.Array) -> int:
    """Remove the rows and rejects of `uris` from the files that hold them (an input that changed is redone).
    Each file is rewritten through a temporary file, or deleted when nothing is left; returns rows removed. A job
    killed in between leaves some of them still there: the next run finds them changed again and finishes."""
    hit = ledger.table.filter(pc.is_in(ledger.table["source_uri"], value_set=uris))
    files = pc.unique(hit["file"].combine_chunks().cast(pa.string())).to_pylist()
    for path in files:
        kind = path.rsplit("/", 2)[-2]
        schema = SAMPLE_SCHEMA if kind == DATA_DIR else REJECT_SCHEMA  # an older file's missing columns: null
        table = pads.dataset(path, schema=schema, format="parquet", filesystem=layout.fs).to_table()
        kept = table.filter(pc.invert(pc.is_in(table["source_uri"], value_set=uris)))
        if kept.num_rows:
            write_table(layout, kind, path.rsplit("/", 1)[-1], kept.replace_schema_metadata(schema.metadata))
        else:
            layout.fs.delete_file(path)
    return hit.num_rows


def remove_temp_files(layout: DatasetLayout) -> int:
    """Delete half-written files a killed job left; return how many there were."""
    leftovers = layout.temp_files()
    for path in leftovers:
        layout.fs.delete_file(path)
    return len(leftovers)
