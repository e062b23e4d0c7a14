"""Find the inputs of a job: folders (recursive), globs and manifests (CSV, JSONL, Parquet), local or remote.

The result is the workspace table `inputs` (INPUT_SCHEMA), one row per distinct source URI with the caption and id a
manifest gave it; every later decision (which duplicate is kept, how inputs are cut into tasks) sorts by URI, so it
is independent of listing order. The listing streams into the workspace (pipeline/workspace.py) a folder or a
manifest batch at a time, columnar from the manifest on: at 10 M inputs a Python object per input, or the whole
list in Arrow, would cost the driver gigabytes. Folder and glob listings also record `source_version` (size and
modification time), which is how a re-run notices an input replaced in place.
"""

from __future__ import annotations

import csv
import fnmatch
import glob as globlib
import itertools
import os
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from rdtf.pipeline.config import InputConfig
from rdtf.pipeline.read_bytes import file_version
from rdtf.pipeline.workspace import Workspace
from rdtf.schemas.layout import SCHEMES, UnsafeURIError, check_uri, resolve

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
MANIFEST_BATCH = 65_536  # manifest rows read at a time
GLOB_CHUNK = 4096  # paths of a local glob listed at a time
PATH_COLUMNS = ("uri", "path", "file", "source_uri")
CAPTION_COLUMNS = ("caption", "text")
ID_COLUMNS = ("id",)
INPUT_SCHEMA = pa.schema(
    [("source_uri", pa.string()), ("caption", pa.string()), ("source_id", pa.string()), ("source_version", pa.string())]
)


class InputError(ValueError):
    """An INPUT argument names nothing usable (missing folder, manifest without a path column, unsafe URIs, ...)."""


def _as_uri(path: str, template: str) -> str:
    """Turn a path inside the filesystem of `template` back into a URI of the same scheme."""
    if "://" not in template:
        return os.path.abspath(path)
    return f"{template.split('://', 1)[0]}://{path}"


def _has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return name.rsplit(".", 1)[-1].lower() in extensions if "." in name else False


def _listed(infos: list[pafs.FileInfo], template: str, keep) -> pa.Table:
    """The files among `infos` that `keep(info)` accepts, as INPUT_SCHEMA rows."""
    files = [i for i in infos if i.type == pafs.FileType.File and keep(i)]
    return pa.table(
        {
            "source_uri": [_as_uri(i.path, template) for i in files],
            "caption": pa.nulls(len(files), pa.string()),
            "source_id": pa.nulls(len(files), pa.string()),
            "source_version": [file_version(i) for i in files],
        },
        schema=INPUT_SCHEMA,
    )


def _list_folder(uri: str, fs: pafs.FileSystem, path: str, keep: Callable[[pafs.FileInfo], bool]) -> Iterator[pa.Table]:
    """One table per folder of the tree: the driver holds one folder's listing at a time, not the whole tree's."""
    folders = [path]
    while folders:
        infos = fs.get_file_info(pafs.FileSelector(folders.pop()))
        folders += [i.path for i in infos if i.type == pafs.FileType.Directory]
        yield _listed(infos, uri, keep)


def _expand_glob(pattern: str, cfg: InputConfig) -> Iterator[pa.Table]:
    """A glob's files, GLOB_CHUNK paths (local) or one folder (remote) at a time, like a folder's listing."""
    if "://" not in pattern:
        matches = globlib.iglob(os.path.expanduser(pattern), recursive=True)
        wanted = (os.path.abspath(p) for p in matches if _has_extension(p, cfg.extensions))
        while chunk := list(itertools.islice(wanted, GLOB_CHUNK)):
            yield _listed(pafs.LocalFileSystem().get_file_info(chunk), pattern, lambda i: True)
        return
    fs, path = resolve(pattern)
    root = path.split("*", 1)[0].rsplit("/", 1)[0]
    yield from _list_folder(pattern, fs, root, lambda i: fnmatch.fnmatch(i.path, path))


def _read_manifest(fs: pafs.FileSystem, path: str) -> Iterator[pa.Table]:
    """The manifest in tables of about MANIFEST_BATCH rows (one table for JSON, which pyarrow reads only whole when
    a column's type may change along the file)."""
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(MANIFEST_BATCH):
                yield pa.Table.from_batches([batch])
    elif path.endswith(".csv"):
        with fs.open_input_stream(path) as f:
            first = f.read(1 << 20).split(b"\n", 1)[0]
        # Every CSV column as text: ids like 007 and captions like "1" must not become numbers.
        header = next(csv.reader([first.decode()]), [])
        text = pacsv.ConvertOptions(strings_can_be_null=True, column_types={name: pa.string() for name in header})
        with fs.open_input_stream(path) as f:
            for batch in pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 24), convert_options=text):
                yield pa.Table.from_batches([batch])
    else:
        with fs.open_input_file(path) as f:
            yield pajson.read_json(f)


def _pick(columns: list[str], chosen: str | None, defaults: tuple[str, ...], what: str, manifest: str) -> str | None:
    if chosen is not None:
        if chosen not in columns:
            raise InputError(f"manifest {manifest} has no {what} column '{chosen}'; its columns are {columns}")
        return chosen
    return next((c for c in defaults if c in columns), None)


