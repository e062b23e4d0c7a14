"""`rdtf query DATASET "SQL"`: SQL over a curated dataset (views `stickers` and `rejects`), printed, exported, or
kept as a new dataset with `--to`. See docs/query.md."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rdtf.pipeline.card import make_card
from rdtf.schemas.dataset import SAMPLE_SCHEMA
from rdtf.schemas.layout import DATA_DIR, TEMP_PREFIX, DatasetLayout
from rdtf.schemas.query import QueryError, connect, relation, stream

FORMATS = ("table", "csv", "json", "parquet")
# --output's extension -> its format when --format is not given (DuckDB's JSON is JSON Lines: one object a line)
EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SHARD_ROWS = 10_000  # rows per Parquet file of a --to dataset
SHARD_BYTES = 256 * 2**20  # ... or fewer, when their rows hold more than this in memory (frames are large)


def add_query_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "query",
        help="SQL over a curated dataset (DuckDB): print, export, or keep the rows as a new dataset",
        description=(
            "Run one read-only SQL query with DuckDB over DATASET: its rows are the view `stickers`, its rejects "
            "the view `rejects` (columns: docs/query.md, or `DESCRIBE stickers`). The result is printed as a table "
            "(frames shown as a count; embeddings as their width unless the query names the column), or written "
            "with --format/--output, or kept as a new curated dataset with --to (the query must then keep every "
            "column, e.g. SELECT * ... WHERE ...)."
        ),
        epilog="The views, their columns, exports and --to: docs/query.md.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="a dataset folder or URI written by rdtf preprocess")
    parser.add_argument("sql", metavar="SQL", help='for example "SELECT count(*) FROM stickers WHERE num_frames >= 8"')
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="table (printed, the default), csv, json (JSON Lines: one object a line) or parquet (needs --output); "
        "csv and json without --output are printed",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write the result to this new local file; without --format, its extension says how "
        "(.csv, .json or .jsonl, .parquet)",
    )
    parser.add_argument("--to", metavar="NEW_DATASET", help="keep the selected rows as a new dataset (empty folder)")
    parser.add_argument(
        "--max-rows", type=int, default=40, help="rows printed by --format table (40; --format csv prints them all)"
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.to and (args.output or args.format):
        args.parser.error("--to writes a dataset: give it without --format and --output")
    if args.max_rows < 1:
        args.parser.error("--max-rows must be at least 1 (--format csv prints every row)")
    fmt = args.format or (output_format(args.parser, args.output) if args.output else "table")
    if fmt == "table" and args.output:
        args.parser.error("--format table is printed: give csv, json or parquet with --output")
    if fmt == "parquet" and not args.output:
        args.parser.error("--format parquet is written to a file: give --output FILE")
    if args.output and os.path.exists(args.output):
        raise QueryError(f"{args.output} exists: give a new file for --output")
    con = connect(args.dataset)
    if args.to:
        rows, files = write_subset(con, args.sql, args.dataset, args.to)
        print(f"wrote {rows} rows in {files} files to {args.to} (a curated dataset; its card records the query)")
    elif args.output:
        rows = export(con, args.sql, fmt, args.output)
        print(f"wrote {rows} rows to {args.output} ({fmt})")
    elif fmt != "table":
        print_export(con, args.sql, fmt)
    else:
        show(con, args.sql, args.max_rows, mentioned=args.sql.lower())
    return 0


def output_format(parser: argparse.ArgumentParser, path: str) -> str:
    """The format --output's extension names (EXTENSIONS); a usage error for any other."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        parser.error(f"--output {path}: give --format csv|json|parquet, or a name ending in {', '.join(EXTENSIONS)}")
    return EXTENSIONS[extension]


def print_export(con: duckdb.DuckDBPyConnection, sql: str, fmt: str) -> None:
    """Print the result as --output would write it: exported to a temporary file, then copied to stdout (COPY
    writes files only), so a pipe gets exactly the file's text."""
    with tempfile.TemporaryDirectory(prefix="rdtf-query-") as folder:
        path = os.path.join(folder, f"result.{fmt}")
        export(con, sql, fmt, path)
        with open(path, encoding="utf-8") as f:
            shutil.copyfileobj(f, sys.stdout)


def show(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int, mentioned: str) -> None:
    """Print the result as DuckDB's aligned table, with frames (binary) and vectors summarised."""
    rel = relation(con, sql)
    columns = []
    for name, kind in zip(rel.columns, rel.types, strict=True):
        quoted = '"' + name.replace('"', '""') + '"'
        if str(kind) == "BLOB[]":
            columns.append(f"'[' || len({quoted}) || ' frames]' AS {quoted}")
        elif str(kind) == "BLOB":
            columns.append(f"'[' || octet_length({quoted}) || ' bytes]' AS {quoted}")
        elif str(kind) in ("FLOAT[]", "DOUBLE[]") and name.lower() not in mentioned:
            columns.append(f"'[' || len({quoted}) || ' numbers]' AS {quoted}")
        else:
            columns.append(quoted)
    try:
        rel.project(", ".join(columns)).show(max_rows=max_rows, max_width=shutil.get_terminal_size((160, 24)).columns)
    except duckdb.Error as error:
        raise QueryError(str(error).strip().splitlines()[0]) from None


