"""`rdtf train` and `rdtf sample` end to end on the tiny preset (CPU, fp32): resume after SIGKILL, two processes
with ZeRO-2 over gloo, a GIF for every task, config errors. Training runs in subprocesses, as users run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from dataset_factory import make_dataset, tiny_vae_folder
from PIL import Image

from rdtf.trainer import checkpoint
from rdtf.trainer.sample import SampleRequest, sample
from rdtf.trainer.tasks import TASKS

TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["--set", "data.shuffle_buffer=4", "--set", "run.log_every=1", "--micro-batch", "2"]
FAST += ["--set", "optim.ema_decay=0.9", "--set", "run.sample_every=4", "--set", "diffusion.sample_steps=2"]


def rdtf(*args: str, launcher: list[str] | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable]) + ["-m", "rdtf.jobs.cli", *args]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


def assert_plays_8_frames(path: str) -> None:
    """8 frames at 8 fps (1 s); Pillow stores identical neighbours once with their summed time, as GIFs allow."""
    with Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert gif.size == (32, 32)
    assert sum(durations) == 1000 and len(durations) <= 8


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path, ema: bool = False) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(checkpoint.weights_folder(str(run), use_ema=ema)) / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return make_dataset(str(tmp_path_factory.mktemp("data") / "ds"), files=2, rows_per_file=8)


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory) -> Path:
    """Eight steps without interruption, a checkpoint every two."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    args = ["train", "--config", TINY, "--data", data, "--out", str(run), "--steps", "8", *FAST]
    out = finish(rdtf(*args, "--set", "run.checkpoint_every=2"))
    assert "trained steps 0 -> 8" in out
    assert "mean loss on the frames each task generates (given frames excluded):" in out
    return run


def test_a_run_writes_checkpoints_metrics_and_tensorboard(straight_run):
    assert checkpoint.latest_tag(str(straight_run)) == "step-00000008"
    assert len([p for p in (straight_run / "checkpoints").iterdir() if p.name.startswith("step-")]) == 2  # pruned
    records = metrics(straight_run)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["task"] in TASKS and r["loss"] > 0 and len(r["sample_ids"]) == 2 for r in records)
    # the loss on the frames a task generates and on the frames it was given, apart (none given in t2v)
    assert all(r["loss_generated"] > 0 for r in records)
    assert all(r["loss_given"] is None for r in records if r["task"] == "t2v")
    assert any((r["loss_given"] or 0) > 0 for r in records if r["task"] != "t2v")  # None: image dropout hit all
    assert list((straight_run / "tb").iterdir())
    assert sorted(p.name for p in (straight_run / "samples").iterdir()) == ["step-00000004.gif", "step-00000008.gif"]
    config = json.loads((straight_run / "config.json").read_text())
    assert config["config"]["run"]["max_steps"] == 8


