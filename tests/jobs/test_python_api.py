"""`import rdtf`: the installed name, its lazy imports, and the Python API over curated datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest
import torch

import rdtf

REPO = Path(__file__).resolve().parents[2]


def test_importing_rdtf_loads_no_heavy_library() -> None:
    code = (
        "import sys, rdtf, rdtf.pipeline.decode\n"
        "print(sorted(m for m in ('duckdb', 'faiss', 'torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == "[]"


def test_the_wheel_installs_everything_under_rdtf(tmp_path: Path) -> None:
    # setuptools' build and egg-info folders in tmp_path, not in the checkout (DIST_EXTRA_CONFIG: an extra setup.cfg)
    extra = tmp_path / "build.cfg"
    extra.write_text(f"[build]\nbuild_base = {tmp_path / 'build'}\n[egg_info]\negg_base = {tmp_path}\n")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    env = os.environ | {"DIST_EXTRA_CONFIG": str(extra)}
    subprocess.run([*command, str(REPO)], check=True, capture_output=True, env=env)
    (wheel,) = tmp_path.glob("rdtf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"rdtf"}
    for module in ("schemas/reader.py", "pipeline/runner.py", "trainer/train.py", "jobs/cli.py"):
        assert f"rdtf/{module}" in names
    assert "rdtf/pipeline/sticker_vocabulary.txt" in names  # package data travels with its package
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "rdtf = rdtf.jobs.cli:main" in entry_points


def test_open_dataset_reads_as_arrow_pandas_and_torch(sticker_dataset: Path) -> None:
    ds = rdtf.open_dataset(str(sticker_dataset))
    table = ds.read(["sample_id", "caption"])
    frame = ds.to_pandas(["sample_id", "static_difficulty"])
    assert len(frame) == table.num_rows == ds.num_rows > 0
    assert sorted(frame["sample_id"]) == sorted(table.column("sample_id").to_pylist())

    loader = torch.utils.data.DataLoader(ds.torch(), batch_size=None, num_workers=2)
    rows = list(loader)
    assert sorted(row["sample_id"] for row in rows) == sorted(frame["sample_id"])  # each row once, over 2 workers
    first = rows[0]
    assert first["frames"].dtype == torch.uint8 and first["frames"].shape[1:] == (64, 64, 3)
    halves = [{row["sample_id"] for row in ds.torch(("sample_id",), rank=r, world_size=2)} for r in (0, 1)]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(frame["sample_id"])


def test_query_and_search_from_python(clip_dataset: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"  # search writes its index beside the data: a copy keeps the shared one clean
    shutil.copytree(clip_dataset, dataset)
    hard = rdtf.query(str(dataset), "SELECT sample_id FROM stickers ORDER BY static_difficulty DESC LIMIT 3")
    assert isinstance(hard, pa.Table) and hard.num_rows == 3
    found = rdtf.search(str(dataset), "a cat waving hello", k=4)
    assert found.num_rows == 4 and found.column_names[-1] == "score"
    scores = found.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(rdtf.jobs.search_index.SearchError, match="one of them"):
        rdtf.search(str(dataset))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rdtf.nope  # noqa: B018
