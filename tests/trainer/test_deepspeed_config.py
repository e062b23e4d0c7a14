"""engine.deepspeed_config: a user's DeepSpeed JSON merged over rdtf's, its keys that rdtf sets refused by name, the
merged JSON saved in the run folder, and a file DeepSpeed would refuse stopped before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from dataset_factory import make_dataset

from rdtf.schemas.config import ConfigError, load
from rdtf.trainer.config import TrainConfig
from rdtf.trainer.train import DEEPSPEED_FILE, deepspeed_config, user_deepspeed_config

TINY = str(REPO / "configs" / "tiny.yaml")
OWN = {  # offload, a profiler and a logging interval: sections rdtf leaves to the user
    "zero_optimization": {"offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 1000000},
    "flops_profiler": {"enabled": False, "profile_step": 1},
    "steps_per_print": 50,
}


def merged(tmp_path, user: dict) -> dict:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    cfg = load(TrainConfig, TINY, {"engine.deepspeed_config": str(path)})
    return deepspeed_config(cfg, False, user_deepspeed_config(cfg.engine.deepspeed_config))


def test_the_users_sections_merge_over_rdtfs(tmp_path):
    config = merged(tmp_path, OWN)
    assert config["zero_optimization"] == {"stage": 2, **OWN["zero_optimization"]}  # rdtf's stage kept
    assert config["flops_profiler"] == OWN["flops_profiler"] and config["steps_per_print"] == 50
    assert config["train_micro_batch_size_per_gpu"] == 4  # the preset's optim.micro_batch


@pytest.mark.parametrize(
    ("user", "key", "setting"),
    [
        ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu", "optim.micro_batch"),
        ({"train_batch_size": 64}, "train_batch_size", "optim.micro_batch"),
        ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage", "engine.zero_stage"),
        ({"bf16": {"enabled": True}}, "bf16", "engine.precision"),
        ({"optimizer": {"type": "Adam"}}, "optimizer", "the optim section"),
    ],
)
def test_a_key_rdtf_sets_is_refused_by_name(tmp_path, user, key, setting):
    with pytest.raises(ConfigError, match=f"sets '{key}', which rdtf derives from {setting}"):
        merged(tmp_path, user)


def test_a_file_deepspeed_would_refuse_or_cannot_read_is_one_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="engine.deepspeed_config.*offload_optimiser"):
        merged(tmp_path, {"zero_optimization": {"offload_optimiser": {"device": "cpu"}}})  # a typo
    (tmp_path / "bad.json").write_text("{not json")
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(ConfigError, match="engine.deepspeed_config"):
            user_deepspeed_config(str(path))


def rdtf_train(data: str, out: str, user_json: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    args = ["train", "--config", TINY, "--data", data, "--out", out, "--steps", "1", "--micro-batch", "2"]
    args += ["--set", "data.shuffle_buffer=4", "--set", f"engine.deepspeed_config={user_json}"]
    command = [sys.executable, "-m", "rdtf.jobs.cli", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_trains_with_the_users_json_and_saves_the_merged_one(tmp_path):
    data = make_dataset(str(tmp_path / "ds"), files=1, rows_per_file=4)
    (tmp_path / "ds.json").write_text(json.dumps(OWN))
    done = rdtf_train(data, str(tmp_path / "run"), str(tmp_path / "ds.json"))
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "run" / DEEPSPEED_FILE).read_text())
    assert saved["zero_optimization"]["offload_optimizer"] == {"device": "cpu"} and "flops_profiler" in saved
    # refused before any file: no run folder at all
    (tmp_path / "stage.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    done = rdtf_train(data, str(tmp_path / "refused"), str(tmp_path / "stage.json"))
    assert done.returncode == 2 and "'zero_optimization.stage'" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and not (tmp_path / "refused").exists()