def test_resume_after_sigkill_repeats_the_uninterrupted_run(data, straight_run, tmp_path):
    run = tmp_path / "killed"
    args = ["train", "--config", TINY, "--data", data, "--out", str(run), "--steps", "8", *FAST]
    process = rdtf(*args, "--set", "run.checkpoint_every=2", start_new_session=True)
    deadline = time.time() + 240
    while checkpoint.latest_tag(str(run)) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # only the process group this test started
    process.communicate()
    killed_at = checkpoint.latest_tag(str(run))
    assert killed_at is not None and killed_at != "step-00000008", "the run finished before it could be killed"
    out = finish(rdtf(*args, "--set", "run.checkpoint_every=2"))
    assert f"resumed from step {int(killed_at[5:])}" in out
    assert metrics(run) == metrics(straight_run)  # same tasks, same batches (sample ids), same losses
    # TensorBoard is told to drop what the killed process logged after its checkpoint (purge_step)
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    events = [event for path in (run / "tb").iterdir() for event in EventFileLoader(str(path)).Load()]
    starts = [e for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    purges = [e.step for e in starts]
    assert int(killed_at[5:]) + 1 in purges
    for ema in (False, True):
        resumed, straight = weights(run, ema), weights(straight_run, ema)
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_zero2_take_an_optimizer_step_in_vae_space_with_ema(data, tmp_path):
    run = tmp_path / "two"
    vae = tiny_vae_folder(tmp_path / "vae")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    args = ["train", "--config", TINY, "--data", data, "--out", str(run), "--steps", "1", "--zero-stage", "2", *FAST]
    vae_and_ema = ["--set", "latent.mode=vae", "--set", f"latent.vae_path={vae}", "--set", "optim.ema_decay=0.9"]
    out = finish(rdtf(*args, *vae_and_ema, launcher=launcher))
    assert "trained steps 0 -> 1" in out
    folder = run / "checkpoints" / "step-00000001"
    assert (folder / "trainer_state-rank0.pt").is_file() and (folder / "trainer_state-rank1.pt").is_file()
    assert len(list(folder.glob("*zero_pp_rank_*optim_states.pt"))) == 2  # ZeRO-2 partitions the optimizer
    states = [torch.load(folder / f"trainer_state-rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [s["world_size"] for s in states] == [2, 2]
    assert len(metrics(run)) == 1
    assert checkpoint.weights_folder(str(run)).endswith("ema")
    assert json.loads((folder / "ema" / "config.json").read_text())["in_channels"] == 4  # VAE latents


@pytest.mark.parametrize("task", TASKS)
def test_sample_writes_an_8_frame_gif_for_every_task(straight_run, task, tmp_path):
    given = tmp_path / "given.gif"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(given, save_all=True, append_images=[Image.new("RGB", (40, 40))] * 5)
    request = SampleRequest(task=task, text="a red square waves", image=str(given), gif=str(given), steps=3)
    path = sample(str(straight_run), request, str(tmp_path / f"{task}.gif"))
    assert_plays_8_frames(path)


def test_sample_cli_says_what_a_task_needs(straight_run, tmp_path):
    out = finish(
        rdtf(
            "sample",
            "--checkpoint",
            str(straight_run),
            "--task",
            "t2v",
            "--text",
            "hi",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "a.gif"),
        )
    )
    assert "wrote" in out and (tmp_path / "a.gif").is_file()
    process = rdtf("sample", "--checkpoint", str(straight_run), "--task", "i2v", "--out", str(tmp_path / "b.gif"))
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2 and "needs --image" in out


def test_a_bad_config_fails_naming_the_key(data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY).read_text() + "\noptim:\n  lr: -1.0\n")
    process = rdtf("train", "--config", str(bad), "--data", data, "--out", str(tmp_path / "run"))
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2 and "optim.lr" in out
    process = rdtf("train", "--config", TINY, "--data", data, "--out", str(tmp_path / "run"), "--set", "engine.zero=1")
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2 and "engine.zero" in out


def test_zero3_saves_whole_weights_and_resumes(data, tmp_path):
    run = tmp_path / "zero3"
    args = ["train", "--config", TINY, "--data", data, "--out", str(run), "--zero-stage", "3", "--micro-batch", "1"]
    args += ["--set", "data.shuffle_buffer=4"]
    finish(rdtf(*args, "--steps", "1"))
    saved = weights(run)
    assert saved and all(t.numel() > 0 for t in saved.values())  # gathered, not this rank's empty partitions
    assert "resumed from step 1" in finish(rdtf(*args, "--steps", "2"))


def test_ema_turned_on_at_resume_starts_from_the_restored_weights_and_a_changed_setting_is_refused(data, tmp_path):
    run = tmp_path / "ema_later"
    args = ["train", "--config", TINY, "--data", data, "--out", str(run), "--micro-batch", "1"]
    args += ["--set", "data.shuffle_buffer=4"]
    finish(rdtf(*args, "--steps", "1"))
    out = finish(rdtf(*args, "--steps", "2", "--set", "optim.ema_decay=0.9"))  # it crashed here (issue 14)
    assert "resumed from step 1" in out and "EMA turned on at resume" in out
    assert checkpoint.weights_folder(str(run)).endswith("ema")
    process = rdtf(*args, "--steps", "3", "--set", "diffusion.beta_end=0.02")
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 2 and "diffusion.beta_end (saved 0.012, now 0.02)" in out
    assert checkpoint.latest_tag(str(run)) == "step-00000002"


def test_every_sample_gif_of_a_run_has_one_prompt(tmp_path):
    """Samples of different steps compare only with one text: run.sample_prompt, or the dataset's first caption (the
    same on every rank), never the caption of whatever batch is at hand."""
    from dataclasses import replace

    import pyarrow.parquet as pq

    from rdtf.schemas.config import load
    from rdtf.schemas.reader import open_dataset
    from rdtf.trainer.config import TrainConfig
    from rdtf.trainer.train import preview_prompt

    reader = open_dataset(make_dataset(str(tmp_path / "data")))
    cfg = load(TrainConfig, str(REPO / "configs" / "tiny.yaml"))
    first = pq.read_table(reader.sample_files[0], columns=["caption"])["caption"][0].as_py()
    assert preview_prompt(cfg, reader) == first
    assert preview_prompt(replace(cfg, run=replace(cfg.run, sample_prompt="a red circle")), reader) == "a red circle"
