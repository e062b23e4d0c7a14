"""A small curated dataset of real stickers, made once per test session by `rdtf preprocess` (query, stats)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STICKER_COUNT = 24


@pytest.fixture(scope="session")
def sticker_dataset(stickers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 shared stickers and two files that cannot be decoded, through `rdtf preprocess` at 64 px (no CLIP)."""
    return preprocess(stickers, tmp_path_factory.mktemp("stickers"), [])


@pytest.fixture(scope="session")
def clip_dataset(stickers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, with the CLIP stage: the project's tiny CLIP model at random weights (seeded, so reproducible)."""
    flags = ["--clip-model", "rdtf-tiny-clip", "--clip-weights", "random", "--num-cpus", "2"]
    return preprocess(stickers, tmp_path_factory.mktemp("clip_stickers"), flags)


def preprocess(stickers: Path, folder: Path, flags: list[str]) -> Path:
    """`rdtf preprocess` of a manifest of the first STICKER_COUNT shared stickers and two bad files, in `folder`."""
    with open(stickers / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:STICKER_COUNT]
    (folder / "not_a_gif.gif").write_bytes(b"plain text, not a GIF")
    (folder / "empty.gif").write_bytes(b"")
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows([str(stickers / row["file"]), row["text"]] for row in rows)
        writer.writerows([[str(folder / "not_a_gif.gif"), "bad"], [str(folder / "empty.gif"), "empty"]])
    out = folder / "dataset"
    with tempfile.TemporaryDirectory(prefix="rdtf-ray-", dir="/tmp") as ray_tmp:
        env = os.environ | {"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
        command = [sys.executable, "-m", "rdtf.jobs.cli", "preprocess", str(folder / "manifest.csv"), "--out", str(out)]
        command += ["--frame-size", "64", "--num-cpus", "1", "--no-progress", *flags]
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return out
