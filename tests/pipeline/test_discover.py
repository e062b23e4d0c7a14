"""Input discovery: folders, globs and manifests (CSV, JSONL, Parquet) become distinct, sorted inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.discover import InputError, InputItem, discover


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name in ["b.gif", "a.webp", "sub/c.GIF", "sub/deeper/d.mp4", "notes.txt", "sub/e.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_folder_is_searched_recursively_for_sticker_extensions(folder: Path) -> None:
    found = [Path(i.source_uri).relative_to(folder).as_posix() for i in discover([str(folder)], InputConfig())]
    assert found == ["a.webp", "b.gif", "sub/c.GIF", "sub/deeper/d.mp4", "sub/e.png"]


def test_glob_and_extension_setting(folder: Path) -> None:
    found = discover([str(folder / "**" / "*.gif")], InputConfig())
    assert [Path(i.source_uri).name for i in found] == ["b.gif"]
    only_png = discover([str(folder)], InputConfig(extensions=("png",)))
    assert [Path(i.source_uri).name for i in only_png] == ["e.png"]


def test_csv_manifest_with_relative_paths_captions_and_ids(folder: Path) -> None:
    manifest = folder / "m.csv"
    manifest.write_text("file,text,id\nb.gif,waving hello,007\nmissing.gif,,8\nsub/c.GIF,ok,\n")
    found = discover([str(manifest)], InputConfig())
    assert found == [
        InputItem(str(folder / "b.gif"), "waving hello", "007"),
        InputItem(str(folder / "missing.gif"), None, "8"),  # missing files are inputs: they become rejects
        InputItem(str(folder / "sub" / "c.GIF"), "ok", None),
    ]


def test_jsonl_and_parquet_manifests_with_named_columns(folder: Path) -> None:
    jsonl = folder / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps({"where": str(folder / n), "desc": n}) for n in ["b.gif", "a.webp"]))
    parquet = folder / "m.parquet"
    pq.write_table(pa.table({"where": ["sub/e.png"], "desc": ["a still"]}), parquet)
    cfg = InputConfig(path_column="where", caption_column="desc")
    found = discover([str(jsonl), str(parquet)], cfg)
    assert [(Path(i.source_uri).name, i.caption) for i in found] == [
        ("a.webp", "a.webp"),
        ("b.gif", "b.gif"),
        ("e.png", "a still"),
    ]


def test_a_uri_named_twice_is_one_input_and_keeps_its_caption(folder: Path) -> None:
    manifest = folder / "m.csv"
    manifest.write_text("path,caption\nb.gif,a caption\n")
    found = discover([str(folder / "b.gif"), str(manifest), str(folder)], InputConfig())
    assert [i.source_uri for i in found].count(str(folder / "b.gif")) == 1
    assert next(i for i in found if i.source_uri.endswith("b.gif")).caption == "a caption"


def test_errors_name_what_is_wrong(folder: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover([str(folder / "nope")], InputConfig())
    bad = folder / "bad.csv"
    bad.write_text("name,caption\nb.gif,x\n")
    with pytest.raises(InputError, match="no path column"):
        discover([str(bad)], InputConfig())
    with pytest.raises(InputError, match="no caption column 'desc'"):
        discover([str(bad)], InputConfig(path_column="name", caption_column="desc"))
