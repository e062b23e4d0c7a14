"""Input discovery: folders, globs and manifests (CSV, JSONL, Parquet) become distinct inputs in the workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rdtf.pipeline import discover as discover_module
from rdtf.pipeline.config import InputConfig
from rdtf.pipeline.discover import INPUT_SCHEMA, InputError
from rdtf.pipeline.discover import discover as discover_into
from rdtf.pipeline.workspace import Workspace


def discover(inputs: list[str], cfg: InputConfig) -> pa.Table:
    """The workspace table `inputs` that discovery makes, sorted by URI."""
    with Workspace() as ws:
        count = discover_into(inputs, cfg, ws)
        table = ws.sql("SELECT * FROM inputs ORDER BY source_uri").to_arrow_table()
    assert table.num_rows == count
    return table.cast(INPUT_SCHEMA)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name in ["b.gif", "a.webp", "sub/c.GIF", "sub/deeper/d.mp4", "notes.txt", "sub/e.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_folder_is_searched_recursively_for_sticker_extensions(folder: Path) -> None:
    uris = discover([str(folder)], InputConfig())["source_uri"].to_pylist()
    found = [Path(uri).relative_to(folder).as_posix() for uri in uris]
    assert found == ["a.webp", "b.gif", "sub/c.GIF", "sub/deeper/d.mp4", "sub/e.png"]


def test_glob_and_extension_setting(folder: Path) -> None:
    found = discover([str(folder / "**" / "*.gif")], InputConfig())
    assert [Path(uri).name for uri in found["source_uri"].to_pylist()] == ["b.gif"]
    only_png = discover([str(folder)], InputConfig(extensions=("png",)))
    assert [Path(uri).name for uri in only_png["source_uri"].to_pylist()] == ["e.png"]


def test_globs_stream_in_chunks_and_by_folder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local glob is listed GLOB_CHUNK paths at a time, a remote one (here file://) a folder at a time: the same
    files as the folder's listing, with their versions, never the whole listing at once."""
    monkeypatch.setattr(discover_module, "GLOB_CHUNK", 2)
    whole = discover([str(folder)], InputConfig())
    local = discover([str(folder / "**" / "*")], InputConfig())
    assert local == whole and local["source_version"].null_count == 0
    remote = discover([f"file://{folder}/sub/*"], InputConfig())
    names = [uri.removeprefix(f"file://{folder}/") for uri in remote["source_uri"].to_pylist()]
    assert names == ["sub/c.GIF", "sub/deeper/d.mp4", "sub/e.png"] and remote["source_version"].null_count == 0


def test_csv_manifest_with_relative_paths_captions_and_ids(folder: Path) -> None:
    manifest = folder / "m.csv"
    manifest.write_text("file,text,id\nb.gif,waving hello,007\nmissing.gif,,8\nsub/c.GIF,ok,\n")
    found = discover([str(manifest)], InputConfig()).select(["source_uri", "caption", "source_id"])
    assert found.to_pylist() == [
        {"source_uri": str(folder / "b.gif"), "caption": "waving hello", "source_id": "007"},
        # missing files are inputs: they become rejects
        {"source_uri": str(folder / "missing.gif"), "caption": None, "source_id": "8"},
        {"source_uri": str(folder / "sub" / "c.GIF"), "caption": "ok", "source_id": None},
    ]


def test_jsonl_and_parquet_manifests_with_named_columns(folder: Path) -> None:
    jsonl = folder / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps({"where": str(folder / n), "desc": n}) for n in ["b.gif", "a.webp"]))
    parquet = folder / "m.parquet"
    pq.write_table(pa.table({"where": ["sub/e.png"], "desc": ["a still"]}), parquet)
    cfg = InputConfig(path_column="where", caption_column="desc")
    found = discover([str(jsonl), str(parquet)], cfg).to_pylist()
    assert [(Path(i["source_uri"]).name, i["caption"]) for i in found] == [
        ("a.webp", "a.webp"),
        ("b.gif", "b.gif"),
        ("e.png", "a still"),
    ]


def test_a_uri_named_twice_is_one_input_and_keeps_its_caption(folder: Path) -> None:
    manifest = folder / "m.csv"
    manifest.write_text("path,caption\nb.gif,a caption\n")
    found = discover([str(folder / "b.gif"), str(manifest), str(folder)], InputConfig()).to_pylist()
    assert [i["source_uri"] for i in found].count(str(folder / "b.gif")) == 1
    b = next(i for i in found if i["source_uri"].endswith("b.gif"))
    assert b["caption"] == "a caption"
    assert b["source_version"] == f"1:{(folder / 'b.gif').stat().st_mtime_ns}"  # from the folder listing


def test_errors_name_what_is_wrong(folder: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover([str(folder / "nope")], InputConfig())
    bad = folder / "bad.csv"
    bad.write_text("name,caption\nb.gif,x\n")
    with pytest.raises(InputError, match="no path column"):
        discover([str(bad)], InputConfig())
    with pytest.raises(InputError, match="no caption column 'desc'"):
        discover([str(bad)], InputConfig(path_column="name", caption_column="desc"))


def test_relative_manifest_paths_are_normalised(folder: Path) -> None:
    manifest = folder / "sub" / "m.csv"
    manifest.write_text("file\n../b.gif\n./c.GIF\ndeeper//d.mp4\n")
    found = discover([str(manifest)], InputConfig())["source_uri"].to_pylist()
    assert found == [str(folder / "b.gif"), str(folder / "sub" / "c.GIF"), str(folder / "sub" / "deeper" / "d.mp4")]


@pytest.mark.parametrize(
    "entry",
    [
        "s3://bucket/key.gif?endpoint_override=169.254.169.254:80&scheme=http",
        "s3://bucket/key.gif#fragment",
        "http://example.com/a.gif",
        "ftp://example.com/a.gif",
    ],
)
def test_manifest_uris_with_query_strings_or_unknown_schemes_are_refused(folder: Path, entry: str) -> None:
    manifest = folder / "m.csv"
    manifest.write_text(f"path\nb.gif\n{entry}\n")
    with pytest.raises(InputError, match="1 input\\(s\\) refused"):
        discover([str(manifest)], InputConfig())
    with pytest.raises(InputError, match="query string|does not read"):
        discover([entry], InputConfig())


def test_a_large_manifest_is_read_in_batches_and_its_duplicates_keep_their_first_caption(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rdtf.pipeline.discover.MANIFEST_BATCH", 3)  # several batches from a small file
    names = [f"s{n % 5}.gif" for n in range(12)]  # each name 2 or 3 times, in several batches
    captions = [None if n < 5 else f"caption {n}" for n in range(12)]
    pq.write_table(pa.table({"path": names, "caption": captions}), folder / "m.parquet", row_group_size=3)
    found = discover([str(folder / "m.parquet")], InputConfig()).to_pylist()
    assert [Path(i["source_uri"]).name for i in found] == [f"s{n}.gif" for n in range(5)]
    assert [i["caption"] for i in found] == ["caption 5", "caption 6", "caption 7", "caption 8", "caption 9"]