def export(con: duckdb.DuckDBPyConnection, sql: str, fmt: str, path: str) -> int:
    """Write the result to a local file with DuckDB's COPY, streamed; the number of rows written."""
    result = stream(con, sql)
    writer = duckdb.connect()  # the query's connection has file access off; this one runs only this COPY
    writer.register("result", result)
    quoted = "'" + os.path.abspath(path).replace("'", "''") + "'"
    try:
        writer.execute(f"COPY result TO {quoted} (FORMAT {fmt})")
    except duckdb.Error as error:
        if os.path.exists(path):
            os.remove(path)
        raise QueryError(str(error).strip().splitlines()[0]) from None
    return int(writer.fetchone()[0])  # COPY's own result: the rows it wrote


def write_subset(con: duckdb.DuckDBPyConnection, sql: str, parent: str, target: str) -> tuple[int, int]:
    """Write the result of `sql` as a curated dataset at `target` (Parquet shards in SAMPLE_SCHEMA and a card that
    names the parent and the query); (rows, files). Nothing is left at `target` when it fails."""
    layout = DatasetLayout.at(target)
    _check_empty(layout, target)
    result = stream(con, sql)
    missing = [name for name in SAMPLE_SCHEMA.names if name not in result.schema.names]
    extra = [name for name in result.schema.names if name not in SAMPLE_SCHEMA.names]
    if missing or extra:
        raise QueryError(
            "--to keeps rows of the dataset, so the query must return exactly its columns (SELECT * ... WHERE ...)"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not dataset columns: {', '.join(extra)}" if extra else "")
        )
    created = layout.fs.get_file_info(layout.root).type == pafs.FileType.NotFound
    try:
        rows, files = _write_shards(layout, result)
        parent_card = DatasetLayout.at(parent).read_card() or {}
        counts = {"rows": rows, "rejects": 0, "inputs": rows, "rejects_by_reason": {}, "files": {"data": files}}
        card = make_card(parent_card.get("config", {}), "complete", counts, None, parent_card.get("clip"))
        card["derived_from"] = {"dataset": parent, "query": sql, "parent_counts": parent_card.get("counts")}
        layout.write_card(card)
    except (duckdb.Error, pa.ArrowException, OSError, ValueError) as error:
        # Raised while rows stream: the query failed on a row (DuckDB's error, passed on by pyarrow's reader as
        # OSError), a value does not fit the dataset's schema (a NULL sample_id), or the target cannot be written.
        _remove(layout, created)
        raise QueryError(f"--to {target}: {str(error).strip().splitlines()[0]}; nothing was kept") from None
    except BaseException:
        _remove(layout, created)
        raise
    return rows, files


def _write_shards(layout: DatasetLayout, result: pa.RecordBatchReader) -> tuple[int, int]:
    """Stream the batches into part-NNNNN.parquet files (written to a temporary name, then renamed)."""
    folder = layout.dir(DATA_DIR)
    layout.fs.create_dir(folder, recursive=True)
    rows = files = 0
    writer, shard_rows, shard_bytes, temp = None, 0, 0, ""

    def close() -> None:
        writer.close()
        layout.fs.move(temp, f"{folder}/part-{files - 1:05d}.parquet")

    for batch in result:
        table = pa.Table.from_batches([batch]).select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
        if writer is None:
            temp = f"{folder}/{TEMP_PREFIX}part-{files:05d}.parquet"
            writer = pq.ParquetWriter(temp, SAMPLE_SCHEMA, filesystem=layout.fs, compression="zstd")
            files, shard_rows, shard_bytes = files + 1, 0, 0
        writer.write_table(table)
        rows, shard_rows, shard_bytes = rows + table.num_rows, shard_rows + table.num_rows, shard_bytes + table.nbytes
        if shard_rows >= SHARD_ROWS or shard_bytes >= SHARD_BYTES:
            close()
            writer = None
    if writer is not None:
        close()
    return rows, files


def _check_empty(layout: DatasetLayout, target: str) -> None:
    info = layout.fs.get_file_info(layout.root)
    if info.type == pafs.FileType.File:
        raise QueryError(f"--to {target} is a file: give a new or empty folder")
    if info.type == pafs.FileType.Directory and layout.fs.get_file_info(pafs.FileSelector(layout.root)):
        raise QueryError(f"--to {target} is not empty: give a new or empty folder")


def _remove(layout: DatasetLayout, created: bool) -> None:
    """Undo a failed --to: delete what it wrote (the folder too when it made it)."""
    if created:
        layout.fs.delete_dir(layout.root)
    else:
        layout.fs.delete_dir_contents(layout.root)
