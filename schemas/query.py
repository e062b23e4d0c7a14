"""SQL over a curated dataset through DuckDB: the rows as view `stickers`, the rejects as view `rejects`.

>>> from rdtf.schemas.query import query
>>> query("out/stickers", "SELECT caption, static_difficulty FROM stickers ORDER BY static_difficulty DESC LIMIT 5")

DuckDB scans the dataset's Parquet files through pyarrow's dataset (the same files and filesystem as
`open_dataset`, so local folders and object stores alike), pushing column selection and filters down. Queries are
read-only: one SELECT (or EXPLAIN) statement, and DuckDB's own file access is switched off, so a query reads the
dataset and nothing else on the machine.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from rdtf.schemas.dataset import REJECT_SCHEMA, SAMPLE_SCHEMA
from rdtf.schemas.reader import DatasetReader, open_dataset

READ_ONLY = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)
# DuckDB has no float16: the view reads the embeddings as float32 (pyarrow casts while scanning; exact, and cast back
# exactly when rows are written as a dataset again).
STICKERS_SCHEMA = SAMPLE_SCHEMA.set(
    SAMPLE_SCHEMA.get_field_index("clip_embedding"), pa.field("clip_embedding", pa.list_(pa.float32()))
)
BATCH_ROWS = 8192  # rows per Arrow batch handed back while streaming a result


class QueryError(ValueError):
    """The SQL is not a single read-only statement, or DuckDB refused it (syntax, unknown column, ...)."""


def connect(dataset: str | DatasetReader) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views `stickers` and `rejects` over `dataset`, file access locked off."""
    reader = open_dataset(dataset) if isinstance(dataset, str) else dataset
    fs = reader.layout.fs
    con = duckdb.connect()
    con.register("stickers", pads.dataset(list(reader.sample_files), STICKERS_SCHEMA, "parquet", fs))
    con.register("rejects", pads.dataset(list(reader.reject_files), REJECT_SCHEMA, "parquet", fs))
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT or EXPLAIN statement (no writes, settings, attaches or several statements)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(_first_line(error)) from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement, got {len(statements)}")
    if statements[0].type not in READ_ONLY:
        kind = statements[0].type.name
        raise QueryError(f"only SELECT queries are allowed (this is a {kind} statement); the dataset is read-only")


def relation(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation:
    """The lazy result of `sql` on `con` (checked read-only and bound, so unknown columns fail here)."""
    check_read_only(con, sql)
    try:
        return con.sql(sql)
    except duckdb.Error as error:
        raise QueryError(_first_line(error)) from None


def stream(con: duckdb.DuckDBPyConnection, sql: str) -> pa.RecordBatchReader:
    """The result of `sql` as Arrow batches, without holding it all in memory."""
    try:
        return relation(con, sql).to_arrow_reader(BATCH_ROWS)
    except duckdb.Error as error:
        raise QueryError(_first_line(error)) from None


def query(dataset: str | DatasetReader, sql: str) -> pa.Table:
    """The whole result of `sql` on `dataset` as one Arrow table (for results that fit in memory)."""
    return stream(connect(dataset), sql).read_all()


def _first_line(error: Exception) -> str:
    """DuckDB's message without its query excerpt (which repeats what the user typed)."""
    text = str(error).strip()
    head, _, rest = text.partition("\n")
    hint = next((line.strip() for line in rest.splitlines() if line.startswith("Candidate")), "")
    return f"{head} {hint}".strip()
