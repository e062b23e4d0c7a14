"""A dataset folder loads in Hugging Face `datasets` as users expect: the rows by default, the rejects apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdtf.schemas.reader import open_dataset


def test_load_dataset_reads_rows_and_rejects_apart(
    sticker_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    from datasets import load_dataset

    reader = open_dataset(str(sticker_dataset))
    rows = load_dataset(str(sticker_dataset), split="train", cache_dir=str(tmp_path / "cache"))
    assert rows.num_rows == reader.num_rows
    assert sorted(rows["sample_id"]) == sorted(reader.read(columns=["sample_id"])["sample_id"].to_pylist())
    assert "frames" in rows.column_names and "reason" not in rows.column_names
    rejects = load_dataset(str(sticker_dataset), "rejects", split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(rejects["reason"]) == ["empty_file", "unsupported_format"]
    readme = (sticker_dataset / "README.md").read_text()
    assert readme.startswith("---\nconfigs:") and f"{reader.num_rows} rows" in readme
