"""`rdtf sample --checkpoint RUN_DIR --task TASK ... --out OUT.gif`: one animated sticker from a trained run."""

from __future__ import annotations

import argparse
from typing import Any

from rdtf.jobs.console import importing_quietly
from rdtf.schemas.config import ConfigError
from rdtf.trainer.run_folder import config_path
from rdtf.trainer.tasks import NEEDS_GIF, NEEDS_IMAGE, TASKS


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
        epilog="Sampling, guidance and the run folder: docs/train.md (Sampling).",
    )
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a run folder written by rdtf train")
    parser.add_argument("--task", required=True, choices=TASKS, help="what to generate from what (see above)")
    parser.add_argument("--text", default="", help="the caption (every task but i2v uses it)")
    parser.add_argument("--image", help="the given frame for i2v and it2v")
    parser.add_argument("--gif", help="the animation whose frames are given for interpolate and predict-*")
    parser.add_argument("--out", required=True, metavar="OUT.gif", help="the GIF to write")
    parser.add_argument("--steps", type=int, help="DDIM steps (the run's diffusion.sample_steps, 50)")
    parser.add_argument("--seed", type=int, default=0, help="the noise draws come from it (0)")
    parser.add_argument(
        "--text-scale", type=float, help="text guidance (default: the run's diffusion.text_scale; tiny 1, paper 7.5)"
    )
    parser.add_argument(
        "--image-scale", type=float, help="image guidance (default: the run's diffusion.image_scale; tiny 1, paper 7.5)"
    )
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    parser.set_defaults(run=run, parser=parser)


def check_picture(flag: str, path: str, wanted: str) -> None:
    """Read the file's header with PIL (no torch), so that a wrong file is told before the model loads."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            pass
    except UnidentifiedImageError:
        raise ConfigError(f"{flag} {path} is not an image PIL can read: give {wanted}") from None
    except OSError as error:
        raise ConfigError(f"{flag} {path}: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    if args.task in NEEDS_IMAGE and not args.image:
        args.parser.error(f"--task {args.task} needs --image (the given frame)")
    if args.task in NEEDS_GIF and not args.gif:
        args.parser.error(f"--task {args.task} needs --gif (the animation whose frames are given)")
    if args.task in ("t2v", "it2v") and not args.text:
        args.parser.error(f"--task {args.task} needs --text")
    if args.steps is not None and args.steps < 1:
        args.parser.error("--steps must be at least 1")
    for flag in ("text_scale", "image_scale"):  # 0: no condition, 1: no guidance; below 0 steers away from it
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            args.parser.error(f"--{flag.replace('_', '-')} must be at least 0")
    if args.task in NEEDS_IMAGE:
        check_picture("--image", args.image, "a PNG, JPEG, WebP or GIF (its first frame is used)")
    if args.task in NEEDS_GIF:
        check_picture("--gif", args.gif, "a GIF (or an animated WebP or PNG)")
    config_path(args.checkpoint)  # a wrong --checkpoint is told before seconds of imports
    with importing_quietly():
        from rdtf.trainer.sample import SampleRequest, sample

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
