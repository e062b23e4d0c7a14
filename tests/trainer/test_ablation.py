"""The paper's ablation flags (issue 12): each changes what it says and nothing else, and their defaults change nothing.

Flags: `--temporal-layer sti|conv3d` (model.temporal_layer), `--dual-masks on|off` (run.dual_masks), `--curriculum
none|linear|adaptive` (curriculum.task, the paper's task level) and `--pacing on|off` (curriculum.pacing, rdtf's
sample level). docs/curriculum.md, docs/masks.md, docs/model.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import REPO
from dataset_factory import make_dataset
from diffusers.models.resnet import TemporalConvLayer
from scipy import stats

from rdtf.jobs.cli import build_parser
from rdtf.jobs.train import FLAG_KEYS, flag_value
from rdtf.schemas.config import ConfigError, from_dict, load, to_dict
from rdtf.trainer import run_folder
from rdtf.trainer.config import TrainConfig, upgrade_saved
from rdtf.trainer.curriculum import TASK_GROUP, Curriculum, CurriculumConfig
from rdtf.trainer.data import Batch
from rdtf.trainer.dfgn import DFGN
from rdtf.trainer.diffusion import predict, train_scheduler, training_target
from rdtf.trainer.export import standalone_dfgn_source
from rdtf.trainer.latents import PixelCodec
from rdtf.trainer.masks import SINGLE_TASK, masked_mse, single_task_masks, trained_tasks
from rdtf.trainer.sti import STILayer
from rdtf.trainer.tasks import TASKS
from rdtf.trainer.text import TextEncoder
from rdtf.trainer.train import prepare_run, step_generator, training_loss

TINY = REPO / "configs" / "tiny.yaml"
CPU = torch.device("cpu")


def _tiny(**overrides: object) -> TrainConfig:
    return load(TrainConfig, str(TINY), overrides)


def _model(cfg: TrainConfig, text_width: int) -> DFGN:
    torch.manual_seed(0)
    return DFGN(**(cfg.model | {"in_channels": 3, "sample_size": 16, "encoder_hid_dim": text_width}))


def _batch() -> Batch:
    """Two clips of 3 and 8 valid frames, 16 x 16 pixels, padded frames zero."""
    generator = torch.Generator().manual_seed(1)
    num_valid = torch.tensor([3, 8])
    valid = (torch.arange(8)[None, :] < num_valid[:, None]).float()[:, None, :, None, None]
    frames = (torch.rand((2, 3, 8, 16, 16), generator=generator) * 2 - 1) * valid
    return Batch(frames, num_valid, ["a red cat", "a blue dog"], ["x", "y"], np.array([0, 1]), np.zeros(2, np.float32))


def _flags(*argv: str) -> dict[str, object]:
    args = build_parser().parse_args(["train", "--config", "tiny", "--data", "d", "--out", "o", *argv])
    return {key: flag_value(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}


# The flags and their config keys.
def test_flags_map_to_their_config_keys() -> None:
    assert _flags("--temporal-layer", "conv3d", "--dual-masks", "off", "--curriculum", "none", "--pacing", "off") == {
        "model.temporal_layer": "conv3d",
        "run.dual_masks": False,
        "curriculum.task": "none",
        "curriculum.pacing": False,
    }
    cfg = _tiny(**_flags("--temporal-layer", "conv3d", "--dual-masks", "off", "--curriculum", "linear"))
    assert (cfg.model["temporal_layer"], cfg.run.dual_masks, cfg.curriculum.task) == ("conv3d", False, "linear")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model.temporal_layer": "lstm"}, "model.temporal_layer"),
        ({"run.dual_masks": "maybe"}, "run.dual_masks"),
        ({"curriculum.task": "cosine"}, "curriculum.task"),
        ({"curriculum.pacing": "sometimes"}, "curriculum.pacing"),
        ({"curriculum.mode": "adaptive"}, "curriculum.mode"),  # the former key, split in two
        ({"model.attention_head_dims": 16}, "model.attention_head_dims"),  # a typo: was a TypeError deep in train
        ({"model.num_frames": 16}, "model.num_frames"),  # clips are 8 frames: was accepted and ignored
        ({"diffusion.train_timesteps": 2000}, "curriculum.num_timesteps"),  # bins t >= 1000 all went in the last
    ],
)
def test_bad_values_are_refused_naming_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        _tiny(**overrides)


# Temporal layer.
def test_conv3d_swaps_the_sti_layers_for_3d_convolutions_and_nothing_else() -> None:
    sti, conv3d = _model(_tiny(), 32), _model(_tiny(**{"model.temporal_layer": "conv3d"}), 32)
    sti_layers = {name for name, module in sti.named_modules() if isinstance(module, STILayer)}
    conv_layers = {name for name, module in conv3d.named_modules() if isinstance(module, TemporalConvLayer)}
    assert len(sti_layers) == 8  # tiny: 2 x 1 down + 2 mid + 2 x 2 up
    assert sti_layers == conv_layers and all(".temp_convs." in name for name in sti_layers)
    assert not any(isinstance(m, TemporalConvLayer) for m in sti.modules())
    assert not any(isinstance(m, STILayer) for m in conv3d.modules())

    def outside(model: DFGN) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in model.state_dict().items() if ".temp_convs." not in k}

    assert outside(sti) == outside(conv3d)
    # the same ballpark: tiny 1.39 M parameters with STI, 1.60 M with 3D convs (docs/model.md)
    sizes = [sum(p.numel() for p in model.parameters()) for model in (sti, conv3d)]
    assert 1.0 < sizes[1] / sizes[0] < 1.3
    sample = torch.randn(1, 3, 8, 16, 16)
    with torch.no_grad():
        out = conv3d(sample, torch.tensor([10]), torch.randn(1, 77, 32), torch.zeros(1, 3, 8, 16, 16))
    assert out.shape == sample.shape


def test_the_exported_model_code_builds_the_conv3d_variant() -> None:
    """`rdtf export` writes DFGN's code without rdtf (trainer/export): the conv3d variant builds from it alike."""
    module = types.ModuleType("modeling_dfgn")
    exec(compile(standalone_dfgn_source(), "modeling_dfgn.py", "exec"), module.__dict__)
    cfg = _tiny(**{"model.temporal_layer": "conv3d"})
    exported = module.DFGN(**(cfg.model | {"in_channels": 3, "encoder_hid_dim": 32}))
    assert sum(type(m).__name__ == "TemporalConvLayer" for m in exported.modules()) == 8
    assert not any(type(m).__name__ == "STILayer" for m in exported.modules())


