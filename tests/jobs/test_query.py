"""`rdtf query` on a dataset preprocessed from real stickers: SQL against pyarrow, exports, `--to`, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rdtf.jobs.cli import main
from rdtf.schemas.query import QueryError, query
from rdtf.schemas.reader import open_dataset

REPO = Path(__file__).resolve().parents[2]


def test_counts_match_pyarrow(sticker_dataset: Path) -> None:
    reader = open_dataset(str(sticker_dataset))
    table = reader.read(columns=["num_frames", "static_difficulty", "caption"])
    expected = int(pc.sum(pc.greater_equal(table["num_frames"], 8)).as_py())
    got = query(str(sticker_dataset), "SELECT count(*) AS n FROM stickers WHERE num_frames >= 8")
    assert got["n"].to_pylist() == [expected]
    assert reader.num_rows > 0
    sql = "SELECT static_difficulty FROM stickers ORDER BY static_difficulty DESC LIMIT 3"
    hardest = query(str(sticker_dataset), sql)
    assert hardest["static_difficulty"].to_pylist() == sorted(table["static_difficulty"].to_pylist())[::-1][:3]
    reasons = query(str(sticker_dataset), "SELECT reason, count(*) AS n FROM rejects GROUP BY reason ORDER BY reason")
    assert dict(zip(reasons["reason"].to_pylist(), reasons["n"].to_pylist(), strict=True)) == {
        "empty_file": 1,
        "unsupported_format": 1,
    }


def test_table_output_summarises_frames(sticker_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(sticker_dataset), "SELECT sample_id, frames, clip_embedding FROM stickers LIMIT 2"]) == 0
    out = capsys.readouterr().out
    assert " frames]" in out and "PNG" not in out and "\\x89" not in out
    assert out.count(" frames]") == 2  # one per row


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_formats(sticker_dataset: Path, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"result.{fmt}"
    sql = "SELECT sample_id, num_frames FROM stickers ORDER BY sample_id"
    assert main(["query", str(sticker_dataset), sql, "--format", fmt, "--output", str(target)]) == 0
    expected = sorted(open_dataset(str(sticker_dataset)).read(columns=["sample_id"])["sample_id"].to_pylist())
    if fmt == "parquet":
        got = pq.read_table(target)["sample_id"].to_pylist()
    elif fmt == "json":
        got = [json.loads(line)["sample_id"] for line in target.read_text().splitlines()]
    else:
        got = [row["sample_id"] for row in csv.DictReader(target.open())]
    assert got == expected


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_the_output_extension_gives_the_format(
    sticker_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    target = tmp_path / f"result{suffix}"
    assert main(["query", str(sticker_dataset), "SELECT sample_id FROM stickers", "--output", str(target)]) == 0
    fmt = {".csv": "csv", ".jsonl": "json", ".parquet": "parquet"}[suffix]
    assert capsys.readouterr().out.strip().endswith(f"({fmt})")
    if fmt == "parquet":
        assert pq.read_table(target).num_rows == 24
    else:
        assert len(target.read_text().splitlines()) == 24 + (fmt == "csv")  # csv: a header line


def test_csv_and_json_without_output_are_printed(sticker_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT sample_id, num_frames FROM stickers ORDER BY sample_id"
    assert main(["query", str(sticker_dataset), sql, "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 24 and rows == sorted(rows, key=lambda row: row["sample_id"])
    assert main(["query", str(sticker_dataset), sql, "--format", "json"]) == 0
    assert [json.loads(line)["sample_id"] for line in capsys.readouterr().out.splitlines()] == [
        row["sample_id"] for row in rows
    ]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-rows", "-1"], "--max-rows must be at least 1"),
        (["--format", "parquet"], "--format parquet is written to a file: give --output FILE"),
        (["--output", "result.txt"], "give --format csv|json|parquet, or a name ending in .csv"),
        (["--format", "table", "--output", "result.csv"], "--format table is printed"),
    ],
)
def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["query", str(tmp_path), "SELECT * FROM stickers", *flags])
    assert exit.value.code == 2 and says in capsys.readouterr().err


def test_to_makes_a_dataset_that_records_its_parent(sticker_dataset: Path, tmp_path: Path) -> None:
    target = tmp_path / "hardest"
    sql = "SELECT * FROM stickers ORDER BY static_difficulty DESC LIMIT 5"
    assert main(["query", str(sticker_dataset), sql, "--to", str(target)]) == 0
    parent = open_dataset(str(sticker_dataset))
    rows = parent.read()
    order = pc.sort_indices(rows, [("static_difficulty", "descending")])
    subset = open_dataset(str(target))
    table = subset.read()
    assert table.schema.equals(rows.schema)
    assert sorted(table["sample_id"].to_pylist()) == sorted(rows.take(order[:5])["sample_id"].to_pylist())
    assert table.sort_by("sample_id").equals(rows.take(order[:5]).sort_by("sample_id"))  # every column kept as is
    card = subset.card
    assert card["status"] == "complete" and card["counts"]["rows"] == 5
    parent_counts = parent.card["counts"]
    assert card["derived_from"] == {"dataset": str(sticker_dataset), "query": sql, "parent_counts": parent_counts}
    assert card["config"] == parent.card["config"]
    train = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", "configs/tiny.yaml", "--data", str(target)]
    trained = subprocess.run([*train, "--out", str(tmp_path / "run"), "--steps", "1"], cwd=REPO, capture_output=True,
                             text=True)  # fmt: skip
    assert trained.returncode == 0 and "trained steps 0 -> 1" in trained.stdout, trained.stderr


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("SELEC * FROM stickers", "syntax error"),
        ("SELECT no_such_column FROM stickers", "no_such_column"),
        ("DELETE FROM stickers", "only SELECT"),
        ("CREATE TABLE t AS SELECT 1", "only SELECT"),
        ("SELECT 1; SELECT 2", "exactly one"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
    ],
)
def test_bad_sql_is_one_line_and_exit_2(
    sticker_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], sql: str, says: str
) -> None:
    target = tmp_path / "out.csv"
    assert main(["query", str(sticker_dataset), sql, "--format", "csv", "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rdtf query: error:") and says in err and err.count("\n") == 1
    assert not target.exists()


def test_to_refuses_a_folder_that_is_not_empty_and_a_partial_selection(
    sticker_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["query", str(sticker_dataset), "SELECT * FROM stickers", "--to", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    assert main(["query", str(sticker_dataset), "SELECT sample_id FROM stickers", "--to", str(fresh)]) == 2
    assert "missing: source_uri" in capsys.readouterr().err
    assert not fresh.exists()


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ("CASE WHEN static_difficulty >= 0 THEN error('boom') ELSE caption END AS caption", "boom"),
        ("NULL::VARCHAR AS sample_id", "sample_id"),
    ],
)
def test_to_that_fails_while_rows_stream_keeps_nothing(
    sticker_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], replace: str, expected: str
) -> None:
    target = tmp_path / "subset"
    assert (
        main(["query", str(sticker_dataset), f"SELECT * REPLACE ({replace}) FROM stickers", "--to", str(target)]) == 2
    )
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not target.exists()


def test_a_path_that_is_not_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(tmp_path), "SELECT 1"]) == 2
    assert "is not an rdtf dataset" in capsys.readouterr().err


def test_the_python_api_refuses_writes(sticker_dataset: Path) -> None:
    with pytest.raises(QueryError, match="only SELECT"):
        query(str(sticker_dataset), "DROP VIEW stickers")
