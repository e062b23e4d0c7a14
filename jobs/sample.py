"""`rdtf sample --checkpoint RUN_DIR --task TASK ... --out OUT.gif`: one animated sticker from a trained run."""

from __future__ import annotations

import argparse
from typing import Any

from rdtf.jobs.console import importing_quietly
from rdtf.trainer.tasks import TASKS


def add_sample_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "sample",
        help="generate an animated sticker (GIF) from a trained run",
        description=(
            "Generate an 8-frame GIF with the last checkpoint of RUN_DIR (its EMA weights when it has them). "
            "Tasks: t2v (--text), i2v (--image), it2v (--text --image), interpolate (--gif: its frames at even "
            "positions are given), predict-pre (--gif: its last half is given), predict-post (--gif: its first "
            "half is given)."
        ),
    )
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a run folder written by rdtf train")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--text", default="", help="the caption (every task but i2v uses it)")
    parser.add_argument("--image", help="the given frame for i2v and it2v")
    parser.add_argument("--gif", help="the animation whose frames are given for interpolate and predict-*")
    parser.add_argument("--out", required=True, metavar="OUT.gif")
    parser.add_argument("--steps", type=int, help="DDIM steps (the run's diffusion.sample_steps, 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--text-scale", type=float, help="text guidance (default: the run's diffusion.text_scale; tiny 1, paper 7.5)"
    )
    parser.add_argument(
        "--image-scale", type=float, help="image guidance (default: the run's diffusion.image_scale; tiny 1, paper 7.5)"
    )
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    with importing_quietly():
        from rdtf.trainer.sample import NEEDS_GIF, NEEDS_IMAGE, SampleRequest, sample

    if args.task in NEEDS_IMAGE and not args.image:
        args.parser.error(f"--task {args.task} needs --image (the given frame)")
    if args.task in NEEDS_GIF and not args.gif:
        args.parser.error(f"--task {args.task} needs --gif (the animation whose frames are given)")
    if args.task in ("t2v", "it2v") and not args.text:
        args.parser.error(f"--task {args.task} needs --text")
    request = SampleRequest(
        task=args.task,
        text=args.text,
        image=args.image,
        gif=args.gif,
        steps=args.steps,
        seed=args.seed,
        text_scale=args.text_scale,
        image_scale=args.image_scale,
        use_ema=not args.no_ema,
    )
    path = sample(args.checkpoint, request, args.out)
    print(f"wrote {path} ({args.task}, 8 frames)")
    return 0
