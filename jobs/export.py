"""`rdtf export RUN --out PIPELINE_DIR`: a trained run as a diffusers pipeline folder (see docs/export.md)."""

from __future__ import annotations

import argparse
from typing import Any

from rdtf.jobs.console import importing_quietly


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
    parser.add_argument("--step", help="the checkpoint: a step (500) or a tag (step-00000500); default the last")
    parser.add_argument("--no-ema", action="store_true", help="the raw weights even when EMA weights exist")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with importing_quietly():
        from rdtf.trainer.export import export_pipeline

    out = export_pipeline(args.run_dir, args.out, args.step, use_ema=not args.no_ema)
    print(f"wrote {out}: load it with DiffusionPipeline.from_pretrained({out!r}, trust_remote_code=True)")
    return 0
