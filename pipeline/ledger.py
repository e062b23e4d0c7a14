"""What a dataset folder already accounts for: every input that is a row or a reject there, the ledger.

This is how a re-run resumes: it skips these inputs, so a killed job finishes without duplicating or dropping
anything, and a finished job's re-run adds nothing. The ledger goes straight into the run's workspace
(pipeline/workspace.py), so the driver never holds it. A local dataset is read by DuckDB's own Parquet reader, a
thousand files per statement, after a pass over those footers' key-value metadata for the schema versions: no Arrow
crosses Python, and at 1 M rows it took less CPU than a plain pyarrow scan of two columns (bench/scale.py). A remote
one (DuckDB's httpfs is not installed here) is read by threaded pyarrow dataset scans, a thousand files at a time,
each file's version checked from the footer that scan read (one dataset over every file would keep all the footers:
670 MiB for the 7,800 files of 1 M rows, measured). A run scans the output once, at its start; what it wrote itself
is scanned after it and added, for the accounting check.

Workspace tables: `inputs` (pipeline.discover.INPUT_SCHEMA) and `ledger` (LEDGER_SCHEMA).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rdtf.pipeline.workspace import Workspace
from rdtf.pipeline.write import write_table
from rdtf.schemas.dataset import REJECT_SCHEMA, SAMPLE_SCHEMA, VERSION_KEY
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout
from rdtf.schemas.reader import check_metadata

# One row per row or reject in the dataset; `reason` is null for rows.
LEDGER_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("sample_id", pa.string()),  # null for inputs that could not be read
        ("source_version", pa.string()),  # null when unknown (a manifest input, or a schema 1.0 file)
        ("reason", pa.string()),
    ]
)
READ_THREADS = 32  # files read at once when looking for an input's rows (drop_inputs)
# Files scanned as one pyarrow dataset (1024 x 128 rows: about 20 MB of ledger, and the footers of 1024 files).
FILES_PER_SCAN = 1024


def _threads(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, min(READ_THREADS, count)))


def _scan_files(layout: DatasetLayout, files: list[str]) -> pa.Table:
    """The ledger of `files` (LEDGER_SCHEMA) in one threaded pyarrow dataset scan, each file's schema version
    checked from the footer the scan read (columns a file lacks are null: `reason` in data files, `source_version`
    in schema 1.0 files). A file without rows holds no entry, and is not checked."""
    dataset = pads.dataset(files, schema=LEDGER_SCHEMA, format="parquet", filesystem=layout.fs)
    batches, checked = [], set()
    for tagged in dataset.scanner().scan_batches():
        path = tagged.fragment.path
        if path not in checked:
            check_metadata(tagged.fragment.physical_schema.metadata, path)
            checked.add(path)
        batches.append(tagged.record_batch)
    return pa.Table.from_batches(batches, LEDGER_SCHEMA)


def _parts(layout: DatasetLayout, data: list[str] | None, rejects: list[str] | None) -> Iterator[pa.Table]:
    """The ledger of the given files (by default all of the dataset's), FILES_PER_SCAN files at a time."""
    data = layout.parquet_files(DATA_DIR) if data is None else data
    rejects = layout.parquet_files(REJECTS_DIR) if rejects is None else rejects
    files = data + rejects
    for start in range(0, len(files), FILES_PER_SCAN):
        yield _scan_files(layout, files[start : start + FILES_PER_SCAN])


def scan(layout: DatasetLayout, data: list[str] | None = None, rejects: list[str] | None = None) -> pa.Table:
    """Every row and reject in the given files (LEDGER_SCHEMA), by default all of the dataset's, as one table: for
    tests and small datasets (a run loads them into its workspace instead, `load`)."""
    return pa.concat_tables([LEDGER_SCHEMA.empty_table(), *_parts(layout, data, rejects)])


def _duckdb_reads(layout: DatasetLayout) -> bool:
    """Whether DuckDB can read the dataset's files itself: local files (its httpfs is not installed here) whose
    paths have no glob characters (DuckDB expands each path it is given as a pattern)."""
    return isinstance(layout.fs, pafs.LocalFileSystem) and not any(ch in layout.root for ch in "*?[{")


def _load_local(ws: Workspace, data: list[str], rejects: list[str], table: str, ours: bool) -> None:
    """The ledger of local files added to `table` by DuckDB's own Parquet reader, in one statement: no Arrow
    crosses Python (at 1 M rows about 0.8x the CPU time of a plain pyarrow scan of two columns, where the pyarrow
    scan and the insert of its result cost 1.3x). The schema versions are read first, from the footers' key-value
    metadata (unless `ours`: files this run wrote); a schema 1.0 file has no source_version column, and is read
    without it."""
    files = data + rejects
    versions = (
        []
        if ours
        else ws.sql(
            "SELECT decode(value) AS version, count(*), min(file_name) FROM parquet_kv_metadata($files) "
            "WHERE decode(key) = $key GROUP BY version",
            files=files,
            key=VERSION_KEY.decode(),
        ).fetchall()
    )
    for version, _, example in versions:
        check_metadata({VERSION_KEY: version.encode()}, example)
    if not ours and sum(n for _, n, _ in versions) < len(files):  # files without a version: name one
        query = "SELECT file_name FROM parquet_kv_metadata($files) WHERE decode(key) = $key"
        named = {row[0] for row in ws.sql(query, files=files, key=VERSION_KEY.decode()).fetchall()}
        check_metadata(None, next(f for f in files if f not in named))
    old: set[str] = set()
    if any(version == "1.0" for version, _, _ in versions):
        query = "SELECT file_name FROM parquet_kv_metadata($files) WHERE decode(key) = $key AND decode(value) = '1.0'"
        old = {row[0] for row in ws.sql(query, files=files, key=VERSION_KEY.decode()).fetchall()}
    parts, params = [], {}
    for kind, paths in (("data", data), ("rejects", rejects)):
        for recent in (True, False):
            chosen = [p for p in paths if (p not in old) == recent]
            if chosen:
                version = "source_version" if recent else "NULL"
                reason = "reason" if kind == "rejects" else "NULL"
                name = f"{kind}_{int(recent)}"
                params[name] = chosen
                parts.append(f"SELECT source_uri, sample_id, {version} AS source_version, {reason} AS reason "
                             f"FROM read_parquet(${name})")  # fmt: skip
    if parts:
        ws.execute(f"INSERT INTO {table} BY NAME " + " UNION ALL ".join(parts), **params)


def load(ws: Workspace, layout: DatasetLayout, data: list[str] | None = None, rejects: list[str] | None = None,
         table: str = "ledger", append: bool = False, ours: bool = False) -> None:  # fmt: skip
    """Workspace table `table` (LEDGER_SCHEMA) from the given files, by default all of the dataset's, or their
    entries added to it when `append`; `ours`: the files were all written by this run (their schema version is this
    rdtf's). Local files are read by DuckDB itself, remote ones by pyarrow."""
    if not append:
        ws.load(table, LEDGER_SCHEMA.empty_table())
    data = layout.parquet_files(DATA_DIR) if data is None else data
    rejects = layout.parquet_files(REJECTS_DIR) if rejects is None else rejects
    if not data and not rejects:
        return
    if _duckdb_reads(layout):
        # FILES_PER_SCAN files per statement, data files first: DuckDB keeps some state per file it reads in one
        # statement outside its memory limit (about 8 KiB, bench/scale.py)
        n = len(data)
        for start in range(0, n + len(rejects), FILES_PER_SCAN):
            end = start + FILES_PER_SCAN
            _load_local(ws, data[start:end], rejects[max(0, start - n) : max(0, end - n)], table, ours)
        return
    for part in _parts(layout, data, rejects):
        ws.load(table, part, append=True)


def changed(ws: Workspace) -> pa.Array:
    """URIs of `inputs` whose listed version (size and mtime) differs from the one recorded when they were done.
    Held on the driver: as many as changed, usually none."""
    query = """
        SELECT DISTINCT i.source_uri FROM inputs i JOIN ledger l USING (source_uri)
        WHERE i.source_version IS NOT NULL AND l.source_version IS NOT NULL AND i.source_version <> l.source_version
    """  # a manifest says nothing of the content: its inputs' versions are null
    return ws.sql(query).to_arrow_table()["source_uri"].combine_chunks().cast(pa.string())


def forget(ws: Workspace, uris: pa.Array) -> None:
    """Remove the ledger's entries of `uris` (inputs whose rows `drop_inputs` removed)."""
    ws.load("_forgotten", pa.table({"source_uri": uris}))
    ws.execute("DELETE FROM ledger WHERE source_uri IN (SELECT source_uri FROM _forgotten)")
    ws.execute("DROP TABLE _forgotten")


TODO = "SELECT i.* FROM inputs i ANTI JOIN ledger l USING (source_uri)"  # what the output does not account for


def check_accounting(ws: Workspace, not_done: str) -> None:
    """Every input of `inputs` is in the ledger exactly once, unless the query `not_done` (of source_uri) lists it,
    and no two rows of the dataset share a sample_id. Raises with examples: either would be a bug in rdtf.

    One group-by over the three lists together: it spills past `bookkeeping.memory_mb`, where a join of the ledger
    with the inputs ran out of memory (3 M inputs under 128 MiB, bench/scale.py)."""
    ws.create(
        "_wrong",
        f"""SELECT source_uri, sum(entry) AS entries, bool_or(pending) AS pending FROM (
                SELECT source_uri, true AS named, 0 AS entry, false AS pending FROM inputs
                UNION ALL SELECT source_uri, false, 1, false FROM ledger
                UNION ALL SELECT source_uri, false, 0, true FROM ({not_done})
            ) GROUP BY source_uri
            HAVING bool_or(named) AND (sum(entry) > 1 OR (sum(entry) = 0 AND NOT bool_or(pending)))""",
    )  # an input's entries: 1, or 0 when it is still to do
    twice = "SELECT source_uri FROM _wrong WHERE entries > 1"
    missing = "SELECT source_uri FROM _wrong WHERE entries = 0"
    shared = "SELECT sample_id FROM ledger WHERE reason IS NULL GROUP BY sample_id HAVING count(*) > 1"
    found = {name: ws.count(query) for name, query in (("missing", missing), ("twice", twice), ("shared", shared))}
    if any(found.values()):
        raise RuntimeError(
            f"accounting check failed: {found['missing']} inputs missing (e.g. {ws.examples(missing)}), "
            f"{found['twice']} present more than once (e.g. {ws.examples(twice)}), {found['shared']} sample ids on "
            f"more than one row (e.g. {ws.examples(shared)}). This is a bug in rdtf: please report it."
        )
    ws.execute("DROP TABLE _wrong")


def counts(ws: Workspace) -> tuple[int, dict[str, int]]:
    """The ledger's rows, and its rejects by reason (sorted), counted in DuckDB."""
    found = ws.sql("SELECT reason, count(*) FROM ledger GROUP BY reason").fetchall()
    by_reason = dict(sorted((reason, n) for reason, n in found if reason is not None))
    return next((n for reason, n in found if reason is None), 0), by_reason


def drop_inputs(layout: DatasetLayout, uris: pa.Array, kinds: tuple[str, ...] = (DATA_DIR, REJECTS_DIR)) -> int:
    """Remove the rows and rejects of `uris` (only the rows with `kinds=(DATA_DIR,)`) from the files that hold them:
    an input that changed is redone, a near-duplicate leaves the rows. The files are read 32 at a time; each one that
    holds such an entry is rewritten through a temporary file, or deleted when nothing is left. Returns how many
    entries went. A job killed in between leaves some of them: the next run finds them again."""
    files = [(p, kind) for kind in kinds for p in layout.parquet_files(kind)]

    def holds(item: tuple[str, str]) -> bool:
        column = pq.read_table(item[0], columns=["source_uri"], filesystem=layout.fs)["source_uri"]
        return pc.any(pc.is_in(column, value_set=uris)).as_py() or False

    with _threads(len(files)) as pool:
        hit = [item for item, found in zip(files, pool.map(holds, files), strict=True) if found]
    removed = 0
    for path, kind in hit:
        schema = SAMPLE_SCHEMA if kind == DATA_DIR else REJECT_SCHEMA  # an older file's missing columns: null
        table = pads.dataset(path, schema=schema, format="parquet", filesystem=layout.fs).to_table()
        kept = table.filter(pc.invert(pc.is_in(table["source_uri"], value_set=uris)))
        removed += table.num_rows - kept.num_rows
        if kept.num_rows:
            write_table(layout, kind, path.rsplit("/", 1)[-1], kept.replace_schema_metadata(schema.metadata))
        else:
            layout.fs.delete_file(path)
    return removed


def remove_temp_files(layout: DatasetLayout) -> int:
    """Delete half-written files a killed job left; return how many there were."""
    leftovers = layout.temp_files()
    for path in leftovers:
        layout.fs.delete_file(path)
    return len(leftovers)
