"""The driver's bookkeeping tables, out of core: a DuckDB database in a temporary local folder, under a memory limit.

At 10 M inputs the lists a run keeps (its inputs, the ledger of what the output holds, the hash pass's results, the
duplicates) are gigabytes as Arrow tables on the driver (docs/benchmarks.md, "Bookkeeping at scale"). Here they are
DuckDB tables: past `bookkeeping.memory_mb` they, and the joins, group-bys and sorts over them, spill to files in
a local temporary folder, and Arrow comes in and goes out as streams of record batches, so the driver's memory stays
about flat in the number of inputs. The database is DuckDB's in-memory kind, which spills the same way: a database
file would compress its tables but costs a commit to disk per statement (measured: 10 ms per INSERT, 4x slower
table builds; the spill files are uncompressed, about 0.2 KB per input). The folder is deleted when the workspace
closes; a run killed before (SIGKILL) leaves it, and the next workspace in the same temp folder deletes it once the
process named in its name is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import duckdb
import pyarrow as pa

from rdtf.pipeline.config import BookkeepingConfig

PREFIX = "rdtf-bookkeeping-"  # then the pid of the run's process
# DuckDB's default of a thread per core runs out of memory under a small limit (3 M inputs: 32 MiB per thread failed
# now and then, 64 MiB held; bench/scale.py): without bookkeeping.threads, a thread per this many MiB of the limit.
MB_PER_THREAD = 128
BATCH_ROWS = 65_536  # rows per record batch in and out of DuckDB: a few MiB of URIs and hashes at a time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_orphans(parent: str) -> None:
    """Delete the workspaces of killed runs in `parent`: those whose process is gone from this machine (a SIGKILL
    skips `close`, and at 10 M inputs a workspace spills gigabytes)."""
    for entry in os.scandir(parent):
        pid = entry.name[len(PREFIX) :].split("-", 1)[0] if entry.name.startswith(PREFIX) else ""
        if pid.isdigit() and entry.is_dir() and not _alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


class Workspace:
    """A DuckDB database of named tables in a temporary folder; use as a context manager."""

    def __init__(self, cfg: BookkeepingConfig | None = None):
        cfg = cfg or BookkeepingConfig()
        parent = cfg.temp_dir or tempfile.gettempdir()
        _remove_orphans(parent)
        self.folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
        settings: dict[str, Any] = {
            "memory_limit": f"{cfg.memory_mb}MiB",
            "temp_directory": f"{self.folder}/spill",
            "preserve_insertion_order": False,  # order only where a query says ORDER BY: less to hold while sorting
        }
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        settings["threads"] = cfg.threads or max(1, min(cores, cfg.memory_mb // MB_PER_THREAD))
        self.db = duckdb.connect(":memory:", config=settings)

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

    def load(self, table: str, data: Any, append: bool = False, columns: str = "*") -> None:
        """Table `table` from Arrow data (a table, a batch, a reader, a pyarrow dataset: streamed, a reader is
        consumed), or those rows added to it when `append`; `columns` selects and names them (SQL)."""
        self.db.register("_arrow_in", data)
        try:
            if append:
                self.execute(f"INSERT INTO {table} BY NAME SELECT {columns} FROM _arrow_in")
            else:
                self.create(table, f"SELECT {columns} FROM _arrow_in")
        finally:
            self.db.unregister("_arrow_in")

    def appender(self, table: str, schema: pa.Schema) -> Appender:
        """An empty table `table` of `schema`, and what adds Arrow tables to it BATCH_ROWS rows at a time."""
        self.load(table, schema.empty_table())
        return Appender(self, table)

    def count(self, query: str, **params: Any) -> int:
        """How many rows `query` returns."""
        return self.sql(f"SELECT count(*) FROM ({query})", **params).fetchall()[0][0]

    def examples(self, query: str, limit: int = 3) -> list[Any]:
        """The first column of the first `limit` rows of `query`, sorted: for error messages."""
        return [row[0] for row in self.sql(f"SELECT * FROM ({query}) ORDER BY 1 LIMIT {limit}").fetchall()]

    def reader(self, query: str, **params: Any) -> pa.RecordBatchReader:
        """`query`'s rows as a stream of Arrow record batches of at most BATCH_ROWS rows."""
        return self.sql(query, **params).to_arrow_reader(BATCH_ROWS)


class Appender:
    """Adds Arrow tables to a workspace table in batches of about BATCH_ROWS rows: an INSERT costs about a
    millisecond, and a pass hands back a table per task (128 rows). Use as a context manager (flushes at the end)."""

    def __init__(self, ws: Workspace, table: str):
        self.ws, self.table = ws, table
        self.held: list[pa.Table] = []
        self.rows = 0

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def add(self, data: pa.Table) -> None:
        self.held.append(data)
        self.rows += data.num_rows
        if self.rows >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.held:
            self.ws.load(self.table, pa.concat_tables(self.held), append=True)
        self.held, self.rows = [], 0
