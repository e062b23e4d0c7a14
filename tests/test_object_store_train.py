"""Training on an object store, against a local S3 server (moto, started by the `s3_server` fixture): train two steps
from an s3:// dataset into an s3:// run folder and resume it to four, on one process and on two. No Ray here (the
dataset is written straight to Parquet and uploaded), so `make test` runs this beside the tests that start Ray
(tests/conftest.py); preprocessing to s3:// is test_object_store.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest
from conftest import REPO
from s3_server import S3Server, rdtf_cli

from rdtf.schemas.layout import resolve
from rdtf.trainer import run_folder
from rdtf.trainer.run_store import RunStore

sys.path.insert(0, str(REPO / "tests" / "trainer"))
from dataset_factory import make_dataset  # noqa: E402

pytestmark = pytest.mark.slow

TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["--set", "data.shuffle_buffer=4", "--set", "run.log_every=1", "--micro-batch", "2"]
FAST += ["--set", "run.sample_every=2", "--set", "diffusion.sample_steps=2", "--set", "optim.ema_decay=0.9"]


def read_text(uri: str) -> str:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


@pytest.fixture(scope="module")
def s3_dataset(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small curated dataset (two shards) uploaded to s3://; returns its URI."""
    local = make_dataset(str(tmp_path_factory.mktemp("s3_data") / "ds"), files=2, rows_per_file=6)
    pafs.copy_files(local, f"{s3_server.bucket}/datasets/made", destination_filesystem=s3_server.filesystem())
    return f"s3://{s3_server.bucket}/datasets/made"


def test_train_into_s3_and_resume(s3_server, s3_dataset, s3_env):
    data = s3_dataset
    run = f"s3://{s3_server.bucket}/runs/r1"
    train = ["train", "--config", TINY, "--data", data, "--out", run, *FAST]

    first = rdtf_cli(s3_env, *train, "--steps", "2").stdout
    assert "trained steps 0 -> 2" in first
    fs, root = resolve(run)
    assert read_text(f"{run}/checkpoints/latest").strip() == "step-00000002"
    saved = {i.path.removeprefix(root + "/") for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))}
    assert {"config.json", "metrics.jsonl", "samples/step-00000002.gif"} <= saved
    assert "checkpoints/step-00000002/trainer_state-rank0.pt" in saved
    assert "checkpoints/step-00000002/ema/diffusion_pytorch_model.safetensors" in saved
    assert any(name.startswith("tb/events.out.tfevents") for name in saved)
    assert json.loads(read_text(f"{run}/config.json"))["data"] == data

    second = rdtf_cli(s3_env, *train, "--steps", "4").stdout
    assert "trained steps 2 -> 4 (resumed from step 2)" in second
    assert read_text(f"{run}/checkpoints/latest").strip() == "step-00000004"
    steps = [json.loads(line)["step"] for line in read_text(f"{run}/metrics.jsonl").splitlines()]
    assert steps == [1, 2, 3, 4]
    # the staging folders are gone: nothing of the run stays on the local disk
    assert not os.path.exists(RunStore.staging_folder(run, rank=0))


def test_two_processes_train_into_s3_and_resume(s3_server, s3_dataset, s3_env):
    """Under DeepSpeed's launcher each rank uploads its own ZeRO shard and state, and each downloads the whole
    checkpoint to resume."""
    run = f"s3://{s3_server.bucket}/runs/two"
    launch = ["launch", "train", "--config", TINY, "--data", s3_dataset, "--out", run, "--num-gpus", "2"]
    launch += ["--set", "data.shuffle_buffer=4", "--set", "optim.micro_batch=1"]
    env = s3_env | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    assert "trained steps 0 -> 1" in rdtf_cli(env, *launch, "--steps", "1").stdout
    fs, root = resolve(f"{run}/checkpoints/step-00000001")
    saved = {info.base_name for info in fs.get_file_info(pafs.FileSelector(root))}
    assert {"trainer_state-rank0.pt", "trainer_state-rank1.pt"} <= saved
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= saved
    assert "trained steps 1 -> 2 (resumed from step 1)" in rdtf_cli(env, *launch, "--steps", "2").stdout
    assert read_text(f"{run}/checkpoints/latest").strip() == "step-00000002"
    assert not any(os.path.exists(RunStore.staging_folder(run, rank)) for rank in (0, 1))
    fs, root = resolve(run)
    assert fs.get_file_info(f"{root}/_lock.json").type == pafs.FileType.NotFound  # released at the end


def test_an_out_that_cannot_be_written_or_names_an_endpoint_is_one_line(s3_server, s3_dataset, s3_env):
    train = ["-m", "rdtf.jobs.cli", "train", "--config", TINY, "--data", s3_dataset, "--steps", "1", "--out"]
    for out, expected in (
        ("s3://no-such-bucket/run", "--out s3://no-such-bucket/run: cannot write there"),
        (f"s3://{s3_server.bucket}/run?endpoint_override=10.0.0.1", "may not carry a query string"),
    ):
        done = subprocess.run([sys.executable, *train, out], cwd=REPO, env=s3_env, capture_output=True, text=True)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr


def test_run_store_copies_files_and_folders_both_ways(s3_server, s3_env, tmp_path):
    store = RunStore.open(f"s3://{s3_server.bucket}/runs/store", rank=3)
    try:
        os.makedirs(store.path(run_folder.CHECKPOINTS, "step-00000001"))
        with open(store.path(run_folder.CHECKPOINTS, "step-00000001", "a.pt"), "w") as f:
            f.write("weights")
        store.push(f"{run_folder.CHECKPOINTS}/step-00000001", drop_local=True)
        assert not os.path.exists(store.path(run_folder.CHECKPOINTS, "step-00000001"))
        assert store.names(run_folder.CHECKPOINTS) == ["step-00000001"]
        assert store.pull(f"{run_folder.CHECKPOINTS}/step-00000001")
        with open(store.path(run_folder.CHECKPOINTS, "step-00000001", "a.pt")) as f:
            assert f.read() == "weights"
        assert not store.pull("missing.json")
        store.remove(f"{run_folder.CHECKPOINTS}/step-00000001")
        assert store.names(run_folder.CHECKPOINTS) == []
    finally:
        store.close()
    assert not os.path.exists(store.local)
    local = RunStore.open(str(tmp_path / "run"))
    assert local.local == str(tmp_path / "run") and not local.remote
    with pytest.raises(ValueError, match="RunStore.open"):
        RunStore.of(f"s3://{s3_server.bucket}/runs/store")  # would share a process's staging folder


def test_per_checkpoint_exports_and_evaluations_need_a_local_run_folder() -> None:
    from rdtf.schemas.config import ConfigError, load
    from rdtf.trainer.config import TrainConfig
    from rdtf.trainer.train import check_store_supports

    cfg = load(TrainConfig, TINY, {"run.export_every_checkpoint": True})
    check_store_supports(cfg, "/runs/r1")  # local and file:// folders are fine
    check_store_supports(cfg, "file:///runs/r1")
    with pytest.raises(ConfigError, match="run.export_every_checkpoint' needs a run folder on a local"):
        check_store_supports(cfg, "s3://bucket/run")