# Dual masks.
def test_single_task_masks_give_the_first_frame_and_count_every_frame() -> None:
    condition, loss = single_task_masks(torch.tensor([3, 5, 8]))
    assert loss.tolist() == [[1.0] * 8] * 3
    assert condition.tolist() == [[1.0] + [0.0] * 7] * 3
    assert trained_tasks(True) == TASKS and trained_tasks(False) == (SINGLE_TASK,)


@pytest.mark.parametrize("task", ["none", "linear", "adaptive"])
def test_dual_masks_off_always_trains_the_single_task(task: str) -> None:
    curriculum = Curriculum(CurriculumConfig(task=task, length=100), seed=0, tasks=trained_tasks(False))
    drawn = set()
    for step in range(300):
        drawn.add(curriculum.task_for_step(step))
        curriculum.observe_task_loss(SINGLE_TASK, 1.0 + np.sin(step))
    assert drawn == {SINGLE_TASK}
    assert curriculum.task_weights(50) == {SINGLE_TASK: pytest.approx(1.0)}


class _ZeroModel(torch.nn.Module):
    """Predicts zeros and keeps what it was given, so that a test can recover the noise."""

    def forward(self, sample, timestep, encoder_hidden_states, condition):
        self.sample, self.timestep, self.condition = sample, timestep, condition
        return torch.zeros_like(sample)