def _text(column: pa.ChunkedArray | None, rows: int) -> pa.ChunkedArray | pa.Array:
    """A manifest column as text, empty strings as null; all null when the manifest has no such column."""
    if column is None:
        return pa.nulls(rows, pa.string())
    text = column.cast(pa.string())
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _absolute(names: pa.ChunkedArray, base: str) -> pa.ChunkedArray:
    """Manifest paths relative to the manifest's folder made absolute (URIs and absolute paths as they are)."""
    as_is = pc.or_(pc.match_substring(names, "://"), pc.starts_with(names, "/"))
    joined = pc.if_else(as_is, names, pc.binary_join_element_wise(base, names, "/"))
    local = pc.invert(pc.match_substring(joined, "://"))
    odd = pc.and_(local, pc.or_(pc.match_substring(joined, "/."), pc.match_substring(joined, "//")))
    if not pc.any(odd).as_py():  # the usual case: nothing to normalise
        return joined
    values = joined.to_pylist()  # "a/./b", "a/../b", "a//b": rare, so Python's rules on these alone
    for i in pc.indices_nonzero(odd).to_pylist():
        values[i] = os.path.normpath(values[i])
    return pa.chunked_array([pa.array(values, pa.string())])


def _from_manifest(uri: str, fs: pafs.FileSystem, path: str, cfg: InputConfig) -> Iterator[pa.Table]:
    base = uri.rsplit("/", 1)[0] if "://" in uri else os.path.dirname(os.path.abspath(uri))
    for table in _read_manifest(fs, path):
        columns = table.column_names
        path_col = _pick(columns, cfg.path_column, PATH_COLUMNS, "path", uri)
        if path_col is None:
            raise InputError(
                f"manifest {uri} has no path column: name one of {list(PATH_COLUMNS)} or pass --path-column "
                f"(its columns are {columns})"
            )
        caption_col = _pick(columns, cfg.caption_column, CAPTION_COLUMNS, "caption", uri)
        id_col = _pick(columns, cfg.id_column, ID_COLUMNS, "id", uri)
        names = _text(table[path_col], table.num_rows)
        present = pc.is_valid(names)
        table, names = table.filter(present), names.filter(present)
        yield pa.table(
            {
                "source_uri": _absolute(names, base),
                "caption": _text(table[caption_col] if caption_col else None, table.num_rows),
                "source_id": _text(table[id_col] if id_col else None, table.num_rows),
                "source_version": pa.nulls(table.num_rows, pa.string()),  # a manifest says nothing of the content
            },
            schema=INPUT_SCHEMA,
        )


def _unsafe(uris: pa.ChunkedArray | pa.Array) -> tuple[int, str | None]:
    """How many of `uris` break the rule of schemas.layout.check_uri, and the first of them; checked columnar."""
    remote = pc.match_substring(uris, "://")
    if not pc.any(remote).as_py():
        return 0, None
    scheme = pc.utf8_lower(pc.struct_field(pc.extract_regex(uris, r"^(?P<s>[^:/]*)://"), [0]))
    known = pc.is_in(scheme, value_set=pa.array(SCHEMES))
    tainted = pc.or_(pc.match_substring(uris, "?"), pc.match_substring(uris, "#"))
    bad = pc.and_(remote, pc.or_(pc.invert(known), tainted))
    count = pc.sum(bad).as_py() or 0
    return count, uris.filter(bad)[0].as_py() if count else None


def _listing(inputs: list[str], cfg: InputConfig) -> Iterator[pa.Table]:
    """Every INPUT argument expanded, in order, as INPUT_SCHEMA tables (a URI may occur more than once)."""
    for arg in inputs:
        try:
            check_uri(arg)
        except UnsafeURIError as error:
            raise InputError(str(error)) from None
        if any(ch in arg for ch in "*?["):
            yield from _expand_glob(arg, cfg)
            continue
        fs, path = resolve(arg)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            yield from _list_folder(arg, fs, path, lambda i: _has_extension(i.base_name, cfg.extensions))
        elif info.type == pafs.FileType.File and path.lower().endswith(MANIFEST_SUFFIXES):
            yield from _from_manifest(arg, fs, path, cfg)
        elif info.type == pafs.FileType.File:
            yield _listed([info], arg, lambda i: True)
        else:
            raise InputError(f"input {arg} does not exist: name a folder, a glob, a manifest or a file")


def discover(inputs: list[str], cfg: InputConfig, ws: Workspace) -> int:
    """Expand every INPUT argument into the workspace table `inputs` (INPUT_SCHEMA), one row per distinct URI;
    return how many. Every URI is checked before any input is read: one error names how many are refused.

    A URI named twice is one input; its caption, id and version come from its first mention that has them.
    """
    listed = pa.schema([*INPUT_SCHEMA, ("mention", pa.int64())])  # the order of mentions, for "first"
    refused, example, mentions = 0, None, 0
    with ws.appender("listed", listed) as appender:
        for part in _listing(inputs, cfg):
            count, first = _unsafe(part["source_uri"])
            refused, example = refused + count, example or first
            appender.add(part.append_column("mention", pa.arange(mentions, mentions + part.num_rows)))
            mentions += part.num_rows
    if refused:
        try:
            check_uri(example or "")
        except UnsafeURIError as error:
            raise InputError(f"{refused} input(s) refused, e.g. {error}. Remove or fix them, then run again.") from None
    distinct, total = ws.sql("SELECT count(DISTINCT source_uri), count(*) FROM listed").fetchall()[0]
    ws.execute("DROP TABLE IF EXISTS inputs")
    if distinct == total:  # each URI named once, as a manifest usually does: the listing is the inputs
        ws.execute("ALTER TABLE listed DROP COLUMN mention")
        ws.execute("ALTER TABLE listed RENAME TO inputs")
        return total
    firsts = ", ".join(f"arg_min({c}, mention) FILTER (WHERE {c} IS NOT NULL) AS {c}" for c in INPUT_SCHEMA.names[1:])
    ws.create("inputs", f"SELECT source_uri, {firsts} FROM listed GROUP BY source_uri")
    ws.execute("DROP TABLE listed")
    return distinct
