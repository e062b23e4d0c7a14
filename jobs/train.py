"""`rdtf train --config PRESET.yaml --data DATASET_DIR --out RUN_DIR`: train DFGN (or resume the run in RUN_DIR).

Under several processes: `deepspeed --num_gpus 8 [--hostfile H] --module jobs.cli train ...` or
`torchrun --nproc_per_node 8 -m jobs.cli train ...`; every process runs this same command, and rank 0 holds the
run folder's lock (pipeline/lock.py) while it trains: a second run on the same --out is refused, naming the first.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pyarrow.fs as pafs
import yaml

from rdtf.jobs.args import config_file
from rdtf.jobs.console import importing_quietly
from rdtf.pipeline.lock import OutputLock
from rdtf.schemas.config import ConfigError, load
from rdtf.schemas.layout import DatasetLayout
from rdtf.schemas.reader import open_dataset

# flag -> dotted config key; flags and --set override the --config file.
FLAG_KEYS = {
    "steps": "run.max_steps",
    "seed": "run.seed",
    "zero_stage": "engine.zero_stage",
    "precision": "engine.precision",
    "micro_batch": "optim.micro_batch",
    "curriculum": "curriculum.task",
    "pacing": "curriculum.pacing",
    "temporal_layer": "model.temporal_layer",
    "dual_masks": "run.dual_masks",
}
# Switches written on/off on the command line, booleans in the config.
ON_OFF_FLAGS = ("pacing", "dual_masks")


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`--set optim.lr=1e-4` -> {"optim.lr": 0.0001}; values are read as YAML (numbers, lists, null, text)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: write it as KEY=VALUE, for example --set optim.lr=1e-4")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def flag_value(args: argparse.Namespace, flag: str) -> Any:
    """The config value of a flag: on/off switches as booleans, the rest as given."""
    value = getattr(args, flag)
    return value == "on" if flag in ON_OFF_FLAGS else value


def add_train_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train the sticker generator (DFGN) on a curated dataset with DeepSpeed",
        description=(
            "Train DFGN with the dual masks and the difficulty-adaptive curriculum on a dataset written by "
            "`rdtf preprocess`, on one process (CPU or one GPU) or under the deepspeed launcher / torchrun. "
            "Re-running with the same --out resumes from the last checkpoint."
        ),
        epilog="Presets: configs/tiny.yaml (CPU), configs/small.yaml (one GPU), configs/paper.yaml. "
        "Settings and the run folder: docs/train.md.",
    )
    parser.add_argument(
        "--config", required=True, type=config_file, metavar="FILE", help="a preset (tiny, small, paper) or a YAML file"
    )
    parser.add_argument("--data", required=True, metavar="DATASET_DIR", help="a dataset written by rdtf preprocess")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="checkpoints, logs and samples go here")
    parser.add_argument("--steps", type=int, help="train until this optimizer step (run.max_steps)")
    parser.add_argument("--seed", type=int, help="run.seed")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), help="DeepSpeed ZeRO stage")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--micro-batch", type=int, help="clips per process per forward pass")
    parser.add_argument(
        "--curriculum",
        choices=("none", "linear", "adaptive"),
        help="the paper's task curriculum (curriculum.task): uniform, static schedule, static + PID",
    )
    parser.add_argument(
        "--pacing", choices=("on", "off"), help="rdtf's sample-level pacing, easy rows first (curriculum.pacing)"
    )
    parser.add_argument(
        "--temporal-layer", choices=("sti", "conv3d"), help="DFGN's STI or a 3D-conv layer (model.temporal_layer)"
    )
    parser.add_argument(
        "--dual-masks", choices=("on", "off"), help="off: one task, no loss mask, the paper's baseline (run.dual_masks)"
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable"
    )
    parser.set_defaults(run=run)


@contextmanager
def run_lock(out: str) -> Iterator[None]:
    """The run folder's lock, held by rank 0 only (the launcher's RANK; none: a single process). A folder the lock
    made is removed again when the run wrote nothing into it (a config or --data refused at the start)."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    layout = DatasetLayout.at(out)
    existed = layout.fs.get_file_info(layout.root).type != pafs.FileType.NotFound
    try:
        with OutputLock(layout, owner=uuid.uuid4().hex[:12], command="rdtf train"):
            yield
    finally:
        made = not existed and layout.fs.get_file_info(layout.root).type == pafs.FileType.Directory
        if made and not layout.fs.get_file_info(pafs.FileSelector(layout.root)):
            layout.fs.delete_dir(layout.root)


def run(args: argparse.Namespace) -> int:
    if not open_dataset(args.data).sample_files:  # a wrong --data fails here, before seconds of importing torch
        raise ConfigError(f"--data {args.data} has no rows to train on: `rdtf stats {args.data}` shows its rejects")
    from rdtf.trainer.config import TrainConfig  # torch-free, but not needed by `rdtf --help`

    overrides = {key: flag_value(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    cfg = load(TrainConfig, args.config, overrides | parse_sets(args.sets))  # a bad setting fails before torch too
    with importing_quietly():
        from rdtf.trainer.train import train

    with ExitStack() as held:
        try:
            held.enter_context(run_lock(args.out))
        except OSError as error:  # e.g. a bucket that does not exist, or no right to write
            raise ConfigError(f"--out {args.out}: cannot write there: {error}") from error
        summary = train(cfg, args.data, args.out)
    if summary.is_main:
        print("\n".join(summary.lines()))
    return 0