@pytest.mark.parametrize("dual", [True, False])
def test_dual_masks_off_give_the_first_frame_and_take_the_loss_over_every_frame(dual: bool) -> None:
    cfg = _tiny(**{"run.dual_masks": dual, "diffusion.image_dropout": 0.0})
    text, batch, model = TextEncoder(cfg.text), _batch(), _ZeroModel()
    scheduler = train_scheduler(cfg.diffusion)
    generator = step_generator(0, 0, 0, 0)
    loss = training_loss(
        model, batch, "predict-post", cfg, PixelCodec(), text, scheduler, generator, CPU, torch.float32
    )[0]
    given = model.condition.abs().sum(dim=(1, 3, 4)) > 0  # (b, f)
    if dual:  # predict-post: a prefix of the valid frames, never a padded one
        assert given[:, 0].all() and given[1, 1:4].all() and not given[0, 3:].any()
    else:
        assert given[:, 0].all() and not given[:, 1:].any()
    # the zero model's loss over the loss mask's frames (eps from x_t, z and a_t); its prediction is zero plus the
    # preset's anchor term
    alpha = scheduler.alphas_cumprod[model.timestep][:, None, None, None, None]
    eps = (model.sample - alpha.sqrt() * batch.frames) / (1 - alpha).sqrt()
    target = training_target(scheduler, batch.frames, eps, model.timestep)
    frames = torch.ones(2, 8) if not dual else (torch.arange(8)[None, :] < batch.num_valid[:, None]).float()
    y_hat = predict(_ZeroModel(), scheduler, cfg.diffusion.anchor, model.sample, model.timestep, None, model.condition)
    assert float(loss) == pytest.approx(float(masked_mse(y_hat, target, frames)), rel=1e-3)


# Task curriculum.
def test_task_curriculum_none_draws_tasks_uniformly() -> None:
    curriculum = Curriculum(CurriculumConfig(task="none", length=1000), seed=7)
    counts = dict.fromkeys(TASKS, 0)
    for step in range(6000):
        task = curriculum.task_for_step(step)
        counts[task] += 1
        curriculum.observe_task_loss(task, 1.0 + (step % 17) / 10)  # losses that would move the PID: ignored
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
    assert all(abs(n / 6000 - 1 / 6) < 0.02 for n in counts.values())


def test_task_curriculum_linear_follows_the_static_schedule_without_pid() -> None:
    linear = Curriculum(CurriculumConfig(task="linear", length=1000), seed=7)
    for step in range(500):
        linear.observe_task_loss(linear.task_for_step(step), 5.0 if step == 499 else 1.0)  # a spike a PID would see
    assert "curriculum/pid" not in linear.tasks.scalars()
    for step in (0, 250, 500, 1000, 3000):
        static = linear.tasks.static_weights(step)
        total = sum(static.values())
        assert linear.task_weights(step) == pytest.approx({task: w / total for task, w in static.items()})
    # draws at step 0 follow the schedule's start: interpolation 0.9, generation 3 x 0.1, prediction 2 x 0.7
    draws = [Curriculum(CurriculumConfig(task="linear", length=1000), seed=s).task_for_step(0) for s in range(3000)]
    share = {
        group: sum(TASK_GROUP[t] == group for t in draws) / len(draws) for group in ("generation", "interpolation")
    }
    assert share["interpolation"] == pytest.approx(0.9 / 2.6, abs=0.03)
    assert share["generation"] == pytest.approx(0.3 / 2.6, abs=0.03)


# Pacing.
def test_pacing_off_weighs_every_row_alike_and_leaves_the_task_draws_alone() -> None:
    static = np.random.default_rng(0).uniform(0, 1, 1000)
    on, off = (Curriculum(CurriculumConfig(length=1000, pacing=pacing), seed=3) for pacing in (True, False))
    for curriculum in (on, off):
        curriculum.bind(static)
    rows = np.arange(1000)
    for step in range(50):
        tasks = on.task_for_step(step), off.task_for_step(step)
        assert tasks[0] == tasks[1]
        for curriculum in (on, off):
            curriculum.observe_sample_losses(rows[:8], np.full(8, 2.0), tasks[0], np.full(8, 500))
            curriculum.observe_task_loss(tasks[0], 1.0 + step % 3)
        assert off.sample_weights(rows, step).tolist() == [1.0] * 1000
        assert on.sample_weights(rows, step).min() < 0.01  # pacing on holds the hard rows back early
    assert on.task_weights(50) == pytest.approx(off.task_weights(50))


# Defaults.
def test_the_defaults_are_the_former_adaptive_mode() -> None:
    cfg = _tiny()
    assert (cfg.model["temporal_layer"], cfg.run.dual_masks, cfg.curriculum.task, cfg.curriculum.pacing) == (
        "sti",
        True,
        "adaptive",
        True,
    )
    saved = json.loads(json.dumps(to_dict(cfg)))
    former = saved | {"curriculum": {k: v for k, v in saved["curriculum"].items() if k not in ("task", "pacing")}}
    former["curriculum"]["mode"] = "adaptive"
    former["run"] = {k: v for k, v in saved["run"].items() if k != "dual_masks"}
    assert upgrade_saved(former) == saved  # a run folder saved before the split resumes: the compare sees no change
    assert to_dict(from_dict(TrainConfig, upgrade_saved(former))) == to_dict(cfg)
    assert upgrade_saved(saved) == saved
    none = upgrade_saved(former | {"curriculum": former["curriculum"] | {"mode": "none"}})["curriculum"]
    assert (none["task"], none["pacing"]) == ("none", False)


