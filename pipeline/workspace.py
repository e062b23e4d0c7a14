"""The driver's bookkeeping tables, out of core: a DuckDB database in a temporary local folder, under a memory limit.

At 10 M inputs the lists a run keeps (its inputs, the ledger of what the output holds, the hash pass's results, the
duplicates) are gigabytes as Arrow tables on the driver (docs/benchmarks.md, "Bookkeeping at scale"). Here they are
DuckDB tables on local disk: joins, group-bys and sorts spill to the folder past `bookkeeping.memory_mb`, and
Arrow comes in and goes out as streams of record batches, so the driver's memory stays about flat in the number of
inputs. The folder is deleted when the workspace closes; a killed run leaves it in the temp folder (its name starts
with `rdtf-bookkeeping-`).
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import duckdb
import pyarrow as pa

from pipeline.config import BookkeepingConfig

BATCH_ROWS = 65_536  # rows per record batch read out of DuckDB: a few MiB of URIs and hashes at a time


class Workspace:
    """A DuckDB database of named tables in a temporary folder; use as a context manager."""

    def __init__(self, cfg: BookkeepingConfig | None = None):
        cfg = cfg or BookkeepingConfig()
        self.folder = tempfile.mkdtemp(prefix="rdtf-bookkeeping-", dir=cfg.temp_dir)
        settings: dict[str, Any] = {
            "memory_limit": f"{cfg.memory_mb}MiB",
            "temp_directory": f"{self.folder}/spill",
            "preserve_insertion_order": False,  # order only where a query says ORDER BY: less to hold while sorting
        }
        if cfg.threads is not None:
            settings["threads"] = cfg.threads
        self.db = duckdb.connect(f"{self.folder}/bookkeeping.duckdb", config=settings)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def sql(self, query: str, **params: Any) -> duckdb.DuckDBPyRelation:
        """A query's result, read lazily (`.to_arrow_reader(BATCH_ROWS)`, `.fetchall()`); `$name` for params."""
        return self.db.sql(query, params=params or None)

    def execute(self, statement: str, **params: Any) -> None:
        self.db.execute(statement, params or None)

    def create(self, table: str, query: str, **params: Any) -> None:
        """Table `table` (replaced if it exists) from a query over the other tables."""
        self.execute(f"CREATE OR REPLACE TABLE {table} AS {query}", **params)

    def load(self, table: str, data: pa.RecordBatchReader | pa.Table | pa.RecordBatch, append: bool = False) -> None:
        """Table `table` from Arrow data, streamed batch by batch (a reader is consumed); added to the table's rows
        when `append`."""
        self.db.register("_arrow_in", data)
        try:
            if append:
                self.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _arrow_in")
            else:
                self.create(table, "SELECT * FROM _arrow_in")
        finally:
            self.db.unregister("_arrow_in")

    def count(self, query: str, **params: Any) -> int:
        """How many rows `query` returns."""
        return self.sql(f"SELECT count(*) FROM ({query})", **params).fetchall()[0][0]

    def examples(self, query: str, limit: int = 3) -> list[Any]:
        """The first column of the first `limit` rows of `query`, sorted: for error messages."""
        return [row[0] for row in self.sql(f"SELECT * FROM ({query}) ORDER BY 1 LIMIT {limit}").fetchall()]

    def reader(self, query: str, **params: Any) -> pa.RecordBatchReader:
        """`query`'s rows as a stream of Arrow record batches of at most BATCH_ROWS rows."""
        return self.sql(query, **params).to_arrow_reader(BATCH_ROWS)
