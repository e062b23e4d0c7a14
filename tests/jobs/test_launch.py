"""`rdtf launch train` with 2 CPU processes over gloo: DeepSpeed's launcher, and Ray Train on a two-node local Ray
cluster (tests/local_cluster.py). Both run trainer/train.py's loop: a Ray run stopped at a checkpoint and launched
again continues exactly as the launcher's uninterrupted run (same tasks, batches, losses and weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from local_cluster import LocalCluster

from rdtf.jobs.ray_train import POINTER_FILE
from rdtf.trainer import checkpoint

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "trainer"))
from dataset_factory import make_dataset  # noqa: E402

TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["--set", "data.shuffle_buffer=4", "--set", "run.log_every=1", "--set", "optim.micro_batch=2"]
FAST += ["--set", "run.checkpoint_every=2"]
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def rdtf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "rdtf.jobs.cli", *args],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)} | CPU_ONLY | (env or {}),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    return result


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(checkpoint.weights_folder(str(run))) / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return make_dataset(str(tmp_path_factory.mktemp("data") / "ds"), files=2, rows_per_file=8)


@pytest.fixture(scope="module")
def launcher_run(data, tmp_path_factory) -> Path:
    """Four steps on two processes under the deepspeed launcher, without interruption."""
    run = tmp_path_factory.mktemp("runs") / "launcher"
    result = rdtf(
        "launch", "train", "--config", TINY, "--data", data, "--out", str(run), "--steps", "4", *FAST, "--num-gpus", "2"
    )
    assert "trained steps 0 -> 4" in result.stdout
    return run


def test_the_deepspeed_launcher_trains_two_processes_with_checkpoints(launcher_run: Path) -> None:
    assert checkpoint.latest_tag(str(launcher_run)) == "step-00000004"
    folder = launcher_run / "checkpoints" / "step-00000004"
    states = [torch.load(folder / f"trainer_state-rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [s["world_size"] for s in states] == [2, 2]
    assert [r["step"] for r in metrics(launcher_run)] == [1, 2, 3, 4]


def test_ray_train_stopped_at_a_checkpoint_continues_exactly(data, launcher_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "ray"
    with LocalCluster(num_cpus=1, object_store_mb=100, env=CPU_ONLY) as cluster:
        ray = ["--backend", "ray", "--address", cluster.address, "--num-workers", "2", "--cpus-per-worker", "0.5"]
        args = ["launch", "train", "--config", TINY, "--data", data, "--out", str(run), *FAST, *ray, "--wait"]
        first = rdtf(*args, "--steps", "2", env=cluster.auth_env)
        assert "trained steps 0 -> 2" in first.stdout
        assert checkpoint.latest_tag(str(run)) == "step-00000002"
        folder = run / "checkpoints" / "step-00000002"
        states = [torch.load(folder / f"trainer_state-rank{r}.pt", weights_only=False) for r in (0, 1)]
        assert [s["world_size"] for s in states] == [2, 2]  # two Ray Train workers in one process group

        resumed = rdtf(*args, "--steps", "4", env=cluster.auth_env)
        assert "trained steps 2 -> 4 (resumed from step 2)" in resumed.stdout
    assert metrics(run) == metrics(launcher_run)  # same tasks, same batches (sample ids), same losses
    # Ray Train's records: a checkpoint per trainer checkpoint, each pointing at it, from both jobs
    pointers = [json.loads(p.read_text()) for p in (run / "ray_train").rglob(POINTER_FILE)]
    assert sorted(p["step"] for p in pointers) == [2, 4]  # run.checkpoint_every=2
    assert max(pointers, key=lambda p: p["step"])["checkpoint"] == str(run / "checkpoints" / "step-00000004")
    ours, theirs = weights(run), weights(launcher_run)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