# Recorded from the code before the flags (commit 85620bc, `curriculum.mode: adaptive`) with the script of this test:
# task, loss and the sample weights of 11 rows of static difficulty 0, 0.1, .., 1 at each of the first 4 steps.
BEFORE = [
    ("predict-pre", 0.95469, [1.0, 1.0, 1.0, 1.0, 0.1437, 0.01945, 0.00263, 0.00036, 5e-05, 1e-05, 0.0]),
    ("predict-post", 0.63921, [1.0, 1.0, 1.0, 1.0, 0.14509, 0.01964, 0.00266, 0.00036, 5e-05, 1e-05, 0.0]),
    ("i2v", 0.68127, [1.0, 1.0, 1.0, 1.0, 0.1465, 0.01983, 0.00268, 0.00036, 5e-05, 1e-05, 0.0]),
    ("predict-post", 0.48639, [1.0, 1.0, 1.0, 1.0, 0.14791, 0.02002, 0.00271, 0.00037, 5e-05, 1e-05, 0.0]),
]


def test_the_first_training_steps_at_the_defaults_are_as_before() -> None:
    cfg = _tiny(**{"diffusion.anchor": "none"})  # BEFORE was recorded without the anchor (the preset's since)
    text = TextEncoder(cfg.text)
    model, batch, scheduler = _model(cfg, text.width), _batch(), train_scheduler(cfg.diffusion)
    curriculum = Curriculum(cfg.curriculum, cfg.run.seed, trained_tasks(cfg.run.dual_masks))
    curriculum.bind(np.linspace(0, 1, 11))
    for step, (task, loss, weights) in enumerate(BEFORE):
        assert curriculum.task_for_step(step) == task
        generator = step_generator(0, step, 0, 0)
        with torch.no_grad():
            now = training_loss(model, batch, task, cfg, PixelCodec(), text, scheduler, generator, CPU, torch.float32)
        assert float(now[0]) == pytest.approx(loss, rel=1e-3)
        curriculum.observe_task_loss(task, float(now[0]))
        assert curriculum.sample_weights(np.arange(11), step) == pytest.approx(weights, abs=2e-4)


@pytest.fixture
def one_process():
    """A gloo group of one process: prepare_run is a collective."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_run_saved_with_the_former_mode_resumes_and_a_changed_switch_is_refused(one_process, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    saved = json.loads(json.dumps(to_dict(_tiny())))
    curriculum = {k: v for k, v in saved["curriculum"].items() if k not in ("task", "pacing")} | {"mode": "adaptive"}
    former = saved | {"curriculum": curriculum, "run": {k: v for k, v in saved["run"].items() if k != "dual_masks"}}
    (run / run_folder.CONFIG_FILE).write_text(json.dumps({"config": former, "dataset": "d", "data": "/data"}))
    assert prepare_run(str(run), _tiny(), "/data", "d", 0)["config"]["curriculum"]["task"] == "adaptive"
    for overrides, key in (
        ({"curriculum.pacing": False}, "curriculum.pacing"),
        ({"run.dual_masks": False}, "run.dual_masks"),
        ({"model.temporal_layer": "conv3d"}, "model.temporal_layer"),
    ):
        with pytest.raises(ConfigError, match=key):
            prepare_run(str(run), _tiny(**overrides), "/data", "d", 0)


def test_a_run_with_dual_masks_off_trains_only_the_single_task(tmp_path: Path) -> None:
    """Through `rdtf train` itself: the training loop takes its tasks from trained_tasks(run.dual_masks)."""
    data = make_dataset(str(tmp_path / "ds"), files=1, rows_per_file=4)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", str(REPO / "configs" / "tiny.yaml")]
    command += ["--data", data, "--out", str(run), "--steps", "4", "--dual-masks", "off", "--curriculum", "none"]
    command += ["--set", "optim.micro_batch=1", "--set", "run.log_every=1", "--set", "run.checkpoint_every=100"]
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tasks = [json.loads(line)["task"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert tasks == [SINGLE_TASK] * 4  # `none` alone would draw the six tasks uniformly
