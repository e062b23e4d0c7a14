"""`rdtf eval` on a tiny run (random I3D and CLIP weights, 32 px I3D input): report.json and the page, the same
report from two gloo processes (torchrun) as from one, and bad input refused in one line with exit 2 before any
sampling."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "trainer"))
from dataset_factory import make_dataset  # noqa: E402

TINY = str(REPO / "configs" / "tiny.yaml")
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
QUICK = ["--clips", "3", "--steps", "1", "--draws", "1", "--i3d-weights", "random", "--i3d-size", "32"]
QUICK += ["--clip-weights", "random", "--examples", "2", "--tasks", "it2v,predict-post"]


def rdtf(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), "-m", "rdtf.jobs.cli", *args]
    env = {**os.environ, **CPU_ONLY}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return make_dataset(str(tmp_path_factory.mktemp("data") / "ds"), files=2, rows_per_file=3)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("runs") / "run")
    done = rdtf("train", "--config", TINY, "--data", data, "--out", out, "--steps", "2", "--micro-batch", "2",
                "--set", "data.shuffle_buffer=4")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def numbers(report: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a report, by its path; seconds and world_size left out (they differ by design)."""
    found = {}
    for key, value in report.items():
        if key in ("seconds", "world_size"):
            continue
        if isinstance(value, dict):
            found |= numbers(value, f"{prefix}{key}.")
        elif isinstance(value, list) and all(isinstance(v, float) for v in value):
            found |= {f"{prefix}{key}.{i}": v for i, v in enumerate(value)}
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[prefix + key] = value
    return found


def test_two_gloo_processes_give_the_report_of_one(run, data, tmp_path):
    one = rdtf("eval", "--checkpoint", run, "--data", data, "--out", str(tmp_path / "one"), *QUICK)
    assert one.returncode == 0, one.stdout + one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = rdtf("eval", "--checkpoint", run, "--data", data, "--out", str(tmp_path / "two"), *QUICK, launcher=torchrun)
    assert two.returncode == 0, two.stdout + two.stderr
    first = json.loads((tmp_path / "one" / "report.json").read_text())
    second = json.loads((tmp_path / "two" / "report.json").read_text())
    assert first["world_size"] == 1 and second["world_size"] == 2
    assert first["clips"] == 3 and set(first["fvd"]) == {"it2v", "predict-post"} and first["fvd_interval"] is None
    assert set(first["psnr"]) == {"predict-post"} and first["intervals"]["clip_similarity"]["it2v"] is not None
    assert len(first["warnings"]) == 2  # random I3D and CLIP weights, said in the report
    a, b = numbers(first), numbers(second)
    assert a.keys() == b.keys() and all(math.isfinite(v) for v in a.values())
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    page = (tmp_path / "two" / "index.html").read_text()
    assert page.count("data:image/gif;base64,") == 2 * 3  # 2 clips: real, it2v, predict-post
    assert "RANDOM" in page


def test_a_missing_i3d_file_fails_before_sampling(run, data, tmp_path):
    done = rdtf("eval", "--checkpoint", run, "--data", data, "--out", str(tmp_path / "r"), "--i3d-weights",
                str(tmp_path / "i3d.pt"))  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "i3d.pt not found" in done.stderr and "i3d_pretrained_400.pt" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_missing_clip_file_fails_before_sampling(run, data, tmp_path):
    done = rdtf("eval", "--checkpoint", run, "--data", data, "--out", str(tmp_path / "r"), "--i3d-weights", "random",
                "--clip-weights", str(tmp_path / "clip.bin"))  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "clip.bin not found" in done.stderr and "text.weights" in done.stderr
    assert not (tmp_path / "r").exists()


def test_held_out_frames_smaller_than_the_checkpoint_are_refused(run, tmp_path):
    small = make_dataset(str(tmp_path / "small"), files=1, rows_per_file=2, size=16)
    done = rdtf("eval", "--checkpoint", run, "--data", small, "--out", str(tmp_path / "r"), *QUICK)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "16 px" in done.stderr and "32 px" in done.stderr
    assert not (tmp_path / "r").exists()
