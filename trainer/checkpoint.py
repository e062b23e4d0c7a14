"""A run's checkpoints: DeepSpeed's own (weights, optimizer, lr schedule), each rank's trainer state (step, data
position, curriculum, random states), and the weights as a diffusers folder that `rdtf sample` loads.

    RUN_DIR/checkpoints/latest              DeepSpeed's pointer, written last: a kill mid-save keeps the previous one;
                                            rank 0 reads it and tells the other ranks (`resume_tag`)
    RUN_DIR/checkpoints/step-00000500/      DeepSpeed's files, plus
        trainer_state-rank{r}.pt            every rank's own state (exact resume needs the same number of ranks)
        model/                              `save_pretrained` of the weights (rank 0)
        ema/                                the EMA weights, when optim.ema_decay is set (rank 0)

RUN_DIR may be an object-store URI: the functions that save, resume and prune take a `RunStore` (trainer/run_store.py),
which stages the files locally and copies them (`latest` last); a plain path is a local run folder.

Checkpoints are loaded with `torch.load(weights_only=False)` (DeepSpeed does the same): load only runs you wrote.
"""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import nullcontext
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from rdtf.schemas.config import ConfigError
from rdtf.trainer.run_folder import CHECKPOINTS, LATEST, TAG, tag
from rdtf.trainer.run_store import RunStore

RUN_TOKEN = ".rank0-token"  # RUN_DIR/.rank0-token: rewritten at every start to check that all ranks see RUN_DIR
MODEL_DIR = "model"
EMA_DIR = "ema"


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
    run: RunStore | str,
    step: int,
    state: dict[str, Any],
    ema: Any | None = None,
) -> str:
    """Save on every rank (DeepSpeed needs all of them); returns the checkpoint folder (local, or in the staging
    folder until it is uploaded)."""
    store = RunStore.of(run)
    rank = dist.get_rank()
    root = store.path(CHECKPOINTS)
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
    if store.remote:
        _upload(store, tag(step))
    return folder


def _upload(store: RunStore, step_tag: str) -> None:
    """Every rank uploads the files it wrote into the checkpoint and drops them here; once all have, rank 0 uploads
    DeepSpeed's other files and `latest` last. A collective."""
    store.push(f"{CHECKPOINTS}/{step_tag}", drop_local=True)
    dist.barrier()
    if dist.get_rank() == 0:
        root = store.path(CHECKPOINTS)
        for name in sorted(os.listdir(root)):  # zero_to_fp32.py and its kin: copied by DeepSpeed at every save
            if name != LATEST and os.path.isfile(os.path.join(root, name)):
                store.push(f"{CHECKPOINTS}/{name}")
        store.push(f"{CHECKPOINTS}/{LATEST}")


def resume_tag(run: RunStore | str) -> str | None:
    """The checkpoint every rank resumes from: the one rank 0 finds, broadcast, so that a node with a stale or
    missing view of `latest` cannot start from another step than the others. A collective: every rank calls it."""
    store = RunStore.of(run)
    found = [None]
    if dist.get_rank() == 0 and store.pull(f"{CHECKPOINTS}/{LATEST}"):
        found[0] = latest_tag(store.local)
    dist.broadcast_object_list(found, src=0)
    return found[0]


def _agree(problem: str | None) -> None:
    """Raise the same ConfigError on every rank when any rank has a problem (a rank raising alone would leave the
    others waiting in the next collective). A collective."""
    problems: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    found = [f"rank {rank}: {text}" for rank, text in enumerate(problems) if text]
    if found:
        raise ConfigError("; ".join(found))


def load(engine: deepspeed.DeepSpeedEngine, run: RunStore | str) -> dict[str, Any] | None:
    """Restore the checkpoint rank 0 chose into `engine` and return this rank's trainer state (None: from scratch).
    Every rank checks its own files first, and all of them stop together when one cannot resume. From an object
    store, every rank first downloads the whole checkpoint into its staging folder."""
    store = RunStore.of(run)
    found = resume_tag(store)
    if found is None:
        return None
    store.pull(f"{CHECKPOINTS}/{found}")
    folder = store.path(CHECKPOINTS, found)
    state_file = _state_file(folder, dist.get_rank())
    problem = None
    if not os.path.isfile(state_file):
        problem = (
            f"{folder} has no state for rank {dist.get_rank()} on {socket.gethostname()}: the checkpoint was saved by "
            f"fewer processes than the {dist.get_world_size()} now running, or this node does not see it"
        )
    _agree(problem)
    state = torch.load(state_file, weights_only=False)
    if state["world_size"] != dist.get_world_size():
        raise ConfigError(
            f"{folder} was saved by {state['world_size']} processes, {dist.get_world_size()} are running: resume "
            "with the same number (the data position and random states are per process)."
        )
    engine.load_checkpoint(store.path(CHECKPOINTS), tag=found)
    return state


def check_shared(run: RunStore | str) -> None:
    """Refuse a run folder that not every rank sees (e.g. --out on a node's local disk, or an object store that a
    node reaches at another endpoint): rank 0 writes a fresh token into it, and every rank must read that token
    back (from the store, for an object-store run). A collective, before anything trains or saves."""
    store = RunStore.of(run)
    rank = dist.get_rank()
    path = store.path(RUN_TOKEN)
    token = [uuid.uuid4().hex if rank == 0 else None]
    problem = None
    if rank == 0:
        try:
            os.makedirs(store.local, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                f.write(token[0])
            os.replace(path + ".tmp", path)
            store.push(RUN_TOKEN)
        except OSError as error:
            problem = f"cannot write into {store.uri}: {error}"
    dist.broadcast_object_list(token, src=0)  # also a barrier: rank 0 wrote the file before anyone reads it
    try:
        store.pull(RUN_TOKEN)
        with open(path) as f:
            seen = f.read().strip() == token[0]
    except OSError:
        seen = False
    if not seen and problem is None:
        problem = (
            f"{store.uri} on {socket.gethostname()} is not the folder rank 0 writes: every process must see the same "
            "run folder (put --out on a file system that every node mounts, or an object store every node reaches)"
        )
    _agree(problem)


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


def prune(run: RunStore | str, keep: int) -> list[str]:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names); rank 0 only, after a save (its
    `latest` is then in the local or staging folder)."""
    store = RunStore.of(run)
    tags = [name for name in store.names(CHECKPOINTS) if TAG.fullmatch(name)]
    current = latest_tag(store.local)
    removed = [t for t in tags[:-keep] if t != current]
    for old in removed:
        store.remove(f"{CHECKPOINTS}/{old}")
    return removed
