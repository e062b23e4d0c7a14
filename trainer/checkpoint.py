"""A run's checkpoints: DeepSpeed's own (weights, optimizer, lr schedule), each rank's trainer state (step, data
position, curriculum, random states), and the weights as a diffusers folder that `rdtf sample` loads.

    RUN_DIR/checkpoints/latest              DeepSpeed's pointer, written last: a kill mid-save keeps the previous one
    RUN_DIR/checkpoints/step-00000500/      DeepSpeed's files, plus
        trainer_state-rank{r}.pt            every rank's own state (exact resume needs the same number of ranks)
        model/                              `save_pretrained` of the weights (rank 0)
        ema/                                the EMA weights, when optim.ema_decay is set (rank 0)

Checkpoints are loaded with `torch.load(weights_only=False)` (DeepSpeed does the same): load only runs you wrote.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import nullcontext
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from schemas.config import ConfigError

CONFIG_FILE = "config.json"  # RUN_DIR/config.json: the resolved config of the run
CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_DIR = "model"
EMA_DIR = "ema"


def tag(step: int) -> str:
    return f"step-{step:08d}"


def _state_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"trainer_state-rank{rank}.pt")


def latest_tag(run_dir: str) -> str | None:
    """The tag of the last complete checkpoint, or None when the run has none."""
    pointer = os.path.join(run_dir, CHECKPOINTS, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        return f.read().strip()


def save(
    engine: deepspeed.DeepSpeedEngine,
    run_dir: str,
    step: int,
    state: dict[str, Any],
    ema: Any | None = None,
) -> str:
    """Save on every rank (DeepSpeed needs all of them); returns the checkpoint folder."""
    rank = dist.get_rank()
    root = os.path.join(run_dir, CHECKPOINTS)
    folder = os.path.join(root, tag(step))
    os.makedirs(folder, exist_ok=True)
    torch.save({**state, "world_size": dist.get_world_size()}, _state_file(folder, rank))
    # ZeRO-3 holds a slice of each weight per rank: gather them (on every rank) for the diffusers folder.
    zero3 = engine.zero_optimization_stage() == 3
    gathered = deepspeed.zero.GatheredParameters(list(engine.module.parameters())) if zero3 else nullcontext()
    with gathered:
        if rank == 0:
            engine.module.save_pretrained(os.path.join(folder, MODEL_DIR))
            if ema is not None:
                ema.save_pretrained(os.path.join(folder, EMA_DIR))  # writes the model's config with EMA weights
    dist.barrier()
    engine.save_checkpoint(root, tag=tag(step))  # writes `latest` last
    return folder


def load(engine: deepspeed.DeepSpeedEngine, run_dir: str) -> dict[str, Any] | None:
    """Restore the last checkpoint into `engine` and return this rank's trainer state (None: start from scratch)."""
    found = latest_tag(run_dir)
    if found is None:
        return None
    folder = os.path.join(run_dir, CHECKPOINTS, found)
    state_file = _state_file(folder, dist.get_rank())
    if not os.path.isfile(state_file):
        raise ConfigError(
            f"{folder} has no state for rank {dist.get_rank()}: it was saved by fewer processes than the "
            f"{dist.get_world_size()} now running. Resume with the same number of processes."
        )
    state = torch.load(state_file, weights_only=False)
    if state["world_size"] != dist.get_world_size():
        raise ConfigError(
            f"{folder} was saved by {state['world_size']} processes, {dist.get_world_size()} are running: resume "
            "with the same number (the data position and random states are per process)."
        )
    engine.load_checkpoint(os.path.join(run_dir, CHECKPOINTS), tag=found)
    return state


def weights_folder(run_dir: str, use_ema: bool = True, step_tag: str | None = None) -> str:
    """The diffusers folder of a checkpoint's weights (its EMA weights when there are some): the last one, or the
    one tagged `step_tag` (e.g. "step-00000100", for learning curves)."""
    found = step_tag or latest_tag(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet ({CHECKPOINTS}/{LATEST} is missing)")
    folder = os.path.join(run_dir, CHECKPOINTS, found)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{run_dir} has no checkpoint {found} (kept: run.keep_checkpoints)")
    ema = os.path.join(folder, EMA_DIR)
    return ema if use_ema and os.path.isdir(ema) else os.path.join(folder, MODEL_DIR)


def prune(run_dir: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names); rank 0 only."""
    root = os.path.join(run_dir, CHECKPOINTS)
    tags = sorted(name for name in os.listdir(root) if re.fullmatch(r"step-\d{8}", name))
    current = latest_tag(run_dir)
    removed = [t for t in tags[:-keep] if t != current]
    for old in removed:
        shutil.rmtree(os.path.join(root, old))
    return removed
