"""Find the inputs of a job: folders (recursive), globs and manifests (CSV, JSONL, Parquet), local or remote.

Each input is one distinct source URI, with the caption and id a manifest gave it. The result is sorted by URI,
so that every later decision (which duplicate is kept, how inputs are cut into tasks) is independent of listing order.
"""

from __future__ import annotations

import csv
import fnmatch
import glob as globlib
import io
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from schemas.layout import resolve

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
PATH_COLUMNS = ("uri", "path", "file", "source_uri")
CAPTION_COLUMNS = ("caption", "text")
ID_COLUMNS = ("id",)


@dataclass(frozen=True)
class InputItem:
    """One input: where it is, and what a manifest said about it."""

    source_uri: str
    caption: str | None = None
    source_id: str | None = None


class InputError(ValueError):
    """An INPUT argument names nothing usable (missing folder, manifest without a path column, ...)."""


def _join(base: str, name: str) -> str:
    return name if "://" in base else os.path.join(base, name)


def _as_uri(fs: pafs.FileSystem, path: str, template: str) -> str:
    """Turn a path inside `fs` back into a URI of the same scheme as `template`."""
    if "://" not in template:
        return os.path.abspath(path)
    return f"{template.split('://', 1)[0]}://{path}"


def _has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return name.rsplit(".", 1)[-1].lower() in extensions if "." in name else False


def _list_folder(uri: str, fs: pafs.FileSystem, path: str, cfg: InputConfig) -> list[InputItem]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return [
        InputItem(_as_uri(fs, i.path, uri))
        for i in infos
        if i.type == pafs.FileType.File and _has_extension(i.base_name, cfg.extensions)
    ]


def _expand_glob(pattern: str, cfg: InputConfig) -> list[InputItem]:
    if "://" not in pattern:
        paths = globlib.glob(os.path.expanduser(pattern), recursive=True)
        return [InputItem(os.path.abspath(p)) for p in paths if os.path.isfile(p) and _has_extension(p, cfg.extensions)]
    fs, path = resolve(pattern)
    root = path.split("*", 1)[0].rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return [
        InputItem(_as_uri(fs, i.path, pattern))
        for i in infos
        if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)
    ]


def _read_manifest(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as f:
        if path.endswith(".parquet"):
            return pq.read_table(f)
        if not path.endswith(".csv"):
            return pajson.read_json(f)
        data = f.read()
    # Every CSV column as text: ids like 007 and captions like "1" must not become numbers.
    header = next(csv.reader([data.split(b"\n", 1)[0].decode()]), [])
    text = pacsv.ConvertOptions(strings_can_be_null=True, column_types={name: pa.string() for name in header})
    return pacsv.read_csv(io.BytesIO(data), convert_options=text)


def _pick(columns: list[str], chosen: str | None, defaults: tuple[str, ...], what: str, manifest: str) -> str | None:
    if chosen is not None:
        if chosen not in columns:
            raise InputError(f"manifest {manifest} has no {what} column '{chosen}'; its columns are {columns}")
        return chosen
    return next((c for c in defaults if c in columns), None)


def _from_manifest(uri: str, fs: pafs.FileSystem, path: str, cfg: InputConfig) -> list[InputItem]:
    table = _read_manifest(fs, path)
    columns = table.column_names
    path_col = _pick(columns, cfg.path_column, PATH_COLUMNS, "path", uri)
    if path_col is None:
        raise InputError(
            f"manifest {uri} has no path column: name one of {list(PATH_COLUMNS)} or pass --path-column "
            f"(its columns are {columns})"
        )
    caption_col = _pick(columns, cfg.caption_column, CAPTION_COLUMNS, "caption", uri)
    id_col = _pick(columns, cfg.id_column, ID_COLUMNS, "id", uri)
    base = uri.rsplit("/", 1)[0] if "://" in uri else os.path.dirname(os.path.abspath(uri))
    items = []
    for row in table.select([c for c in (path_col, caption_col, id_col) if c]).to_pylist():
        name = row[path_col]
        if not name:
            continue
        name = str(name)
        target = name if "://" in name or os.path.isabs(name) else _join(base, name)
        caption = row.get(caption_col) if caption_col else None
        source_id = row.get(id_col) if id_col else None
        items.append(
            InputItem(
                target if "://" in target else os.path.abspath(target),
                str(caption) if caption not in (None, "") else None,
                str(source_id) if source_id is not None else None,
            )
        )
    return items


def discover(inputs: list[str], cfg: InputConfig) -> list[InputItem]:
    """Expand every INPUT argument into distinct inputs sorted by URI.

    A URI named twice is one input; its caption and id come from its first mention that has them.
    """
    found: dict[str, InputItem] = {}
    for arg in inputs:
        if any(ch in arg for ch in "*?["):
            items = _expand_glob(arg, cfg)
        else:
            fs, path = resolve(arg)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                items = _list_folder(arg, fs, path, cfg)
            elif info.type == pafs.FileType.File and path.lower().endswith(MANIFEST_SUFFIXES):
                items = _from_manifest(arg, fs, path, cfg)
            elif info.type == pafs.FileType.File:
                items = [InputItem(_as_uri(fs, path, arg))]
            else:
                raise InputError(f"input {arg} does not exist: name a folder, a glob, a manifest or a file")
        for item in items:
            known = found.get(item.source_uri)
            if known is None:
                found[item.source_uri] = item
            elif (known.caption is None and item.caption) or (known.source_id is None and item.source_id):
                found[item.source_uri] = InputItem(
                    item.source_uri, known.caption or item.caption, known.source_id or item.source_id
                )
    return [found[uri] for uri in sorted(found)]
