"""rdtf preprocessing on an object store, end to end against a local S3 server (moto, started by the `s3_server`
fixture): preprocess to s3://, read it back, resume without duplicates, query and stats. The endpoint reaches every
process through AWS_ENDPOINT_URL, as for any pyarrow or AWS user. Training on and into s3://:
test_object_store_train.py."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import pyarrow.compute as pc
import pytest
from s3_server import S3Server, rdtf_cli

import rdtf

pytestmark = pytest.mark.slow

STICKERS = 6


@pytest.fixture(scope="module")
def manifest(stickers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with open(stickers / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:STICKERS]
    path = tmp_path_factory.mktemp("s3") / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows([str(stickers / row["file"]), row["text"]] for row in rows)
    return path


def preprocess_command(manifest: Path, out: str) -> list[str]:
    return ["preprocess", str(manifest), "--out", out, "--frame-size", "64", "--num-cpus", "1", "--no-progress"]


@pytest.fixture(scope="module")
def s3_dataset(s3_server: S3Server, manifest: Path) -> tuple[str, str]:
    """The stickers of `manifest` preprocessed to s3://; returns its URI and what `rdtf preprocess` printed."""
    out = f"s3://{s3_server.bucket}/datasets/stickers"
    with tempfile.TemporaryDirectory(prefix="rdtf-ray-", dir="/tmp") as ray_tmp:
        env = os.environ | s3_server.env | {"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
        return out, rdtf_cli(env, *preprocess_command(manifest, out)).stdout


def test_preprocess_to_s3_reads_back_resumes_and_answers_queries(s3_dataset, s3_env, manifest, tmp_path):
    out, printed = s3_dataset
    assert f"{STICKERS} rows written" in printed

    dataset = rdtf.open_dataset(out)
    table = dataset.read(columns=["sample_id", "caption", "num_frames"])
    assert table.num_rows == STICKERS
    with open(manifest, newline="") as f:
        assert sorted(table.column("caption").to_pylist()) == sorted(row["caption"] for row in csv.DictReader(f))
    assert dataset.card["counts"]["rows"] == STICKERS

    again = rdtf_cli(s3_env, *preprocess_command(manifest, out)).stdout  # a resume: everything is already there
    assert f"{STICKERS} already done" in again and "0 rows written" in again
    ids = rdtf.open_dataset(out).read(columns=["sample_id"]).column("sample_id")
    assert len(ids) == STICKERS and len(pc.unique(ids)) == STICKERS

    answer = tmp_path / "count.json"
    rdtf_cli(s3_env, "query", out, "SELECT count(*) AS n FROM stickers", "--format", "json", "--output", str(answer))
    assert json.loads(answer.read_text()) == {"n": STICKERS}
    assert "rejects by reason" in rdtf_cli(s3_env, "stats", out).stdout
