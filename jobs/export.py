"""`rdtf export RUN --out PIPELINE_DIR`: a trained run as a diffusers pipeline folder (see docs/export.md)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rdtf.jobs.console import importing_quietly
from rdtf.schemas.config import ConfigError
from rdtf.trainer.run_folder import CHECKPOINTS, TAG, config_path, tag


def step_tag(value: str) -> str:
    """`--step 500` or `--step step-00000500` -> "step-00000500" (a checkpoint's folder name)."""
    if value.isdigit():
        return tag(int(value))
    if TAG.fullmatch(value):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a step (500) or a checkpoint tag (step-00000500)")


def add_export_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="write a trained run as a diffusers pipeline folder",
        description=(
            "Write a checkpoint of RUN (the last one by default, its EMA weights when it has them) as a diffusers "
            "DiffusionPipeline folder: DFGN, the DDIM scheduler, the text tower and the VAE (none in pixel space), "
            "with the code of its custom parts inside. It loads without rdtf: "
            "DiffusionPipeline.from_pretrained(PIPELINE_DIR, trust_remote_code=True)."
        ),
        epilog="The folder and how to sample from it: docs/export.md.",
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by rdtf train")
    parser.add_argument("--out", required=True, metavar="PIPELINE_DIR", help="a new or empty folder")
    parser.add_argument(
        "--step", type=step_tag, help="the checkpoint: a step (500) or a tag (step-00000500); default the last"
    )
    parser.add_argument("--no-ema", action="store_true", help="the raw weights even when EMA weights exist")
    parser.set_defaults(run=run)


def check_paths(run_dir: str, out: str, step: str | None) -> None:
    """What can be told without the trainer: --out is a new or empty folder, RUN a run folder, --step one it kept."""
    if os.path.isfile(out):
        raise ConfigError(f"--out {out} is a file, not a folder: give a new or empty folder for the pipeline")
    if os.path.isdir(out) and os.listdir(out):
        raise ConfigError(f"--out {out} is not empty: give a new or empty folder for the pipeline")
    config_path(run_dir)
    folder = os.path.join(run_dir, CHECKPOINTS)
    if step is not None and not os.path.isdir(os.path.join(folder, step)):
        kept = sorted(name for name in os.listdir(folder) if TAG.fullmatch(name)) if os.path.isdir(folder) else []
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint {step}; it keeps {', '.join(kept) or 'none'} (run.keep_checkpoints)"
        )


def run(args: argparse.Namespace) -> int:
    check_paths(args.run_dir, args.out, args.step)
    with importing_quietly():
        from rdtf.trainer.export import export_pipeline

    out = export_pipeline(args.run_dir, args.out, args.step, use_ema=not args.no_ema)
    print(f"wrote {out}: load it with DiffusionPipeline.from_pretrained({out!r}, trust_remote_code=True)")
    return 0
